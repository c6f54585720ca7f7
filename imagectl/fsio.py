"""Local files, handled the one safe way: bounded reads of regular files, atomic writes, temp-then-replace.

Every file imagectl reads that a user or another program handed it (a config file, a recipe, a pinned root, a key,
a build record) goes through :func:`read_regular`: it is opened without blocking (a FIFO cannot hang us), must be a
regular file (``/dev/zero`` cannot exhaust memory, a socket or device is refused) and is read up to a limit.
Every file imagectl writes for others to read goes through :class:`AtomicFile` (or its wrappers
:func:`atomic_write`, :func:`replacing` and :func:`copy_verified`): the path holds the old bytes or the new ones,
never a mix, and a failure leaves no temp file behind.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from imagectl.errors import ImagectlError, ImageMismatchError, LocalIOError

__all__ = [
    "AtomicFile",
    "Beneath",
    "Digesting",
    "SymlinkRefusedError",
    "atomic_write",
    "copy_verified",
    "describe_mode",
    "mark_used",
    "read_regular",
    "replacing",
]

_COPY_CHUNK = 4 << 20  # bytes per read when copying


def sha256_file(path: Path | str) -> str:
    """The SHA-256 (hex) of the file at ``path``, read in 1 MiB blocks; OSError as ``open`` and ``read`` raise it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def mark_used(target: str | Path | int) -> None:
    """Mark a cache entry (a path, or an open descriptor) used now, for ``imagectl cache prune``
    (:mod:`imagectl.localcache`): its access time, never its modification time. Best effort: a cache entry that
    cannot be marked is still served."""
    with contextlib.suppress(OSError):
        if isinstance(target, int):
            st = os.fstat(target)
            os.utime(target, ns=(time.time_ns(), st.st_mtime_ns))
        else:
            st = os.lstat(target)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                os.utime(target, ns=(time.time_ns(), st.st_mtime_ns), follow_symlinks=False)


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) is, in words, for a refusal message."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def read_at_most(fd: int, n: int) -> bytes:
    """The bytes of open file ``fd`` from its position to its end, or its first ``n`` if it holds more (a caller
    that asks for one byte past its limit sees a file over it); OSError as ``os.read`` raises it."""
    chunks: list[bytes] = []
    while n > 0 and (block := os.read(fd, min(1 << 20, n))):
        chunks.append(block)
        n -= len(block)
    return b"".join(chunks)


def read_regular(
    path: str | os.PathLike[str],
    limit: int,
    *,
    what: str = "file",
    error: type[ImagectlError] = LocalIOError,
    missing: type[ImagectlError] | None = None,
    check: Callable[[os.stat_result], None] | None = None,
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises ``error`` (one line, naming ``what`` and the path) when the file cannot be opened or read, is not a
    regular file (a FIFO, device, socket or directory: opened with O_NONBLOCK, so a FIFO with no writer cannot hang
    the caller), or holds more than ``limit`` bytes; ``missing`` (default: ``error``) when it does not exist.
    ``check``, given the file's ``fstat``, may raise to refuse it (a key file's mode) before a byte is read.
    Symlinks are followed: the path was chosen by the user running us.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise (missing or error)(f"{what} {path} does not exist") from None
    except OSError as e:
        raise error(f"cannot open {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {describe_mode(st.st_mode)}, not a regular file")
        if check is not None:
            check(st)
        if st.st_size > limit:
            raise error(f"{what} {path} is larger than the allowed {limit} bytes ({st.st_size} bytes)")
        data = read_at_most(fd, limit + 1)
        if len(data) > limit:  # grew while we read it
            raise error(f"{what} {path} is larger than the allowed {limit} bytes")
        return data
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


_NO_HARDLINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class AtomicFile:
    """A new file that appears at its destination whole or not at all; the one way imagectl writes a file others
    read (a catalogue entry, an export, a cache entry, an output image).

    The bytes go to a temp file beside the destination (``.NAME.RANDOM`` + ``suffix``, created ``O_EXCL |
    O_NOFOLLOW``, with exactly ``mode`` whatever the umask). :meth:`commit` flushes and fsyncs it, then renames it
    over the destination with ``os.replace`` (a symlink there is replaced, never written through) or, with
    ``exclusive``, hard-links it there with ``os.link``, which never replaces an existing destination (not even a
    dangling symlink); :attr:`created` says whether it made the destination. :meth:`discard` removes the temp file.
    As a context manager it commits on a clean exit and discards on any exception, so no temp file outlives a
    failure, whether ours or the caller's.

    With ``dir_fd`` everything happens relative to that directory descriptor (duplicated: the caller may close its
    own) and the destination is its entry ``name`` (default: the last component of ``dest``), so a caller that
    walks a tree by descriptor never follows a symlink; ``dest`` is then only the path error messages show.
    Without ``dir_fd`` the temp file is made in ``dest``'s parent directory, which must exist.

    With ``link`` (a directory descriptor, or None for the working directory, and a name in it) the temp file is a
    hard link to that existing file instead of a new one: nothing is written and ``mode`` is not applied (the inode
    is shared). A file system that refuses the hard link (another mount, no hard links, too many links) raises its
    OSError unchanged, so the caller can fall back to a copy.

    Every other OSError, in creating, writing (in the ``with`` block too), syncing or renaming, becomes a one-line
    LocalIOError naming ``dest`` (disk full said plainly), after the temp file is removed.

    ``durable=False`` skips the fsync: for a cache whose every entry is checked when read (a file a crash left
    empty or torn is then a miss), where a sync per entry would cost more than the entry saves.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        mode: int = 0o644,
        exclusive: bool = False,
        dir_fd: int | None = None,
        name: str | None = None,
        suffix: str = ".tmp",
        link: tuple[int | None, str] | None = None,
        durable: bool = True,
    ) -> None:
        self.dest = dest
        self.durable = durable
        self.exclusive = exclusive
        self.created = False
        self._file: BinaryIO | None = None
        self._dir: int | None = None
        self._temp_made = False
        self._done = False
        path = Path(dest)
        base = name or path.name
        temp = f".{base}.{secrets.token_hex(4)}{suffix}"
        self.temp = temp if dir_fd is not None else str(path.parent / temp)
        self._target = base if dir_fd is not None else str(path)
        try:
            if dir_fd is not None:
                self._dir = os.dup(dir_fd)
            if link is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(self.temp, flags, 0o600, dir_fd=self._dir)
                self._temp_made = True
                self._file = os.fdopen(fd, "wb")
                os.fchmod(fd, mode)
            else:
                os.link(link[1], self.temp, src_dir_fd=link[0], dst_dir_fd=self._dir, follow_symlinks=False)
                self._temp_made = True
        except OSError as e:
            self._release()
            if link is not None and e.errno in _NO_HARDLINK:
                raise
            raise self._error(e) from e

    @property
    def file(self) -> BinaryIO:
        """The temp file, open for writing (buffered: :meth:`commit` flushes it)."""
        if self._file is None:
            raise ValueError(f"the temp file for {self.dest} is a hard link, not open for writing")
        return self._file

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data`` to the temp file; raises LocalIOError (disk full said plainly) if it cannot."""
        try:
            return self.file.write(data)
        except OSError as e:
            raise self._error(e) from e

    def fileno(self) -> int:
        return self.file.fileno()

    def seal(self) -> None:
        """Flush, fsync and close the temp file, for a caller that fills it by name (another program) or commits
        a set of files together later. Raises LocalIOError (temp file removed) if that fails."""
        try:
            self._sync()
        except OSError as e:
            self._release()
            raise self._error(e) from e

    def commit(self) -> bool:
        """Make the temp file the destination (replacing it, or with ``exclusive`` only where there is none);
        returns :attr:`created`. Raises LocalIOError (temp file removed, destination untouched) on failure."""
        if self._done:
            return self.created
        try:
            self._sync()
            if self.exclusive:
                try:
                    os.link(self.temp, self._target, src_dir_fd=self._dir, dst_dir_fd=self._dir, follow_symlinks=False)
                except FileExistsError:
                    return False
            else:
                os.replace(self.temp, self._target, src_dir_fd=self._dir, dst_dir_fd=self._dir)
                self._temp_made = False
            self.created = True
            return True
        except OSError as e:
            raise self._error(e) from e
        finally:
            self._release()

    def discard(self) -> None:
        """Remove the temp file; the destination is left as it was."""
        self._release()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.commit()
            return
        self._release()
        if isinstance(exc, OSError):
            raise self._error(exc) from exc

    def _sync(self) -> None:
        if self._file is not None and not self._file.closed:
            with self._file:
                self._file.flush()
                if self.durable:
                    os.fsync(self._file.fileno())

    def _release(self) -> None:
        self._done = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._temp_made:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self._dir)
            self._temp_made = False
        if self._dir is not None:
            os.close(self._dir)
            self._dir = None

    def _error(self, e: OSError) -> LocalIOError:
        if e.errno == errno.EISDIR:
            return LocalIOError(f"cannot write {self.dest}: it is a directory")
        return LocalIOError.from_os("write", self.dest, e)


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` (its parent directories made as needed) through :class:`AtomicFile`.

    Returns False when ``exclusive`` found ``path`` there (nothing written). Raises LocalIOError on any failure.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError.from_os("write", path, e) from e
    with AtomicFile(path, mode=mode, exclusive=exclusive) as f:
        f.write(data)
    return f.created


@contextlib.contextmanager
def replacing(dest: Path, *, mode: int = 0o644, suffix: str = ".part") -> Iterator[str]:
    """The name of an empty :class:`AtomicFile` temp file beside ``dest``, for a caller (or another program) that
    fills it by name: a clean exit gives it ``mode`` and makes it ``dest``, anything else removes it.

    The caller fsyncs what it writes there. Raises LocalIOError for an OSError in the block or the rename.
    """
    with AtomicFile(dest, mode=mode, suffix=suffix) as f:
        f.seal()
        yield f.temp
        os.chmod(f.temp, mode)


class Digesting(Protocol):
    """What :func:`copy_verified` hashes with: ``hashlib.sha256()``, or anything that takes bytes and says the
    hex SHA-256 of all it took."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def copy_verified(
    src: str | os.PathLike[str] | BinaryIO,
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    mode: int = 0o644,
    what: str | None = None,
    hasher: Digesting | None = None,
) -> int:
    """Copy the bytes of ``src`` (a path, or a binary file open for reading) to ``dest`` through
    :class:`AtomicFile`, hashing them on the way; ``dest`` appears only if they have SHA-256 ``sha256`` and (when
    given) are exactly ``size`` bytes. Returns how many bytes were copied.

    Why: a cached or downloaded file is re-verified as it is copied out, in the same single read, so bytes that
    changed on disk are never handed on; each block is written on a second thread while it is hashed. Reading
    stops one byte past ``size``: an endless source cannot fill the disk. Raises ImageMismatchError naming
    ``what`` (default: ``src``) when the bytes differ, LocalIOError when ``src`` cannot be read or ``dest``
    written; either way ``dest`` is untouched and no temp file is left.
    ``hasher`` (default: a new ``hashlib.sha256()``) is fed the bytes and gives the digest compared: a caller that
    wants more digests of the same read (a build's part digests) passes its own.
    """
    shown = what or str(os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "the source"))
    h: Digesting = hashlib.sha256() if hasher is None else hasher
    got = 0
    with contextlib.ExitStack() as stack:
        try:
            fin = stack.enter_context(open(src, "rb")) if isinstance(src, (str, os.PathLike)) else src
        except OSError as e:
            raise LocalIOError.from_os("read", shown, e) from e
        out = stack.enter_context(AtomicFile(dest, mode=mode))
        writer: concurrent.futures.ThreadPoolExecutor | None = None  # from the second block on
        written: concurrent.futures.Future[int] | None = None
        limit = None if size is None else size + 1
        while limit is None or got < limit:
            try:
                block = fin.read(_COPY_CHUNK if limit is None else min(_COPY_CHUNK, limit - got))
            except OSError as e:
                raise LocalIOError.from_os("read", shown, e) from e
            if not block:
                break
            if written is not None:
                written.result()  # one block in writing at a time: the file is written in order
            if got and writer is None:  # joined (shut down) before the temp file is closed
                writer = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="copy"))
            if writer is None:
                out.write(block)
            else:  # the block is written on the writer thread while it is hashed here (both only read it)
                written = writer.submit(out.write, block)
            h.update(block)
            got += len(block)
        if written is not None:
            written.result()
        if size is not None and got != size:
            held = f"more than {size}" if got > size else str(got)
            raise ImageMismatchError(f"{shown} holds {held} bytes, not the expected {size}; {dest} not written")
        if h.hexdigest() != sha256:
            raise ImageMismatchError(
                f"{shown} has sha256 {h.hexdigest()}, not the expected {sha256}; {dest} not written"
            )
    return got


class SymlinkRefusedError(LocalIOError):
    """A path below a root we resolve ourselves ran into a symlink (or another non-directory) on the way."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Beneath:
    """Files below one directory, reached one path component at a time without ever following a symlink.

    Why: a catalogue directory or a client cache may hold entries planted by someone else (another local user, a
    sync tool, a hostile archive). ``open("root/blobs/sha256/X")`` follows a symlink at any component and can
    read, append to or delete a file anywhere; here each component is opened with ``O_NOFOLLOW`` relative to the
    descriptor of its parent, so a symlink (or a file where a directory should be) ends the walk with
    :class:`SymlinkRefusedError` instead. The root itself is resolved once, when this object is made (it is the
    path the user named). Relative paths are ``/``-separated; ``..``, ``.``, empty and absolute parts are refused.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _parts(self, rel: str) -> list[str]:
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise SymlinkRefusedError(f"invalid path {rel!r} below {self.root}")
        return parts

    def refuse(self, rel: str, e: OSError) -> LocalIOError:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            return SymlinkRefusedError(
                f"refusing {self.root}/{rel}: a symlink or non-directory is in the way (not followed)"
            )
        return LocalIOError.from_os("open", f"{self.root}/{rel}", e)

    def open_root(self, *, create: bool = False) -> int:
        """A descriptor of the root directory (created with its parents if ``create``); the caller closes it."""
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            return os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise LocalIOError.from_os("open", self.root, e) from None

    @contextlib.contextmanager
    def dir(self, rel: str, *, create: bool = False, mode: int = 0o755) -> Iterator[int]:
        """A descriptor of the directory ``rel`` ("" for the root), made (with its parents) if ``create``.

        Raises FileNotFoundError if it does not exist and ``create`` is false, SymlinkRefusedError if a component
        is a symlink or not a directory, LocalIOError otherwise.
        """
        fd = self.open_root(create=create)
        try:
            for i, part in enumerate(self._parts(rel) if rel else []):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, mode, dir_fd=fd)
                    except FileExistsError:
                        pass  # made by someone else meanwhile: open it (no-follow) below
                    except OSError as e:
                        raise self.refuse("/".join(rel.split("/")[: i + 1]), e) from None
                    try:
                        nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as e:
                        raise self.refuse("/".join(rel.split("/")[: i + 1]), e) from None
                except OSError as e:
                    raise self.refuse("/".join(rel.split("/")[: i + 1]), e) from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def split(self, rel: str) -> tuple[str, str]:
        """``(parent, name)`` of ``rel``, validated."""
        parts = self._parts(rel)
        return "/".join(parts[:-1]), parts[-1]

    def open(self, rel: str, flags: int, mode: int = 0o644, *, create_dirs: bool = False) -> int:
        """Open the file ``rel`` with ``flags`` (O_NOFOLLOW is added): a descriptor the caller closes.

        Raises FileNotFoundError when it (or a parent) is missing, SymlinkRefusedError for a symlink on the way or
        at the end, LocalIOError for other failures.
        """
        parent, name = self.split(rel)
        with self.dir(parent, create=create_dirs) as d:
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, mode, dir_fd=d)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise self.refuse(rel, e) from None

    def open_regular(self, rel: str) -> int:
        """Open ``rel`` read-only; it must be a regular file (O_NONBLOCK: a planted FIFO cannot hang us)."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SymlinkRefusedError(f"refusing {self.root}/{rel}: it is {describe_mode(st.st_mode)}")
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def lstat(self, rel: str) -> os.stat_result:
        """``lstat`` of ``rel`` (a symlink is reported, not followed). Raises FileNotFoundError if missing."""
        parent, name = self.split(rel)
        with self.dir(parent) as d:
            return os.stat(name, dir_fd=d, follow_symlinks=False)

    def unlink(self, rel: str) -> None:
        """Remove ``rel`` (a symlink itself, never its target); missing is fine."""
        parent, name = self.split(rel)
        try:
            with self.dir(parent) as d:
                os.unlink(name, dir_fd=d)
        except FileNotFoundError:
            return
        except OSError as e:
            raise LocalIOError.from_os("remove", f"{self.root}/{rel}", e) from None

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every entry below ``rel`` that is not a directory, as ``(relative path, lstat)``; directories are
        entered by descriptor, never through a symlink. A missing ``rel`` yields nothing."""
        try:
            with self.dir(rel) as d:
                yield from self._walk(d, rel)
        except FileNotFoundError:
            return

    def _walk(self, d: int, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(d) as it:
            entries = list(it)
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=d)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as e:
                    raise self.refuse(path, e) from None
                try:
                    yield from self._walk(sub, path)
                finally:
                    os.close(sub)
            else:
                yield path, st
