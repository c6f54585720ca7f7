"""A ``tuf.ngclient`` fetcher that reads through imagectl's store interface (and so its one HTTP session)."""

from __future__ import annotations

from collections.abc import Iterator

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from imagectl.errors import ImagectlError
from imagectl.store import ObjectMissingError, Store

__all__ = ["StoreFetcher"]


class StoreFetcher(FetcherInterface):
    """Maps ``<store.url><key>`` URLs to store reads; a missing object is HTTP 404 to the Updater.

    Metadata lengths are capped by the Updater (``download_file`` stops past ``max_length``), so a server sending
    endless data is refused after the cap, not buffered.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fetched: list[str] = []  # keys read, in order (tests use it to show what a pull downloads)

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.store.url):
            raise tuf_exc.DownloadError(f"refusing to fetch {url} outside the catalogue {self.store.url}")
        key = url[len(self.store.url) :]
        self.fetched.append(key)
        return self._chunks(key)

    def _chunks(self, key: str) -> Iterator[bytes]:
        try:
            with self.store.open_range(key) as stream:
                yield from stream.chunks
        except ObjectMissingError as e:
            raise tuf_exc.DownloadHTTPError(str(e), 404) from e
        except ImagectlError as e:
            raise tuf_exc.DownloadError(str(e)) from e
