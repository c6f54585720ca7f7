"""``imagectl pull`` against a real HTTP server that misbehaves: resume, retries, Range ignored, 503, the client
cache, destination problems (unwritable, read-only, disk full), the output contract and a memory bound."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagectl.catalogue.model import target_file_key, target_path
from tests.conftest import REPO, Catalogue, CliResult, require_tools, run_imagectl, unavailable
from tests.httpserver import Fault, TestHTTPServer
from tests.test_schema import assert_valid

pytestmark = pytest.mark.http

MiB = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


@dataclass
class Env:
    """A published catalogue served over HTTP, and a ``pull`` bound to it with the root pinned."""

    cat: Catalogue
    srv: TestHTTPServer
    cli: Callable[..., CliResult]
    tmp: Path
    images: dict[str, str] = field(default_factory=dict)  # sha256 -> its target file, what pull downloads

    @property
    def cache(self) -> Path:
        return Path(os.environ["IMAGECTL_CACHE_DIR"])

    @property
    def blobs(self) -> Path:
        return self.cache / "blobs" / "sha256"

    def publish(self, img: Path, name: str = "wn", version: str = "1.0", arch: str = "x86_64", *extra: str) -> str:
        r = self.cli(
            "publish", img, *self.cat.args(), "--name", name, "--arch", arch, "--version", version, "--json", *extra
        )
        assert r.code == 0, r.err
        rec = json.loads(r.out)
        sha = file_sha256(img)
        assert rec["sha256"] == sha
        self.images[sha] = target_file_key(target_path(name, version, arch, rec["format"]), sha)
        return sha

    def image(self, sha: str) -> str:
        """The key pull downloads the image ``sha`` from: its target file (a hard link of the blob here)."""
        return self.images[sha]

    def image_bytes(self, sha: str) -> int:
        """Image bytes the server sent for ``sha``, from its target file or its blob."""
        return self.srv.served.bytes_for(self.image(sha)) + self.srv.served.bytes_for(sha)

    def pull_args(self, ref: str, *extra: object, arch: str = "x86_64") -> list[str]:
        return [
            "pull",
            ref,
            "--catalogue",
            self.srv.url,
            "--root",
            str(self.cat.root),
            "--arch",
            arch,
            *map(str, extra),
        ]

    def pull(self, ref: str, *extra: object, arch: str = "x86_64") -> CliResult:
        return self.cli(*self.pull_args(ref, *extra, arch=arch))

    def image_requests(self, sha: str) -> list[tuple[str, str, str | None]]:
        """Requests for the image ``sha``: its target file, or its blob. These catalogues have target files, so
        pull must never fall back to the blob (it does only when the target file is missing): checked here."""
        reqs = [r for r in self.srv.served.requests if r[1].endswith((self.image(sha), f"/blobs/sha256/{sha}"))]
        assert all(path.endswith(self.image(sha)) for _m, path, _r in reqs), f"not the target file: {reqs}"
        return reqs

    def subprocess_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env


@pytest.fixture
def env(http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], tmp_path: Path) -> Env:
    cat, srv = http_catalogue
    return Env(cat, srv, cli, tmp_path)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got {err!r}"
    assert lines[0].startswith("imagectl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def leftovers(directory: Path, dest_name: str) -> list[str]:
    """Temp files a pull could leave beside its destination."""
    return sorted(p.name for p in directory.glob(f".{dest_name}.*"))


# -- tmpfs mounts (root only) -----------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False, at: Path | None = None) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` on a temp directory, or on the existing directory ``at`` (skips the test if
    mounting is not permitted)."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    mnt = at or Path(tempfile.mkdtemp(prefix="imagectl-tmpfs-"))
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    except FileNotFoundError:
        if at is None:
            mnt.rmdir()
        unavailable("no mount(8) on this system")
    if r.returncode != 0:
        if at is None:
            mnt.rmdir()
        unavailable(f"mounting a tmpfs is not permitted here: {r.stderr.decode(errors='replace').strip()}")
    try:
        if read_only:
            r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
            if r.returncode != 0:
                unavailable(f"remounting read-only is not permitted: {r.stderr.decode(errors='replace').strip()}")
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if at is None:
            with contextlib.suppress(OSError):
                mnt.rmdir()


# -- 1. resume across pulls ---------------------------------------------------------------------------------------
def test_dropped_connection_leaves_part_and_next_pull_resumes(env: Env, make_image: Callable[..., Path]) -> None:
    size = 3_000_000  # several 1 MiB chunks, and the cut falls inside one
    img = make_image(size)
    sha = env.publish(img)
    cut = size * 4 // 10
    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), drop_after=cut, times=1))
    out = env.tmp / "out.qcow2"

    r = env.pull("wn", "-o", out)
    assert r.code == 13, r.err
    line = one_error_line(r.err)
    assert "connection lost" in line
    assert not out.exists() and leftovers(env.tmp, out.name) == []
    first = env.image_bytes(sha)
    assert first == cut
    part = env.blobs / f"{sha}.part"
    assert not (env.blobs / sha).exists()  # nothing unverified is promoted into the cache
    assert part.stat().st_size == first, "the .part must hold every byte the client received"
    assert part.read_bytes() == img.read_bytes()[:first]

    env.srv.clear()
    r = env.pull("wn", "-o", out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is False
    assert env.image_bytes(sha) == size - first  # only the remainder crossed the network
    [(method, _path, rng)] = env.image_requests(sha)
    assert (method, rng) == ("GET", f"bytes={first}-")
    assert out.read_bytes() == img.read_bytes()
    assert not part.exists() and file_sha256(env.blobs / sha) == sha


# -- 2. resume within one pull --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_retries_resume_within_one_pull(
    env: Env, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    size = 2_500_000
    img = make_image(size, seed=how)
    sha = env.publish(img)
    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), drop_after=size * 4 // 10, times=1))
    out = env.tmp / "out.qcow2"
    extra: list[str] = []
    if how == "flag":
        extra = ["--retries", "2"]
    else:
        monkeypatch.setenv("IMAGECTL_RETRIES", "2")
    r = env.pull("wn", "-o", out, "--json", *extra)
    assert r.code == 0, r.err
    assert env.image_bytes(sha) == size  # the drop cost nothing: no byte was fetched twice
    reqs = env.image_requests(sha)
    assert [rng for _m, _p, rng in reqs] == [None, f"bytes={size * 4 // 10}-"]
    assert out.read_bytes() == img.read_bytes()
    assert not (env.blobs / f"{sha}.part").exists()


# -- 3. server ignores Range --------------------------------------------------------------------------------------
def test_server_ignoring_range_restarts_cleanly(env: Env, make_image: Callable[..., Path]) -> None:
    size = 2_200_000
    img = make_image(size)
    sha = env.publish(img)
    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), drop_after=size // 2, times=1))
    out = env.tmp / "out.qcow2"
    assert env.pull("wn", "-o", out).code == 13
    part = env.blobs / f"{sha}.part"
    assert part.stat().st_size == size // 2

    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), ignore_range=True))
    r = env.pull("wn", "-o", out, "--json")
    assert r.code == 0, r.err
    [(_m, _p, rng)] = env.image_requests(sha)
    assert rng == f"bytes={size // 2}-"  # the client asked to resume…
    assert env.image_bytes(sha) == size  # …got the whole body (200) and used it from byte 0
    assert out.stat().st_size == size
    assert out.read_bytes() == img.read_bytes()  # no duplicated prefix
    assert not part.exists()


def test_corrupt_part_is_detected_and_dropped(env: Env, make_image: Callable[..., Path]) -> None:
    """A .part whose bytes are not the blob's prefix (disk corruption, another tool) fails verification, is removed,
    and the next pull starts from scratch."""
    size = 1_500_000
    img = make_image(size)
    sha = env.publish(img)
    env.blobs.mkdir(parents=True, exist_ok=True)
    part = env.blobs / f"{sha}.part"
    part.write_bytes(b"\xff" * 500_000)
    out = env.tmp / "out.qcow2"
    env.srv.clear()
    r = env.pull("wn", "-o", out)
    assert r.code == 11, r.err
    one_error_line(r.err)
    assert not out.exists() and not part.exists() and not (env.blobs / sha).exists()
    assert leftovers(env.tmp, out.name) == []

    env.srv.clear()
    r = env.pull("wn", "-o", out)
    assert r.code == 0, r.err
    assert env.image_bytes(sha) == size
    assert out.read_bytes() == img.read_bytes()


def test_stale_part_longer_than_blob_is_discarded(env: Env, make_image: Callable[..., Path]) -> None:
    size = 700_000
    img = make_image(size)
    sha = env.publish(img)
    env.blobs.mkdir(parents=True, exist_ok=True)
    (env.blobs / f"{sha}.part").write_bytes(img.read_bytes() + b"trailing junk")
    out = env.tmp / "out.qcow2"
    env.srv.clear()
    r = env.pull("wn", "-o", out)
    assert r.code == 0, r.err
    assert out.read_bytes() == img.read_bytes()
    assert env.image_bytes(sha) == size
    assert [rng for _m, _p, rng in env.image_requests(sha)] == [None]


# -- 4. 503 ---------------------------------------------------------------------------------------------------------
def test_transient_503_is_retried(env: Env, make_image: Callable[..., Path]) -> None:
    size = 400_000
    img = make_image(size)
    sha = env.publish(img)
    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), status=503, times=1))
    out = env.tmp / "out.qcow2"
    r = env.pull("wn", "-o", out, "--retries", "2")
    assert r.code == 0, r.err
    assert len(env.image_requests(sha)) == 2
    assert env.image_bytes(sha) == size
    assert out.read_bytes() == img.read_bytes()


def test_permanent_503_without_retries_fails(env: Env, make_image: Callable[..., Path]) -> None:
    img = make_image(400_000)
    sha = env.publish(img)
    env.srv.clear()
    env.srv.add_fault(Fault(env.image(sha), status=503))
    out = env.tmp / "out.qcow2"
    r = env.pull("wn", "-o", out)
    assert r.code == 13, r.err
    line = one_error_line(r.err)
    assert re.search(r"\bHTTP 503 from http://127\.0\.0\.1:\d+/", line), line
    assert len(env.image_requests(sha)) == 1  # retries 0 means one request
    assert not out.exists() and leftovers(env.tmp, out.name) == []
    assert not (env.blobs / sha).exists()


# -- 5. the client cache ------------------------------------------------------------------------------------------
def test_cache_hit_then_corrupted_cache_blob(env: Env, make_image: Callable[..., Path]) -> None:
    size = 1_200_000
    img = make_image(size)
    sha = env.publish(img)
    a, b, c = env.tmp / "a.qcow2", env.tmp / "b.qcow2", env.tmp / "c.qcow2"
    env.srv.clear()
    r = env.pull("wn", "-o", a, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is False
    assert env.image_bytes(sha) == size

    env.srv.clear()
    r = env.pull("wn", "-o", b, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is True
    assert env.image_bytes(sha) == 0 and env.image_requests(sha) == []
    assert b.read_bytes() == img.read_bytes()

    blob = env.blobs / sha
    data = bytearray(blob.read_bytes())
    data[size // 3] ^= 0x01  # one flipped bit
    blob.write_bytes(bytes(data))
    c.write_bytes(b"what was here before")
    env.srv.clear()
    r = env.pull("wn", "-o", c, "--json")
    # The corrupted entry is detected while copying (never served), dropped, and the blob fetched again.
    assert r.code == 0, r.err
    assert "imagectl: warning: cached blob" in r.err and "does not match the signed hash" in r.err
    assert json.loads(r.out)["cached"] is False
    assert env.image_bytes(sha) == size
    assert c.read_bytes() == img.read_bytes()
    assert file_sha256(blob) == sha
    assert leftovers(env.tmp, c.name) == []


def test_cache_prune_removes_a_pulled_image_not_used_lately(env: Env, make_image: Callable[..., Path]) -> None:
    """A real pull over HTTP, then ``imagectl cache prune``: a cache hit marks the image used (its access time; the
    modification time, shared with the user's file it is linked to, stays); an image unused for longer than asked
    is removed, the user's copy untouched, and the next pull downloads it again."""
    img = make_image(300_000)
    sha = env.publish(img)
    a, b = env.tmp / "a.qcow2", env.tmp / "b.qcow2"
    assert env.pull("wn", "-o", a).code == 0
    blob = env.blobs / sha
    old = time.time() - 40 * 86400
    os.utime(blob, (old, old))
    r = env.pull("wn", "-o", b, "--json")
    assert r.code == 0 and json.loads(r.out)["cached"] is True, r.err
    st = blob.stat()
    assert st.st_mtime == old and time.time() - st.st_atime < 60  # marked used by the hit
    r = env.cli("cache", "prune", "--unused-for", "30", "--json")
    assert r.code == 0 and json.loads(r.out)["removed"] == [], r.out  # used just now

    os.utime(blob, (old, old))
    r = env.cli("cache", "prune", "--unused-for", "30", "--json")
    assert r.code == 0, r.err
    assert_valid("cache-prune", json.loads(r.out), "cache prune --json after a real pull")
    [removed] = json.loads(r.out)["removed"]
    assert removed["path"] == f"blobs/sha256/{sha}" and removed["bytes"] == 300_000
    assert removed["bytes_freed"] == 0  # the entry was a.qcow2's inode: the disk gets nothing back yet
    assert not blob.exists() and not (env.blobs / f".{sha}.lock").exists()
    assert a.read_bytes() == b.read_bytes() == img.read_bytes()
    env.srv.clear()
    r = env.pull("wn", "-o", env.tmp / "c.qcow2", "--json")
    assert r.code == 0 and json.loads(r.out)["cached"] is False, r.err
    assert env.image_bytes(sha) == 300_000 and file_sha256(blob) == sha


def test_cache_max_size_prunes_after_a_pull(
    env: Env, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``cache_max_size`` setting: after a pull, the least recently used images go until the cache fits; the
    image just pulled stays (used this hour) even when it alone is over the size. A value that is not a size is
    refused before anything is downloaded (exit 3, naming where it came from)."""
    old_sha = env.publish(make_image(400_000, seed="old"), "wn", "1.0")
    new_sha = env.publish(make_image(400_000, seed="new"), "wn", "2.0")
    monkeypatch.setenv("IMAGECTL_CACHE_MAX_SIZE", "lots")
    env.srv.clear()
    r = env.pull("wn:1.0", "-o", env.tmp / "x.qcow2")
    assert r.code == 3 and r.err == (
        "imagectl: error: cache_max_size (from IMAGECTL_CACHE_MAX_SIZE) takes a size such as 20G, 500M or 1.5T, "
        "got 'lots'\n"
    )
    assert env.srv.served.requests == [] and not (env.tmp / "x.qcow2").exists()

    monkeypatch.setenv("IMAGECTL_CACHE_MAX_SIZE", "500K")
    assert env.pull("wn:1.0", "-o", env.tmp / "a.qcow2").code == 0
    old = time.time() - 3 * 86400
    os.utime(env.blobs / old_sha, (old, old))  # pulled three days ago
    r = env.pull("wn:2.0", "-o", env.tmp / "b.qcow2")
    assert r.code == 0, r.err
    assert "imagectl: cache: removed 1 entry not used lately, 0 B freed, to stay under cache_max_size 500K" in r.err
    assert not (env.blobs / old_sha).exists() and (env.blobs / new_sha).exists()
    assert (env.tmp / "a.qcow2").read_bytes() == make_image(400_000, seed="old").read_bytes()
    monkeypatch.setenv("IMAGECTL_CACHE_MAX_SIZE", "100K")  # the image just pulled is over it, and stays
    r = env.pull("wn:2.0", "-o", env.tmp / "c.qcow2", "--json")
    assert r.code == 0 and json.loads(r.out)["cached"] is True and (env.blobs / new_sha).exists(), r.err


def test_pulls_racing_an_aggressive_prune_all_get_their_verified_image(
    env: Env, make_image: Callable[..., Path]
) -> None:
    """``cache prune`` in a loop, its clock two hours ahead (so every entry is past the last-hour floor and chosen),
    while 12 pulls of two images run in other processes: each pull either finds its image whole under the image's
    lock or downloads it again, whatever prune removed meanwhile (the image, its lock file); none fails, and every
    destination holds the signed bytes."""
    from imagectl.localcache import IN_USE_S, prune

    shas = [env.publish(make_image(400_000, seed=s), "wn", f"1.{i}") for i, s in enumerate("ab")]
    stop = threading.Event()
    removed: list[str] = []

    def pruner() -> None:
        while not stop.is_set():
            report = prune(env.cache, unused_for=0, now=lambda: time.time() + 2 * IN_USE_S)
            removed.extend(e.rel for e in report.removed)
            stop.wait(0.01)

    thread = threading.Thread(target=pruner)
    thread.start()
    try:
        pulls = []
        for n in range(12):
            dest = env.tmp / f"d{n}.qcow2"
            argv = [sys.executable, "-m", "imagectl", *env.pull_args(f"wn:1.{n % 2}", "-o", dest, "--quiet")]
            child = subprocess.Popen(argv, env=env.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            pulls.append((child, dest, shas[n % 2]))
        for child, dest, sha in pulls:
            _out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err.decode()
            assert file_sha256(dest) == sha
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert any(r.startswith("blobs/sha256/") for r in removed)  # the race was run: images went while pulls ran


# -- 6. destination problems --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["parent-is-file", "parent-missing"])
def test_unwritable_destination_path(env: Env, make_image: Callable[..., Path], kind: str) -> None:
    """Works as root too: no permission bit is involved."""
    img = make_image(300_000)
    sha = env.publish(img)
    if kind == "parent-is-file":
        (env.tmp / "afile").write_bytes(b"x")
        out = env.tmp / "afile" / "out.qcow2"
    else:
        out = env.tmp / "missing" / "out.qcow2"
    env.srv.clear()
    r = env.pull("wn", "-o", out)
    assert r.code == 14, r.err
    line = one_error_line(r.err)
    assert f"{out.parent} {'is not a directory' if kind == 'parent-is-file' else 'does not exist'}" in line
    assert env.image_bytes(sha) == 0  # refused before downloading anything
    if kind == "parent-is-file":
        assert (env.tmp / "afile").read_bytes() == b"x"
    else:
        assert not out.parent.exists()


NOBODY = 65534  # uid and gid of the unprivileged user the permission test runs as


def as_unprivileged(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid/gid 65534 (root ignores permission bits, and CI runs as root), keeping only the
    capability to *read* anything (so the interpreter under /root runs): every write is checked as for anyone."""
    if os.geteuid() != 0:
        return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    require_tools("setpriv", install="util-linux")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    drop += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return subprocess.run([*drop, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_unwritable_destination_directory_mode(env: Env, make_image: Callable[..., Path]) -> None:
    """A directory whose mode forbids writing: refused before any byte is downloaded, nothing left in it."""
    img = make_image(300_000)
    sha = env.publish(img)
    ro = env.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cache = env.tmp / "cache-of-the-deployer"
    cache.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(cache, NOBODY, NOBODY)
    child_env = {**env.subprocess_env(), "IMAGECTL_CACHE_DIR": str(cache), "HOME": str(cache)}
    try:
        env.srv.clear()
        p = as_unprivileged([sys.executable, "-m", "imagectl", *env.pull_args("wn", "-o", ro / "out.qcow2")], child_env)
        assert p.returncode == 14, p.stderr
        assert "not writable" in one_error_line(p.stderr)
        assert list(ro.iterdir()) == []
        assert env.image_bytes(sha) == 0
    finally:
        ro.chmod(0o755)


@pytest.mark.root
def test_read_only_filesystem_destination(env: Env, make_image: Callable[..., Path]) -> None:
    img = make_image(300_000)
    sha = env.publish(img)
    with tmpfs("4m", read_only=True) as mnt:
        env.srv.clear()
        r = env.pull("wn", "-o", mnt / "out.qcow2")
        assert r.code == 14, r.err
        line = one_error_line(r.err)
        assert str(mnt) in line
        assert list(mnt.iterdir()) == []
        assert env.image_bytes(sha) == 0


@pytest.mark.root
def test_disk_full_destination(env: Env, make_image: Callable[..., Path]) -> None:
    size = 3 * MiB
    img = make_image(size)
    sha = env.publish(img)
    with tmpfs("1m") as mnt:
        env.srv.clear()
        r = env.pull("wn", "-o", mnt)  # a directory: the default file name goes inside it
        assert r.code == 14, r.err
        line = one_error_line(r.err)
        assert "disk full" in line
        assert list(mnt.iterdir()) == [], "no partial image and no temp file may be left on the full disk"
        assert os.statvfs(mnt).f_bfree == os.statvfs(mnt).f_blocks  # and the space is given back
    # the cache is on the normal disk: the verified blob is kept, so the next pull needs no network
    assert file_sha256(env.blobs / sha) == sha
    assert env.image_bytes(sha) == size
    env.srv.clear()
    out = env.tmp / "elsewhere.qcow2"
    r = env.pull("wn", "-o", out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is True and env.image_bytes(sha) == 0
    assert out.read_bytes() == img.read_bytes()


# -- 7. output contract -------------------------------------------------------------------------------------------
def test_json_output_is_one_object(env: Env, make_image: Callable[..., Path]) -> None:
    img = make_image(300_000)
    sha = env.publish(img, "wn", "2.5")
    out = env.tmp / "out.qcow2"
    r = env.pull("wn", "-o", out, "--json")
    assert r.code == 0, r.err
    obj, end = json.JSONDecoder().raw_decode(r.out)
    assert r.out[end:].strip() == "", "--json must print exactly one JSON value"
    assert isinstance(obj, dict)
    assert {"path", "name", "version", "arch", "sha256", "size"} <= obj.keys()
    assert (obj["path"], obj["name"], obj["version"], obj["arch"], obj["sha256"], obj["size"]) == (
        str(out),
        "wn",
        "2.5",
        "x86_64",
        sha,
        300_000,
    )
    assert r.err == ""  # root pinned, not deprecated: nothing to warn about, and no progress bar
    assert out.read_bytes() == img.read_bytes()


def test_quiet_prints_nothing(env: Env, make_image: Callable[..., Path]) -> None:
    img = make_image(300_000)
    env.publish(img)
    out = env.tmp / "out.qcow2"
    r = env.pull("wn", "-o", out, "--quiet")
    assert r.code == 0, r.err
    assert r.out == "" and r.err == ""
    assert out.read_bytes() == img.read_bytes()


def test_no_progress_bar_when_not_a_tty(env: Env, make_image: Callable[..., Path]) -> None:
    img = make_image(2_500_000)
    sha = env.publish(img)
    p = run_imagectl(*env.pull_args("wn", "-o", env.tmp / "piped.qcow2"), env=env.subprocess_env(), cwd=env.tmp)
    assert p.code == 0, p.err
    assert "\r" not in p.err and "\r" not in p.out
    assert p.err == ""
    assert p.out.startswith("pulled wn:1.0 (x86_64)") and sha in p.out
    assert (env.tmp / "piped.qcow2").read_bytes() == img.read_bytes()


def test_progress_bar_on_a_tty(env: Env, make_image: Callable[..., Path]) -> None:
    """The control for the test above: the same pull with stderr on a terminal does draw the bar."""
    img = make_image(2_500_000)
    env.publish(img)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagectl", *env.pull_args("wn", "-o", env.tmp / "tty.qcow2")],
            cwd=env.tmp,
            env=env.subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                block = os.read(master, 4096)
            except OSError as e:  # EIO: every writer of the terminal has closed it
                if e.errno != errno.EIO:
                    raise
                break
            if not block:
                break
            seen += block
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0, seen
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"\r" in seen and b"100.0%" in seen
    assert "\r" not in stdout and stdout.startswith("pulled wn:1.0")


def test_console_script_unknown_image(env: Env, make_image: Callable[..., Path]) -> None:
    env.publish(make_image(100_000, seed="a"), "alpha")
    env.publish(make_image(100_000, seed="b"), "beta")
    p = run_imagectl(*env.pull_args("nosuch"), env=env.subprocess_env(), cwd=env.tmp)
    assert p.code == 4, p.err
    assert p.err.startswith("imagectl: error:")
    assert "nosuch" in p.err.splitlines()[0]
    assert "alpha" in p.err and "beta" in p.err
    assert "Traceback" not in p.err
    assert p.out == ""
    assert list(env.tmp.glob("nosuch*")) == []


# -- 8. what does not exist, and what is not a name ----------------------------------------------------------------
NOT_FOUND = [  # ref, arch, what the message must list
    ("wn:9.9", "x86_64", ["versions:", "1.0", "1.1"]),
    ("wn:1.0", "aarch64", ["arches:", "x86_64"]),
    ("wn:1.1", "ppc64le", ["arches:", "aarch64", "x86_64"]),
    ("wn", "s390x", ["arches:", "aarch64", "x86_64"]),
    ("wn@nightly", "x86_64", ["channels:", "stable", "testing"]),
]


def test_unknown_version_arch_channel(env: Env, make_image: Callable[..., Path]) -> None:
    env.publish(make_image(100_000, seed="1"), "wn", "1.0", "x86_64", "--channel", "stable")
    env.publish(make_image(100_000, seed="2"), "wn", "1.1", "x86_64", "--channel", "testing")
    env.publish(make_image(100_000, seed="3"), "wn", "1.1", "aarch64")
    out = env.tmp / "out.qcow2"
    for ref, arch, listed in NOT_FOUND:
        env.srv.clear()
        r = env.pull(ref, "-o", out, arch=arch)
        assert r.code == 4, (ref, arch, r.err)
        assert r.err.startswith("imagectl: error:") and "Traceback" not in r.err
        first = r.err.splitlines()[0]
        for word in listed:
            assert word in first, f"{ref} --arch {arch}: {word!r} missing from {first!r}"
        assert not out.exists()
        assert not any(("/blobs/" in path or "/targets/" in path) for _m, path, _r in env.srv.served.requests)


HOSTILE = [
    "wn\x1b[31m",
    "w\nn",
    "wn\x00",
    "../wn",
    "wn/../../etc",
    "wn:../1.0",
    "wn:1.0/../../x",
    "wn:1.0\x07",
    "wn@../stable",
    "wn@st\x7fable",
]


@pytest.mark.parametrize("ref", HOSTILE)
def test_hostile_names_are_invalid_input(env: Env, ref: str) -> None:
    env.srv.clear()
    r = env.pull(ref, "-o", env.tmp / "out.qcow2")
    assert r.code == 3, r.err
    line = one_error_line(r.err)
    assert not any(c in line for c in "\x1b\x00\x07\x7f"), "control characters must be escaped in the message"
    assert env.srv.served.requests == []  # refused before any network access
    assert not (env.tmp / "out.qcow2").exists()


# -- 9. memory bound ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pull_64mib_peak_rss_is_bounded(env: Env, make_image: Callable[..., Path]) -> None:
    size = 64 * MiB
    img = make_image(size)
    sha = env.publish(img)
    out = env.tmp / "big.qcow2"
    measure = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run(sys.argv[1:]).returncode\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env.srv.clear()
    p = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "imagectl", *env.pull_args("wn", "-o", out, "--quiet")],
        cwd=env.tmp,
        env=env.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rc, maxrss_kib = map(int, p.stdout.split())
    assert rc == 0, p.stderr
    assert env.image_bytes(sha) == size  # it really streamed 64 MiB over HTTP
    assert file_sha256(out) == sha
    assert 10 * 1024 < maxrss_kib < 150 * 1024, f"peak RSS of the pull was {maxrss_kib / 1024:.1f} MiB"


def test_the_image_is_written_once_and_a_changed_destination_never_poisons_the_cache(
    env: Env, make_image: Callable[..., Path]
) -> None:
    """The first destination is a hard link of the verified cache entry (one write of the bytes); a second one is a
    copy (two VMs' disks must never be one file). A deployer who writes into the first destination (boots a qcow2)
    changes the cache entry too: the next pull re-hashes it, drops it, downloads again and leaves the changed
    destination alone."""
    img = make_image(1_000_000)
    sha = env.publish(img)
    first, second = env.tmp / "first.qcow2", env.tmp / "second.qcow2"
    assert env.pull("wn", "-o", first).code == 0
    assert first.stat().st_ino == (env.blobs / sha).stat().st_ino and first.stat().st_nlink == 2

    env.srv.clear()
    r = env.pull("wn", "-o", second, "--json")  # from the cache: hashed, then copied; no byte over HTTP
    assert r.code == 0 and json.loads(r.out)["cached"] is True, r.err
    assert env.image_requests(sha) == []
    assert second.stat().st_ino != first.stat().st_ino and second.stat().st_nlink == 1

    with open(first, "r+b") as f:  # a booted image writes into its file
        f.seek(4096)
        f.write(b"guest data")
    assert second.read_bytes() == img.read_bytes()
    env.srv.clear()
    third = env.tmp / "third.qcow2"
    r = env.pull("wn", "-o", third, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is False
    assert "cached blob" in r.err and "does not match the signed hash" in r.err
    assert env.image_bytes(sha) == 1_000_000
    assert third.read_bytes() == img.read_bytes() and file_sha256(env.blobs / sha) == sha
    assert third.stat().st_ino == (env.blobs / sha).stat().st_ino  # the fresh entry's first destination: a link
    assert b"guest data" in first.read_bytes()  # the deployer's file is theirs: untouched by the repair
