"""A catalogue in a local directory (or any mounted file system).

Every key is resolved below the catalogue's root one component at a time without following symlinks
(:class:`imagectl.fsio.Beneath`): a symlink planted in a catalogue (``blobs/sha256`` pointing at ``/etc``, a
dangling ``.lock``) is reported, never read through, written through or deleted through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from imagectl.errors import CatalogueStateError, ImagectlError, LocalIOError
from imagectl.fsio import AtomicFile, Beneath, SymlinkRefusedError, describe_mode
from imagectl.store.base import CHUNK, ObjectEntry, ObjectMissingError, ObjectTooLargeError, RangeStream, Store
from imagectl.store.digest import FileChangedError, FileDigest, Hasher

__all__ = ["LocalStore"]

_io_error = LocalIOError.from_os
Writer = Callable[[int], None]  # fills an open file descriptor
TEMP_SUFFIX = ".tmp"  # temp files are ``.NAME.RANDOM.tmp`` beside their final name; gc removes stale ones


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri().rstrip("/") + "/"
        self.tree = Beneath(self.root)

    def _check(self, key: str) -> str:
        # Keys come from our own code and from signed metadata, but a hostile key must never escape the root.
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise ObjectMissingError(f"invalid object key {key!r}")
        return key

    # -- reading ------------------------------------------------------------------------------------------
    def _open(self, key: str) -> int:
        try:
            return self.tree.open_regular(self._check(key))
        except FileNotFoundError:
            raise ObjectMissingError(f"{key} not found in {self.shown}") from None

    def read(self, key: str, max_length: int) -> bytes:
        fd = self._open(key)
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read(max_length + 1)
        except OSError as e:
            raise _io_error("read", self.root / key, e) from e
        if len(data) > max_length:
            raise ObjectTooLargeError.at(key, max_length)
        return data

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int = 0) -> Iterator[RangeStream]:
        fd = self._open(key)
        with os.fdopen(fd, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            f.seek(offset)

            def chunks() -> Iterator[bytes]:
                while block := f.read(CHUNK):
                    yield block

            yield RangeStream(offset=offset, chunks=chunks(), total=total)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a regular file (a symlink or anything else at the key does not count)."""
        try:
            return stat.S_ISREG(self.tree.lstat(self._check(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def list(self, prefix: str) -> Iterator[str]:
        for entry in self.list_entries(prefix):
            if entry.regular:
                yield entry.key

    def list_children(self, prefix: str, start: str = "") -> set[str]:
        """The subdirectories of ``prefix`` whose names begin with ``start`` (one directory read; a symlink is
        not a subdirectory and is never followed)."""
        try:
            with self.tree.dir(prefix.strip("/")) as d, os.scandir(d) as it:
                return {
                    e.name
                    for e in it
                    if e.name.startswith(start) and not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                }
        except FileNotFoundError:
            return set()

    def list_entries(self, prefix: str, *, hidden: bool = False) -> Iterator[ObjectEntry]:
        """Every entry under ``prefix``: regular files, and (``regular=False``) symlinks, FIFOs and the like,
        which are reported, never followed. Dot-files (temp files, locks) only with ``hidden``."""
        now = time.time()
        base = prefix.strip("/")
        for rel, st in self.tree.walk(base):
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(".") and not hidden:
                continue
            yield ObjectEntry(
                key=rel,
                size=st.st_size,
                age=max(0.0, now - st.st_mtime),
                regular=stat.S_ISREG(st.st_mode),
            )

    # -- writing ------------------------------------------------------------------------------------------
    def _put(self, key: str, write: Writer, *, exclusive: bool, mode: int = 0o644) -> bool:
        """Fill an :class:`AtomicFile` beside ``key`` with ``write(fd)`` and make it ``key``: create-if-absent with
        ``exclusive`` (False if ``key`` exists), else replace. ``mode`` is exact: a catalogue is meant to be served,
        readable by the web server's user. No temp file outlives a failure."""
        parent, name = self.tree.split(self._check(key))
        with (
            self.tree.dir(parent, create=True) as d,
            AtomicFile(self.root / key, mode=mode, exclusive=exclusive, dir_fd=d, name=name, suffix=TEMP_SUFFIX) as f,
        ):
            write(f.fileno())
        return f.created

    def _put_bytes(self, key: str, data: bytes, *, exclusive: bool) -> bool:
        def write(fd: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

        return self._put(key, write, exclusive=exclusive)

    def write(self, key: str, data: bytes) -> None:
        self._put_bytes(key, data, exclusive=False)

    def write_new(self, key: str, data: bytes) -> bool:
        return self._put_bytes(key, data, exclusive=True)

    def write_if_match(self, key: str, data: bytes, tag: str) -> bool:
        """Compare the file's SHA-256 (the tag :meth:`read_versioned` gives) with ``tag`` and replace the file
        atomically (temp file + ``os.replace``), under the store's CAS lock.

        The CAS lock (``.cas.lock``) is not the writer lock of :meth:`lock` (``.lock``): a publisher holding
        ``lock()`` calls this, and a second flock on ``.lock`` from this process would wait for itself. It is
        held only for the compare and the rename, and nothing takes another lock while holding it. Plain
        :meth:`write` and :meth:`delete` do not take it: the guarantee holds among ``write_if_match`` callers.
        """
        with self._flock(".cas.lock", create_root=False) as locked:
            if not locked:  # no store directory, so no such key
                return False
            held = self._digest(key)
            if held is None or f"sha256:{held[1]}" != tag:
                return False
            self._put_bytes(key, data, exclusive=False)
            return True

    @contextlib.contextmanager
    def _flock(self, name: str, *, create_root: bool) -> Iterator[bool]:
        """Hold an exclusive flock on ``ROOT/NAME``; yields False if the store directory does not exist.

        flock (not fcntl/lockf record locks) because it belongs to the open file, so two threads of one process
        exclude each other too; the kernel drops it when a holder dies. The lock file is opened without following
        a symlink: a planted (or dangling) symlink is refused, never used to create a file elsewhere.
        """
        try:
            root = self.tree.open_root(create=create_root)
        except FileNotFoundError:
            yield False
            return
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=root)
        except OSError as e:
            raise self.tree.refuse(name, e) from None
        finally:
            os.close(root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def upload_file(self, key: str, path: str, digest: FileDigest) -> bool:
        """Copy exactly ``digest.size`` bytes of ``path`` to ``key``, hashing them on the way; store them only if
        they have ``digest.sha256``. An existing ``key`` that already holds those bytes is kept (nothing
        written); one with another size or hash (a blob damaged on disk, or cut short by an older imagectl) is
        replaced. Raises FileChangedError if the file no longer has the digest, LocalIOError if unreadable."""
        existing = self._holds(key, digest)
        if existing:
            return False
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise _io_error("read", path, e) from e

        def write(fd: int) -> None:
            h = Hasher()
            left = digest.size
            while left > 0:
                block = src.read(min(CHUNK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            got = h.result()
            if got.size != digest.size or got.sha256 != digest.sha256:
                raise FileChangedError(
                    f"{path} changed while it was being published: hashed {digest.size} bytes with sha256 "
                    f"{digest.sha256[:16]}…, then read {got.size} bytes with sha256 {got.sha256[:16]}…; "
                    "nothing was stored",
                    hint="publish a file nothing is writing to (wait for the build to finish)",
                )

        with src:
            return self._put(key, write, exclusive=existing is None)

    def _digest(self, key: str, size: int | None = None) -> tuple[int, str] | None:
        """``(size, sha256 hex)`` of ``key``, None if absent; the hash is skipped ("") when the size is not
        ``size``."""
        try:
            fd = self._open(key)
        except ObjectMissingError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                n = os.fstat(f.fileno()).st_size
                return n, hashlib.file_digest(f, "sha256").hexdigest() if size in (None, n) else ""
        except OSError as e:
            raise _io_error("read", self.root / key, e) from e

    def _holds(self, key: str, digest: FileDigest) -> bool | None:
        """True if ``key`` holds exactly the digest's bytes, False if it holds other bytes, None if absent."""
        held = self._digest(key, digest.size)
        return None if held is None else held == (digest.size, digest.sha256)

    def place_target(self, blob: str, key: str, size: int) -> bool:
        """A hard link of ``blob`` at ``key`` (one inode: the bytes are stored once); where the file system
        refuses a hard link (another mount, no hard links, too many links), a copy. Both names are reached without
        following symlinks; a non-file at ``key`` is refused, never replaced or written through. The new name
        appears atomically (link to a temp name, then rename), so a reader never sees a partial file."""
        bparent, bname = self.tree.split(self._check(blob))
        parent, name = self.tree.split(self._check(key))
        with contextlib.ExitStack() as stack:
            try:
                bdir = stack.enter_context(self.tree.dir(bparent))
            except FileNotFoundError:
                raise ObjectMissingError(f"{blob} not found in {self.shown}") from None
            bst = self._stat_at(bdir, bname, blob)
            if bst is None:
                raise ObjectMissingError(f"{blob} not found in {self.shown}")
            if not stat.S_ISREG(bst.st_mode):
                raise SymlinkRefusedError(f"refusing {self.root}/{blob}: it is {describe_mode(bst.st_mode)}")
            if bst.st_size != size:
                raise CatalogueStateError(
                    f"{blob} has {bst.st_size} bytes, signed length is {size}",
                    hint=f"run: imagectl catalogue verify {self.shown}",
                )
            d = stack.enter_context(self.tree.dir(parent, create=True))
            st = self._stat_at(d, name, key)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise SymlinkRefusedError(f"refusing {self.root}/{key}: it is {describe_mode(st.st_mode)}")
            if st is not None and (st.st_dev, st.st_ino) == (bst.st_dev, bst.st_ino):
                return False
            if st is not None and st.st_size == size and self._digest(key) == self._digest(blob):
                return False  # a copy (a file system without hard links), and a good one
            try:
                staged = AtomicFile(self.root / key, dir_fd=d, name=name, suffix=TEMP_SUFFIX, link=(bdir, bname))
            except OSError:  # the file system refuses hard links here: AtomicFile raised the errno unchanged
                return self._copy_blob(blob, key, size)
            # Touch the shared inode: blob and target file are referenced from now on, and gc (which goes by age)
            # must not take an old orphan blob for garbage while the publish that reuses it commits.
            with staged, contextlib.suppress(OSError):
                os.utime(staged.temp, dir_fd=d, follow_symlinks=False)
            return True
        raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions

    def _stat_at(self, d: int, name: str, key: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _io_error("check", self.root / key, e) from e

    def _copy_blob(self, blob: str, key: str, size: int) -> bool:
        fd = self._open(blob)
        with os.fdopen(fd, "rb") as src:

            def write(out: int) -> None:
                left = size
                while left > 0 and (block := src.read(min(CHUNK, left))):
                    left -= len(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(out, view) :]
                if left:
                    raise CatalogueStateError(f"{blob} got shorter while it was copied to {key}")

            return self._put(key, write, exclusive=False)

    def same_object(self, a: str, b: str) -> bool:
        try:
            sa, sb = self.tree.lstat(self._check(a)), self.tree.lstat(self._check(b))
        except (OSError, ImagectlError):
            return False
        return stat.S_ISREG(sa.st_mode) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

    def delete(self, key: str) -> None:
        self.tree.unlink(self._check(key))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self._flock(".lock", create_root=True):
            yield
