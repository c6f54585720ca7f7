"""``imagectl pull``: resolve a name through verified metadata, then download, verify and place the image.

The blob is hashed and length-checked while it streams (no second read), written to a ``.part`` file in the
content-addressed client cache so an interrupted pull resumes with an HTTP Range request, and moved into the
cache only once its SHA-256 matches the signed one. The first destination is then a hard link of the cache entry
(the image bytes are written once), made under a temp name in its own directory and renamed over the
destination: it either holds verified bytes or is untouched. Later destinations of the same image get copies (two
destinations are never one file), as does any destination where a link is not possible or not safe (another file
system; a destination that must keep another owner or group/other write permission, which would then apply to
the cache entry too). The cache re-hashes an entry every time it serves it, so a
destination changed later (a booted qcow2) costs a new download, never a wrong image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imagectl.catalogue.cachedir import IMAGES_DIR, client_cache, image_lock_name
from imagectl.catalogue.client import CatalogueReader, Resolved
from imagectl.catalogue.model import ImageRef, image_keys
from imagectl.errors import DownloadError, ImageMismatchError, LocalIOError
from imagectl.fsio import SymlinkRefusedError, describe_mode, mark_used, replacing
from imagectl.progress import Progress
from imagectl.store import Store
from imagectl.store.base import StatusError

__all__ = ["PullResult", "pull"]

CHUNK = 1 << 20  # bytes
WRITEBACK = 32 << 20  # bytes: start writing the .part to disk every this many, while the rest still downloads
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


@dataclass(frozen=True)
class Destination:
    """Where a pull writes, and what it keeps of a regular file it replaces (mode, and owner when root)."""

    path: Path
    mode: int = 0o644
    owner: tuple[int, int] | None = None  # (uid, gid) to give the new file; None: ours


def destination(out: str | None, rec_name: str, version: str, arch: str, fmt: str) -> Destination:
    """Where ``-o OUT`` puts the image: OUT itself, or ``OUT/NAME-VERSION-ARCH.FMT`` when OUT is an existing
    directory or ends with ``/``.

    Raises LocalIOError (exit 14), before any byte is downloaded, for a destination that is not a regular file
    (a device such as /dev/null, a FIFO, a socket, or a symlink to one of them: pull writes regular files only,
    and would otherwise replace the node with a file), and for a parent directory that is missing, not a
    directory, or not writable. An existing regular file is replaced atomically and keeps its mode; a symlink to
    a regular file is replaced by the image (the link itself, never the file it points to).
    """
    default = f"{rec_name}-{version}-{arch}.{fmt}"
    if out is None:
        path = Path.cwd() / default
    elif out.endswith("/") or os.path.isdir(out):
        if not os.path.isdir(out):
            what = "not a directory" if os.path.lexists(out.rstrip("/")) else "no such directory"
            raise LocalIOError(f"cannot write into {out}: {what}")
        path = Path(out) / default
    else:
        path = Path(out)
    parent = path.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise LocalIOError(f"cannot write {path}: {parent} {why}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LocalIOError(f"cannot write {path}: directory {parent} is not writable")
    return _check_target(path)


def _check_target(path: Path) -> Destination:
    """The Destination for ``path`` as it is now; raises LocalIOError for anything but nothing, a regular file or a
    symlink to one. Checked again right before the rename, so a node swapped in meanwhile is not replaced."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return Destination(path)
    except OSError as e:
        raise _io_error("check", path, e) from None
    try:
        st = os.stat(path) if stat.S_ISLNK(link.st_mode) else link
    except FileNotFoundError:  # a dangling symlink: replaced like any symlink
        return Destination(path)
    except OSError as e:
        raise _io_error("check", path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise LocalIOError(f"cannot write {path}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise LocalIOError(
            f"refusing to write {path}: it is {describe_mode(st.st_mode)}, and pull writes regular files only",
            hint="name a file or a directory with -o",
        )
    if stat.S_ISLNK(link.st_mode):
        return Destination(path)
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    return Destination(path, stat.S_IMODE(st.st_mode), owner)


@contextlib.contextmanager
def _replacing(dest: Destination) -> Iterator[str]:
    """A temp file beside the destination that becomes it on a clean exit, with the kept mode and owner."""
    with replacing(dest.path, mode=dest.mode) as tmp:
        yield tmp
        if dest.owner is not None:
            os.chown(tmp, *dest.owner)
        _check_target(dest.path)  # still nothing, a regular file or a link: safe to rename over


class _Sink:
    """Hashes and writes the downloaded bytes on two worker threads, each fed through a bounded queue.

    The receiving thread only reads the socket; SHA-256 and the file writes run beside it and beside each other
    (hashlib and file writes release the GIL), and the queues bound memory to a few chunks each. Every
    ``WRITEBACK`` bytes the writer starts the file's writeback, so the final fsync waits for little. A failure of
    the writer (disk full) is raised in the receiving thread at its next :meth:`put` or :meth:`drain`.
    """

    def __init__(self, f: IO[bytes], h: Any, have: int) -> None:
        self.f, self.h = f, h
        self.flushed = self.written = have
        self.error: BaseException | None = None
        self._queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=4), queue.Queue(maxsize=4)]
        self._threads = [
            threading.Thread(target=self._run, args=(q, work), name=name, daemon=True)
            for q, work, name in zip(
                self._queues, (self._hash, self._write), ("pull-sha256", "pull-write"), strict=True
            )
        ]
        for t in self._threads:
            t.start()

    def _hash(self, block: bytes) -> None:
        self.h.update(block)

    def _write(self, block: bytes) -> None:
        self.f.write(block)
        self.written += len(block)
        if self.written - self.flushed >= WRITEBACK:
            self.flushed = _start_writeback(self.f, self.flushed, self.written)

    def _run(self, q: queue.Queue[bytes | None], work: Callable[[bytes], None]) -> None:
        """Feed ``work`` until the end marker. A failure (disk full, an I/O error, or a bug) is kept for the
        receiving thread, which raises it; the worker goes on taking blocks without working on them, so a
        producer never waits on a full queue that nobody empties (a dead writer thread once hung a pull)."""
        while True:
            block = q.get()
            try:
                if block is None:
                    return
                if self.error is None:
                    work(block)
            except BaseException as e:  # noqa: BLE001 - any failure, handed to the receiving thread
                if self.error is None:
                    self.error = e
            finally:
                q.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def put(self, block: bytes) -> None:
        self._raise()
        for q in self._queues:
            q.put(block)

    def drain(self) -> None:
        """Wait until every block put so far is hashed and written (then the file may be flushed or truncated)."""
        for q in self._queues:
            q.join()
        self._raise()

    def close(self) -> None:
        for q, t in zip(self._queues, self._threads, strict=True):
            if t.is_alive():
                q.put(None)
                t.join()

    def hexdigest(self) -> str:
        self.drain()
        return str(self.h.hexdigest())


def _start_writeback(f: IO[bytes], start: int, end: int) -> int:
    """Start (without waiting) writing bytes ``start``..``end`` of ``f`` to disk and drop them from the page cache
    once written: the final fsync then waits for the last few MiB only, and a GiB download does not push a GiB of
    other files out of memory. Linux's POSIX_FADV_DONTNEED starts writeback of dirty pages; elsewhere a no-op."""
    f.flush()
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(f.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
    return end


def _download(store: Store, resolved: Resolved, f: IO[bytes], retries: int, progress: Progress) -> None:
    """Fill the open ``.part`` file ``f`` with the verified blob, resuming from what it already holds.

    The .part is not fsynced here: the caller fsyncs the verified entry before any destination names it, and a
    blob is re-hashed whenever it is served from the cache, so a file torn by a crash never reaches a
    destination. Raises ImageMismatchError when the bytes break the signed length or hash, DownloadError when the
    retries are spent, LocalIOError when the cache cannot be written.
    """
    want_len = resolved.target.length
    want_sha = resolved.target.hashes["sha256"]
    h = hashlib.sha256()
    have = 0
    sink: _Sink | None = None
    try:
        f.seek(0)
        while have < want_len and (block := f.read(CHUNK)):
            h.update(block)
            have += len(block)
        if have > want_len or f.read(1):  # an older, longer attempt: start over
            f.truncate(0)
            h, have = hashlib.sha256(), 0
        f.seek(have)
        progress.update(have)
        sink = _Sink(f, h, have)
        attempt = 0
        # The target file holds the bytes in every catalogue (on S3 the only copy; on a directory a hard link of
        # the blob); the blob is the fallback for a catalogue written before target files (catalogue/README §6).
        keys = image_keys(resolved.record.path, want_sha)
        while have < want_len:
            try:
                with store.open_first(keys, have) as stream:
                    if stream.total is not None and stream.total != want_len:
                        # the store says how long the object is: no retry changes that
                        raise ImageMismatchError(
                            f"{resolved.record.path}: the catalogue's image file has {stream.total} bytes, "
                            f"{'more' if stream.total > want_len else 'fewer'} than the signed {want_len} bytes "
                            "(tampered or damaged image file; nothing written)"
                        )
                    if stream.offset not in (0, have):
                        raise DownloadError(
                            f"{resolved.record.path}: asked for bytes from {have}, the server sent from {stream.offset}"
                        )
                    if stream.offset != have:  # the server ignored Range: restart cleanly
                        sink.drain()
                        sink.close()
                        f.truncate(0)
                        f.seek(0)
                        progress.update(-have)
                        have = 0
                        sink = _Sink(f, hashlib.sha256(), 0)
                    for chunk in stream.chunks:
                        if have + len(chunk) > want_len:
                            raise ImageMismatchError(
                                f"{resolved.record.path}: server sent more than the signed {want_len} bytes"
                            )
                        sink.put(chunk)
                        have += len(chunk)
                        progress.update(len(chunk))
                if have < want_len:
                    raise DownloadError(f"{resolved.record.path}: blob ended after {have} of {want_len} bytes")
            except StatusError:
                raise  # an error status: the session has already retried it
            except DownloadError:
                attempt += 1
                if attempt > retries:
                    raise
                sink.drain()
                f.flush()
                time.sleep(min(0.2 * 2**attempt, 5.0))
        got = sink.hexdigest()
        f.flush()
    except OSError as e:
        raise _io_error("use", "the download cache", e) from None  # reading a .part back, or writing it
    finally:
        if sink is not None:
            sink.close()
    if got != want_sha:
        raise ImageMismatchError(
            f"{resolved.record.path}: downloaded bytes have sha256 {got[:16]}…, "
            f"signed metadata says {want_sha[:16]}… (tampered or corrupted blob; nothing written)"
        )


def _verify_entry(src: IO[bytes], name: str, length: int, sha256: str) -> None:
    """Hash the open cache entry ``src``; ImageMismatchError unless it has the signed length and SHA-256."""
    h = hashlib.sha256()
    n = 0
    src.seek(0)
    while block := src.read(CHUNK):
        h.update(block)
        n += len(block)
    if n != length or h.hexdigest() != sha256:
        raise ImageMismatchError(
            f"cached blob {name[:16]}… does not match the signed hash; removed it and downloading again"
        )


def _reflink(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Share ``src``'s blocks with ``dst`` (btrfs, XFS): an instant copy. False where unsupported (ext4, tmpfs)."""
    try:
        fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return True
    except OSError:
        return False


_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def _linkable(src: IO[bytes], dest: Destination, private_cache: bool) -> bool:
    """Whether the destination may share the cache entry's inode: only when no other name shares it yet (two
    destinations must never be one file: booting one would change the other), when nothing about the destination
    would then apply to the cache too — no other owner to give it, no group or other write permission, and no read
    permission for others unless the cache directory keeps them out — and when the entry is ours."""
    st = os.fstat(src.fileno())
    return (
        st.st_nlink == 1
        and dest.owner is None
        and not dest.mode & 0o022
        and (private_cache or not dest.mode & 0o077)
        and st.st_uid == os.geteuid()
    )


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _place(src: IO[bytes], dest: Destination, d: int, name: str, private_cache: bool) -> bool:
    """Put the verified cache entry ``name`` (in directory ``d``, open as ``src``) at ``dest``: a hard link where
    :func:`_linkable`, else a copy (reflink, else the kernel's sendfile), fsynced; either way through a temp name
    and a rename. Returns whether it linked."""
    os.fsync(src.fileno())  # the one write of the bytes is durable before any name of them is published
    with _replacing(dest) as tmp:
        if _linkable(src, dest, private_cache):
            os.unlink(tmp)
            try:
                os.link(name, tmp, src_dir_fd=d, follow_symlinks=False)
                if _same_file(os.lstat(tmp), os.fstat(src.fileno())):
                    return True
                # the name no longer holds the entry that was opened and verified (replaced since): its bytes are
                # copied from the open file instead, whatever is at the name now
                os.unlink(tmp)
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as fout:
            if not _reflink(src, fout):
                size = os.fstat(src.fileno()).st_size
                done = 0
                while done < size:  # sendfile: the kernel copies, the bytes never pass through Python
                    sent = os.sendfile(fout.fileno(), src.fileno(), done, size - done)
                    if sent == 0:
                        break
                    done += sent
            fout.flush()
            os.fsync(fout.fileno())  # the destination is what the deployer relies on after we say "done"
    return False


def _open_in(d: int, name: str, flags: int) -> IO[bytes] | None:
    """Open cache entry ``name`` in directory descriptor ``d`` without following a symlink; None if missing.

    Raises SymlinkRefusedError for a symlink, FIFO or anything but a regular file (someone else put it there).
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600, dir_fd=d)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise SymlinkRefusedError(f"refusing the cache entry {name}: it is a symlink (not followed)") from None
        raise _io_error("open", f"cache entry {name}", e) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SymlinkRefusedError(f"refusing the cache entry {name}: it is {describe_mode(st.st_mode)}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb+" if flags & os.O_RDWR else "rb")


@contextlib.contextmanager
def _locked(d: int, name: str) -> Iterator[None]:
    """An exclusive flock on the cache's lock file ``name`` (never through a symlink). ``imagectl cache prune``
    removes the lock file of an image it removed, while holding it: a lock taken on a file no longer at ``name`` is
    dropped and taken again on the one there now."""
    while True:
        f = _open_in(d, name, os.O_RDWR | os.O_CREAT)
        assert f is not None  # O_CREAT
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                now = os.stat(name, dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                continue
            held = os.fstat(f.fileno())
            if (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
                continue
            yield
            return


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
    """Resolve ``ref`` for ``arch``, fetch (or reuse) the verified blob and place it at the destination.

    The cache is entered through :class:`imagectl.fsio.Beneath`: no symlink planted in it is ever followed.
    """
    resolved = reader.resolve(ref, arch)
    rec = resolved.record
    if rec.deprecated:
        reason = rec.deprecated.get("reason") or "no reason given"
        warn(f"{rec.name}:{rec.version} is deprecated since {rec.deprecated.get('at', '?')}: {reason}")
    dest = destination(out, rec.name, rec.version, rec.arch, rec.format)
    sha = resolved.target.hashes["sha256"]
    tree = client_cache(cache)
    private = not os.stat(tree.root).st_mode & 0o077  # only this user can reach what is in the cache
    with tree.dir(IMAGES_DIR, create=True) as d, _locked(d, image_lock_name(sha)):
        cached = False
        blob = _open_in(d, sha, os.O_RDONLY)
        if blob is not None:
            with blob:
                try:
                    _verify_entry(blob, sha, resolved.target.length, sha)
                    cached = True
                    mark_used(blob.fileno())  # for imagectl cache prune (its atime: the mtime may be the user's)
                except ImageMismatchError as e:  # the cache is ours to repair: drop the entry and fetch again
                    os.unlink(sha, dir_fd=d)
                    warn(str(e))
                if cached:
                    _place(blob, dest, d, sha, private)
        if not cached:
            part = _open_in(d, f"{sha}.part", os.O_RDWR | os.O_CREAT)
            assert part is not None  # O_CREAT
            bar = Progress(f"{rec.name}:{rec.version}", resolved.target.length, enabled=progress)
            with part:
                try:
                    _download(reader.store, resolved, part, retries, bar)
                except ImageMismatchError:  # bytes that broke the signed length or hash are not worth resuming
                    os.unlink(f"{sha}.part", dir_fd=d)
                    raise
                finally:
                    bar.finish()
                os.rename(f"{sha}.part", sha, src_dir_fd=d, dst_dir_fd=d)
                _place(part, dest, d, sha, private)
    return PullResult(
        path=str(dest.path),
        name=rec.name,
        version=rec.version,
        arch=rec.arch,
        sha256=sha,
        size=resolved.target.length,
        format=rec.format,
        cached=cached,
        deprecated=rec.deprecated,
    )
