#!/usr/bin/env python3
"""Benchmark ``imagectl publish`` to S3 (SeaweedFS) against ``aws s3 cp``, re-publishing, and catalogue growth.

One run: starts SeaweedFS (``weed mini``, all ports on 127.0.0.1) with ``tests.s3server.seaweedfs_server``,
creates a bucket and writes an N MiB incompressible image (default 1 GiB), then measures

1. first upload: ``imagectl publish IMAGE --catalogue s3://BUCKET/cat …`` (fresh process; the blob key, a
   pointer to the one copy at the target file, is deleted before every run and every run publishes a new
   version, so the bytes really cross the wire), timed twice: as a new file (the digests publish remembers by
   file identity forgotten first, so it hashes the file before uploading, as it does a newly built image) and
   with its digests remembered (a retried publish of an unchanged file), against
   ``aws s3 cp IMAGE s3://BUCKET/aws-key`` (awscli from PyPI, its default 8 MiB parts and 10 threads: what S3
   users reach for; the main baseline; it sends CRC32 part checksums), the same with ``--checksum-algorithm
   SHA256`` (SHA-256 part checksums, which the server checks as it checks publish's) and ``s3cmd put IMAGE
   s3://BUCKET/other-key`` (Debian's s3cmd, 16 MiB multipart chunks), each object deleted before every run, in
   rotating order after one warm-up of each; ratio new-file publish / aws s3 cp (target <= 1.0), and the others
   for comparison; and the CPU seconds each
   command used, and SeaweedFS used while it ran (on two shared cores, the client's CPU is the server's loss);
2. re-publish of the identical bytes under a new version: CLI wall time (target < 2 s) and, in-process through
   the library, the image bytes sent (target 0: a server-side copy) and the metadata bytes sent;
   2b. ``imagectl catalogue upgrade --one-copy`` after the blob key is given the image's bytes again (the layout
   before one copy per image): it reads a target file through and hashes it (SeaweedFS keeps no whole-object
   checksum), then makes the blob a pointer; against ``aws s3 cp`` of that target file to ``-`` (/dev/null);
3. growth: two catalogues whose image role already holds 10 and 5,000 versions of one name (signed in one commit
   by the library, all pointing at one small blob), then real ``imagectl publish`` runs of a new 1 MiB image into
   each, alternating; ratio 5,000 / 10 (target <= 1.5) and the image role's file size;
4. when that ratio is over target (or with ``--profile always``): one publish into each catalogue in-process
   under cProfile, and where the time goes.

This reports figures; it never asserts them. Everything (the image, SeaweedFS's data, keys, configs) lives in one
temp directory removed in a ``finally``; SeaweedFS is stopped in a ``finally`` too.

    python3 bench/publish.py                     # 1 GiB, 2 rounds, 10 vs 5,000 versions
    python3 bench/publish.py --size-mib 64 --versions 500   # smoke check
    python3 bench/publish.py --json              # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import MIB, ensure_tool, imagectl_cmd, log, write_random  # bench/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tuf.api.metadata import Metadata  # noqa: E402

from imagectl.catalogue.keys import KeyRing  # noqa: E402
from imagectl.catalogue.metadata import TARGETS_MAX  # noqa: E402
from imagectl.catalogue.model import (  # noqa: E402
    METADATA,
    ImageRecord,
    blob_key,
    role_for,
    target_file_key,
    target_path,
    utcnow,
)
from imagectl.catalogue.publish import PublishRequest, publish  # noqa: E402
from imagectl.catalogue.state import (  # noqa: E402
    CatalogueState,
    load_state,
    metadata_bytes,
    transact,
)
from imagectl.config import Config  # noqa: E402
from imagectl.store.digest import FileDigest, file_digest  # noqa: E402
from imagectl.store.s3 import S3Store, TransferSettings  # noqa: E402
from tests.s3server import S3Server, seaweedfs_server  # noqa: E402

UPLOAD_RATIO_TARGET = 1.0
REPUBLISH_TARGET_S = 2.0
REPUBLISH_BYTES_TARGET = 0
GROWTH_RATIO_TARGET = 1.5
S3CMD_CHUNK_MIB = 16  # s3cmd's default is 15; 16 matches imagectl's part size (TransferSettings.part_size)
SMALL_MIB = 1  # size of each new image in the growth runs
SEED_KIB = 64  # the one blob every seeded version points at
BIG, GROW, ARCH, FMT = "big", "grow", "x86_64", "raw"


# -- setup ---------------------------------------------------------------------------------------------------
def ensure_s3cmd() -> str:
    return ensure_tool("s3cmd", ("s3cmd",))


def ensure_aws() -> str:
    """The ``aws`` command (awscli from PyPI), installed with pip into this interpreter if missing."""
    found = shutil.which("aws")
    if found:
        return found
    log("aws not found: pip install awscli")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "awscli"], check=True, stdout=sys.stderr)
    found = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    if not Path(found).is_file():
        sys.exit("bench: pip could not install awscli")
    return found


S3CMD_CONF = """\
[default]
access_key = {access_key}
secret_key = {secret_key}
host_base = 127.0.0.1:{port}
host_bucket = 127.0.0.1:{port}
bucket_location = {region}
use_https = False
signature_v2 = False
multipart_chunk_size_mb = {chunk}
progress_meter = False
"""


def isolate_environment(tmp: Path, server: S3Server) -> dict[str, str]:
    """Point this process and its children at the server only: no AWS profile, config or IMAGECTL_* leaks in.

    Returns the environment for child processes (this process's ``os.environ`` is changed the same way, for the
    in-process library calls).
    """
    for k in list(os.environ):
        if k.startswith(("AWS_", "IMAGECTL_")):
            del os.environ[k]
    (tmp / "config.yaml").write_text("")
    os.environ.update(server.env())
    os.environ["AWS_CONFIG_FILE"] = str(tmp / "no-aws-config")  # absent: botocore reads nothing
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-credentials")
    os.environ["IMAGECTL_CONFIG"] = str(tmp / "config.yaml")
    os.environ["IMAGECTL_CACHE_DIR"] = str(tmp / "cache")  # its file-digests/ is emptied for a new-file publish
    return dict(os.environ)


# -- measuring -----------------------------------------------------------------------------------------------
@dataclass
class Child:
    seconds: float
    stdout: str
    rc: int


def run_child(cmd: list[str], tmp: Path, env: dict[str, str], *, check: bool = True, discard: bool = False) -> Child:
    """Run ``cmd`` to completion; its wall time from spawn to reap (interpreter start-up included). ``discard``:
    its stdout goes to /dev/null (a download to ``-``), not to a file read back."""
    out_path, err_path = tmp / "child.out", tmp / "child.err"
    with open(os.devnull if discard else out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )  # its own process group, so an interrupt can stop the command too
        try:
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
    if check and rc != 0:
        tail = err_path.read_text(errors="replace")[-800:].strip()
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}: {tail}")
    return Child(seconds, "" if discard else out_path.read_text(errors="replace"), rc)


@dataclass
class Bench:
    tmp: Path
    server: S3Server
    bucket: str
    env: dict[str, str]
    imagectl: list[str]
    s3cmd: list[str]
    aws: list[str]
    keys: Path
    image: Path
    size_mib: int
    sha256: str
    expiry: dict[str, int] = field(default_factory=lambda: Config().expiry_days())
    versions: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    def __post_init__(self) -> None:
        self.client = self.server.client()

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def store(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, prefix)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def size_of(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except self.client.exceptions.ClientError:
            return None

    def publish_cli(self, file: Path, prefix: str, name: str, version: str) -> tuple[Child, dict[str, Any]]:
        cmd = [*self.imagectl, "publish", str(file), "--catalogue", self.url(prefix), "--keys", str(self.keys)]
        cmd += ["--name", name, "--arch", ARCH, "--version", version, "--format", FMT, "--json"]
        child = run_child(cmd, self.tmp, self.env)
        return child, json.loads(child.stdout)

    # first upload ------------------------------------------------------------------------------------------
    def publish_big(self) -> float:
        """``imagectl publish`` of the image under a new version, the blob key's pointer deleted first (else the
        bytes would be copied server-side from the last run's target file): a real first upload. The digests
        publish remembers by file identity are forgotten first: the file is hashed as a newly built one is."""
        shutil.rmtree(self.tmp / "cache" / "file-digests", ignore_errors=True)
        return self.publish_big_remembered()

    def publish_big_remembered(self) -> float:
        """As :meth:`publish_big`, but with the file's digests remembered from the last run (publish retried on
        an unchanged file, as CI jobs do): upload and metadata only."""
        self.delete(f"cat/{blob_key(self.sha256)}")
        os.sync()
        child, out = self.publish_cli(self.image, "cat", BIG, str(next(self.versions)))
        if not (out["created"] and out["uploaded"] and out["sha256"] == self.sha256):
            raise RuntimeError(f"publish did not upload a new version: {out}")
        return child.seconds

    def s3cmd_put(self) -> float:
        self.delete("other-key")
        os.sync()
        child = run_child([*self.s3cmd, "put", str(self.image), f"s3://{self.bucket}/other-key"], self.tmp, self.env)
        if self.size_of("other-key") != self.size_mib * MIB:
            raise RuntimeError(f"s3cmd put did not store {self.size_mib} MiB: {child.stdout.strip()}")
        return child.seconds

    def aws_cp(self) -> float:
        return self._aws_cp("aws-key")

    def aws_cp_sha256(self) -> float:
        """``aws s3 cp --checksum-algorithm SHA256``: each part sent with its SHA-256, which the server checks, as
        it checks publish's (awscli's default is CRC32); the object's stored checksum says it was done."""
        seconds = self._aws_cp("aws-sha256-key", "--checksum-algorithm", "SHA256")
        head = self.client.head_object(Bucket=self.bucket, Key="aws-sha256-key", ChecksumMode="ENABLED")
        if not head.get("ChecksumSHA256"):
            raise RuntimeError(f"aws s3 cp --checksum-algorithm SHA256 stored no SHA-256 checksum: {head}")
        return seconds

    def _aws_cp(self, key: str, *options: str) -> float:
        self.delete(key)
        os.sync()
        child = run_child(
            [*self.aws, "s3", "cp", "--only-show-errors", *options, str(self.image), f"s3://{self.bucket}/{key}"],
            self.tmp,
            self.env,
        )
        if self.size_of(key) != self.size_mib * MIB:
            raise RuntimeError(f"aws s3 cp did not store {self.size_mib} MiB: {child.stdout.strip()}")
        return child.seconds

    # re-publish --------------------------------------------------------------------------------------------
    def republish_cli(self) -> float:
        child, out = self.publish_cli(self.image, "cat", BIG, str(next(self.versions)))
        if not out["created"] or out["uploaded"]:
            raise RuntimeError(f"re-publish did not add a version without uploading: {out}")
        return child.seconds

    # catalogue upgrade --one-copy --------------------------------------------------------------------------
    def old_blob(self) -> None:
        """Give the image's blob key its full bytes again, as an imagectl before one copy per image left it."""
        self.client.upload_file(str(self.image), self.bucket, f"cat/{blob_key(self.sha256)}")
        if self.store("cat").pointer(blob_key(self.sha256)) is not None:
            raise RuntimeError("the blob key is still a pointer after uploading the image to it")

    def upgrade_one_copy(self) -> float:
        """``imagectl catalogue upgrade --one-copy`` of the catalogue, whose blob holds a second copy: it reads a
        target file of the image through (SeaweedFS keeps no whole-object checksum) and makes the blob a
        pointer. The blob is made a full copy again first (not timed)."""
        self.old_blob()
        child = run_child(
            [*self.imagectl, "catalogue", "upgrade", self.url("cat"), "--one-copy", "--json"], self.tmp, self.env
        )
        out = json.loads(child.stdout)
        if out["pointers"] != [blob_key(self.sha256)] or out["freed_bytes"] != self.size_mib * MIB:
            raise RuntimeError(f"catalogue upgrade --one-copy did not free the blob: {out}")
        return child.seconds

    def aws_read(self) -> float:
        """``aws s3 cp`` of the target file the upgrade reads, to stdout (/dev/null): the same GiB downloaded."""
        key = f"cat/{target_file_key(target_path(BIG, '1', ARCH, FMT), self.sha256)}"  # the warm-up's version
        if self.size_of(key) != self.size_mib * MIB:
            raise RuntimeError(f"{key} is not the image's target file")
        cmd = [*self.aws, "s3", "cp", "--only-show-errors", f"s3://{self.bucket}/{key}", "-"]
        return run_child(cmd, self.tmp, self.env, discard=True).seconds

    def republish_library(self) -> dict[str, Any]:
        """``publish()`` in-process; bytes sent split into image bytes (inside store_image: the target file and
        the blob key's pointer) and metadata bytes."""
        store = self.store("cat")
        blob = {"bytes": 0, "calls": 0, "sent": 0}
        original = store.store_image

        def counting_store(key: str, target: str, path: str, digest: FileDigest, **hints: bool) -> bool:
            before = store.stats.bytes_sent
            sent = original(key, target, path, digest, **hints)
            blob["bytes"] += store.stats.bytes_sent - before
            blob["calls"] += 1
            blob["sent"] += int(sent)
            return sent

        store.store_image = counting_store  # type: ignore[method-assign]
        req = PublishRequest(file=str(self.image), name=BIG, arch=ARCH, version=str(next(self.versions)), format=FMT)
        before, files_before = store.stats.bytes_sent, store.stats.files
        t0 = time.perf_counter()
        res = publish(store, KeyRing(self.keys), req, self.expiry)
        seconds = time.perf_counter() - t0
        total = store.stats.bytes_sent - before
        return {
            "seconds": round(seconds, 4),
            "created": res.created,
            "uploaded": res.uploaded,
            "blob_bytes_sent": blob["bytes"],
            "blob_files_sent": store.stats.files - files_before,
            "metadata_bytes_sent": total - blob["bytes"],
            "total_bytes_sent": total,
        }

    # growth ------------------------------------------------------------------------------------------------
    def seed(self, prefix: str, count: int) -> dict[str, Any]:
        """Init a catalogue and give image GROW ``count`` versions in ONE signed commit, all on one small blob."""
        run_child([*self.imagectl, "catalogue", "init", self.url(prefix), "--keys", str(self.keys)], self.tmp, self.env)
        store = self.store(prefix)
        seed = self.tmp / "seed.img"
        block = os.urandom(SEED_KIB << 10)
        seed.write_bytes(block)
        digest = file_digest(str(seed), part_size=store.part_size)
        sha, size = digest.sha256, digest.size
        store.upload_file(blob_key(sha), str(seed), digest)
        seed.unlink()
        keys = KeyRing(self.keys)

        def apply(state: CatalogueState) -> None:
            now = utcnow()
            md = state.role_for_update(GROW, now + dt.timedelta(days=self.expiry["targets"]))
            created = now.isoformat().replace("+00:00", "Z")
            for i in range(count):
                version = f"0.{i}"
                rec = ImageRecord(
                    name=GROW,
                    version=version,
                    arch=ARCH,
                    format=FMT,
                    hypervisor="hvm",
                    os=None,
                    os_version=None,
                    size=size,
                    sha256=sha,
                    created=created,
                    path=target_path(GROW, version, ARCH, FMT),
                )
                state.add_target(md, rec)
            state.commit(keys, self.expiry)

        t0 = time.perf_counter()
        transact(store, apply)
        seconds = time.perf_counter() - t0
        verify = run_child(
            [*self.imagectl, "catalogue", "verify", self.url(prefix), "--no-blobs", "--json"],
            self.tmp,
            self.env,
            check=False,
        )
        try:
            verified = json.loads(verify.stdout)
        except json.JSONDecodeError:
            verified = {"ok": False, "problems": [verify.stdout.strip()[-300:]]}
        # The seeding signs metadata directly, so its versions have no target files (catalogue upgrade would make
        # one server-side copy per version): that, and only that, is expected here.
        missing = ("(stock TUF clients cannot download it)", "lack their target file (stock TUF clients")
        problems = [p for p in verified.get("problems", []) if not any(m in p for m in missing)]
        return {
            "versions": count,
            "seed_commit_s": round(seconds, 3),
            "verify_ok": not problems and verified.get("needs_upgrade") == count,
            "verify_problems": problems[:5],
            "verify_s": round(verify.seconds, 3),
            **self.role_file(prefix),
        }

    def role_file(self, prefix: str) -> dict[str, Any]:
        """The current image role file of GROW: its key, size in bytes and number of targets."""
        state = load_state(self.store(prefix))
        role = role_for(GROW)
        version = state.snapshot.signed.meta[f"{role}.json"].version
        key = f"metadata/{version}.{role}.json"
        return {
            "role_key": key,
            "role_bytes": self.size_of(f"{prefix}/{key}"),
            "role_targets": len(state.images(GROW)),
        }

    def publish_small(self, prefix: str) -> float:
        small = self.tmp / "small.img"
        write_random(small, SMALL_MIB)
        os.sync()
        child, out = self.publish_cli(small, prefix, GROW, f"1.{next(self.versions)}")
        small.unlink()
        if not (out["created"] and out["uploaded"]):
            raise RuntimeError(f"growth publish did not upload a new version: {out}")
        return child.seconds


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's reaped children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def alternate(rounds: int, *runners: tuple[str, Callable[[], float]], server_pid: int | None = None) -> dict[str, Any]:
    """One warm-up of each, then ``rounds`` timed runs of each, the order rotating every round (so no command
    always goes first or always follows the same one). With ``server_pid``, also the CPU seconds each run's
    command used and the server used meanwhile (under ``"cpu"``: label -> [[client, server], ...]): on two
    shared cores a client's own CPU is time the server does not get, and less noisy than wall time."""
    log("warm-up: one each of " + ", ".join(label for label, _ in runners))
    for _label, fn in runners:
        fn()
    times: dict[str, Any] = {label: [] for label, _ in runners}
    cpu: dict[str, list[list[float]]] = {label: [] for label, _ in runners}
    for r in range(rounds):
        k = r % len(runners)
        for label, fn in runners[k:] + runners[:k]:
            c0, s0 = children_cpu_s(), process_cpu_s(server_pid) if server_pid else 0.0
            times[label].append(fn())
            if server_pid:
                cpu[label].append([round(children_cpu_s() - c0, 3), round(process_cpu_s(server_pid) - s0, 3)])
            log(f"round {r + 1}: {label} {times[label][-1]:.3f} s" + (f", cpu {cpu[label][-1]}" if server_pid else ""))
    if server_pid:
        times["cpu"] = cpu
    return times


# -- profiling -----------------------------------------------------------------------------------------------
# (label, file path suffix, function name): cumulative time of each, in the order a publish runs them.
PROFILE_ROWS = (
    ("publish() in total", "catalogue/publish.py", "publish"),
    ("sha256 of the local file", "store/digest.py", "file_digest"),
    ("load_state (root chain, timestamp, snapshot, targets)", "catalogue/state.py", "load_state"),
    ("CatalogueState.role: GET + parse + verify image role", "catalogue/state.py", "role"),
    ("  S3Store.read (GETs of all metadata)", "store/s3.py", "read"),
    ("  Metadata.from_bytes (json.loads + from_dict)", "tuf/api/metadata.py", "from_bytes"),
    ("  _verify: verify_delegate (canonical JSON + ed25519)", "catalogue/state.py", "_verify"),
    ("CatalogueState.images -> ImageRecord.from_target", "catalogue/state.py", "images"),
    ("image upload or copy (S3Store.store_image)", "store/s3.py", "store_image"),
    ("CatalogueState.commit", "catalogue/state.py", "commit"),
    ("  Metadata.sign (canonical JSON + ed25519)", "tuf/api/metadata.py", "sign"),
    ("  metadata_bytes (to_dict + json.dumps indent)", "catalogue/state.py", "metadata_bytes"),
    ("  S3Store._put (PUTs of metadata)", "store/s3.py", "_put"),
    ("encode_canonical (all calls)", "securesystemslib/formats.py", "encode_canonical"),
    ("Metadata.to_dict (all calls)", "tuf/api/metadata.py", "to_dict"),
    ("json.dumps (all calls)", "json/__init__.py", "dumps"),
    ("json.loads (all calls)", "json/__init__.py", "loads"),
)


def _best(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, float]:
    """``fn()``'s result and its fastest wall time out of ``repeat`` calls."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def role_step_costs(b: Bench, prefix: str) -> dict[str, float]:
    """Without a profiler: what each step a publish does with the image role costs (fastest of 3)."""
    store = b.store(prefix)
    state = load_state(store)
    role = role_for(GROW)
    key = f"{METADATA}{state.snapshot.signed.meta[f'{role}.json'].version}.{role}.json"
    data, t_get = _best(lambda: store.read(key, TARGETS_MAX))
    md, t_parse = _best(lambda: Metadata.from_bytes(data))
    _, t_verify = _best(lambda: state.targets.verify_delegate(role, md))
    _, t_canon = _best(lambda: md.signed_bytes)
    _, t_dump = _best(lambda: metadata_bytes(md))
    state.roles[role] = md
    _, t_images = _best(lambda: state.images(GROW))
    scratch = f"{prefix}-scratch/role.json"  # a PUT of the same bytes, outside the catalogue
    _, t_put = _best(lambda: b.client.put_object(Bucket=b.bucket, Key=scratch, Body=data))
    b.delete(scratch)
    return {
        "role_bytes": len(data),
        "get_s": round(t_get, 4),
        "parse_s": round(t_parse, 4),
        "verify_s": round(t_verify, 4),
        "canonical_json_s": round(t_canon, 4),
        "serialise_indent_json_s": round(t_dump, 4),
        "images_s": round(t_images, 4),
        "put_s": round(t_put, 4),
    }


def profile_publish(b: Bench, prefix: str) -> dict[str, Any]:
    """One ``publish()`` of a new small image into ``prefix`` in-process without a profiler, then one under
    cProfile (whose overhead inflates pure-Python work several times: compare rows with each other)."""
    small = b.tmp / "profiled.img"
    store = b.store(prefix)
    keys = KeyRing(b.keys)
    load_state(store)  # warm the connection pool and imports, as the CLI's own start-up would not count here

    def one(prof: cProfile.Profile | None) -> float:
        write_random(small, SMALL_MIB)
        req = PublishRequest(file=str(small), name=GROW, arch=ARCH, version=f"2.{next(b.versions)}", format=FMT)
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            publish(store, keys, req, b.expiry)
        finally:
            if prof is not None:
                prof.disable()
        seconds = time.perf_counter() - t0
        small.unlink()
        return seconds

    plain = one(None)
    prof = cProfile.Profile()
    wall = one(prof)
    st = pstats.Stats(prof)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = st.stats  # type: ignore[attr-defined]
    rows = []
    for label, suffix, func in PROFILE_ROWS:
        hits = [(v[1], v[3]) for (f, _, name), v in raw.items() if name == func and f.endswith(suffix)]
        if hits:
            rows.append({"what": label, "calls": sum(h[0] for h in hits), "cum_s": round(sum(h[1] for h in hits), 4)})
    top = io.StringIO()
    pstats.Stats(prof, stream=top).sort_stats("cumulative").print_stats(25)
    return {
        "unprofiled_s": round(plain, 4),
        "wall_s": round(wall, 4),
        "rows": rows,
        "role_steps": role_step_costs(b, prefix),
        "top_cumulative": top.getvalue(),
    }


ROLE_STEPS = (
    ("get_s", "GET from S3"),
    ("parse_s", "Metadata.from_bytes"),
    ("verify_s", "verify_delegate (canonical JSON + ed25519 verify)"),
    ("images_s", "images(): every target -> ImageRecord"),
    ("canonical_json_s", "signed_bytes (canonical JSON, what sign() hashes)"),
    ("serialise_indent_json_s", "metadata_bytes (json.dumps indent=1)"),
    ("put_s", "PUT to S3"),
)


# -- summary -------------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


CPU_LABELS = (
    ("publish", "imagectl publish"),
    ("remembered", "imagectl publish, digests remembered"),
    ("aws", "aws s3 cp"),
    ("aws_sha256", "aws s3 cp --checksum-algorithm SHA256"),
    ("s3cmd", "s3cmd put"),
)


def cpu_summary(cpu: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Median CPU seconds of each upload command and of the server during it, every run's pair, and the ratios
    of publish's to aws s3 cp's."""
    out: dict[str, Any] = {}
    for key, label in CPU_LABELS:
        pairs = cpu[label]
        out[key] = {
            "client_median_s": med([c for c, _ in pairs]),
            "server_median_s": med([sv for _, sv in pairs]),
            "runs_client_server_s": pairs,
        }
    for key in ("publish", "remembered"):
        out[f"ratio_{key}_client_over_aws"] = round(out[key]["client_median_s"] / out["aws"]["client_median_s"], 3)
    return out


def summarise(args: argparse.Namespace, b: Bench, parts: dict[str, Any]) -> dict[str, Any]:
    up, rep, grow, one = parts["upload"], parts["republish"], parts["growth"], parts["one_copy"]
    pub_med, s3_med, aws_med = med(up["imagectl publish"]), med(up["s3cmd put"]), med(up["aws s3 cp"])
    memo_med = med(up["imagectl publish, digests remembered"])
    aws_sha_med = med(up["aws s3 cp --checksum-algorithm SHA256"])
    few_med, many_med = med(grow["few"]), med(grow["many"])
    rep_med = med(rep["cli_s"])
    up_ratio, grow_ratio = pub_med / aws_med, many_med / few_med
    return {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "server": b.server.endpoint,
        "local_sha256_s": parts["local_sha256_s"],
        "upload": {
            "publish_median_s": pub_med,
            "publish_runs_s": [round(x, 4) for x in up["imagectl publish"]],
            "publish_mib_per_s": round(args.size_mib / pub_med, 1),
            "remembered_median_s": memo_med,
            "remembered_runs_s": [round(x, 4) for x in up["imagectl publish, digests remembered"]],
            "ratio_remembered_over_aws": round(memo_med / aws_med, 3),
            "aws_median_s": aws_med,
            "aws_runs_s": [round(x, 4) for x in up["aws s3 cp"]],
            "aws_mib_per_s": round(args.size_mib / aws_med, 1),
            "ratio_publish_over_aws": round(up_ratio, 3),
            # aws sending SHA-256 part checksums, checked by the server as publish's are (no target)
            "aws_sha256_median_s": aws_sha_med,
            "aws_sha256_runs_s": [round(x, 4) for x in up["aws s3 cp --checksum-algorithm SHA256"]],
            "ratio_publish_over_aws_sha256": round(pub_med / aws_sha_med, 3),
            "s3cmd_median_s": s3_med,
            "s3cmd_runs_s": [round(x, 4) for x in up["s3cmd put"]],
            "s3cmd_mib_per_s": round(args.size_mib / s3_med, 1),
            "s3cmd_chunk_mib": S3CMD_CHUNK_MIB,
            "ratio_publish_over_s3cmd": round(pub_med / s3_med, 3),
            "ratio_target": UPLOAD_RATIO_TARGET,
            "ratio_within_target": up_ratio <= UPLOAD_RATIO_TARGET,
            "cpu": cpu_summary(up["cpu"]),
        },
        "republish": {
            "cli_median_s": rep_med,
            "cli_runs_s": [round(x, 4) for x in rep["cli_s"]],
            "cli_target_s": REPUBLISH_TARGET_S,
            "cli_within_target": rep_med < REPUBLISH_TARGET_S,
            "library": rep["library"],
            "blob_bytes_target": REPUBLISH_BYTES_TARGET,
            "blob_bytes_within_target": rep["library"]["blob_bytes_sent"] == REPUBLISH_BYTES_TARGET,
        },
        "one_copy": {
            "upgrade_median_s": med(one["upgrade --one-copy"]),
            "upgrade_runs_s": [round(x, 4) for x in one["upgrade --one-copy"]],
            "aws_read_median_s": med(one["aws read"]),
            "aws_read_runs_s": [round(x, 4) for x in one["aws read"]],
            "ratio_upgrade_over_aws_read": round(med(one["upgrade --one-copy"]) / med(one["aws read"]), 3),
        },
        "growth": {
            "few_versions": args.few,
            "many_versions": args.versions,
            "runs": args.growth_runs,
            "new_image_mib": SMALL_MIB,
            "few_median_s": few_med,
            "few_runs_s": [round(x, 4) for x in grow["few"]],
            "many_median_s": many_med,
            "many_runs_s": [round(x, 4) for x in grow["many"]],
            "ratio_many_over_few": round(grow_ratio, 3),
            "ratio_target": GROWTH_RATIO_TARGET,
            "ratio_within_target": grow_ratio <= GROWTH_RATIO_TARGET,
            "seeded_few": grow["seeded_few"],
            "seeded_many": grow["seeded_many"],
            "role_after_few": grow["role_after_few"],
            "role_after_many": grow["role_after_many"],
        },
        "profile": parts.get("profile"),
    }


def report(s: dict[str, Any]) -> str:
    ok = {True: "ok", False: "OVER TARGET"}
    u, r, g, o = s["upload"], s["republish"], s["growth"], s["one_copy"]
    lib = r["library"]
    sm, sf = g["seeded_many"], g["seeded_few"]

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in xs)

    lines = [
        f"imagectl publish to SeaweedFS S3 at {s['server']}: {s['size_mib']} MiB image, {s['rounds']} rounds "
        "after one warm-up each",
        "1. first upload (pointer deleted before every run)",
        f"  imagectl publish   median {u['publish_median_s']:8.3f} s  {u['publish_mib_per_s']:7.1f} MiB/s"
        f"   runs: {runs(u['publish_runs_s'])}   (a new file: hashed, then uploaded)",
        f"  same, remembered   median {u['remembered_median_s']:8.3f} s  {'':>13}"
        f"   runs: {runs(u['remembered_runs_s'])}   (its digests remembered from the run before)",
        f"  aws s3 cp          median {u['aws_median_s']:8.3f} s  {u['aws_mib_per_s']:7.1f} MiB/s"
        f"   runs: {runs(u['aws_runs_s'])}   (awscli defaults: CRC32 part checksums)",
        f"  aws s3 cp, SHA256  median {u['aws_sha256_median_s']:8.3f} s  {'':>13}"
        f"   runs: {runs(u['aws_sha256_runs_s'])}   (--checksum-algorithm SHA256: the server checks what it checks"
        " for publish)",
        f"  s3cmd put          median {u['s3cmd_median_s']:8.3f} s  {u['s3cmd_mib_per_s']:7.1f} MiB/s"
        f"   runs: {runs(u['s3cmd_runs_s'])}   ({u['s3cmd_chunk_mib']} MiB multipart chunks)",
        f"  ratio publish / aws s3 cp: {u['ratio_publish_over_aws']:.3f}"
        f"   (target <= {u['ratio_target']}: {ok[u['ratio_within_target']]})",
        f"  ratio publish / s3cmd:     {u['ratio_publish_over_s3cmd']:.3f}   (no target)",
        f"  ratio publish / aws SHA256: {u['ratio_publish_over_aws_sha256']:.3f}   (no target: the same checks)",
        f"  ratio remembered / aws:    {u['ratio_remembered_over_aws']:.3f}   (no target: a retried publish)",
        f"  (sha256 and part digests of the local file alone, in-process: {s['local_sha256_s']:.3f} s)",
        "  CPU seconds, medians (the command's own / SeaweedFS's while it ran): "
        + ", ".join(
            f"{key} {u['cpu'][key]['client_median_s']:.2f} / {u['cpu'][key]['server_median_s']:.2f}"
            for key, _ in CPU_LABELS
        ),
        f"  client CPU publish / aws s3 cp: {u['cpu']['ratio_publish_client_over_aws']:.3f}, remembered / aws:"
        f" {u['cpu']['ratio_remembered_client_over_aws']:.3f}   (no target)",
        "2. re-publish of identical bytes under a new version",
        f"  CLI wall time      median {r['cli_median_s']:8.3f} s   runs: {runs(r['cli_runs_s'])}"
        f"   (target < {r['cli_target_s']:.0f} s: {ok[r['cli_within_target']]})",
        f"  library publish(): {lib['seconds']:.3f} s, blob bytes sent {lib['blob_bytes_sent']}"
        f" (target {r['blob_bytes_target']}: {ok[r['blob_bytes_within_target']]}),"
        f" metadata bytes sent {lib['metadata_bytes_sent']}, uploaded={lib['uploaded']}",
        "2b. catalogue upgrade --one-copy of the image's second copy (a target file read through and hashed)",
        f"  upgrade --one-copy median {o['upgrade_median_s']:8.3f} s   runs: {runs(o['upgrade_runs_s'])}",
        f"  aws s3 cp KEY -    median {o['aws_read_median_s']:8.3f} s   runs: {runs(o['aws_read_runs_s'])}"
        "   (the same target file downloaded to /dev/null)",
        f"  ratio upgrade / aws read: {o['ratio_upgrade_over_aws_read']:.3f}   (no target)",
        f"3. publish of a new {g['new_image_mib']} MiB image with {g['few_versions']} vs {g['many_versions']} versions "
        f"of the name already present ({g['runs']} runs each after one warm-up)",
        f"  {g['few_versions']:>5} versions     median {g['few_median_s']:8.3f} s   runs: {runs(g['few_runs_s'])}",
        f"  {g['many_versions']:>5} versions     median {g['many_median_s']:8.3f} s   runs: {runs(g['many_runs_s'])}",
        f"  ratio {g['many_versions']} / {g['few_versions']}: {g['ratio_many_over_few']:.3f}"
        f"   (target <= {g['ratio_target']}: {ok[g['ratio_within_target']]})",
        f"  image role file: {sf['role_bytes']} bytes at {sf['role_targets']} versions,"
        f" {sm['role_bytes']} bytes at {sm['role_targets']} versions"
        f" ({g['role_after_many']['role_bytes']} bytes at {g['role_after_many']['role_targets']} after the runs)",
        f"  seeding: {sm['versions']} versions signed in one commit in {sm['seed_commit_s']:.2f} s;"
        f" catalogue verify --no-blobs: {'clean' if sm['verify_ok'] else 'PROBLEMS ' + str(sm['verify_problems'])}"
        f" ({sm['verify_s']:.2f} s); {sf['versions']}-version catalogue:"
        f" {'clean' if sf['verify_ok'] else 'PROBLEMS ' + str(sf['verify_problems'])}",
    ]
    p = s.get("profile")
    if p:
        lines.append(
            f"4. profile: one publish() in-process, {g['few_versions']} vs {g['many_versions']} versions "
            f"(wall {p['few']['unprofiled_s']:.3f} s vs {p['many']['unprofiled_s']:.3f} s without a profiler,"
            f" {p['few']['wall_s']:.3f} s vs {p['many']['wall_s']:.3f} s under cProfile)"
        )
        few = {row["what"]: row for row in p["few"]["rows"]}
        lines.append(f"  {'':<56} {'calls':>6} {'few s':>8} {'calls':>6} {'many s':>8}")
        for row in p["many"]["rows"]:
            f = few.get(row["what"], {"calls": 0, "cum_s": 0.0})
            lines.append(
                f"  {row['what']:<56} {f['calls']:>6} {f['cum_s']:>8.3f} {row['calls']:>6} {row['cum_s']:>8.3f}"
            )
        sf, sm = p["few"]["role_steps"], p["many"]["role_steps"]
        lines.append(
            f"  one step on the image role, no profiler, fastest of 3 ({sf['role_bytes']} vs {sm['role_bytes']} bytes):"
        )
        for k, label in ROLE_STEPS:
            lines.append(f"  {label:<56} {'':>6} {sf[k]:>8.3f} {'':>6} {sm[k]:>8.3f}")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------
def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, tmp: Path, s3cmd: str, aws: str) -> dict[str, Any]:
    with seaweedfs_server(tmp) as server:
        log(f"SeaweedFS (pid {server.pid}) serving S3 at {server.endpoint}")
        env = isolate_environment(tmp, server)
        bucket = server.make_bucket("bench")
        keys, image = tmp / "keys", tmp / "image.raw"
        s3cfg = tmp / "s3cfg"
        s3cfg.write_text(
            S3CMD_CONF.format(
                access_key=server.access_key,
                secret_key=server.secret_key,
                port=server.endpoint.rsplit(":", 1)[1],
                region=server.region,
                chunk=S3CMD_CHUNK_MIB,
            )
        )
        log(f"writing a {args.size_mib} MiB image in {tmp}")
        write_random(image, args.size_mib)
        t0 = time.perf_counter()
        sha = file_digest(str(image), part_size=TransferSettings().part_size).sha256
        local_sha = round(time.perf_counter() - t0, 4)
        b = Bench(
            tmp=tmp,
            server=server,
            bucket=bucket,
            env=env,
            imagectl=imagectl_cmd(),
            s3cmd=[s3cmd, "-c", str(s3cfg), "--no-progress"],
            aws=[aws],
            keys=keys,
            image=image,
            size_mib=args.size_mib,
            sha256=sha,
        )
        run_child([*b.imagectl, "catalogue", "init", b.url("cat"), "--keys", str(keys)], tmp, env)
        parts: dict[str, Any] = {"local_sha256_s": local_sha}

        log("1. first upload: imagectl publish (a new file; its digests remembered) vs aws s3 cp and s3cmd put")
        parts["upload"] = alternate(
            args.rounds,
            ("imagectl publish", b.publish_big),
            ("imagectl publish, digests remembered", b.publish_big_remembered),
            ("aws s3 cp", b.aws_cp),
            ("aws s3 cp --checksum-algorithm SHA256", b.aws_cp_sha256),
            ("s3cmd put", b.s3cmd_put),
            server_pid=server.pid,
        )
        for key in ("other-key", "aws-key", "aws-sha256-key"):
            b.delete(key)

        log("2. re-publish of identical bytes")
        if b.store("cat").pointer(blob_key(sha)) is None:
            raise RuntimeError("the image's pointer is not in the catalogue before the re-publish runs")
        b.republish_cli()  # warm-up
        cli = [b.republish_cli() for _ in range(args.rounds)]
        log(f"re-publish CLI runs: {', '.join(f'{x:.3f}' for x in cli)} s")
        parts["republish"] = {"cli_s": cli, "library": b.republish_library()}
        log(f"re-publish in-process: {parts['republish']['library']}")
        log("2b. catalogue upgrade --one-copy (the blob a full copy again) vs aws s3 cp of the target file to -")
        parts["one_copy"] = alternate(args.rounds, ("upgrade --one-copy", b.upgrade_one_copy), ("aws read", b.aws_read))
        image.unlink()  # 1 GiB less on disk from here on

        log(f"3. growth: seeding {args.few} and {args.versions} versions")
        growth: dict[str, Any] = {"seeded_few": b.seed("few", args.few), "seeded_many": b.seed("many", args.versions)}
        log(f"seeded: {growth['seeded_few']}")
        log(f"seeded: {growth['seeded_many']}")
        growth |= alternate(
            args.growth_runs, ("few", lambda: b.publish_small("few")), ("many", lambda: b.publish_small("many"))
        )
        growth["role_after_few"] = b.role_file("few")
        growth["role_after_many"] = b.role_file("many")
        parts["growth"] = growth

        ratio = statistics.median(growth["many"]) / statistics.median(growth["few"])
        if args.profile == "always" or (args.profile == "auto" and ratio > GROWTH_RATIO_TARGET):
            log(f"4. profiling one publish() into each catalogue (growth ratio {ratio:.3f})")
            parts["profile"] = {"few": profile_publish(b, "few"), "many": profile_publish(b, "many")}
            for which in ("few", "many"):
                log(f"cProfile, {which} versions, top by cumulative time:\n{parts['profile'][which]['top_cumulative']}")
        summary = summarise(args, b, parts)
    log(f"SeaweedFS (pid {server.pid}) stopped")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of publish, aws and s3cmd each (default 3)")
    ap.add_argument("--versions", type=int, default=5000, help="versions in the big catalogue (default 5000)")
    ap.add_argument("--few", type=int, default=10, help="versions in the small catalogue (default 10)")
    ap.add_argument("--growth-runs", type=int, default=5, help="timed publishes into each (default 5)")
    ap.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile one publish into each catalogue: when the growth ratio is over target (default), always, never",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--tmpdir", help="where the temp directory goes (default: the system's)")
    args = ap.parse_args()
    if min(args.size_mib, args.rounds, args.versions, args.few, args.growth_runs) < 1:
        ap.error("sizes, counts and rounds must be at least 1")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally blocks: SeaweedFS stopped, temp removed
        signal.signal(sig, _exit_on_signal)
    s3cmd = ensure_s3cmd()
    aws = ensure_aws()

    tmp = Path(tempfile.mkdtemp(prefix="imagectl-bench-publish.", dir=args.tmpdir)).resolve()
    # SeaweedFS keeps deleted objects' bytes until a vacuum: every first-upload run stays on disk.
    need = (3 * (args.rounds + 1) + 2) * args.size_mib * MIB
    free = shutil.disk_usage(tmp).free
    try:
        if free < need:
            sys.exit(f"bench: needs about {need / (1 << 30):.1f} GiB free in {tmp.parent}, has {free / (1 << 30):.1f}")
        summary = run(args, tmp, s3cmd, aws)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
