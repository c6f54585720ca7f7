"""Mutants of imagectl/pull.py and imagectl/store/ (base, digest, http, local, open_store) that the rest of the
suite let survive (mutation audit, group 4; tests/MUTANTS.md)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import imagectl.store.base as base
from imagectl.errors import DownloadError, InvalidInputError, LocalIOError
from imagectl.store import open_store
from imagectl.store.base import Pace, paced
from imagectl.store.digest import FileDigest, Hasher, _read_memo, file_digest
from imagectl.store.http import HTTPStore
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult

ARCH = "x86_64"
EIO = "Input/output error"


# -- pull: the deprecation warning ----------------------------------------------------------------------------


def test_pull_deprecated_without_reason_says_so(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    r = cli("publish", make_image(seed="dep"), *catalogue.args(), "--arch", ARCH, "--name", "wn", "--version", "1")
    assert r.code == 0, r.err
    r = cli("deprecate", "wn:1", *catalogue.args())  # no --reason
    assert r.code == 0, r.err
    r = cli(
        "pull", "wn:1", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "--json",
        "-o", tmp_path / "out.img",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == "1"
    assert re.search(r"imagectl: warning: wn:1 is deprecated since \S+: no reason given\n", r.err), r.err


# -- store.base.paced -----------------------------------------------------------------------------------------


def _clock(monkeypatch: pytest.MonkeyPatch, *times: float) -> None:
    """Make paced() see ``times`` from its monotonic clock, one per call."""
    it = iter(times)
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=lambda: next(it)))


def test_paced_counts_every_byte_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 bytes in the first second, at least 15 wanted: fast enough (only the last chunk alone would be too slow)
    _clock(monkeypatch, 100.0, 100.5, 101.0)
    chunks = [b"a" * 10, b"b" * 10]
    assert list(paced(iter(chunks), Pace(min_rate=15, window=1.0), "k")) == chunks


def test_paced_checks_only_after_a_whole_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # one byte after 1 s of a 30 s window: not judged yet
    _clock(monkeypatch, 1000.0, 1001.0)
    assert list(paced(iter([b"x"]), Pace(min_rate=100, window=30.0), "k")) == [b"x"]


def test_paced_too_slow_message_and_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    _clock(monkeypatch, 100.0, 102.0)
    with pytest.raises(DownloadError) as e:
        list(paced(iter([b"x"]), Pace(min_rate=100, window=1.0), "k"))
    assert str(e.value) == "k: too slow: 1 bytes in 2 s, under the minimum 100 bytes/s"
    assert e.value.hint == "a stalled or hostile server; check the network, or lower --min-rate"


# -- store.digest ---------------------------------------------------------------------------------------------


def test_hasher_parts() -> None:
    h = Hasher(4)
    h.update(b"0123456789")
    want = tuple(hashlib.sha256(p).hexdigest() for p in (b"0123", b"4567", b"89"))
    assert h.result() == FileDigest(hashlib.sha256(b"0123456789").hexdigest(), 10, 4, want)


def test_read_memo_with_parts(tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    memo.write_text(" ".join(["a" * 64, "10", "p1", "p2", "p3"]) + "\n")
    assert _read_memo(memo, 10, 4) == FileDigest("a" * 64, 10, 4, ("p1", "p2", "p3"))
    assert _read_memo(memo, 10, 5) is None  # 2 parts wanted


def test_read_memo_reads_at_most_one_mib(tmp_path: Path) -> None:
    # a well-formed memo, but larger than any memo _write_memo makes: only its first MiB is read, so it is rejected
    memo = tmp_path / "memo"
    memo.write_text(" ".join(["a" * 64, "20000", *(["b" * 64] * 20000)]) + "\n")
    assert memo.stat().st_size > 1 << 20
    assert _read_memo(memo, 20000, 1) is None


def test_file_digest_memo_cache_dir_is_private(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    old = os.umask(0o022)
    try:
        got = file_digest(str(f), memo_dir=tmp_path / "cache" / "digests")
    finally:
        os.umask(old)
    assert got == FileDigest(hashlib.sha256(b"data").hexdigest(), 4)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "cache" / "digests").stat().st_mode & 0o777 == 0o700


# -- store.http, open_store -----------------------------------------------------------------------------------


def test_http_store_url_keeps_a_trailing_x() -> None:
    store = open_store("http://h.example/catX")
    assert isinstance(store, HTTPStore)
    assert store.url == "http://h.example/catX/"


def test_open_store_http_retries() -> None:
    store = open_store("http://h.example/cat", retries=2)
    assert isinstance(store, HTTPStore)
    retry = store.session.get_adapter("http://h.example/cat/").max_retries
    assert (retry.total, retry.connect, retry.read, retry.status) == (2, 2, 2, 2)


def test_open_store_s3_query_refused(no_aws: None) -> None:
    with pytest.raises(InvalidInputError) as e:
        open_store("s3://bucket-1/cat?x=1")
    assert str(e.value) == "S3 location must be s3://BUCKET/PREFIX: s3://bucket-1/cat?x=1"


def test_open_store_s3_timeout(no_aws: None) -> None:
    store = open_store("s3://bucket-1/cat", timeout=7.0, retries=0)
    config = store.client.meta.config  # type: ignore[attr-defined]
    assert (config.connect_timeout, config.read_timeout) == (7.0, 7.0)


def test_open_store_path_with_space(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "a b"))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path.resolve() / "a b"


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/x%20y")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path.resolve() / "x y"


def test_open_store_one_letter_scheme_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("c:cat")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path.resolve() / "c:cat"


def test_open_store_unsupported_scheme_hint() -> None:
    with pytest.raises(InvalidInputError) as e:
        open_store("ftp://h.example/cat")
    assert str(e.value) == "unsupported catalogue location 'ftp://h.example/cat'"
    assert e.value.hint == "use a directory path, file:///path, http(s)://host/path or s3://bucket/prefix"


# -- store.local ----------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "cat")
    store.write("blobs/b", b"hello")
    return store


def test_local_read_error_names_the_path(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, *args: object, **kwargs: object) -> None:
        os.close(fd)
        raise OSError(errno.EIO, EIO)

    monkeypatch.setattr(os, "fdopen", broken)
    with pytest.raises(LocalIOError) as e:
        local.read("blobs/b", 100)
    assert str(e.value) == f"cannot read {local.root}/blobs/b: {EIO}"


def test_local_digest_error_names_the_path(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, EIO)

    monkeypatch.setattr(hashlib, "file_digest", broken)
    with pytest.raises(LocalIOError) as e:
        local._digest("blobs/b")
    assert str(e.value) == f"cannot read {local.root}/blobs/b: {EIO}"


def test_place_target_stat_error_names_the_path(local: LocalStore) -> None:
    key = "targets/" + "n" * 300  # longer than a file name may be: stat fails with ENAMETOOLONG
    with pytest.raises(LocalIOError) as e:
        local.place_target("blobs/b", key, 5)
    assert str(e.value) == f"cannot check {local.root}/{key}: {os.strerror(errno.ENAMETOOLONG)}"


def test_place_target_temp_name(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    utime = os.utime

    def spy(path: str, *args: object, **kwargs: object) -> None:
        seen.append(path)
        utime(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "utime", spy)
    assert local.place_target("blobs/b", "targets/t", 5) is True
    assert len(seen) == 1 and re.fullmatch(r"\.t\.[0-9a-f]{8}\.tmp", seen[0]), seen  # gc knows ``*.tmp``
    assert (local.root / "targets" / "t").read_bytes() == b"hello"


def test_place_target_goes_on_when_the_touch_is_refused(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Touching the linked inode is a courtesy to gc: where it is refused (a blob of another publisher, hard links
    allowed to files one cannot write: fs.protected_hardlinks=0), the target is still placed. The refusal is
    injected, since this host's sysctl is not the tests' to change (sample 3's place_target__mutmut_78)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "utime", refuse)
    assert local.place_target("blobs/b", "targets/t", 5) is True
    assert (local.root / "targets" / "t").read_bytes() == b"hello"
    assert [p.name for p in (local.root / "targets").iterdir()] == ["t"]  # no temp name left behind


def test_place_target_links_in_the_opened_directory(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target directory is swapped for a symlink after place_target opened it: the link is still made in the
    directory it opened, never through the symlink."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (local.root / "targets").mkdir()
    stat_at = local._stat_at

    def swap(d: int, name: str, key: str) -> os.stat_result | None:
        if name == "t":
            os.rename(local.root / "targets", local.root / "moved")
            os.symlink(outside, local.root / "targets")
        return stat_at(d, name, key)

    monkeypatch.setattr(local, "_stat_at", swap)
    assert local.place_target("blobs/b", "targets/t", 5) is True
    assert os.listdir(outside) == []
    assert (local.root / "moved" / "t").read_bytes() == b"hello"
