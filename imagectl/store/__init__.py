"""Where catalogue bytes live: a local directory or an S3 bucket (read-write), an HTTP(S) server (read-only)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from imagectl.errors import InvalidInputError
from imagectl.store.base import MIN_RATE, ObjectMissingError, ObjectTooLargeError, Pace, RangeStream, Store

__all__ = ["ObjectMissingError", "ObjectTooLargeError", "RangeStream", "Store", "open_store", "part_size_for"]


def part_size_for(location: str) -> int:
    """The part size the store at ``location`` uploads images in, each part with its own SHA-256 (S3), or 0 (a
    directory takes the whole file); told without opening the store, so a publish can start hashing first."""
    from imagectl.store.digest import UPLOAD_PART_SIZE

    return UPLOAD_PART_SIZE if urllib.parse.urlsplit(location).scheme == "s3" else 0


def open_store(
    location: str,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    min_rate: float = MIN_RATE,
    concurrency: int | None = None,
) -> Store:
    """Open the store a catalogue location names: ``DIR``, ``file:///DIR``, ``http(s)://HOST/PATH`` or
    ``s3://BUCKET/PREFIX`` (endpoint and credentials from the standard AWS settings). ``concurrency``: an S3
    store's image parts in flight at once (default :class:`~imagectl.store.s3.TransferSettings`'s).

    Raises InvalidInputError for a scheme imagectl does not speak.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in location):
        raise InvalidInputError("catalogue location contains control characters")
    parts = urllib.parse.urlsplit(location)
    if parts.scheme in ("http", "https"):
        from imagectl.http import make_session
        from imagectl.store.http import HTTPStore

        return HTTPStore(location, make_session(retries=retries), timeout, Pace(min_rate, max(timeout, 1.0)))
    if parts.scheme == "s3":
        from imagectl.store.s3 import S3Store, TransferSettings

        if not parts.netloc or parts.query or parts.fragment:
            raise InvalidInputError(f"S3 location must be s3://BUCKET/PREFIX: {location}")
        transfer = TransferSettings() if concurrency is None else TransferSettings(concurrency=concurrency)
        store = S3Store(
            parts.netloc, urllib.parse.unquote(parts.path), timeout=timeout, retries=retries, transfer=transfer
        )
        store.pace = Pace(min_rate, max(timeout, 1.0))
        return store
    from imagectl.store.local import LocalStore

    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(f"file URL with a host is not supported: {location}")
        return LocalStore(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter would be a Windows drive; not ours, but not a scheme
        raise InvalidInputError(
            f"unsupported catalogue location {location!r}",
            hint="use a directory path, file:///path, http(s)://host/path or s3://bucket/prefix",
        )
    return LocalStore(Path(location))
