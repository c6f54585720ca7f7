"""A ``tuf.ngclient`` fetcher that reads through imagectl's store interface (and so its one HTTP session).

Metadata lengths are capped by the Updater (``download_file`` stops past ``max_length``), so a server sending
endless data is refused after the cap, not buffered; the JSON values of a metadata file are counted as it streams
(:class:`~imagectl.catalogue.metadata.ValueCounter`), so a file built to explode in the parser is refused before
it is parsed. A body cut off mid-way is resumed from where it stopped (a Range request), up to ``retries`` times:
the Updater checks the whole file's length, hash and signatures afterwards, so a resumed body is as safe as one
read in one go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

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

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.store.url):
            raise tuf_exc.DownloadError(f"refusing to fetch {safe_url(url)} outside the catalogue {self.store.shown}")
        key = url[len(self.store.url) :]
        self.fetched.append(key)
        return self._chunks(key)

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
