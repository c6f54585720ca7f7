"""Mutants of imagectl/pull.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md).

The wrong-offset mutant of item 2 (a 206 answer from another offset appended as if it were the rest) is killed by
tests/test_hostile_pull.py::test_content_range_from_the_wrong_offset_is_not_appended (exit 13, "the server sent
from 5"); it is not repeated here.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl import pull as pull_mod
from imagectl.catalogue.model import blob_key, target_file_key, target_path
from tests.conftest import Catalogue, CliResult
from tests.httpserver import Fault, TestHTTPServer
from tests.test_hostile_pull import ARCH, error_line, pull

Served = tuple[Catalogue, TestHTTPServer, str]
REPO = Path(__file__).resolve().parents[1]  # the checkout under test (mutmut's copy, in a mutation run)
SIZE = 300_000  # bytes of the served image
IMAGE = target_path("wn", "1", ARCH, "qcow2")  # the served image's target path


@pytest.fixture
def served(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> Served:
    """A catalogue with one image ``wn:1`` of SIZE bytes served over HTTP; returns (catalogue, server, blob sha256)."""
    cat, srv = http_catalogue
    r = cli("publish", make_image(SIZE), *cat.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--json")
    assert r.code == 0, r.err
    return cat, srv, json.loads(r.out)["sha256"]


def blobs(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "blobs" / "sha256"


def image_file(sha: str) -> str:
    """The key pull reads the served image at: its target file (its blob is only the fallback for a catalogue
    written before target files)."""
    return target_file_key(IMAGE, sha)


def image_requests(srv: TestHTTPServer, sha: str) -> list[tuple[str, str | None]]:
    """(key, Range header) of every request for the image's bytes, its target file or its blob, in order."""
    keys = (image_file(sha), blob_key(sha))
    return [(k, rng) for _m, p, rng in srv.served.requests for k in keys if p.endswith("/" + k)]


# -- the destination ------------------------------------------------------------------------------------------------
@pytest.mark.http
def test_a_destination_name_too_long_to_check_is_a_local_error(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, _ = served
    dest = tmp_path / ("x" * 300)
    r = pull(cli, cat, srv.url, "-o", dest)
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: cannot check {dest}: File name too long"


@pytest.mark.http
def test_a_destination_symlink_loop_is_a_local_error(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, _ = served
    dest = tmp_path / "loop"
    dest.symlink_to("loop")
    r = pull(cli, cat, srv.url, "-o", dest)
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: cannot check {dest}: Too many levels of symbolic links"
    assert os.readlink(dest) == "loop"


@pytest.mark.http
def test_a_dangling_destination_symlink_is_replaced_by_the_image(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, sha = served
    dest = tmp_path / "img"
    dest.symlink_to(tmp_path / "nowhere")
    r = pull(cli, cat, srv.url, "-o", dest, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["path"] == str(dest)
    assert not dest.is_symlink() and hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert not (tmp_path / "nowhere").exists()


# -- resuming from the cache's .part ----------------------------------------------------------------------------------
@pytest.mark.http
def test_a_complete_part_is_verified_and_used_without_a_download(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant: ``have >= want_len`` in the check for a .part longer than the blob: a complete .part was thrown
    away and downloaded again."""
    cat, srv, sha = served
    data = (cat.dir / image_file(sha)).read_bytes()
    blobs(tmp_path).mkdir(parents=True)
    (blobs(tmp_path) / f"{sha}.part").write_bytes(data)
    srv.clear()
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2", "--json")
    assert r.code == 0, r.err
    assert srv.served.bytes_for(image_file(sha)) == srv.served.bytes_for(blob_key(sha)) == 0
    assert image_requests(srv, sha) == []
    assert (tmp_path / "x.qcow2").read_bytes() == data


@pytest.mark.http
def test_a_blob_shorter_than_signed_is_refused_at_once(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutants of the message for an image file whose length the server states: 'fewer', and what it means."""
    cat, srv, sha = served
    srv.add_fault(Fault(suffix=image_file(sha), body=b"\0" * (SIZE - 1)))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 11, r.err
    assert error_line(r) == (
        f"imagectl: error: wn/1/{ARCH}/wn-1-{ARCH}.qcow2: the catalogue's image file has {SIZE - 1} bytes, fewer "
        f"than the signed {SIZE} bytes (tampered or damaged image file; nothing written)"
    )
    assert image_requests(srv, sha) == [(image_file(sha), None)]  # no retry, and no fallback to the blob


@pytest.mark.http
def test_a_blob_cut_short_without_retries_says_how_far_it_got(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, sha = served
    data = (cat.dir / image_file(sha)).read_bytes()
    # A clean end of a body shorter than the object the 206 answer says it is part of.
    srv.add_fault(Fault(suffix=image_file(sha), body=data[:100_000], content_range=f"bytes 0-{SIZE - 1}/{SIZE}"))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 13, r.err
    assert error_line(r) == f"imagectl: error: wn/1/{ARCH}/wn-1-{ARCH}.qcow2: blob ended after 100000 of {SIZE} bytes"


@pytest.mark.http
def test_a_blob_with_other_bytes_names_both_hashes(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, sha = served
    other = b"\1" * SIZE
    srv.add_fault(Fault(suffix=image_file(sha), body=other))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 11, r.err
    got = hashlib.sha256(other).hexdigest()
    assert error_line(r) == (
        f"imagectl: error: wn/1/{ARCH}/wn-1-{ARCH}.qcow2: downloaded bytes have sha256 {got[:16]}…, signed metadata "
        f"says {sha[:16]}… (tampered or corrupted blob; nothing written)"
    )


@pytest.mark.http
def test_retries_back_off_doubling_up_to_five_seconds(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants of the back-off: 0.4, 0.8, 1.6, 3.2 s, then 5 s at most (the clock is not really waited on here)."""
    cat, srv, sha = served
    slept: list[float] = []
    monkeypatch.setattr(pull_mod.time, "sleep", slept.append)
    srv.add_fault(Fault(suffix=image_file(sha), drop_after=10_000, times=6))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2", "--retries", "6")
    assert r.code == 0, r.err
    assert slept == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


@pytest.mark.http
def test_a_cache_that_cannot_be_written_is_a_local_error(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .part file refusing bytes (ENOSPC) ends the pull as a local error naming the cache."""
    cat, srv, _ = served
    real_open_in = pull_mod._open_in

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def open_in(d: int, name: str, flags: int) -> Any:
        f = real_open_in(d, name, flags)
        return Full(f) if name.endswith(".part") else f

    monkeypatch.setattr(pull_mod, "_open_in", open_in)
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 14, r.err
    assert error_line(r) == "imagectl: error: cannot use the download cache: disk full"


# -- the cache entries ----------------------------------------------------------------------------------------------
@pytest.mark.http
def test_cache_entries_are_private_files(served: Served, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """Mutants of the mode a cache entry is created with (0600, whatever the umask)."""
    cat, srv, sha = served
    old = os.umask(0o022)
    try:
        r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in blobs(tmp_path).iterdir()}
    # the entry is the destination's inode (a hard link, in a 0700 cache): the destination's 0644 applies to both
    assert modes == {sha: 0o644, f".{sha}.lock": 0o600}
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert (tmp_path / "x.qcow2").stat().st_ino == (blobs(tmp_path) / sha).stat().st_ino


@pytest.mark.http
def test_a_cache_others_can_enter_keeps_its_entries_private(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """A cache directory of mode 0755 (allowed: only write access for others is refused): a 0644 destination would
    make the entry readable through it, so the destination is a copy and the entry stays 0600."""
    cat, srv, sha = served
    os.chmod(tmp_path / "cache", 0o755)
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 0, r.err
    assert stat.S_IMODE((blobs(tmp_path) / sha).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "x.qcow2").stat().st_mode) == 0o644
    assert (tmp_path / "x.qcow2").stat().st_ino != (blobs(tmp_path) / sha).stat().st_ino
    assert (tmp_path / "x.qcow2").read_bytes() == (blobs(tmp_path) / sha).read_bytes()


@pytest.mark.http
def test_a_directory_at_the_part_name_is_a_local_error(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, sha = served
    (blobs(tmp_path) / f"{sha}.part").mkdir(parents=True)
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: cannot open cache entry {sha}.part: Is a directory"


@pytest.mark.http
def test_a_fifo_planted_as_a_cache_entry_is_refused_without_blocking(served: Served, tmp_path: Path) -> None:
    """Mutants of the open flags (O_NONBLOCK: a FIFO with no writer would hang the pull) and of the refusal."""
    cat, srv, sha = served
    blobs(tmp_path).mkdir(parents=True)
    os.mkfifo(blobs(tmp_path) / sha)
    argv = ["pull", "wn", "--catalogue", srv.url, "--root", str(cat.root), "--arch", ARCH, "-o", str(tmp_path / "x")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # a child process: a blocking open would hang only the child
    try:
        p = subprocess.run([sys.executable, "-m", "imagectl", *argv], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("pull blocked on a FIFO planted in the cache")
    r = CliResult(p.returncode, p.stdout, p.stderr)
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: refusing the cache entry {sha}: it is a FIFO"


@pytest.mark.http
def test_the_copy_to_the_destination_takes_as_many_sendfile_calls_as_it_needs(
    served: Served, cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant: ``done = sent`` (the offset of the next sendfile): a kernel copies at most ~2 GiB per call; here
    at most 64 KiB, so the 300,000 bytes take five calls."""
    cat, srv, sha = served
    calls: list[tuple[int, int]] = []
    real = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append((offset or 0, count))
        assert len(calls) < 50, calls
        return real(out_fd, in_fd, offset, min(count, 1 << 16))

    monkeypatch.setattr(pull_mod.os, "sendfile", sendfile)
    os.chmod(tmp_path / "cache", 0o755)  # a cache others may enter: the destination is a copy, not a link
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 0, r.err
    assert hashlib.sha256((tmp_path / "x.qcow2").read_bytes()).hexdigest() == sha
    assert [offset for offset, _ in calls] == [0, 65536, 131072, 196608, 262144]
