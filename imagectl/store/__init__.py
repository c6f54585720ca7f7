"""Where catalogue bytes live: a local directory (read-write) or an HTTP(S) server (read-only)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from imagectl.errors import InvalidInputError
from imagectl.store.base import ObjectMissingError, RangeStream, Store

__all__ = ["ObjectMissingError", "RangeStream", "Store", "open_store"]


def open_store(location: str, *, timeout: float = 30.0, retries: int = 3) -> Store:
    """Open the store a catalogue location names: ``DIR``, ``file:///DIR`` or ``http(s)://HOST/PATH``.

    Raises InvalidInputError for a scheme imagectl does not speak.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in location):
        raise InvalidInputError("catalogue location contains control characters")
    parts = urllib.parse.urlsplit(location)
    if parts.scheme in ("http", "https"):
        from imagectl.http import make_session
        from imagectl.store.http import HTTPStore

        return HTTPStore(location, make_session(retries=retries), timeout)
    from imagectl.store.local import LocalStore

    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(f"file URL with a host is not supported: {location}")
        return LocalStore(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter would be a Windows drive; not ours, but not a scheme
        raise InvalidInputError(
            f"unsupported catalogue location {location!r}",
            hint="use a directory path, file:///path or http(s)://host/path",
        )
    return LocalStore(Path(location))
