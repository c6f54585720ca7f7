"""URLs as imagectl shows and stores them: credentials never leave the process.

A catalogue or mirror URL may carry ``user:password@`` (HTTP basic auth) or a query with a presigned signature.
Every message, log line, cache file and record that names a URL goes through :func:`safe_url`.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

__all__ = ["redact", "redact_json", "safe_url"]


def safe_url(url: str, *, keep_query: bool = True) -> str:
    """``url`` with any user:password (and query string) hidden, safe to print, log or store.

    The userinfo becomes ``<hidden>@`` and a query ``?<hidden>`` (it may hold a presigned URL's signature); with
    ``keep_query=False`` the query is dropped. Never raises: a malformed URL is shown as ``<unparseable URL>``.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<unparseable URL>"
    if "@" in netloc:
        netloc = "<hidden>@" + netloc.rsplit("@", 1)[1]
    query = "<hidden>" if parts.query and keep_query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s\"']+@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it hidden (``http://<hidden>@host/``).

    For values that may hold several URLs or URLs inside other words: environment variables handed to a build
    (``IMAGECTL_SLC_REPOS="os=http://u:p@m/os ..."``), command lines, log lines, build records.
    """
    return _USERINFO.sub(r"\1<hidden>@", text)


def redact_json(value: Any) -> Any:
    """A copy of a JSON-able ``value`` with :func:`redact` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value
