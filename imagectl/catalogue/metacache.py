"""A publisher's cache of the catalogue's immutable metadata: the versioned role files ``N.ROLE.json``.

Why: before it signs, a publish reads the snapshot the timestamp names, ``targets.json`` and the roles of its name
(the image role, and the bin its path hashes into). On S3 that is two rounds of requests after the timestamp's,
each GET ~2.5 ms of botocore's CPU on loopback and a round trip to a remote endpoint. Yet each of those files is
immutable once a committed snapshot (or, for the snapshot, the timestamp) names it: versioned files are only ever
created where none is (catalogue/README.md, "Publishing protocol"), a role's version only grows, and no snapshot
drops a role it listed. So the bytes a publisher read and verified, or wrote and committed, under ``N.ROLE.json``
are the bytes the store holds under that name for as long as the catalogue exists, and the next publish from the
same host takes them from here: a publish into a name it published to last needs only the first round (the
timestamp) and the listing of its version's directory. python-tuf's client does the same with its own cache (it
loads a delegated role from disk when its version is the one the snapshot names).

Nothing here is trusted more than the store. Every entry is parsed and verified, signatures and version, exactly
as a download is; one that fails (torn by a crash, damaged, planted) is dropped and the file read from the store.
The cache directory must be the user's own and not writable by others (:func:`client_cache`, as for the reader's
cache), and every entry is reached without following a symlink (:class:`Beneath`) and read within the size cap of
its file. Any problem with the cache itself (not ours, full disk, a symlink in the way) makes it a miss, never a
failed publish: the store is always the source of truth. ``rm -rf CACHE/publisher`` is always safe.

Layout, under the ``cache_dir`` setting::

    publisher/<sha256(store identity)[:16]>-<sha256(1.root.json)[:16]>/ROLE.json

one file per role (so the cache of a catalogue never holds more files than its snapshot lists roles), whose first
line is the version N and the rest the bytes of ``N.ROLE.json``. The store's identity is its URL without
credentials and, for S3, its endpoint (a bucket of the same name on a test server is another catalogue, even one
copied from it). A catalogue made anew at the same place has another first root, so another directory. Entries
are replaced whole (temp file and rename, no fsync: a file a crash left torn is a miss); temp files of a publisher
killed mid-write are removed by the next one after an hour.

A catalogue that goes back in time (restored from a backup) and is then published to again reuses version numbers
for other bytes, which would make entries of the old history wrong for the new. ``timestamp.seen`` records the
newest timestamp this host saw (version and SHA-256): a timestamp of that version with other bytes drops every
entry at once; an older one makes the publish read everything from the store, and when its commit then succeeds
on top of that older timestamp (which a store that never goes back cannot let happen) every entry is dropped.
A host that first publishes after the restored catalogue has passed the version it saw cannot tell; clear the
publisher caches after restoring a catalogue (catalogue/README.md §7.2).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path

from imagectl.catalogue.cachedir import client_cache
from imagectl.catalogue.model import METADATA
from imagectl.errors import LocalIOError
from imagectl.fsio import AtomicFile, Beneath, read_at_most

__all__ = ["PUBLISHER_DIR", "CatalogueCache", "MetadataCache"]

PUBLISHER_DIR = "publisher"
SEEN = "timestamp.seen"  # "VERSION SHA256" of the newest timestamp.json this host saw of the catalogue
STALE_TEMP_S = 3600  # a temp file this old is a killed publisher's: removed
# N.ROLE.json, ROLE a file name of its own (no "/", no leading dot, within NAME_MAX with ".json"); not the two
# mutable files (root.json is versioned too, but the root chain is walked from the store: it decides the keys)
_KEY = re.compile(r"(?P<version>[1-9][0-9]{0,18})\.(?P<role>[A-Za-z0-9][A-Za-z0-9._~+-]{0,249})\.json")
_UNCACHED = frozenset({"root", "timestamp"})


def _entry(key: str) -> tuple[str, int] | None:
    """``(ROLE, N)`` of the metadata key ``metadata/N.ROLE.json``; None for any key this cache does not keep."""
    m = _KEY.fullmatch(key.removeprefix(METADATA)) if key.startswith(METADATA) else None
    if m is None or m["role"] in _UNCACHED or m["role"].endswith("."):
        return None
    return m["role"], int(m["version"])


class CatalogueCache:
    """The cached metadata of one catalogue (see the module docstring): :meth:`get`, :meth:`put`, :meth:`drop`."""

    def __init__(self, tree: Beneath, rel: str) -> None:
        self.tree, self.rel = tree, rel

    @property
    def path(self) -> Path:
        return self.tree.root / self.rel

    def get(self, key: str, limit: int) -> bytes | None:
        """The bytes of ``key`` as this cache holds them (to be verified by the caller), or None: not held, another
        version held, over ``limit`` bytes, or unreadable."""
        entry = _entry(key)
        if entry is None:
            return None
        role, version = entry
        header = b"%d\n" % version
        try:
            fd = self.tree.open_regular(f"{self.rel}/{role}.json")
        except (OSError, LocalIOError):
            return None
        try:
            data = read_at_most(fd, len(header) + limit + 1)  # one byte past the cap: an oversized entry is seen
        except OSError:
            return None
        finally:
            os.close(fd)
        if not data.startswith(header) or len(data) > len(header) + limit:
            return None
        return data[len(header) :]

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` as the bytes of ``key``, replacing the role's entry; silently nothing on any failure."""
        entry = _entry(key)
        if entry is None:
            return
        role, version = entry
        self._write(f"{role}.json", b"%d\n" % version + data)

    def _write(self, name: str, data: bytes) -> None:
        """Replace file ``name`` of this cache with ``data``, whole; silently nothing on any failure."""
        with (
            contextlib.suppress(OSError, LocalIOError),
            self.tree.dir(self.rel) as d,
            AtomicFile(self.path / name, dir_fd=d, mode=0o600, durable=False) as f,
        ):
            f.write(data)

    def drop(self, key: str) -> None:
        """Remove the entry of ``key``'s role (one that failed verification); silently nothing on failure."""
        entry = _entry(key)
        if entry is not None:
            with contextlib.suppress(OSError, LocalIOError):
                self.tree.unlink(f"{self.rel}/{entry[0]}.json")

    def seen(self) -> tuple[int, str] | None:
        """The newest timestamp this host recorded (version, SHA-256), or None (none, or unreadable)."""
        try:
            fd = self.tree.open_regular(f"{self.rel}/{SEEN}")
        except (OSError, LocalIOError):
            return None
        try:
            words = read_at_most(fd, 100).decode("ascii").split()
            version, digest = int(words[0]), words[1]
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return None
        finally:
            os.close(fd)
        return (version, digest) if len(words) == 2 and len(digest) == 64 else None

    def saw(self, version: int, digest: str) -> bool:
        """Note timestamp ``version`` (bytes of SHA-256 ``digest``) as read or committed. Returns False when the
        store is behind what this host saw: an older version (nothing recorded; the caller reads everything from
        the store). The same version with other bytes drops every entry (another history) and records it."""
        seen = self.seen()
        if seen is not None and seen[0] > version:
            return False
        if seen is not None and seen[0] == version and seen[1] != digest:
            self.clear()
        if seen != (version, digest):
            self._write(SEEN, f"{version} {digest}\n".encode())
        return True

    def clear(self) -> None:
        """Drop every entry and the record of the newest timestamp (the catalogue went back in time)."""
        with contextlib.suppress(OSError, LocalIOError), self.tree.dir(self.rel) as d, os.scandir(d) as it:
            for e in it:
                if e.name == SEEN or (e.name.endswith(".json") and not e.name.startswith(".")):
                    with contextlib.suppress(OSError):
                        os.unlink(e.name, dir_fd=d)

    def sweep(self, older_than: float = STALE_TEMP_S) -> None:
        """Remove the temp files (``.ROLE.json.XXXX.tmp``) older than ``older_than`` seconds: those of a publisher
        killed while writing an entry."""
        now = time.time()
        with contextlib.suppress(OSError, LocalIOError), self.tree.dir(self.rel) as d, os.scandir(d) as it:
            for e in it:
                if not (e.name.startswith(".") and e.name.endswith(".tmp")):
                    continue
                with contextlib.suppress(OSError):
                    if now - e.stat(follow_symlinks=False).st_mtime > older_than:
                        os.unlink(e.name, dir_fd=d)


class MetadataCache:
    """The publisher's metadata cache under the ``cache_dir`` setting; :meth:`bind` opens one catalogue's part."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def bind(self, identity: str, first_root: bytes) -> CatalogueCache | None:
        """The cache of the catalogue in the store of ``identity`` (:attr:`Store.identity`) whose ``1.root.json``
        is ``first_root``, made if new; None when the cache cannot be used (another user's, writable by others,
        not a directory, unwritable): the publish then reads everything from the store."""
        store, root = (hashlib.sha256(b).hexdigest()[:16] for b in (identity.encode(), first_root))
        rel = f"{PUBLISHER_DIR}/{store}-{root}"
        try:
            tree = client_cache(self.cache_dir)
            with tree.dir(rel, create=True, mode=0o700):
                pass
        except (OSError, LocalIOError):
            return None
        cache = CatalogueCache(tree, rel)
        cache.sweep()
        return cache
