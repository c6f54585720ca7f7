"""The small interface every place that holds catalogue bytes implements.

Keys are relative, ``/``-separated paths (``metadata/3.snapshot.json``, ``blobs/sha256/<hex>``). The catalogue code
knows nothing about directories, HTTP or S3; it speaks only this interface, so a new backend slots in by
implementing it.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from imagectl.errors import CatalogueStateError, DownloadError, ImagectlError, NotFoundError, UntrustedMetadataError
from imagectl.store.digest import FileDigest
from imagectl.urls import safe_url

__all__ = [
    "ObjectEntry",
    "ObjectMissingError",
    "ObjectTooLargeError",
    "Outcome",
    "Pace",
    "RangeStream",
    "StatusError",
    "Store",
    "content_tag",
    "paced",
]

T = TypeVar("T")

CHUNK = 1 << 20  # bytes per read: large enough to keep syscalls cheap, small enough to bound memory
MIN_RATE = 4096  # bytes/s: the slowest transfer a remote store may keep us waiting on (default)


@dataclass(frozen=True)
class Pace:
    """How slow a remote read may be: in every ``window`` seconds at least ``min_rate * window`` bytes arrive.

    The per-request timeout bounds each wait for *one* byte; a server that drips one byte every half second
    never trips it. This bounds the whole transfer: a file of N bytes takes at most N / min_rate + window
    seconds before the read fails with DownloadError (exit 13). ``min_rate`` 0 turns the check off.
    """

    min_rate: float = MIN_RATE  # bytes/s
    window: float = 30.0  # seconds


def paced(chunks: Iterator[bytes], pace: Pace, what: str) -> Iterator[bytes]:
    """Yield ``chunks``, raising DownloadError when a window of ``pace.window`` seconds brings fewer than
    ``pace.min_rate * pace.window`` bytes. The check runs whenever a chunk arrives, so the source must yield
    what it has as it arrives (``read1``), not wait to fill a large buffer."""
    if pace.min_rate <= 0:
        yield from chunks
        return
    mark_t, mark_n, n = time.monotonic(), 0, 0
    for chunk in chunks:
        n += len(chunk)
        now = time.monotonic()
        if now - mark_t >= pace.window:
            if n - mark_n < pace.min_rate * (now - mark_t):
                raise DownloadError(
                    f"{what}: too slow: {n - mark_n} bytes in {now - mark_t:.0f} s, under the minimum "
                    f"{pace.min_rate:.0f} bytes/s",
                    hint="a stalled or hostile server; check the network, or lower --min-rate",
                )
            mark_t, mark_n = now, n
        yield chunk


def content_tag(data: bytes) -> str:
    """The version tag of ``data`` for stores without a native one: it changes exactly when the bytes change."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# An image's blob key on an object store is a pointer: an empty object whose user metadata (the header
# x-amz-meta-imagectl-image, over the S3 API and plain HTTP alike) names the target file that holds the bytes
# (catalogue/README.md §6). Only a pointer of this form, to a target file whose name carries the blob's hash, is
# followed; :func:`pointer_target` is the one check, used by every store that reads pointers.
POINTER_META = "imagectl-image"
_SEGMENT = r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}"  # a name, version or arch as target paths hold them
_POINTER_AT = re.compile(rf"targets/(?:{_SEGMENT}/){{3}}([0-9a-f]{{64}})\.[0-9A-Za-z][0-9A-Za-z._+~-]{{0,255}}")


def pointer_target(blob: str, length: int, at: object) -> str | None:
    """The target file the object at ``blob`` (``length`` bytes, pointer metadata ``at``) points at, or None
    when it is not a well-formed pointer to a target file of the same SHA-256 (then it is judged as bytes)."""
    if length != 0 or not isinstance(at, str):
        return None
    m = _POINTER_AT.fullmatch(at)  # no segment can be "." or ".."
    return at if m is not None and m.group(1) == blob.rsplit("/", 1)[-1] else None


class ObjectMissingError(NotFoundError):
    """The key does not exist in the store (the HTTP 404 of every backend)."""


class StatusError(DownloadError):
    """The server answered with an error status (5xx after the session's own retries, or another 4xx)."""

    def __init__(self, message: str, hint: str | None = None, *, status: int = 0) -> None:
        super().__init__(message, hint)
        self.status = status


class ObjectTooLargeError(UntrustedMetadataError):
    """:meth:`Store.read` found more bytes than allowed. Whole reads are of metadata, whose caps are part of the
    format, so this is untrusted metadata (exit 8), not a network failure."""

    @classmethod
    def at(cls, key: str, limit: int) -> ObjectTooLargeError:
        return cls(f"{key} is larger than the allowed {limit} bytes")


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
    regular: bool = True  # False: a symlink, FIFO or other non-file a directory store found (reported, not followed)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one call of :meth:`Store.gather` returned or raised; :meth:`get` hands it on where the caller would
    have made the call itself (so an error surfaces at the same step, with the same exception, as in order)."""

    value: T | None = None
    error: Exception | None = None

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # None only when the call returned None


def _outcome(call: Callable[[], T]) -> Outcome[T]:
    try:
        return Outcome(value=call())
    except Exception as e:  # noqa: BLE001 - kept for Outcome.get, which raises it in the caller's thread
        return Outcome(error=e)


HASH_AHEAD_MIN = 8 << 20  # bytes: an object at least this large is hashed beside its download (hash_object)


@contextlib.contextmanager
def _one_thread(name: str) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


class Store(abc.ABC):
    """Where a catalogue's bytes live."""

    #: canonical URL of the store's root, ending in ``/`` (``file:///srv/cat/``, ``https://host/cat/``)
    url: str
    writable: bool = True
    pace: Pace = Pace()  # remote stores: how slow a transfer may get before it fails
    #: requests worth sending at once (:meth:`gather`): 1 where a request costs no round trip (a directory)
    concurrent_requests: int = 1

    def gather(self, calls: Sequence[Callable[[], T]]) -> list[Outcome[T]]:
        """Run ``calls`` (reads of this store that do not depend on each other) and return what each returned or
        raised, in order: at once on a remote store, where each costs a round trip (a publish reads the
        metadata files a verified chain will need in one round instead of one after another); one by one
        elsewhere. Nothing is trusted here: the caller verifies each result as if it had read it then."""
        if self.concurrent_requests < 2 or len(calls) < 2:
            return [_outcome(c) for c in calls]
        # the first call runs in this thread (one thread fewer to start and hand over to), the rest on at most
        # concurrent_requests - 1 others
        with concurrent.futures.ThreadPoolExecutor(min(len(calls), self.concurrent_requests) - 1) as pool:
            rest = [pool.submit(_outcome, c) for c in calls[1:]]
            first = _outcome(calls[0])
            return [first, *(f.result() for f in rest)]

    # -- reading -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str, max_length: int) -> bytes:
        """Return the whole object; raises ObjectMissingError, or ObjectTooLargeError past ``max_length`` bytes."""

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

    def list_children(self, prefix: str, start: str = "") -> set[str]:
        """The names of the "directories" right under ``prefix`` (ending in ``/``) that begin with ``start``:
        ``targets/NAME/`` with ``start`` ``20261203.`` gives the versions of that day with a target file. One
        request on S3 (a delimiter listing); nothing below those names is listed. Dot-names are skipped."""
        out = set()
        for key in self.list(prefix):
            child, slash, _rest = key[len(prefix) :].partition("/")
            if slash and child.startswith(start) and not child.startswith("."):
                out.add(child)
        return out

    def list_entries(self, prefix: str, *, hidden: bool = False) -> Iterator[ObjectEntry]:
        """Like :meth:`list`, with each key's size and age (for gc's grace period); ``hidden`` adds dot-files
        (temp files a killed publisher left)."""
        raise self._refuse()

    def regular_keys(self, prefix: str) -> set[str] | None:
        """The regular files under ``prefix``, from one listing; None where the store cannot list them (HTTP, or a
        symlinked directory): the caller then asks key by key with :meth:`exists`."""
        try:
            return {e.key for e in self.list_entries(prefix) if e.regular}
        except ImagectlError:
            return None

    # -- writing (read-only stores refuse) -----------------------------------------------------------------
    def _refuse(self) -> CatalogueStateError:
        return CatalogueStateError(
            f"catalogue {self.shown} is read-only over this protocol",
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

    #: bytes per part when this store uploads large files in parts (then :func:`file_digest` gives part digests)
    part_size: int = 0

    def upload_file(self, key: str, path: str, digest: FileDigest) -> bool:
        """Store exactly the ``digest.size`` bytes of ``path`` at ``key``, and only if they have ``digest``.

        Returns whether bytes were sent: False when ``key`` already holds those bytes. A ``key`` holding bytes of
        another size (or, where the store can tell cheaply, another hash) is replaced: blobs are content-addressed,
        so such a blob is damage (from a file that changed during an older publish), not data. Raises
        FileChangedError (nothing stored) when the bytes read now differ from ``digest``.
        """
        raise self._refuse()

    def place_target(self, blob: str, key: str, size: int) -> bool:
        """Make ``key`` hold the bytes of ``blob`` (which must have ``size`` bytes), for clients that fetch an image
        by its target path rather than by its blob key. A directory makes a hard link (no second copy), an object
        store a server-side copy (no bytes through this machine). Returns whether anything was written: False
        when ``key`` already holds the blob's bytes. A ``key`` holding other bytes (damage) is replaced. Raises
        ObjectMissingError when ``blob`` is missing, CatalogueStateError when it has another size."""
        raise self._refuse()

    @contextlib.contextmanager
    def open_first(self, keys: MutableSequence[str], offset: int = 0) -> Iterator[RangeStream]:
        """:meth:`open_range` of the first of ``keys`` the store holds (an image's target file, then its blob for
        a catalogue written before target files). A missing key is removed from ``keys``, so a caller that tries
        again goes straight to the next; when none is held, the ObjectMissingError of the first (the key the
        caller wants the bytes at) is raised."""
        first: ObjectMissingError | None = None
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    stream = stack.enter_context(self.open_range(keys[0], offset))
                    break
                except ObjectMissingError as e:
                    first = first or e
                    if len(keys) == 1:
                        raise first from None
                    keys.pop(0)
            yield stream

    def hash_object(self, key: str, limit: int) -> tuple[int, str]:
        """Read ``key`` from its first byte and hash it: ``(bytes read, their hex SHA-256)``. Reading stops once
        more than ``limit`` bytes came, so a count over ``limit`` means "longer than that" and an object that grows
        without end (or a server that never stops sending) costs at most ``limit`` + one chunk. Raises
        ObjectMissingError when ``key`` is absent, DownloadError when the stream does not start at byte 0, and
        what :meth:`open_range` raises."""
        h, n = hashlib.sha256(), 0
        with contextlib.ExitStack() as stack:
            stream = stack.enter_context(self.open_range(key))
            if stream.offset != 0:
                raise DownloadError(f"{key}: the store answered from byte {stream.offset}, not from the start")
            # A large object is hashed on a second thread while its next chunk is received (hashlib releases the
            # GIL over long buffers); one chunk in flight, so memory stays at two chunks.
            helper = None if (stream.total or 0) < HASH_AHEAD_MIN else stack.enter_context(_one_thread("sha256"))
            pending: concurrent.futures.Future[None] | None = None
            for chunk in stream.chunks:
                n += len(chunk)
                if n > limit:
                    break
                if helper is None:
                    h.update(chunk)
                    continue
                if pending is not None:
                    pending.result()
                pending = helper.submit(h.update, chunk)
            if pending is not None:
                pending.result()
        return n, h.hexdigest()

    #: whether this store keeps an image once, at its target file, with only a pointer at its blob key (object
    #: stores, which have no hard links: catalogue/README.md §6); a directory keeps the blob and links the
    #: target file to it
    single_copy: bool = False

    #: whether a publisher should keep this store's immutable metadata files in its host cache
    #: (:mod:`imagectl.catalogue.metacache`): worth it where a read is a request (an object store), not where it
    #: is a local file read like the cache's own
    cache_metadata: bool = False

    def store_image(self, blob: str, key: str, path: str, digest: FileDigest, *, unlisted: bool = False) -> bool:
        """Make the image bytes of ``path`` (exactly ``digest``) readable at its target file ``key`` and its
        ``blob`` key, sending only what the store does not hold yet; return whether image bytes were sent.
        ``unlisted``: the caller has just listed ``key``'s directory and ``key`` was not in it (a store that
        would ask whether it holds ``key`` may skip asking). Here: the blob is uploaded (:meth:`upload_file`),
        then the target file placed (:meth:`place_target`)."""
        sent = self.upload_file(blob, path, digest)
        self.place_target(blob, key, digest.size)
        return sent

    def release_blob(self, blob: str, key: str, size: int, sha256: str) -> int:
        """Where ``blob`` holds a second full copy of an image whose target file is ``key`` (an object store
        written before images were stored once), make it a pointer to ``key`` once ``key`` is found to hold
        exactly ``size`` bytes of ``sha256``; return the bytes freed. Raises CatalogueStateError, changing
        nothing, when ``key`` does not hold them. Here: 0, nothing to free (a directory links the two names to
        one copy)."""
        return 0

    def pointer(self, key: str) -> str | None:
        """The target file that the blob ``key`` points at, when the store keeps images once (an empty object
        naming it); None when ``key`` is bytes, is missing, or the store keeps no pointers."""
        return None

    def same_object(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are known, cheaply, to be one stored object (a hard link): then checking the
        bytes of one checks both. False means "not known", not "different"."""
        return False

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        raise self._refuse()

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialise writers of this catalogue for the duration of the block."""
        raise self._refuse()

    def key_url(self, key: str) -> str:
        return self.url + key

    @property
    def shown(self) -> str:
        """The store's URL as messages and files may show it (no credentials)."""
        return safe_url(self.url)

    @property
    def identity(self) -> str:
        """What tells this store from every other for a cache of its files (no credentials): its URL, and where
        the URL does not say which server holds it (S3), the server's too."""
        return self.shown
