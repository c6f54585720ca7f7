#!/usr/bin/env python3
"""Benchmark metadata that scales (issue 10 item 2): hashed bins, on S3 (SeaweedFS).

One run starts SeaweedFS (``tests.s3server.seaweedfs_server``) and seeds catalogues with the library (many
versions signed in one commit, all pointing at one small blob, as bench/publish.py's growth part does), then:

1. **versions**: a publish (library, in-process, a new 64 KiB image under an explicit version) into a name holding
   ``--small`` (10) versions and into one holding ``--versions`` (50,000; binned), alternating; ratio big / small
   (target <= 1.15), and the bytes of metadata each publish writes. Measured twice: as from a fresh host (no
   publisher cache: every metadata file read from S3), and as from a host whose publisher cache
   (imagectl/catalogue/metacache.py, what the CLI uses) holds the name's metadata: warmed by reading every bin
   once, the state a host reaches by publishing to the name (each publish leaves what it read and wrote);
2. **names**: a publish into an existing name of a catalogue of ``--names`` (2,000) x ``--per-name`` (50) versions
   against a catalogue of one name; ratio (target <= 1.3); also twice, without and with the cache;
3. **cold pull**: the metadata bytes a first ``pull NAME:VERSION`` downloads from the big-names catalogue (and from
   the 50,000-version one), counted through the store (target <= 256 KiB); the snapshot and targets sizes; and a
   first ``pull NAME`` (the newest version) of the 50,000-version name, which reads every bin (no target: a limit,
   README "Figures"), bytes and seconds;
   **promote**: the same two pairs of catalogues, a promote of an existing version to ``stable`` (what a pipeline
   does after the publish and its boot test), fresh and with the cache warm: a promote reads the name's role and
   the bins of the version's recorded arches and formats (catalogue/README.md §5), re-signs the role;
4. **list**: which metadata files ``catalogue list NAME`` reads (only that name's, plus the top-level files); and a
   cold listing of every name (``catalogue list``, an export, the browse site): bytes, files and seconds;
5. **verify**: ``imagectl catalogue verify --no-blobs`` of the big-names catalogue in a child process: wall time and
   peak RSS, for 1/4 and all of the names (linear in time, flat in memory?).

Figures are reported, never asserted: ratios against the baseline measured in the same run, every run's value.

    python3 bench/metadata.py                      # the figures of the issue (several minutes)
    python3 bench/metadata.py --versions 5000 --names 200 --rounds 3   # smoke check
    python3 bench/metadata.py --json
    python3 bench/metadata.py --rtt-ms 5 --names 20 --per-name 5   # publishes as against a remote S3

The server is on loopback, so a request costs CPU (botocore's and the server's, on the same cores), not a network
round trip; ``--rtt-ms`` adds one to each request of the timed publishes (requests sent at once wait at once), to
see what a publish costs against an S3 endpoint that far away.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import log  # bench/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from imagectl.catalogue.client import CatalogueReader  # noqa: E402
from imagectl.catalogue.keys import KeyRing  # noqa: E402
from imagectl.catalogue.metacache import MetadataCache  # noqa: E402
from imagectl.catalogue.model import (  # noqa: E402
    ImageRecord,
    blob_key,
    parse_ref,
    target_file_key,
    target_path,
    utcnow,
)
from imagectl.catalogue.publish import PublishRequest, init_catalogue, promote, publish  # noqa: E402
from imagectl.catalogue.state import CatalogueState, load_state, transact  # noqa: E402
from imagectl.config import Config  # noqa: E402
from imagectl.store.digest import file_digest  # noqa: E402
from imagectl.store.s3 import S3Store  # noqa: E402
from tests.s3server import seaweedfs_server  # noqa: E402

TARGETS = {"versions_ratio": 1.15, "names_ratio": 1.3, "cold_pull_bytes": 256 * 1024}
ARCH, FMT = "x86_64", "qcow2"
EXPIRY = Config().expiry_days()


class Counting:
    """Wraps a store's reads, summing the bytes and keys of ``metadata/`` read through it."""

    def __init__(self, store: S3Store) -> None:
        self.store, self.keys, self.bytes = store, [], 0
        read, open_range = store.read, store.open_range

        def counted_read(key: str, limit: int) -> bytes:
            data = read(key, limit)
            self.note(key, len(data))
            return data

        @contextlib.contextmanager
        def counted_range(key: str, offset: int = 0) -> Iterator[Any]:
            with open_range(key, offset) as stream:
                inner = stream.chunks

                def chunks() -> Iterator[bytes]:
                    for c in inner:
                        self.note(key, len(c), new=False)
                        yield c

                stream.chunks = chunks()
                self.keys.append(key)
                yield stream

        store.read = counted_read  # type: ignore[method-assign]
        store.open_range = counted_range  # type: ignore[method-assign]

    def note(self, key: str, n: int, *, new: bool = True) -> None:
        if key.startswith("metadata/"):
            self.bytes += n
            if new:
                self.keys.append(key)


def seed(store: S3Store, keys: KeyRing, sha: str, size: int, names: dict[str, int]) -> float:
    """Give each name its number of versions in ONE commit (all on one blob); seconds taken."""

    def apply(state: CatalogueState) -> None:
        now = utcnow()
        expires = now + dt.timedelta(days=EXPIRY["targets"])
        created = now.isoformat().replace("+00:00", "Z")
        for name, count in names.items():
            for i in range(count):
                v = f"0.{i}"
                rec = ImageRecord(
                    name, v, ARCH, FMT, "hvm", None, None, size, sha, created, target_path(name, v, ARCH, FMT)
                )
                state.add_image(rec, expires)
        state.commit(keys, EXPIRY)

    t0 = time.perf_counter()
    transact(store, apply)
    return time.perf_counter() - t0


class Bench:
    def __init__(self, tmp: Path, bucket: str, rtt_ms: float = 0.0) -> None:
        self.tmp, self.bucket, self.rtt = tmp, bucket, rtt_ms / 1000
        self.keydir = tmp / "keys"
        self.counter = iter(range(1, 1 << 30))
        self.stores: dict[str, S3Store] = {}  # prefix -> the store its publishes go through
        blob = tmp / "seed.img"
        blob.write_bytes(os.urandom(1 << 10))  # small: the verified catalogues hold a target file per image
        self.seed_file = blob
        self.meta_cache = MetadataCache(tmp / "cache")  # the publisher cache of this "host"
        self.seeded: dict[tuple[str, str], int] = {}  # (catalogue, NAME) -> the versions seeded: 0.0, 0.1, ...

    def store(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, prefix)

    def publishing_store(self, prefix: str) -> S3Store:
        """The store the timed publishes of ``prefix`` go through: with ``--rtt-ms``, each of its requests waits
        that long before it is sent, as if the server were that far away (requests sent at once wait at once)."""
        store = self.store(prefix)
        if self.rtt:
            for client in store.clients():  # metadata requests, and the twin the image bytes go through
                client.meta.events.register("before-send.s3", lambda **_: time.sleep(self.rtt))
        return store

    def catalogue(self, prefix: str, names: dict[str, int], *, target_files: bool = False) -> dict[str, Any]:
        """Seed a catalogue; ``target_files``: also the target file of every image (what publish makes for stock
        TUF clients, and what ``catalogue verify`` checks), so the catalogue verifies clean."""
        store = self.store(prefix)
        init_catalogue(store, self.keydir, EXPIRY)
        digest = file_digest(str(self.seed_file), part_size=store.part_size)
        store.upload_file(blob_key(digest.sha256), str(self.seed_file), digest)
        seconds = seed(store, KeyRing(self.keydir), digest.sha256, digest.size, names)
        self.seeded |= {(prefix, name): count for name, count in names.items()}
        if target_files:
            data = self.seed_file.read_bytes()
            keys = [
                target_file_key(target_path(name, f"0.{i}", ARCH, FMT), digest.sha256)
                for name, count in names.items()
                for i in range(count)
            ]
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # one PUT each: the copies publish would make
                list(pool.map(lambda key: store.write(key, data), keys))
            log(f"  {len(keys)} target files in {time.perf_counter() - t0:.0f} s")
        state = load_state(store)
        snap = state.snapshot.signed.version
        tv = state.snapshot.signed.meta["targets.json"].version
        return {
            "seed_s": round(seconds, 2),
            "snapshot_bytes": len(store.read(f"metadata/{snap}.snapshot.json", 1 << 30)),
            "snapshot_entries": len(state.snapshot.signed.meta),
            "targets_bytes": len(store.read(f"metadata/{tv}.targets.json", 1 << 30)),
        }

    def warm(self, prefix: str, name: str) -> None:
        """Fill the publisher cache with every metadata file of NAME (its roles and all its bins)."""
        load_state(self.store(prefix), meta_cache=self.meta_cache).target_roles(name)

    def publish(self, prefix: str, name: str, *, cached: bool = False) -> tuple[float, int]:
        """One library publish of new bytes under a new version; seconds and metadata bytes written.

        Each catalogue keeps one store (one boto3 client), as a publishing service would: a client per publish
        loads botocore's S3 model again, ~100,000 objects of garbage whose collection (a full collection of
        150-250 ms here) then landed in whichever publish came next, more often in the one allocating more. For
        the same reason the heap is collected before each timed publish (what ``timeit`` gets by turning the
        collector off; here it stays on, so a publish still pays for collecting its own garbage)."""
        image = self.tmp / "new.img"
        image.write_bytes(os.urandom(64 << 10))
        if prefix not in self.stores:
            self.stores[prefix] = self.publishing_store(prefix)
        store = self.stores[prefix]
        before = store.stats.bytes_sent
        req = PublishRequest(file=str(image), name=name, arch=ARCH, version=f"1.{next(self.counter)}", format=FMT)
        gc.collect()
        t0 = time.perf_counter()
        publish(store, KeyRing(self.keydir), req, EXPIRY, meta_cache=self.meta_cache if cached else None)
        seconds = time.perf_counter() - t0
        return seconds, store.stats.bytes_sent - before - (64 << 10)

    def promote(self, prefix: str, name: str, *, cached: bool = False) -> tuple[float, int]:
        """One library promote of a seeded version of NAME (one of its first ten, in turn) to ``stable``; seconds
        and metadata bytes written. The same store and heap care as :meth:`publish`."""
        if prefix not in self.stores:
            self.stores[prefix] = self.publishing_store(prefix)
        store = self.stores[prefix]
        before = store.stats.bytes_sent
        ref = f"{name}:0.{next(self.counter) % min(10, self.seeded[prefix, name])}"
        gc.collect()
        t0 = time.perf_counter()
        promote(store, KeyRing(self.keydir), ref, "stable", EXPIRY, meta_cache=self.meta_cache if cached else None)
        seconds = time.perf_counter() - t0
        return seconds, store.stats.bytes_sent - before

    def compare(
        self,
        rounds: int,
        base: tuple[str, str],
        big: tuple[str, str],
        action: Callable[..., tuple[float, int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``action`` (default :meth:`publish`) on (catalogue, NAME) ``big`` against ``base``, alternating: as from
        a fresh host, then with the publisher cache holding both names' metadata."""
        act = action or self.publish
        what = act.__name__
        log(f"{what}: {big[0]} vs {base[0]}")
        fresh = alternate(rounds, lambda: act(*base), lambda: act(*big))
        log(f"{what}: {big[0]} vs {base[0]}, publisher cache warm")
        self.warm(*base)
        self.warm(*big)
        warm = alternate(rounds, lambda: act(*base, cached=True), lambda: act(*big, cached=True))
        return fresh, warm

    def cold_read(self, prefix: str, what: Callable[[CatalogueReader], object]) -> dict[str, Any]:
        """Metadata bytes and files a fresh client (empty cache, root pinned by file) reads doing ``what``."""
        store = self.store(prefix)
        root = self.tmp / f"{prefix}-root.json"
        root.write_bytes(store.read("metadata/1.root.json", 1 << 20))
        counting = Counting(store)
        t0 = time.perf_counter()
        with (
            tempfile.TemporaryDirectory(dir=self.tmp) as cache,
            CatalogueReader(store, Path(cache), str(root), log) as r,
        ):
            what(r)
        seconds = time.perf_counter() - t0
        roles = sorted({k.split(".", 1)[1] for k in counting.keys if k.count(".") >= 2 and "root" not in k})
        return {"metadata_bytes": counting.bytes, "files": len(counting.keys), "roles_read": roles, "seconds": seconds}

    def verify(self, prefix: str) -> dict[str, Any]:
        measure = (
            "import resource, subprocess, sys, time\n"
            "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
            "print(rc, round(time.perf_counter() - t, 2), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        cmd = [sys.executable, "-c", measure, sys.executable, "-m", "imagectl", "catalogue", "verify"]
        cmd += [f"s3://{self.bucket}/{prefix}", "--no-blobs"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
        if int(out[0]) != 0:  # a verify that finds problems does other work (and prints them): not this figure
            raise RuntimeError(f"catalogue verify of {prefix} exited with {out[0]}, not 0")
        return {"rc": int(out[0]), "seconds": float(out[1]), "peak_rss_mib": round(int(out[2]) / 1024, 1)}


def alternate(rounds: int, a: Callable[[], tuple[float, int]], b: Callable[[], tuple[float, int]]) -> dict[str, Any]:
    a(), b()  # warm-up
    ra, rb = [], []
    for i in range(rounds):
        for fn, acc in ((a, ra), (b, rb)) if i % 2 == 0 else ((b, rb), (a, ra)):
            acc.append(fn())
    base, big = statistics.median(s for s, _ in ra), statistics.median(s for s, _ in rb)
    return {
        "baseline_s": [round(s, 4) for s, _ in ra],
        "measured_s": [round(s, 4) for s, _ in rb],
        "baseline_metadata_bytes": [n for _, n in ra],
        "measured_metadata_bytes": [n for _, n in rb],
        "ratio": round(big / base, 3),
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with seaweedfs_server(tmp) as server:
        for k in list(os.environ):
            if k.startswith(("AWS_", "IMAGECTL_")):
                del os.environ[k]
        os.environ.update(server.env())
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "none")
        b = Bench(tmp, server.make_bucket("meta"), args.rtt_ms)
        out: dict[str, Any] = {"params": vars(args)}
        log(f"seeding: 1 name x {args.small}, 1 name x {args.versions}")
        out["small_catalogue"] = b.catalogue("small", {"few": args.small})
        out["big_name_catalogue"] = b.catalogue("bigname", {"many": args.versions})
        out["versions"], out["versions_cached"] = b.compare(args.rounds, ("small", "few"), ("bigname", "many"))
        out["promote_versions"], out["promote_versions_cached"] = b.compare(
            args.rounds, ("small", "few"), ("bigname", "many"), b.promote
        )
        names = {f"name-{i:05d}": args.per_name for i in range(args.names)}
        log(f"seeding: {args.names} names x {args.per_name}")
        out["one_name_catalogue"] = b.catalogue("onename", {"name-00000": args.per_name})
        quarter = dict(list(names.items())[: max(1, args.names // 4)])
        out["quarter_names_catalogue"] = b.catalogue("quarter", quarter, target_files=True)
        out["names_catalogue"] = b.catalogue("names", names, target_files=True)
        out["names"], out["names_cached"] = b.compare(args.rounds, ("onename", "name-00000"), ("names", "name-00007"))
        out["promote_names"], out["promote_names_cached"] = b.compare(
            args.rounds, ("onename", "name-00000"), ("names", "name-00007"), b.promote
        )
        log("cold pulls, list")

        def pull(ref: str) -> Callable[[CatalogueReader], object]:
            return lambda r: r.resolve(parse_ref(ref), ARCH)

        out["cold_pull_names"] = b.cold_read("names", pull("name-00007:0.3"))
        out["cold_pull_names_baseline"] = b.cold_read("onename", pull("name-00000:0.3"))
        out["cold_pull_big_name"] = b.cold_read("bigname", pull(f"many:0.{args.versions // 2}"))
        # NAME alone: the newest version, which only a read of every bin can tell (no target; a limit, README)
        out["cold_pull_newest_big_name"] = b.cold_read("bigname", pull("many"))
        out["list_one_name"] = b.cold_read("names", lambda r: r.images("name-00011"))
        # every name's images, as catalogue list / an export / the browse site read them (no target: a figure)
        out["list_every_name"] = b.cold_read("names", lambda r: [r.images(n) for n in r.names()])
        log("verify")
        out["verify_quarter"] = b.verify("quarter")
        out["verify_all"] = b.verify("names")
        out["targets"] = TARGETS
        return out


def report(s: dict[str, Any]) -> str:
    v, n, vc, nc = s["versions"], s["names"], s["versions_cached"], s["names_cached"]
    cp = s["cold_pull_names"]
    pv, pvc, pn, pnc = (
        s[k] for k in ("promote_versions", "promote_versions_cached", "promote_names", "promote_names_cached")
    )
    rtt = s["params"].get("rtt_ms") or 0
    lines = [
        *([f"every request of a timed publish waits {rtt} ms before it is sent (--rtt-ms)"] if rtt else []),
        f"publish into {s['params']['versions']} versions vs {s['params']['small']}: ratio {v['ratio']} "
        f"(target <= {TARGETS['versions_ratio']}); baseline {v['baseline_s']} s, measured {v['measured_s']} s; "
        f"metadata bytes written {v['baseline_metadata_bytes'][0]} vs {v['measured_metadata_bytes'][0]}",
        f"  with the publisher cache warm: ratio {vc['ratio']}; baseline {vc['baseline_s']} s, "
        f"measured {vc['measured_s']} s",
        f"publish into {s['params']['names']} names x {s['params']['per_name']} vs one name: ratio {n['ratio']} "
        f"(target <= {TARGETS['names_ratio']}); baseline {n['baseline_s']} s, measured {n['measured_s']} s; "
        f"metadata bytes written {n['baseline_metadata_bytes'][0]} vs {n['measured_metadata_bytes'][0]}",
        f"  with the publisher cache warm: ratio {nc['ratio']}; baseline {nc['baseline_s']} s, "
        f"measured {nc['measured_s']} s",
        *[
            f"promote {what}: ratio {p['ratio']} (fresh host), {pc['ratio']} (publisher cache warm); baseline "
            f"{p['baseline_s']} s, measured {p['measured_s']} s; warm {pc['baseline_s']} s, {pc['measured_s']} s"
            for what, p, pc in (
                (f"in {s['params']['versions']} versions vs {s['params']['small']}", pv, pvc),
                (f"in {s['params']['names']} names vs one", pn, pnc),
            )
        ],
        f"cold pull, {s['params']['names']} names: {cp['metadata_bytes']} metadata bytes in {cp['files']} files "
        f"(target <= {TARGETS['cold_pull_bytes']}; one-name catalogue: "
        f"{s['cold_pull_names_baseline']['metadata_bytes']}; 50k-version name: "
        f"{s['cold_pull_big_name']['metadata_bytes']})",
        f"cold pull of the newest ({s['params']['versions']}-version name, no version given: every bin read): "
        f"{s['cold_pull_newest_big_name']['metadata_bytes']} metadata bytes in "
        f"{s['cold_pull_newest_big_name']['files']} files, {s['cold_pull_newest_big_name']['seconds']:.2f} s "
        f"(by version: {s['cold_pull_big_name']['seconds']:.2f} s)",
        f"  snapshot {s['names_catalogue']['snapshot_bytes']} bytes "
        f"({s['names_catalogue']['snapshot_entries']} roles), "
        f"targets {s['names_catalogue']['targets_bytes']} bytes; big-name catalogue snapshot "
        f"{s['big_name_catalogue']['snapshot_bytes']} bytes ({s['big_name_catalogue']['snapshot_entries']} roles)",
        f"list one name reads roles: {', '.join(s['list_one_name']['roles_read'])}",
        f"list every name ({s['params']['names']}), cold: {s['list_every_name']['metadata_bytes']} metadata bytes in "
        f"{s['list_every_name']['files']} files, {s['list_every_name']['seconds']:.2f} s",
        f"verify --no-blobs: 1/4 of the names {s['verify_quarter']['seconds']} s, "
        f"{s['verify_quarter']['peak_rss_mib']} MiB; "
        f"all {s['verify_all']['seconds']} s, {s['verify_all']['peak_rss_mib']} MiB",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--versions", type=int, default=50_000)
    p.add_argument("--small", type=int, default=10)
    p.add_argument("--names", type=int, default=2_000)
    p.add_argument("--per-name", type=int, default=50)
    p.add_argument("--rounds", type=int, default=11)  # a publish is ~50 ms: rounds are cheap, medians steadier
    p.add_argument("--rtt-ms", type=float, default=0.0, help="delay each request of a timed publish (a remote S3)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as tmp:
        s = run(args, Path(tmp))
    print(json.dumps(s, indent=1) if args.json else report(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
