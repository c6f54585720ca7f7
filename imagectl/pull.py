"""``imagectl pull``: resolve a name through verified metadata, then download, verify and place the image.

The blob is hashed and length-checked while it streams (no second read), written to a ``.part`` file in the
content-addressed client cache so an interrupted pull resumes with an HTTP Range request, and moved into the
cache only once its SHA-256 matches the signed one. The destination gets a copy through a temp file in its own
directory and ``os.replace``: it either holds verified bytes or is untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl.catalogue.client import CatalogueReader, Resolved, file_lock
from imagectl.catalogue.model import ImageRef, blob_key
from imagectl.errors import DownloadError, ImageMismatchError, LocalIOError
from imagectl.progress import Progress
from imagectl.store import Store

__all__ = ["PullResult", "pull"]

CHUNK = 1 << 20  # bytes
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


@dataclass(frozen=True)
class PullResult:
    path: str
    name: str
    version: str
    arch: str
    sha256: str
    size: int
    format: str
    cached: bool  # the blob came from the local cache: no image bytes crossed the network
    deprecated: dict[str, str] | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_io_error = LocalIOError.from_os


@contextlib.contextmanager
def _replacing(dest: Path) -> Iterator[str]:
    """A temp file beside ``dest``; a clean exit makes it ``dest`` (mode 0644, ``os.replace``), anything else
    removes it: the destination holds the new bytes in full or is untouched."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        tmp = ""
    except OSError as e:
        raise _io_error("write", dest, e) from None
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def destination(out: str | None, rec_name: str, version: str, arch: str, fmt: str) -> Path:
    default = f"{rec_name}-{version}-{arch}.{fmt}"
    if out is None:
        return Path.cwd() / default
    path = Path(out)
    if path.is_dir():
        return path / default
    return path


def check_writable(dest: Path) -> None:
    parent = dest.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise LocalIOError(f"cannot write {dest}: {parent} {why}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LocalIOError(f"cannot write {dest}: directory {parent} is not writable")
    if dest.is_dir():
        raise LocalIOError(f"cannot write {dest}: it is a directory")


class _BackgroundHash:
    """SHA-256 on a worker thread fed through a bounded queue.

    hashlib releases the GIL on large updates, so hashing overlaps with reading the socket and writing the file
    (bench/pull.py measured ~1 s per GiB saved); the queue bounds memory to a few chunks.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._t = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (block := self._q.get()) is not None:
            self._h.update(block)

    def update(self, block: bytes) -> None:
        self._q.put(block)

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()

    def hexdigest(self) -> str:
        self.close()
        return self._h.hexdigest()


def _download(store: Store, resolved: Resolved, part: Path, retries: int, progress: Progress) -> None:
    """Fill ``part`` with the verified blob, resuming from what it already holds.

    The .part is not fsynced: a blob is re-hashed whenever it is served from the cache, so a file torn by a
    crash can never reach a destination; the destination copy is what gets fsynced.
    """
    want_len = resolved.target.length
    want_sha = resolved.target.hashes["sha256"]
    h = _BackgroundHash()
    have = 0
    try:
        f = open(part, "ab+")  # noqa: SIM115 - closed in finally; append keeps what an earlier pull fetched
    except OSError as e:
        raise _io_error("write", part, e) from None
    try:
        f.seek(0)
        while have < want_len and (block := f.read(CHUNK)):
            h.update(block)
            have += len(block)
        if have > want_len:  # an older, longer attempt: start over
            f.truncate(0)
            h.close()
            h, have = _BackgroundHash(), 0
        progress.update(have)
        attempt = 0
        while have < want_len:
            try:
                with store.open_range(blob_key(want_sha), have) as stream:
                    if stream.offset not in (0, have):
                        raise DownloadError(f"asked for bytes from {have}, the server sent from {stream.offset}")
                    if stream.offset != have:  # the server ignored Range: restart cleanly
                        f.truncate(0)
                        f.seek(0)
                        progress.update(-have)
                        h.close()
                        h, have = _BackgroundHash(), 0
                    for chunk in stream.chunks:
                        if have + len(chunk) > want_len:
                            raise ImageMismatchError(
                                f"{resolved.record.path}: server sent more than the signed {want_len} bytes"
                            )
                        h.update(chunk)
                        f.write(chunk)
                        have += len(chunk)
                        progress.update(len(chunk))
                if have < want_len:
                    raise DownloadError(f"blob ended after {have} of {want_len} bytes")
            except DownloadError:
                attempt += 1
                if attempt > retries:
                    raise
                f.flush()
                time.sleep(min(0.2 * 2**attempt, 5.0))
    except ImageMismatchError:
        f.close()
        part.unlink(missing_ok=True)  # bytes from a server that broke the signed length are not worth resuming
        raise
    except OSError as e:
        raise _io_error("write", part, e) from None
    finally:
        f.close()
        h.close()
    if h.hexdigest() != want_sha:
        part.unlink(missing_ok=True)
        raise ImageMismatchError(
            f"{resolved.record.path}: downloaded bytes have sha256 {h.hexdigest()[:16]}…, "
            f"signed metadata says {want_sha[:16]}… (tampered or corrupted blob; nothing written)"
        )


def _copy_verified(src: Path, dest: Path, length: int, sha256: str) -> None:
    """Copy ``src`` to ``dest`` atomically, hashing on the way; refuse (and leave ``dest`` alone) on mismatch."""
    with _replacing(dest) as tmp:
        h = hashlib.sha256()
        n = 0
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(CHUNK):
                h.update(block)
                n += len(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        if n != length or h.hexdigest() != sha256:
            src.unlink(missing_ok=True)  # a corrupted cache entry is dropped, never served
            raise ImageMismatchError(
                f"cached blob {src.name[:16]}… does not match the signed hash; removed it and downloading again"
            )


def _reflink(src: Path, dst: str) -> bool:
    """Share ``src``'s blocks with ``dst`` (btrfs, XFS): an instant copy. False where unsupported (ext4, tmpfs)."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        return True
    except OSError:
        return False


def _place(src: Path, dest: Path) -> None:
    """Copy a blob verified moments ago to ``dest`` through a temp file, fsync, and ``os.replace``."""
    with _replacing(dest) as tmp:
        if not _reflink(src, tmp):
            shutil.copyfile(src, tmp)  # sendfile: the kernel copies, the bytes never pass through Python
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the destination is what the deployer relies on after we say "done"


def pull(
    reader: CatalogueReader,
    ref: ImageRef,
    arch: str,
    out: str | None,
    cache: Path,
    *,
    retries: int = 3,
    progress: bool = True,
    warn: Callable[[str], None] = lambda _m: None,
) -> PullResult:
    """Resolve ``ref`` for ``arch``, fetch (or reuse) the verified blob and place it at the destination."""
    resolved = reader.resolve(ref, arch)
    rec = resolved.record
    if rec.deprecated:
        reason = rec.deprecated.get("reason") or "no reason given"
        warn(f"{rec.name}:{rec.version} is deprecated since {rec.deprecated.get('at', '?')}: {reason}")
    dest = destination(out, rec.name, rec.version, rec.arch, rec.format)
    check_writable(dest)
    blobs = cache / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _io_error("create", blobs, e) from None
    sha = resolved.target.hashes["sha256"]
    blob = blobs / sha
    with file_lock(blobs / f".{sha}.lock"):
        cached = blob.exists()
        if cached:
            try:
                _copy_verified(blob, dest, resolved.target.length, sha)
            except ImageMismatchError as e:  # the cache is ours to repair: drop the entry and fetch again
                warn(str(e))
                cached = False
        if not cached:
            part = blobs / f"{sha}.part"
            bar = Progress(f"{rec.name}:{rec.version}", resolved.target.length, enabled=progress)
            try:
                _download(reader.store, resolved, part, retries, bar)
            finally:
                bar.finish()
            os.replace(part, blob)
            _place(blob, dest)
    return PullResult(
        path=str(dest),
        name=rec.name,
        version=rec.version,
        arch=rec.arch,
        sha256=sha,
        size=resolved.target.length,
        format=rec.format,
        cached=cached,
        deprecated=rec.deprecated,
    )
