"""A read-only catalogue served over HTTP(S) by any static web server."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import requests
import urllib3.exceptions

from imagectl.errors import DownloadError
from imagectl.http import safe_url
from imagectl.store.base import CHUNK, ObjectMissingError, RangeStream, Store

__all__ = ["HTTPStore"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HTTPStore(Store):
    writable = False

    def __init__(self, url: str, session: requests.Session, timeout: float) -> None:
        self.url = url.rstrip("/") + "/"
        self.session = session
        self.timeout = timeout

    def _get(self, key: str, headers: dict[str, str] | None = None) -> requests.Response:
        url = self.url + key
        try:
            resp = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.RequestException as e:
            raise DownloadError(f"cannot reach {safe_url(url)}: {type(e).__name__}") from e
        if resp.status_code in (403, 404, 410):
            resp.close()
            raise ObjectMissingError(f"{key} not found at {safe_url(self.url)} (HTTP {resp.status_code})")
        if resp.status_code >= 400:
            resp.close()
            raise DownloadError(f"HTTP {resp.status_code} from {safe_url(url)}")
        return resp

    def _iter(self, resp: requests.Response, url: str) -> Iterator[bytes]:
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        try:
            if encoding in ("", "identity"):
                # Raw reads hand over every byte that arrived before a connection drops, so a resumed download
                # starts exactly where this one stopped. iter_content's decoding path buffers a short read and
                # loses it (up to CHUNK bytes) when the next read raises IncompleteRead.
                yield from resp.raw.stream(CHUNK, decode_content=False)
            else:
                yield from resp.iter_content(CHUNK)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            raise DownloadError(f"connection lost while reading {safe_url(url)}: {type(e).__name__}") from e

    def read(self, key: str, max_length: int) -> bytes:
        resp = self._get(key)
        with resp:
            buf = bytearray()
            for chunk in self._iter(resp, self.url + key):
                buf += chunk
                if len(buf) > max_length:
                    raise DownloadError(f"{key} is larger than the allowed {max_length} bytes")
            return bytes(buf)

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int = 0) -> Iterator[RangeStream]:
        headers = {"Range": f"bytes={offset}-"} if offset else {"Accept-Encoding": "identity"}
        if offset:
            headers["Accept-Encoding"] = "identity"
        resp = self._get(key, headers)
        with resp:
            start, total = 0, None
            if resp.status_code == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m:
                    raise DownloadError(f"unparseable Content-Range from {safe_url(self.url + key)}")
                start = int(m.group(1))
                total = int(m.group(3)) if m.group(3) != "*" else None
            elif "Content-Length" in resp.headers:
                total = int(resp.headers["Content-Length"])
            yield RangeStream(offset=start, chunks=self._iter(resp, self.url + key), total=total)

    def exists(self, key: str) -> bool:
        try:
            resp = self.session.head(self.url + key, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as e:
            raise DownloadError(f"cannot reach {safe_url(self.url)}: {type(e).__name__}") from e
        return resp.status_code == 200

    def list(self, prefix: str) -> Iterator[str]:
        # A static web server cannot list; the catalogue never needs to list to read (metadata names every key).
        raise DownloadError(f"cannot list {safe_url(self.url)}: HTTP catalogues are not listable")
