"""Mutants of imagectl/pull.py and imagectl/store/{http,local}.py that a time-budgeted mutation run let survive and
that no existing test kills (issue 13; tests/MUTANTS.md; the triage is in the mutation audit's pull_store.result.md).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagectl import pull as pull_mod
from imagectl.errors import DownloadError, LocalIOError
from imagectl.http import make_session
from imagectl.progress import Progress
from imagectl.store import Store
from imagectl.store.http import HTTPStore
from imagectl.store.local import LocalStore
from tests.conftest import CliResult, unavailable
from tests.httpserver import Fault, TestHTTPServer
from tests.test_hostile_pull import error_line, pull
from tests.test_mutants_pull import SIZE, Served, blobs, served  # noqa: F401  (served: a fixture)


# -- imagectl/pull.py -------------------------------------------------------------------------------------------------
@pytest.mark.http
@pytest.mark.root
def test_a_replaced_file_keeps_its_owner_when_root_pulls(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """Mutant: ``owner = None`` (root pulling over another user's file handed it to root)."""
    if os.geteuid() != 0:
        unavailable("needs root")
    cat, srv, sha = served
    dest = tmp_path / "x.qcow2"
    dest.write_bytes(b"old")
    os.chown(dest, 1234, 5678)
    r = pull(cli, cat, srv.url, "-o", dest)
    assert r.code == 0, r.err
    st = dest.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha


@pytest.mark.http
def test_the_download_threads_are_named_daemons_and_end_with_the_pull(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutants of _Sink's threads: no name (a stack dump no longer says which thread hashes and which writes) and
    ``daemon=False`` (an interrupted pull whose worker never got its end marker would hang the interpreter's exit)."""
    cat, srv, _ = served
    seen: set[tuple[str, bool]] = set()
    real = pull_mod.Progress.update

    def update(self: Progress, n: int) -> None:
        seen.update((t.name, t.daemon) for t in threading.enumerate() if t.name.startswith("pull-"))
        real(self, n)

    monkeypatch.setattr(pull_mod.Progress, "update", update)
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 0, r.err
    assert seen == {("pull-sha256", True), ("pull-write", True)}
    assert not [t for t in threading.enumerate() if t.name.startswith("pull-")]


def _resolved(length: int, sha: str) -> Any:
    return SimpleNamespace(
        target=SimpleNamespace(length=length, hashes={"sha256": sha}), record=SimpleNamespace(path="wn/1/x.qcow2")
    )


def test_a_part_file_that_cannot_be_read_is_a_local_error(tmp_path: Path) -> None:
    """Mutant: ``sink = ""`` before the first read of the .part (the cleanup then hid the LocalIOError behind an
    AttributeError)."""
    with open(tmp_path / "x.part", "wb") as f, pytest.raises(LocalIOError) as e:
        pull_mod._download(None, _resolved(10, "0" * 64), f, 0, Progress("wn:1", 10, enabled=False))  # type: ignore[arg-type]
    assert str(e.value) == "cannot use the download cache: read"
    assert e.value.exit_code == 14


def test_a_part_longer_than_the_blob_is_emptied_before_the_download(tmp_path: Path) -> None:
    """Mutant: ``f.truncate(1)``: a failed download then left one stale byte that the next pull resumed after."""

    class Unreachable:
        def open_range(self, key: str, offset: int = 0) -> Any:
            raise DownloadError("cannot reach the server")

        open_first = Store.open_first  # the real one: it opens the target file with open_range

    part = tmp_path / "x.part"
    part.write_bytes(b"\xff" * 20)
    with open(part, "rb+") as f, pytest.raises(DownloadError):
        pull_mod._download(Unreachable(), _resolved(10, "0" * 64), f, 0, Progress("wn:1", 10, enabled=False))  # type: ignore[arg-type]
    assert part.read_bytes() == b""


def test_reflink_asks_for_a_clone_of_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants of the FICLONE ioctl's arguments (without them no file system ever shares the blocks: every
    destination became a full copy)."""
    calls: list[tuple[Any, ...]] = []

    def ioctl(*args: Any) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(pull_mod.fcntl, "ioctl", ioctl)
    with open(tmp_path / "src", "wb+") as src, open(tmp_path / "dst", "wb") as dst:
        assert pull_mod._reflink(src, dst) is True
        assert calls == [(dst.fileno(), pull_mod._FICLONE, src.fileno())]


@pytest.mark.http
def test_a_failed_link_never_writes_through_a_symlink_at_the_temp_name(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: ``O_EXCL & O_NOFOLLOW`` (both lost) in the open of the copy after a refused hard link: a symlink
    planted at the temp name was followed and the file it names overwritten."""
    cat, srv, _ = served
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    real = os.link

    def link(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if k.get("src_dir_fd") is None:
            return real(src, dst, *a, **k)
        os.symlink(victim, dst)  # someone plants a symlink at the temp name the instant it is free
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(pull_mod.os, "link", link)
    dest = tmp_path / "x.qcow2"
    r = pull(cli, cat, srv.url, "-o", dest)
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: cannot write {dest}: File exists"
    assert victim.read_bytes() == b"precious"
    assert not dest.exists()


@pytest.mark.http
def test_a_copy_cut_short_is_still_fsynced(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: ``return`` for ``break`` when sendfile reports the end of the source: the destination's flush and
    fsync were skipped."""
    cat, srv, _ = served
    synced: list[int] = []  # the files fsynced once the copy has started
    copying = False
    real_fsync = os.fsync

    def sendfile(*_a: Any) -> int:
        nonlocal copying
        copying = True
        return 0  # the source ended early (it shrank after its size was taken)

    def fsync(fd: int) -> None:
        if copying:
            synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(pull_mod.os, "sendfile", sendfile)
    monkeypatch.setattr(pull_mod, "_reflink", lambda _s, _d: False)
    monkeypatch.setattr(pull_mod.os, "fsync", fsync)
    dest = tmp_path / "x.qcow2"
    dest.write_bytes(b"")
    os.chmod(dest, 0o664)  # group-writable: a copy, never a link
    r = pull(cli, cat, srv.url, "-o", dest)
    assert r.code == 0, r.err
    assert dest.stat().st_ino in synced


# -- imagectl/store/http.py -------------------------------------------------------------------------------------------
@pytest.fixture
def http_store(tmp_path: Path) -> Iterator[tuple[HTTPStore, TestHTTPServer, Path]]:
    root = tmp_path / "srv"
    root.mkdir()
    with TestHTTPServer(root, prefix="cat") as srv:
        yield HTTPStore(srv.url, make_session(retries=0), timeout=10), srv, root


@pytest.mark.http
def test_five_redirects_are_followed_and_a_sixth_is_refused(
    http_store: tuple[HTTPStore, TestHTTPServer, Path],
) -> None:
    """Mutant: ``range(MAX_REDIRECTS + 2)`` (six redirects followed)."""
    store, srv, root = http_store
    (root / "obj.json").write_bytes(b"{}")
    srv.add_fault(Fault(suffix="obj.json", redirect="obj.json", times=5))
    assert store.read("obj.json", 100) == b"{}"
    srv.add_fault(Fault(suffix="obj.json", redirect="obj.json", times=6))
    with pytest.raises(DownloadError) as e:
        store.read("obj.json", 100)
    assert str(e.value) == f"{srv.url}obj.json: more than 5 redirects"


@pytest.mark.http
def test_a_gzip_encoded_body_is_decoded(tmp_path: Path) -> None:
    """Mutant: the Content-Encoding header looked up under another name (a gzip-encoded metadata file was handed
    on compressed)."""
    body = b'{"signed": {}}' * 100

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = gzip.compress(body)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_a: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        store = HTTPStore(f"http://127.0.0.1:{httpd.server_address[1]}/", make_session(retries=0), timeout=10)
        assert store.read("timestamp.json", 1 << 20) == body
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- imagectl/store/local.py ------------------------------------------------------------------------------------------
def test_list_entries_hides_dot_files_at_every_depth_and_lists_top_level_files(tmp_path: Path) -> None:
    """Mutants of the entry's name (``split`` for ``rsplit``, another separator, ``[+1]``): a temp file two levels
    down was listed as an object, and a file at the root crashed the listing."""
    store = LocalStore(tmp_path / "cat")
    store.write("top.json", b"1")
    store.write("blobs/sha256/abc", b"2")
    store.write("blobs/sha256/.abc.x1.tmp", b"3")
    store.write("blobs/.lock", b"4")
    assert sorted(e.key for e in store.list_entries("")) == ["blobs/sha256/abc", "top.json"]
    assert sorted(e.key for e in store.list_entries("", hidden=True)) == [
        "blobs/.lock",
        "blobs/sha256/.abc.x1.tmp",
        "blobs/sha256/abc",
        "top.json",
    ]


def test_place_target_copies_a_one_byte_blob_where_hard_links_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant: ``left > 1`` in the copy loop (the last byte was never copied, and the blob said to have shrunk)."""
    store = LocalStore(tmp_path / "cat")
    store.write("blobs/sha256/one", b"x")

    def no_links(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_links)
    assert store.place_target("blobs/sha256/one", "targets/one.qcow2", 1) is True
    assert (store.root / "targets/one.qcow2").read_bytes() == b"x"
