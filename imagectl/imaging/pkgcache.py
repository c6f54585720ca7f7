"""imagectl's package cache: downloaded packages and bootstrapped base systems, shared by every build on a host.

Layout under the ``cache_dir`` setting::

    packages/FAMILY/sha256/HEX      one package file, or one signed index (Debian: an InRelease, a Packages.xz),
                                    named by the SHA-256 of its bytes (mode 0444)
    packages/FAMILY/.lock           flock: one writer at a time (adding, removing)
    packages/FAMILY/indexes/        parsed signed indexes (debindex), named by their verified hash
    base/FAMILY/KEY/base.tar.gz     a bootstrapped base system, KEY = (release, arch, mirror state, tools)
    base/FAMILY/KEY/base.json       its SHA-256, size and what KEY was made of

Nothing is trusted by name. A package is handed out only when its bytes hash to the SHA-256 a signed index gives
for the file asked for (:meth:`PackageCache.get` re-hashes every time; a file that does not match is removed); a
base tarball only when its bytes match the SHA-256 recorded when it was stored. Files enter by atomic rename of a
complete, verified temp file in the same directory, under the lock, so concurrent builds never see half a file.
An entry handed out is marked used (its access time, :func:`imagectl.fsio.mark_used`): ``imagectl cache prune``
(:mod:`imagectl.localcache`) removes the entries not used lately, under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from imagectl.errors import LocalIOError
from imagectl.fsio import AtomicFile, atomic_write, mark_used, sha256_file

__all__ = ["BaseCache", "PackageCache", "locked"]

CHUNK = 1 << 20


@contextlib.contextmanager
def locked(lock: Path, *, shared: bool = False) -> Iterator[None]:
    """The cache's lock ``lock`` (a flock, never through a symlink): exclusive, taken by whatever adds or removes
    entries (these caches, and ``imagectl cache prune``: :mod:`imagectl.localcache`); ``shared``, held by the users
    of a cache whose files they read for a while (:func:`download_cache_lock`)."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LocalIOError.from_os("lock", lock, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def download_cache_lock(cache: Path) -> Path:
    """The lock of a download cache (the SLC bootstrap's, ``CACHE/slc``): a bootstrap holds it shared from its
    first download until its files are unpacked, and ``imagectl cache prune`` removes nothing there unless it can
    take it exclusive, without waiting (so never under a running bootstrap)."""
    return cache / ".lock"


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


class PackageCache:
    """Content-addressed package files of one OS family (``debian``, ``slc``)."""

    def __init__(self, cache_dir: Path, family: str) -> None:
        self.root = cache_dir / "packages" / family
        self.objects = self.root / "sha256"
        self.lock = self.root / ".lock"
        self.removed = 0  # entries found damaged and removed, for the build record

    def path(self, sha256: str) -> Path:
        if not _is_hex64(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.objects / sha256

    def get(self, sha256: str, size: int) -> Path | None:
        """The cached file whose bytes have this SHA-256 and size (the values a signed index gives), verified now;
        None when there is none. A file whose bytes do not match (tampered, truncated, bit rot) is removed."""
        path = self.path(sha256)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or sha256_file(path) != sha256:
            self._remove(path, st)
            return None
        mark_used(path)  # for imagectl cache prune: the least recently used go first
        return path

    def _remove(self, path: Path, st: os.stat_result) -> None:
        """Remove the damaged entry ``path`` was when ``st`` was taken, unless a good copy replaced it meanwhile."""
        with locked(self.lock), contextlib.suppress(FileNotFoundError):
            now = os.lstat(path)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)
                self.removed += 1

    def read(self, sha256: str, limit: int) -> bytes | None:
        """The bytes of the entry for ``sha256`` (a signed index the cache keeps, whose size the caller may not
        know), verified now: opened without following a symlink, at most ``limit`` bytes read. None when there is
        no such entry, it is not a regular file, it is larger than ``limit``, or its bytes do not hash to
        ``sha256`` (then it is removed, as :meth:`get` does); None too for a ``sha256`` that is not 64 lower-case
        hex digits (it comes from a build record: a lookup key, never a path)."""
        if not _is_hex64(sha256):
            return None
        path = self.path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return None  # absent, or a symlink (ELOOP): nothing imagectl put there
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            data = f.read(limit + 1) if stat.S_ISREG(st.st_mode) else b""
        if not stat.S_ISREG(st.st_mode) or len(data) > limit:
            return None  # not ours to remove: too large for this caller, or a FIFO or device someone put there
        if hashlib.sha256(data).hexdigest() == sha256:
            mark_used(path)
            return data
        self._remove(path, st)  # damaged, as get() does
        return None

    def put(self, data: bytes) -> None:
        """Keep ``data`` (verified bytes, such as a signed index) under its SHA-256; an existing entry is kept."""
        digest = hashlib.sha256(data).hexdigest()
        if self.read(digest, len(data)) is not None:
            return
        with self.adding(digest, len(data)) as (out, h):
            out.write(data)
            h.update(data)

    @contextlib.contextmanager
    def adding(self, sha256: str, size: int) -> Iterator[tuple[IO[bytes], Any]]:
        """A temp file in the cache to write a download into, and a running SHA-256 of what was written (``h``).
        On a clean exit the file becomes the entry for ``sha256`` only if exactly ``size`` bytes hashing to it
        were written (else it is dropped); an existing entry is kept. Yields (file, hash)."""
        dest = self.path(sha256)
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LocalIOError.from_os("write", self.objects, e) from None
        h = hashlib.sha256()
        f = AtomicFile(dest, mode=0o444, suffix=".part")
        try:
            yield f.file, h  # the caller's exceptions (requests' are OSErrors) pass through unchanged
            written = f.file.tell()
            f.seal()
            if written == size and h.hexdigest() == sha256:
                with locked(self.lock):
                    f.commit()
        finally:
            f.discard()


class BaseCache:
    """Bootstrapped base systems (debootstrap's result as a tarball), one per key; storing a new one for the same
    (release, arch, mirror) removes the older ones, made from an earlier state of the mirror."""

    def __init__(self, cache_dir: Path, family: str) -> None:
        self.root = cache_dir / "base" / family
        self.lock = self.root / ".lock"

    def find(self, key: str) -> Path | None:
        """The verified tarball for ``key``, or None (an entry whose bytes changed is removed)."""
        entry = self.root / key
        try:
            meta = json.loads((entry / "base.json").read_text())
            tarball = entry / "base.tar.gz"
            if tarball.is_symlink() or not tarball.is_file():
                raise ValueError("not a regular file")
            if tarball.stat().st_size == meta["size"] and sha256_file(tarball) == meta["sha256"]:
                mark_used(tarball)
                return tarball
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            pass
        with locked(self.lock):
            shutil.rmtree(entry, ignore_errors=True)
        return None

    def store(self, key: str, tarball: Path, meta: dict[str, Any]) -> None:
        """Move ``tarball`` (same file system) into the cache under ``key``, with its SHA-256 recorded."""
        group = {k: meta[k] for k in ("release", "arch", "mirror")}
        staging = self.root / f".{key}.{os.getpid()}.tmp"
        with locked(self.lock):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            os.replace(tarball, staging / "base.tar.gz")
            record = {
                **meta,
                "sha256": sha256_file(staging / "base.tar.gz"),
                "size": (staging / "base.tar.gz").stat().st_size,
            }
            atomic_write(staging / "base.json", json.dumps(record, indent=2, sort_keys=True).encode())
            for other in self.root.iterdir():
                if other.name.startswith(".") or other.name == key:
                    continue
                try:
                    old = json.loads((other / "base.json").read_text())
                except (OSError, ValueError):
                    continue
                if {k: old.get(k) for k in group} == group:  # the same base, from an older mirror state
                    shutil.rmtree(other, ignore_errors=True)
            shutil.rmtree(self.root / key, ignore_errors=True)
            os.replace(staging, self.root / key)
