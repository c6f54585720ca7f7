"""The one HTTP session every network call goes through.

Retries with exponential backoff on connection errors and 5xx (for idempotent requests), a connect/read timeout on
every request, a User-Agent naming imagectl, and URLs with credentials hidden before they reach a log or an error.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from imagectl import __version__
from imagectl.urls import safe_url

__all__ = ["make_session", "safe_url"]

USER_AGENT = f"imagectl/{__version__}"


def make_session(*, retries: int = 3, backoff: float = 0.5) -> requests.Session:
    """A session with retries on connection errors and 5xx, honouring Retry-After."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=4)  # HTTPStore.concurrent_requests
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
