"""A catalogue in a local directory (or any mounted file system)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from imagectl.errors import DownloadError, LocalIOError
from imagectl.store.base import CHUNK, ObjectEntry, ObjectMissingError, RangeStream, Store

__all__ = ["LocalStore", "atomic_write"]


_io_error = LocalIOError.from_os


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    With ``exclusive`` the final step is ``os.link`` instead, which fails if ``path`` exists: an atomic
    create-if-absent that never exposes a half-written file. Returns False when ``exclusive`` found the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # a catalogue is meant to be served: readable by the web server's user
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
        raise _io_error("write", path, e) from e
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri().rstrip("/") + "/"

    def _path(self, key: str) -> Path:
        # Keys come from our own code and from signed metadata, but a hostile key must never escape the root.
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ObjectMissingError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def read(self, key: str, max_length: int) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                data = f.read(max_length + 1)
        except FileNotFoundError:
            raise ObjectMissingError(f"{key} not found in {self.url}") from None
        except OSError as e:
            raise _io_error("read", path, e) from e
        if len(data) > max_length:
            raise DownloadError(f"{key} is larger than the allowed {max_length} bytes")
        return data

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int = 0) -> Iterator[RangeStream]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise ObjectMissingError(f"{key} not found in {self.url}") from None
        except OSError as e:
            raise _io_error("read", path, e) from e
        with f:
            total = os.fstat(f.fileno()).st_size
            f.seek(offset)

            def chunks() -> Iterator[bytes]:
                while block := f.read(CHUNK):
                    yield block

            yield RangeStream(offset=offset, chunks=chunks(), total=total)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if not name.startswith("."):
                    yield name if rel == "." else f"{rel}/{name}"

    def list_entries(self, prefix: str) -> Iterator[ObjectEntry]:
        now = time.time()
        for key in self.list(prefix):
            try:
                st = self._path(key).stat()
            except FileNotFoundError:  # deleted since the walk saw it
                continue
            except OSError as e:
                raise _io_error("read", self._path(key), e) from e
            yield ObjectEntry(key=key, size=st.st_size, age=max(0.0, now - st.st_mtime))

    def write(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def write_new(self, key: str, data: bytes) -> bool:
        return atomic_write(self._path(key), data, exclusive=True)

    def write_if_match(self, key: str, data: bytes, tag: str) -> bool:
        """Compare the file's SHA-256 (the tag :meth:`read_versioned` gives) with ``tag`` and replace the file
        atomically (temp file + ``os.replace``), under the store's CAS lock.

        The CAS lock (``.cas.lock``) is not the writer lock of :meth:`lock` (``.lock``): a publisher holding
        ``lock()`` calls this, and a second flock on ``.lock`` from this process would wait for itself. It is
        held only for the compare and the rename, and nothing takes another lock while holding it. Plain
        :meth:`write` and :meth:`delete` do not take it: the guarantee holds among ``write_if_match`` callers.
        """
        path = self._path(key)
        with self._cas_lock() as locked:
            if not locked:  # no store directory, so no such key
                return False
            try:
                with path.open("rb") as f:
                    current = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            except FileNotFoundError:
                return False
            except OSError as e:
                raise _io_error("read", path, e) from e
            if current != tag:
                return False
            atomic_write(path, data)
            return True

    @contextlib.contextmanager
    def _cas_lock(self) -> Iterator[bool]:
        """Hold an exclusive flock on ``ROOT/.cas.lock``; yields False if the store directory does not exist.

        flock (not fcntl/lockf record locks) because it belongs to the open file, so two threads of one
        process exclude each other too; the kernel drops it when a holder dies.
        """
        lockfile = self.root / ".cas.lock"
        try:
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            yield False
            return
        except OSError as e:
            raise _io_error("lock", lockfile, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def upload_file(self, key: str, path: str) -> bool:
        dest = self._path(key)
        if dest.exists():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                return False
            return True
        except OSError as e:
            raise _io_error("store", dest, e) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        lockfile = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _io_error("lock", lockfile, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock
