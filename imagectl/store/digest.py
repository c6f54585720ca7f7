"""What a publisher knows about the bytes of a local file before it uploads them: SHA-256, size, part digests.

A file being published may change while it is published (a build still writing it, a careless ``cp`` over it).
The signed metadata carries the digest taken here; every store then uploads exactly ``size`` bytes and makes the
far side confirm they are those bytes (S3: ``x-amz-checksum-sha256`` per part, checked by the server; a directory:
hashed while copied). Bytes that differ from the digest are never stored under its name.
"""

from __future__ import annotations

import base64
import concurrent.futures
import errno
import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from imagectl.errors import LocalIOError
from imagectl.fsio import AtomicFile

__all__ = [
    "MEMO_DIR",
    "UPLOAD_PART_SIZE",
    "DigestAhead",
    "FileChangedError",
    "FileDigest",
    "Hasher",
    "composite_checksum",
    "file_digest",
    "remember",
]

CHUNK = 4 << 20  # bytes per read: few hand-overs to the second hashing thread, little memory
MEMO_DIR = "file-digests"  # under imagectl's cache directory: the digests remembered by file identity
UPLOAD_PART_SIZE = 16 << 20  # the parts an S3 store uploads in (each with its SHA-256), and a build hashes in
SPLIT_MIN = 256 << 10  # a block at least this long is hashed on two threads (shorter ones cost more to hand over)


class FileChangedError(LocalIOError):
    """The file's bytes changed between hashing and uploading; nothing was stored under its digest."""


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 and size of a file, and (for stores that upload in parts) the SHA-256 of each ``part_size`` slice."""

    sha256: str  # hex
    size: int  # bytes
    part_size: int = 0  # 0: no part digests
    parts: tuple[str, ...] = ()  # hex SHA-256 of each slice [i*part_size, (i+1)*part_size), the last one shorter

    def part_b64(self, index: int) -> str:
        """Part ``index`` (0-based) as S3's ``ChecksumSHA256`` header wants it (base64 of the raw digest)."""
        return base64.b64encode(bytes.fromhex(self.parts[index])).decode()

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def composite_checksum(parts: tuple[str, ...]) -> str:
    """S3's checksum of a multi-part object: base64(SHA-256(digest1 || digest2 || ...)) + ``-N``."""
    h = hashlib.sha256(b"".join(bytes.fromhex(p) for p in parts))
    return f"{base64.b64encode(h.digest()).decode()}-{len(parts)}"


class Hasher:
    """SHA-256 of a stream, and of each ``part_size`` slice of it when ``part_size`` is set (one pass).

    Used as a context manager with ``part_size`` set, it hashes the whole stream on a second thread while the
    calling thread hashes the slices (hashlib releases the GIL over long buffers): the two digests of a block are
    taken at once, not one after the other (1 GiB here: 0.83 s against 1.43 s). Each :meth:`update` returns only
    when both are done, so the caller may reuse or change its buffer afterwards, and both digests always cover the
    same bytes. Without ``with`` (or without ``part_size``) everything runs on the calling thread.
    """

    def __init__(self, part_size: int = 0) -> None:
        self.part_size = part_size
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._in_part = 0
        self._parts: list[str] = []
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None
        self.size = 0

    def __enter__(self) -> Hasher:
        if self.part_size:
            self._helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sha256")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._helper is not None:
            self._helper.shutdown()
            self._helper = None

    def update(self, block: bytes | bytearray | memoryview) -> None:
        self.size += len(block)
        if not self.part_size:
            self._whole.update(block)
            return
        if self._helper is None or len(block) < SPLIT_MIN:
            self._whole.update(block)
            self._update_parts(memoryview(block))
            return
        whole = self._helper.submit(self._whole.update, block)
        try:
            self._update_parts(memoryview(block))
        finally:
            whole.result()  # the block is not handed back before the whole digest has read it

    def _update_parts(self, view: memoryview) -> None:
        while view:
            take = min(len(view), self.part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.part_size:
                self._parts.append(self._part.hexdigest())
                self._part, self._in_part = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        """The whole stream's SHA-256 so far (hex), as ``hashlib`` says it."""
        return self._whole.hexdigest()

    def result(self) -> FileDigest:
        parts = list(self._parts)
        if self.part_size and (self._in_part or not parts):
            parts.append(self._part.hexdigest())
        return FileDigest(self._whole.hexdigest(), self.size, self.part_size, tuple(parts))


def _memo_key(path: str | Path, st: os.stat_result, part_size: int) -> str:
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{Path(path).resolve()}:{part_size}"
    return hashlib.sha256(ident.encode()).hexdigest()


MEMO_MAX = 1 << 20  # bytes of one memo entry: a 64-hex digest per part, at most 10,000 parts


def _read_memo(memo: Path, size: int, part_size: int) -> FileDigest | None:
    """The digest remembered in ``memo`` for a file of ``size`` bytes, or None (absent, damaged, not ours): opened
    without following a symlink, a regular file only, read at most MEMO_MAX bytes."""
    try:
        fd = os.open(memo, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        words = os.read(fd, MEMO_MAX + 1).decode("ascii").split()
        digest, remembered, parts = words[0], int(words[1]), tuple(words[2:])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    want_parts = -(-size // part_size) if part_size else 0
    if len(digest) != 64 or remembered != size or len(parts) != max(want_parts, 1 if part_size else 0):
        return None
    return FileDigest(digest, size, part_size, parts)


def remember(path: str | Path, digest: FileDigest, memo_dir: Path, *, hashed: os.stat_result | None = None) -> bool:
    """File ``digest``, taken of ``path``'s bytes, in ``memo_dir`` under the file's identity now (see
    :func:`file_digest`): for its part size and, when it has parts, for the whole file alone (what a directory
    catalogue asks for). With ``hashed``, the file's ``stat`` from before it was hashed, nothing is filed if its
    device, inode, size or mtime changed since (its ctime may have: a hard link or rename the caller made).

    Why: ``imagectl build`` hashes every image it makes; filing that digest spares the publish that follows a
    second read of a multi-GiB file. A wrong entry cannot put wrong bytes under a signed name (every store checks
    the bytes it uploads against the digest); it can only make a publish of the file fail. Entries are written
    whole or not at all (temp file and rename: a symlink planted there is replaced, not written through) in a
    directory made private (0700). Returns whether the entry was filed; an unwritable memo is no error.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    if hashed is not None and (
        (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        != (hashed.st_dev, hashed.st_ino, hashed.st_size, hashed.st_mtime_ns)
    ):
        return False
    if st.st_size != digest.size:
        return False
    body = (" ".join([digest.sha256, str(digest.size), *digest.parts]) + "\n").encode()
    sizes = [digest.part_size] if not digest.part_size else [digest.part_size, 0]
    try:
        # the cache directory is private (0700) whoever makes it first: pull's hard links rely on it
        memo_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        memo_dir.mkdir(mode=0o700, exist_ok=True)
        for part_size in sizes:
            entry = body if part_size else (f"{digest.sha256} {digest.size}\n").encode()
            with AtomicFile(memo_dir / _memo_key(path, st, part_size), mode=0o600) as f:
                f.write(entry)
    except (OSError, LocalIOError):
        return False
    return True


def file_digest(path: str | Path, *, part_size: int = 0, memo_dir: Path | None = None) -> FileDigest:
    """SHA-256, size and part digests of a local file, read once in 4 MiB blocks (the two kinds of digest on two
    threads: :class:`Hasher`).

    With ``memo_dir``, a digest is remembered under the file's identity (device, inode, size, mtime and ctime in
    nanoseconds, the resolved path and the part size): re-publishing the same unchanged file, the common CI retry,
    skips reading a multi-GiB image again, and so does publishing an image ``imagectl build`` just made (it files
    the digest it took: :func:`remember`). Any write to the file changes its mtime/ctime and so misses the memo;
    and every store checks the bytes it uploads against the digest anyway (:class:`FileChangedError`), so a stale
    memo can never put wrong bytes under a signed name. Raises OSError when the file cannot be read or is not a
    regular file.
    """
    # O_NONBLOCK: a FIFO put where the file was is refused, not waited on (no effect on a regular file's reads)
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if memo_dir is not None:
            remembered = _read_memo(memo_dir / _memo_key(path, st, part_size), st.st_size, part_size)
            if remembered is not None:
                return remembered
        with Hasher(part_size) as h:
            while block := f.read(CHUNK):
                h.update(block)
    result = h.result()
    if memo_dir is not None:
        remember(path, result, memo_dir, hashed=st)
    return result


class DigestAhead:
    """:func:`file_digest` of a file, started now on a thread of its own; :meth:`result` waits for it.

    Publish hashes its image while it does what does not need the digest: the CLI starts this before it opens the
    catalogue (boto3's import and client cost ~0.25 s), publish loads the catalogue's state meanwhile. The thread
    is a daemon: a command that fails before it needs the digest exits without waiting for the hashing.
    """

    def __init__(self, path: str | Path, *, part_size: int = 0, memo_dir: Path | None = None) -> None:
        self.path, self.part_size, self.memo_dir = str(path), part_size, memo_dir
        self._done = threading.Event()
        self._result: FileDigest | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="digest-ahead", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = file_digest(self.path, part_size=self.part_size, memo_dir=self.memo_dir)
        except Exception as e:  # noqa: BLE001 - raised again, in the caller's thread, by result()
            self._error = e
        finally:
            self._done.set()

    def result(self) -> FileDigest:
        """The digest, or the OSError reading the file raised."""
        self._done.wait()
        if self._result is None:
            raise self._error or RuntimeError(f"hashing {self.path} stopped")
        return self._result
