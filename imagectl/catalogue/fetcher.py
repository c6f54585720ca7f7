"""A ``tuf.ngclient`` fetcher that reads through imagectl's store interface (and so its one HTTP session).

Metadata lengths are capped by the Updater (``download_file`` stops past ``max_length``), so a server sending
endless data is refused after the cap, not buffered; the JSON values of a metadata file are counted as it streams
(:class:`~imagectl.catalogue.metadata.ValueCounter`), so a file built to explode in the parser is refused before
it is parsed. A body cut off mid-way is resumed from where it stopped (a Range request), up to ``retries`` times:
the Updater checks the whole file's length, hash and signatures afterwards, so a resumed body is as safe as one
read in one go.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from imagectl.catalogue.metadata import ValueCounter
from imagectl.catalogue.model import METADATA
from imagectl.errors import DownloadError, ImagectlError
from imagectl.store import ObjectMissingError, Store
from imagectl.store.base import StatusError
from imagectl.urls import safe_url

__all__ = ["StoreFetcher"]


class StoreFetcher(FetcherInterface):
    """Maps ``<store.url><key>`` URLs to store reads; a missing object is HTTP 404 to the Updater."""

    def __init__(self, store: Store, retries: int = 3, backoff: float = 0.2) -> None:
        self.store = store
        self.retries = retries
        self.backoff = backoff  # seconds before the first retry, doubling (at most 5 s)
        self.fetched: list[str] = []  # keys read, in order (tests use it to show what a pull downloads)
        self._ahead: dict[str, bytes] = {}  # key -> bytes read by prefetch(), until the Updater asks for them
        self._noting = threading.Lock()

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.store.url):
            raise tuf_exc.DownloadError(f"refusing to fetch {safe_url(url)} outside the catalogue {self.store.shown}")
        key = url[len(self.store.url) :]
        ahead = self._ahead.pop(key, None)
        if ahead is not None:  # read by prefetch(): verified by the Updater now, as any download
            return iter((ahead,))
        self.fetched.append(key)
        return self._chunks(key)

    def prefetch(self, keys: Sequence[str], cap: int) -> None:
        """Read ``keys`` at once where the store sends requests at once (the bins of a binned name a listing reads,
        which the Updater asks for one after another); each is handed to the Updater when it asks for that key,
        and verified by it then, as any download. A read that fails, or passes ``cap`` bytes, is not kept: the
        Updater's own fetch of it says what is wrong. Bytes kept wait in memory, so callers prefetch a few at a
        time (``store.concurrent_requests``) and forget what was not asked for (:meth:`forget`)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._ahead]
        for key, got in zip(
            todo, self.store.gather([functools.partial(self._whole, k, cap) for k in todo]), strict=True
        ):
            if got.error is None and got.value is not None:
                self._ahead[key] = got.value

    def _whole(self, key: str, cap: int) -> bytes | None:
        with self._noting:
            self.fetched.append(key)
        buf = bytearray()
        for chunk in self._chunks(key):  # values counted, a cut-off body resumed, as for the Updater's own fetch
            buf += chunk
            if len(buf) > cap:
                return None
        return bytes(buf)

    def forget(self, keys: Sequence[str] | None = None) -> None:
        """Drop what :meth:`prefetch` read of ``keys`` (default: everything) and the Updater did not ask for."""
        for key in list(self._ahead) if keys is None else keys:
            self._ahead.pop(key, None)

    def holds(self, key: str) -> bool:
        """Whether :meth:`prefetch` read ``key`` and the Updater has not asked for it yet."""
        return key in self._ahead

    def _chunks(self, key: str) -> Iterator[bytes]:
        counter = ValueCounter(key) if key.startswith(METADATA) else None
        have, attempt = 0, 0
        while True:
            try:
                with self.store.open_range(key, have) as stream:
                    if stream.offset not in (0, have):
                        raise DownloadError(f"asked for {key} from byte {have}, the server sent from {stream.offset}")
                    skip = have - stream.offset  # a server that ignored Range resends what we already handed on
                    for chunk in stream.chunks:
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        if counter is not None:
                            counter.feed(chunk)
                        have += len(chunk)
                        yield chunk
                return
            except ObjectMissingError as e:
                raise tuf_exc.DownloadHTTPError(str(e), 404) from e
            except StatusError as e:  # the session has already retried 5xx answers
                raise tuf_exc.DownloadError(str(e)) from e
            except DownloadError as e:
                attempt += 1
                if attempt > self.retries:
                    raise tuf_exc.DownloadError(str(e)) from e
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 5.0))
            except ImagectlError as e:
                raise tuf_exc.DownloadError(str(e)) from e
