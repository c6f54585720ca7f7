"""A read-only catalogue served over HTTP(S) by any static web server."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator

import requests
import urllib3.exceptions

from imagectl.errors import DownloadError
from imagectl.http import safe_url
from imagectl.store.base import (
    CHUNK,
    POINTER_META,
    ObjectMissingError,
    ObjectTooLargeError,
    Pace,
    RangeStream,
    StatusError,
    Store,
    paced,
    pointer_target,
)

__all__ = ["HTTPStore"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAX_REDIRECTS = 5


def _timed_out(e: BaseException) -> bool:
    """Whether a requests exception (or what it wraps: urllib3's MaxRetryError around a ReadTimeoutError) is a
    timeout."""
    seen: set[int] = set()
    todo: list[object] = [e]
    while todo:
        x = todo.pop()
        if not isinstance(x, BaseException) or id(x) in seen:  # a reason may be a plain string
            continue
        seen.add(id(x))
        if isinstance(x, (requests.Timeout, TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
        todo += [getattr(x, "reason", None), x.__cause__, x.__context__, *x.args]
    return False


class HTTPStore(Store):
    writable = False
    #: reads sent at once by :meth:`gather` (a listing's bins): the session's connections per host (imagectl.http)
    concurrent_requests = 4

    def __init__(self, url: str, session: requests.Session, timeout: float, pace: Pace | None = None) -> None:
        self.url = url.rstrip("/") + "/"
        self.session = session
        self.timeout = timeout
        self.pace = pace or Pace(window=max(timeout, 1.0))

    def _request(self, method: str, key: str, headers: dict[str, str] | None = None) -> requests.Response:
        """Send ``method`` for ``key``, following at most MAX_REDIRECTS redirects by hand: only to http(s), never
        from https down to http. Raises DownloadError for anything else, or when the server cannot be reached."""
        url = self.url + key
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.session.request(
                    method, url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as e:
                # requests reports a read timeout under retries as a ConnectionError: say what happened
                why = "no answer within --timeout" if _timed_out(e) else type(e).__name__
                raise DownloadError(f"cannot reach {safe_url(url)}: {why}") from e
            except ValueError:
                # requests parses a redirect's Location itself (even with allow_redirects=False) and lets a
                # malformed one (http://[::1/x) escape as a ValueError
                raise DownloadError(f"{safe_url(url)} redirects to an unparseable location") from None
            if resp.status_code not in (301, 302, 303, 307, 308):
                return resp
            resp.close()
            try:
                nxt = urllib.parse.urljoin(url, resp.headers.get("Location", ""))
                scheme = urllib.parse.urlsplit(nxt).scheme
            except ValueError:
                raise DownloadError(f"{safe_url(url)} redirects to an unparseable location") from None
            if scheme not in ("http", "https") or (url.startswith("https:") and scheme != "https"):
                raise DownloadError(
                    f"refusing the redirect of {safe_url(url)} to {safe_url(nxt)}: only http(s), and never from "
                    "https to http"
                )
            url = nxt
        raise DownloadError(f"{safe_url(self.url + key)}: more than {MAX_REDIRECTS} redirects")

    def _get(self, key: str, headers: dict[str, str] | None = None) -> requests.Response:
        resp = self._request("GET", key, headers)
        if resp.status_code in (403, 404, 410):
            resp.close()
            raise ObjectMissingError(f"{key} not found at {safe_url(self.url)} (HTTP {resp.status_code})")
        if resp.status_code >= 400:
            resp.close()
            raise StatusError(f"HTTP {resp.status_code} from {safe_url(self.url + key)}", status=resp.status_code)
        return resp

    def _iter(self, resp: requests.Response, url: str) -> Iterator[bytes]:
        return paced(self._raw(resp, url), self.pace, safe_url(url))

    def _raw(self, resp: requests.Response, url: str) -> Iterator[bytes]:
        """The body as it arrives: ``read1`` returns what one socket read brought (not a full CHUNK), so every
        byte that arrived before a connection drops is handed over (a resumed download starts exactly where this
        one stopped) and the pace check sees a dripping server at once."""
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        decode = encoding not in ("", "identity")
        try:
            while block := resp.raw.read1(CHUNK, decode_content=decode):
                yield block
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise DownloadError(f"connection lost while reading {safe_url(url)}: {type(e).__name__}") from e

    def read(self, key: str, max_length: int) -> bytes:
        resp = self._get(key)
        with resp:
            buf = bytearray()
            for chunk in self._iter(resp, self.url + key):
                buf += chunk
                if len(buf) > max_length:
                    raise ObjectTooLargeError.at(key, max_length)
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
            elif resp.headers.get("Content-Length", "").isdigit():
                total = int(resp.headers["Content-Length"])
            yield RangeStream(offset=start, chunks=self._iter(resp, self.url + key), total=total)

    def exists(self, key: str) -> bool:
        resp = self._request("HEAD", key)
        resp.close()
        return resp.status_code == 200

    def pointer(self, key: str) -> str | None:
        """An object store's pointer read over plain HTTP: an empty object with the ``x-amz-meta-imagectl-image``
        header (S3 serves user metadata as headers). A directory behind a web server has none."""
        resp = self._request("HEAD", key)
        resp.close()
        if resp.status_code != 200 or not resp.headers.get("Content-Length", "").isdigit():
            return None
        at = resp.headers.get(f"x-amz-meta-{POINTER_META}")
        return pointer_target(key, int(resp.headers["Content-Length"]), at)

    def list(self, prefix: str) -> Iterator[str]:
        # A static web server cannot list; the catalogue never needs to list to read (metadata names every key).
        raise DownloadError(f"cannot list {safe_url(self.url)}: HTTP catalogues are not listable")
