"""Store.hash_object: the one bounded "read this key from its start and hash it" that catalogue verify and S3's
release_blob share. It stops a chunk past the length it is given, refuses a stream that does not start at byte 0,
and says when a key is missing."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest

from imagectl.errors import DownloadError
from imagectl.store.base import CHUNK, ObjectMissingError, RangeStream
from imagectl.store.local import LocalStore


def test_exact_shorter_and_longer_objects(tmp_path) -> None:
    store = LocalStore(tmp_path)
    body = bytes(range(256)) * 40
    (tmp_path / "k").write_bytes(body)
    assert store.hash_object("k", len(body)) == (len(body), hashlib.sha256(body).hexdigest())
    assert store.hash_object("k", len(body) + 1) == (len(body), hashlib.sha256(body).hexdigest())  # shorter
    n, _ = store.hash_object("k", len(body) - 1)
    assert n > len(body) - 1  # longer than that: the caller sees it by the count


def test_a_huge_object_is_read_only_a_chunk_past_the_limit(tmp_path) -> None:
    store = LocalStore(tmp_path)
    with open(tmp_path / "big", "wb") as f:
        f.truncate(8 * CHUNK)
    n, _ = store.hash_object("big", 10)
    assert 10 < n <= CHUNK


def test_a_missing_key_and_a_stream_from_elsewhere_are_errors(tmp_path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ObjectMissingError):
        store.hash_object("absent", 10)
    (tmp_path / "k").write_bytes(b"abc")

    @contextlib.contextmanager
    def from_byte_one(key: str, offset: int = 0) -> Iterator[RangeStream]:
        yield RangeStream(offset=1, chunks=iter([b"bc"]), total=3)  # a server that ignored where we asked

    monkeypatch.setattr(store, "open_range", from_byte_one)
    with pytest.raises(DownloadError, match=r"^k: the store answered from byte 1, not from the start$"):
        store.hash_object("k", 3)


def test_a_large_object_hashed_beside_its_download_gives_the_same_digest(tmp_path, monkeypatch) -> None:
    """Past HASH_AHEAD_MIN the chunks are hashed on a second thread, one behind the download: same digest, in
    order, and the thread is gone afterwards; a limit reached midway still stops the read."""
    import threading

    from imagectl.store import base

    body = hashlib.sha256(b"seed").digest() * ((base.HASH_AHEAD_MIN + 3 * CHUNK + 5) // 32)
    (tmp_path / "large").write_bytes(body)
    store = LocalStore(tmp_path)
    seen: set[str] = set()
    real = base._one_thread

    @contextlib.contextmanager
    def recording(name: str) -> Iterator[object]:
        with real(name) as pool:
            seen.add(name)
            yield pool

    monkeypatch.setattr(base, "_one_thread", recording)
    before = threading.active_count()
    assert store.hash_object("large", len(body)) == (len(body), hashlib.sha256(body).hexdigest())
    assert seen == {"sha256"} and threading.active_count() == before
    n, _ = store.hash_object("large", CHUNK + 1)
    assert CHUNK + 1 < n <= 2 * CHUNK
