"""Local files, handled the one safe way: bounded reads of regular files, atomic writes, temp-then-replace.

Every file imagectl reads that a user or another program handed it (a config file, a recipe, a pinned root, a key,
a build record) goes through :func:`read_regular`: it is opened without blocking (a FIFO cannot hang us), must be a
regular file (``/dev/zero`` cannot exhaust memory, a socket or device is refused) and is read up to a limit.
Every file imagectl writes for others to read goes through :func:`atomic_write` or :func:`replacing`: the path
holds the old bytes or the new ones, never a mix, and a failure leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from imagectl.errors import ImagectlError, LocalIOError

__all__ = ["Beneath", "SymlinkRefusedError", "atomic_write", "describe_mode", "read_regular", "replacing"]


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
        chunks: list[bytes] = []
        got = 0
        while True:
            block = os.read(fd, min(1 << 20, limit + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
            if got > limit:  # grew while we read it
                raise error(f"{what} {path} is larger than the allowed {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, then ``os.replace``.

    With ``exclusive`` the final step is ``os.link`` instead, which fails if ``path`` exists: an atomic
    create-if-absent that never exposes a half-written file. Returns False when ``exclusive`` found the file.
    Raises LocalIOError (disk full said plainly) on any failure; no temp file is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LocalIOError.from_os("write", path, e) from e
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
        return True
    except OSError as e:
        raise LocalIOError.from_os("write", path, e) from e
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def replacing(dest: Path, *, mode: int = 0o644, suffix: str = ".part") -> Iterator[str]:
    """A temp file beside ``dest``, yielded by name; a clean exit makes it ``dest`` (``mode``, ``os.replace``),
    anything else removes it: the destination holds the new bytes in full or is untouched.

    Raises LocalIOError for an OSError in the block or the rename.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    except OSError as e:
        raise LocalIOError.from_os("write", dest, e) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        tmp = ""
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise LocalIOError(f"cannot write {dest}: it is a directory") from None
        raise LocalIOError.from_os("write", dest, e) from None
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


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
