"""store/digest.py: the whole-file and per-part SHA-256 a publisher takes before uploading, on two threads.

The digests must be the reference ones whatever the block sizes (a block may end inside a part, on its boundary,
or span several parts), must cover the bytes a block held when ``update`` was called even if the caller reuses its
buffer afterwards, and the whole digest must really be taken off the calling thread when parts are hashed too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagectl.store import digest as digest_mod
from imagectl.store.digest import SPLIT_MIN, DigestAhead, Hasher, file_digest, remember

PART = SPLIT_MIN  # parts as short as blocks that are split, so one example crosses many boundaries


def reference(data: bytes, part_size: int) -> tuple[str, tuple[str, ...]]:
    parts = tuple(hashlib.sha256(data[i : i + part_size]).hexdigest() for i in range(0, len(data), part_size))
    return hashlib.sha256(data).hexdigest(), parts or (hashlib.sha256(b"").hexdigest(),)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 5 * PART + 3),
    cuts=st.lists(st.integers(1, 3 * PART), min_size=1, max_size=8),
    threaded=st.booleans(),
)
def test_both_digests_equal_the_reference_for_any_blocks(size: int, cuts: list[int], threaded: bool) -> None:
    data = bytes((i * 131 + (i >> 9)) & 0xFF for i in range(size))
    h = Hasher(PART)
    with h if threaded else Hasher(0):
        pos, i = 0, 0
        while pos < size:
            block = data[pos : pos + cuts[i % len(cuts)]]
            h.update(block)
            pos, i = pos + len(block), i + 1
    got = h.result()
    whole, parts = reference(data, PART)
    assert (got.sha256, got.parts, got.size) == (whole, parts, size)


def recording_sha256(monkeypatch, *, slow_whole: float = 0.0) -> dict[str, set[int]]:
    """Replace hashlib.sha256 in store/digest.py by one that records which threads update the whole digest (the
    first one a Hasher makes) and the part digests; the whole digest waits ``slow_whole`` s before each update."""
    threads: dict[str, set[int]] = {"whole": set(), "part": set()}
    real = hashlib.sha256
    made: list[object] = []

    class Recording:
        def __init__(self, data: bytes = b"") -> None:
            self._h = real(data)
            made.append(self)

        def update(self, block: bytes) -> None:
            whole = self is made[0]
            threads["whole" if whole else "part"].add(threading.get_ident())
            if whole:
                time.sleep(slow_whole)
            self._h.update(block)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(digest_mod.hashlib, "sha256", Recording)
    return threads


def test_a_reused_buffer_is_hashed_as_it_was_when_handed_over(monkeypatch) -> None:
    recording_sha256(monkeypatch, slow_whole=0.05)  # the helper thread reads the block late
    buf = bytearray(b"a" * (2 * SPLIT_MIN))
    with Hasher(PART) as h:
        h.update(buf)
        buf[:] = b"b" * len(buf)  # update() has returned: both digests must have read the a's already
        h.update(buf)
    got = h.result()
    monkeypatch.undo()
    whole, parts = reference(b"a" * (2 * SPLIT_MIN) + b"b" * (2 * SPLIT_MIN), PART)
    assert (got.sha256, got.parts) == (whole, parts)


def test_the_whole_digest_is_taken_on_another_thread_and_the_thread_ends(monkeypatch, tmp_path) -> None:
    threads = recording_sha256(monkeypatch)
    image = tmp_path / "image"
    image.write_bytes(b"x" * (3 * digest_mod.CHUNK))  # whole blocks only: each one split
    before = threading.active_count()
    got = file_digest(str(image), part_size=digest_mod.CHUNK)
    assert threading.active_count() == before  # the helper is shut down with the Hasher
    me = threading.get_ident()
    assert threads["part"] == {me}
    assert threads["whole"] and me not in threads["whole"]
    monkeypatch.undo()
    assert got.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()


def _no_hashing(monkeypatch) -> None:
    class NoHashing:
        def __init__(self, *args: object) -> None:
            raise AssertionError("the file was hashed")

    monkeypatch.setattr(digest_mod, "Hasher", NoHashing)


def test_a_remembered_digest_is_filed_for_its_parts_and_for_the_whole_file(monkeypatch, tmp_path) -> None:
    image, memo = tmp_path / "image", tmp_path / "cache" / "file-digests"
    image.write_bytes(b"y" * (2 * PART + 7))
    digest = file_digest(image, part_size=PART)
    assert remember(image, digest, memo) is True
    assert oct(memo.stat().st_mode & 0o777) == oct(0o700) and oct(memo.parent.stat().st_mode & 0o777) == oct(0o700)
    _no_hashing(monkeypatch)
    assert file_digest(image, part_size=PART, memo_dir=memo) == digest
    whole = file_digest(image, memo_dir=memo)
    assert (whole.sha256, whole.size, whole.parts) == (digest.sha256, digest.size, ())


def test_nothing_is_filed_for_a_file_changed_since_it_was_hashed(tmp_path) -> None:
    image, memo = tmp_path / "image", tmp_path / "memo"
    image.write_bytes(b"old bytes")
    before = os.stat(image)
    digest = file_digest(image)
    image.write_bytes(b"new bytes")  # same size, written after the hash
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert remember(image, digest, memo, hashed=before) is False
    assert not memo.exists() or not list(memo.iterdir())
    assert file_digest(image, memo_dir=memo).sha256 == hashlib.sha256(b"new bytes").hexdigest()


def test_a_memo_entry_that_is_a_symlink_is_neither_read_nor_written_through(monkeypatch, tmp_path) -> None:
    image, memo, elsewhere = tmp_path / "image", tmp_path / "memo", tmp_path / "elsewhere"
    image.write_bytes(b"z" * 100)
    memo.mkdir(mode=0o700)
    lie = f"{'0' * 64} 100\n"
    elsewhere.write_text(lie)
    entry = memo / digest_mod._memo_key(image, os.stat(image), 0)
    entry.symlink_to(elsewhere)
    got = file_digest(image, memo_dir=memo)  # the planted answer is not taken: the file is hashed
    assert got.sha256 == hashlib.sha256(b"z" * 100).hexdigest()
    assert elsewhere.read_text() == lie  # and the entry was replaced, not written through
    assert not entry.is_symlink() and entry.read_text().split()[0] == got.sha256


def test_a_damaged_or_outsized_memo_entry_is_ignored(tmp_path) -> None:
    image, memo = tmp_path / "image", tmp_path / "memo"
    image.write_bytes(b"w" * 100)
    memo.mkdir(mode=0o700)
    entry = memo / digest_mod._memo_key(image, os.stat(image), 0)
    real = hashlib.sha256(b"w" * 100).hexdigest()
    for body in (b"\xff\xfe", f"{'1' * 64} 99\n".encode(), f"{'2' * 64} 100 ".encode() + b"x" * digest_mod.MEMO_MAX):
        entry.write_bytes(body)
        assert file_digest(image, memo_dir=memo).sha256 == real
        entry.unlink()


# -- DigestAhead: publish hashes while it opens the catalogue and loads its state --------------------------------
def test_digest_ahead_gives_the_digest_or_the_error_in_the_callers_thread(tmp_path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"z" * (3 * PART + 1))
    ahead = DigestAhead(image, part_size=PART)
    assert ahead.result() == file_digest(image, part_size=PART)
    with pytest.raises(FileNotFoundError):
        DigestAhead(tmp_path / "absent").result()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: an open that waited for one would never return
    t0 = time.monotonic()
    with pytest.raises(OSError, match="not a regular file") as e:
        DigestAhead(fifo).result()
    assert e.value.errno == errno.EINVAL and time.monotonic() - t0 < 5


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_cli_publish_hashes_the_image_once_before_it_opens_the_catalogue(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path, cli
) -> None:
    import uuid

    import imagectl.store as store_pkg

    if kind == "s3":
        server = request.getfixturevalue("aws_env")
        location = f"s3://{server.shared_bucket()}/{uuid.uuid4().hex}/cat"
    else:
        location = str(tmp_path / "cat")
    keys = tmp_path / "keys"
    assert cli("catalogue", "init", location, "--keys", keys).code == 0
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(3 * PART))
    monkeypatch.setenv("IMAGECTL_CACHE_DIR", str(tmp_path / "cache"))

    steps: list[str] = []
    hashed: list[tuple[str, int]] = []
    real_digest, real_open = digest_mod.file_digest, store_pkg.open_store

    class Recorded(DigestAhead):
        def __init__(self, *args: Any, **kw: Any) -> None:
            steps.append("hashing started")
            super().__init__(*args, **kw)

    def counted(path: Any, **kw: Any) -> Any:
        hashed.append((threading.current_thread().name, kw.get("part_size", 0)))
        return real_digest(path, **kw)

    def opened(*args: Any, **kw: Any) -> Any:
        steps.append("catalogue opened")
        return real_open(*args, **kw)

    monkeypatch.setattr(digest_mod, "DigestAhead", Recorded)
    monkeypatch.setattr(digest_mod, "file_digest", counted)
    monkeypatch.setattr(store_pkg, "open_store", opened)
    r = cli("publish", image, "--catalogue", location, "--keys", keys, "--name", "n", "--arch", "x86_64", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert steps == ["hashing started", "catalogue opened"]
    assert hashed == [("digest-ahead", digest_mod.UPLOAD_PART_SIZE if kind == "s3" else 0)]  # once, ahead
