"""Answers AWS S3 gives and SeaweedFS does not, through a stub server that speaks them (issue 13).

A conditional PUT racing another one gets 409 ``ConditionalRequestConflict`` from AWS while the other is in flight,
and ``If-Match`` on a key that does not exist gets 404 ``NoSuchKey``; SeaweedFS answers 412 to both. The stub is a
real HTTP server on 127.0.0.1 that boto3 talks to as to any endpoint: it records each request and answers with
the next scripted status and S3 error document.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.config
import pytest

from imagectl.store.s3 import S3Store


@dataclass
class Stub:
    """Scripted answers, by method, and the requests seen (method, path, headers)."""

    answers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # method -> [(status, error code)]
    bodies: list[bytes] = field(default_factory=list)  # bodies of successful GETs, in order (a listing page)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


def _error(code: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{code} (stub)</Message><RequestId>stub-1</RequestId></Error>"
    ).encode()


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            state.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            status, code = (state.answers.get(self.command) or [(200, "")]).pop(0)
            body = _error(code) if code and self.command != "HEAD" else b""
            if self.command == "GET" and not code and state.bodies:
                body = state.bodies.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_GET = do_HEAD = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _store(stub: Stub) -> S3Store:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=stub.url,
        aws_access_key_id="AKSTUB",
        aws_secret_access_key="stub-secret",
        region_name="us-east-1",
        config=botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": 1}, s3={"addressing_style": "path"}
        ),
    )
    return S3Store("bucket", "cat", client=client)


def test_409_conditional_request_conflict_is_a_lost_race(stub: Stub) -> None:
    """AWS: another conditional write to the key is in flight. Not an error: the swap was lost, try again."""
    store = _store(stub)
    stub.answers["PUT"] = [(409, "ConditionalRequestConflict"), (409, "ConditionalRequestConflict")]
    assert store.write_new("metadata/3.snapshot.json", b"{}") is False
    assert store.write_if_match("metadata/timestamp.json", b"{}", '"etag-1"') is False
    [(m1, p1, h1), (m2, p2, h2)] = stub.seen
    assert (m1, p1, h1["if-none-match"]) == ("PUT", "/bucket/cat/metadata/3.snapshot.json", "*")
    assert (m2, p2, h2["if-match"]) == ("PUT", "/bucket/cat/metadata/timestamp.json", '"etag-1"')


def test_no_such_key_on_if_match_is_a_lost_race(stub: Stub) -> None:
    """AWS: If-Match on a key that is gone answers 404 NoSuchKey (SeaweedFS: 412)."""
    store = _store(stub)
    stub.answers["PUT"] = [(404, "NoSuchKey")]
    assert store.write_if_match("metadata/timestamp.json", b"{}", '"etag-1"') is False


def test_no_such_key_on_a_plain_put_is_an_error(stub: Stub) -> None:
    """Without a condition NoSuchKey means something else (a missing bucket path): it is reported, not swallowed."""
    store = _store(stub)
    stub.answers["PUT"] = [(404, "NoSuchKey")]
    with pytest.raises(Exception, match="not found") as e:
        store.write("metadata/root.json", b"{}")
    assert e.value.__class__.__name__ == "ObjectMissingError"


def test_412_and_200(stub: Stub) -> None:
    store = _store(stub)
    stub.answers["PUT"] = [(412, "PreconditionFailed"), (200, "")]
    assert store.write_new("metadata/1.root.json", b"{}") is False
    assert store.write_new("metadata/1.root.json", b"{}") is True


def _page(token: str, key: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>bucket</Name><Prefix>cat/</Prefix>'
        f"<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
        f"<NextContinuationToken>{token}</NextContinuationToken>"
        f"<Contents><Key>cat/{key}</Key><Size>1</Size><LastModified>2026-12-04T00:00:00.000Z</LastModified>"
        "</Contents></ListBucketResult>"
    ).encode()


def test_a_listing_that_repeats_its_continuation_token_is_an_error(stub: Stub) -> None:
    """A server that answers every page "truncated, go on from T" would keep a listing paging forever: the second
    time a token comes back the listing stops with a one-line error (as botocore's paginator does), after three
    requests, each token sent once."""
    from imagectl.errors import DownloadError

    store = _store(stub)
    stub.bodies = [_page("t1", "targets/a"), _page("t2", "targets/b"), _page("t1", "targets/c"), _page("t2", "x")]
    with pytest.raises(DownloadError, match=r"repeated a listing's continuation token") as e:
        list(store.list("targets/"))
    assert "\n" not in str(e.value)
    sent = [path for method, path, _ in stub.seen if method == "GET"]
    assert len(sent) == 3, sent
    assert "continuation-token" not in sent[0] and "continuation-token=t1" in sent[1]
    assert "continuation-token=t2" in sent[2]
