"""The small interface every place that holds catalogue bytes implements.

Keys are relative, ``/``-separated paths (``metadata/3.snapshot.json``, ``blobs/sha256/<hex>``). The catalogue code
knows nothing about directories, HTTP or S3; it speaks only this interface, so a new backend slots in by
implementing it.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from imagectl.errors import CatalogueStateError, NotFoundError

__all__ = ["ObjectEntry", "ObjectMissingError", "RangeStream", "Store", "content_tag"]

CHUNK = 1 << 20  # bytes per read: large enough to keep syscalls cheap, small enough to bound memory


def content_tag(data: bytes) -> str:
    """The version tag of ``data`` for stores without a native one: it changes exactly when the bytes change."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ObjectMissingError(NotFoundError):
    """The key does not exist in the store (the HTTP 404 of every backend)."""


@dataclass
class RangeStream:
    """An open byte stream of one object, possibly from an offset.

    ``offset`` is where the stream really starts: a server that ignores a Range request starts at 0, and the
    caller must then restart rather than append.
    """

    offset: int
    chunks: Iterator[bytes]
    total: int | None  # full object size when the backend knows it


@dataclass(frozen=True)
class ObjectEntry:
    """One key as a listing sees it."""

    key: str
    size: int  # bytes
    age: float  # seconds since it was last written, by this machine's clock (never negative)


class Store(abc.ABC):
    """Where a catalogue's bytes live."""

    #: canonical URL of the store's root, ending in ``/`` (``file:///srv/cat/``, ``https://host/cat/``)
    url: str
    writable: bool = True

    # -- reading -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str, max_length: int) -> bytes:
        """Return the whole object; raises ObjectMissingError, or DownloadError past ``max_length`` bytes."""

    @abc.abstractmethod
    def open_range(self, key: str, offset: int = 0) -> contextlib.AbstractContextManager[RangeStream]:
        """Open the object for streaming from ``offset`` (best effort; see :class:`RangeStream`)."""

    def read_versioned(self, key: str, max_length: int) -> tuple[bytes, str]:
        """Return the whole object and an opaque tag of this version of it, for :meth:`write_if_match`.

        Raises like :meth:`read`. The tag is only ever compared for equality with a later tag of the same key;
        it identifies the bytes (a local directory: their SHA-256; S3: the ETag), so a key rewritten with the
        same bytes keeps its tag. Catalogue metadata carries a version number that only grows, so its bytes
        never repeat and the tag never comes back.
        """
        data = self.read(key, max_length)
        return data, content_tag(data)

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the key exists."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (a directory-like prefix ending in ``/``), in no particular order."""

    def list_entries(self, prefix: str) -> Iterator[ObjectEntry]:
        """Like :meth:`list`, with each key's size and age (for gc's grace period)."""
        raise self._refuse()

    # -- writing (read-only stores refuse) -----------------------------------------------------------------
    def _refuse(self) -> CatalogueStateError:
        return CatalogueStateError(
            f"catalogue {self.url} is read-only over this protocol",
            hint="publish to the directory (or S3 bucket) the web server serves",
        )

    def write(self, key: str, data: bytes) -> None:
        """Create or atomically replace ``key``: a reader sees the old or the new bytes, never a mix."""
        raise self._refuse()

    def write_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (atomically); return False when it already existed."""
        raise self._refuse()

    def write_if_match(self, key: str, data: bytes, tag: str) -> bool:
        """Replace ``key`` with ``data`` only if its current tag is still ``tag`` (compare-and-swap).

        Returns False, writing nothing, when the key changed since :meth:`read_versioned` returned ``tag`` or
        no longer exists. The check and the replacement are one atomic step against every other
        ``write_if_match`` of the store, in any process on any machine that reaches the store.
        """
        raise self._refuse()

    def abort_stale_uploads(self, older_than: float, *, dry_run: bool = False) -> tuple[str, ...]:
        """Abort unfinished multi-part uploads started more than ``older_than`` seconds ago; return their keys.

        Only object stores have them (a publisher killed mid-upload leaves one behind, invisible to readers and
        to ``list``); everywhere else there is nothing to do.
        """
        return ()

    def upload_file(self, key: str, path: str) -> bool:
        """Copy a local file to ``key`` unless it already exists; return whether bytes were sent."""
        raise self._refuse()

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        raise self._refuse()

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialise writers of this catalogue for the duration of the block."""
        raise self._refuse()

    def key_url(self, key: str) -> str:
        return self.url + key
