"""Image bytes go to S3 as ``UNSIGNED-PAYLOAD``, bound by the signed ``x-amz-checksum-sha256`` the server checks
(S3Store._send_checked): no second SHA-256 pass over the image for SigV4 on ``http://`` endpoints. Against the
real server (SeaweedFS), and behind a loopback proxy that makes it behave like servers that keep no such bargain:
one that never gives the checksum back, one that refuses unsigned payloads. Either way the object ends up holding
exactly the file's bytes, sent signed."""

from __future__ import annotations

import hashlib
import http.client
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagectl.store import open_store
from imagectl.store.digest import FileChangedError, FileDigest, composite_checksum, file_digest
from imagectl.store.s3 import S3Store, TransferSettings
from tests import s3server
from tests.conftest import write_pattern

pytestmark = pytest.mark.s3

MiB = 1 << 20
UNSIGNED = "UNSIGNED-PAYLOAD"


def put(store: S3Store, path: Path, size: int) -> FileDigest:
    """Write ``size`` bytes to ``path``, hash them as publish does, upload them to ``blobs/sha256/NAME``."""
    write_pattern(path, size, seed=path.name)
    digest = file_digest(str(path), part_size=store.part_size)
    assert store.upload_file(f"blobs/sha256/{path.name}", str(path), digest) is True
    return digest


class Proxy(ThreadingHTTPServer):
    """Forwards every request to the S3 server unchanged (Host header included, so signatures hold), then:
    ``strip_echo`` drops ``x-amz-checksum-sha256`` from its answers; ``refuse_unsigned`` answers 403 to any
    request whose payload is unsigned. ``seen`` records (method, query, x-amz-content-sha256) of each request."""

    daemon_threads = True

    def __init__(self, upstream: str, *, strip_echo: bool = False, refuse_unsigned: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream.split("://", 1)[1]
        self.strip_echo, self.refuse_unsigned = strip_echo, refuse_unsigned
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: Proxy
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, *args: Any) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = self.headers.get("x-amz-content-sha256", "")
        query = self.path.partition("?")[2]
        with self.server.lock:
            self.server.seen.append((self.command, query, payload))
        if self.server.refuse_unsigned and payload == UNSIGNED:
            answer = b"<Error><Code>AccessDenied</Code><Message>payloads must be signed</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            skip = {"connection", "keep-alive", "transfer-encoding", "expect"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() in ("connection", "transfer-encoding") or (
                    k.lower() == "content-length" and self.command != "HEAD"  # a HEAD's is the object's length
                ):
                    continue
                if self.server.strip_echo and k.lower() == "x-amz-checksum-sha256":
                    continue
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


@pytest.fixture
def proxied(aws_env: s3server.S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function (proxy settings) -> (S3Store through a new proxy, the proxy); every proxy is stopped after."""
    started: list[Proxy] = []

    def make(**kw: bool) -> tuple[S3Store, Proxy]:
        proxy = Proxy(aws_env.endpoint, **kw)
        threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        started.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = open_store(f"s3://{aws_env.shared_bucket()}/{uuid.uuid4().hex}/cat", retries=0, timeout=10)
        assert isinstance(store, S3Store)
        store.transfer = TransferSettings(
            multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=1, unsigned_min=MiB
        )
        return store, proxy

    yield make
    for proxy in started:
        proxy.shutdown()
        proxy.server_close()


def uploads(proxy: Proxy) -> list[str]:
    """The payload hash each body-carrying request of image bytes declared, in order (PUT of a part or object)."""
    return [payload for method, _query, payload in proxy.seen if method == "PUT"]


def test_image_bytes_go_unsigned_and_the_server_still_checks_them(proxied: Any, tmp_path: Path) -> None:
    store, proxy = proxied()
    assert store.unsigned_payloads is None  # not known before the server has answered
    image = tmp_path / "x"
    digest = put(store, image, 12 * MiB)
    assert uploads(proxy) == [UNSIGNED] * 3  # three parts, none hashed for SigV4
    assert store.unsigned_payloads is True  # SeaweedFS gave each checksum back
    head = store.client.head_object(Bucket=store.bucket, Key=store.prefix + "blobs/sha256/x", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite_checksum(digest.parts) and head["ContentLength"] == 12 * MiB

    # metadata goes signed: its payload hash is the SHA-256 of the body
    store.write("metadata/timestamp.json", b"{}")
    assert uploads(proxy)[-1] == hashlib.sha256(b"{}").hexdigest()
    # so does an image shorter than unsigned_min (hashing it costs less than the twin client)
    before = len(uploads(proxy))
    tiny = put(store, tmp_path / "tiny", MiB // 2)
    assert uploads(proxy)[before:] == [tiny.sha256]

    # and a body that is not what the checksum says is still refused by the server: nothing stored
    other = tmp_path / "other.raw"
    other.write_bytes(image.read_bytes())
    hashed = file_digest(str(other), part_size=store.part_size)
    with other.open("r+b") as f:
        f.write(b"\x00" * 10)  # changed after hashing, as a build still writing it would
    with pytest.raises(FileChangedError, match="a part the server received has other bytes"):
        store.upload_file("blobs/sha256/y", str(other), hashed)
    assert uploads(proxy)[-1] == UNSIGNED and not store.exists("blobs/sha256/y")


def test_a_server_that_gives_no_checksum_back_gets_signed_payloads(proxied: Any, tmp_path: Path) -> None:
    store, proxy = proxied(strip_echo=True)
    digest = put(store, tmp_path / "x", 12 * MiB)
    assert store.unsigned_payloads is False
    sent = uploads(proxy)
    # the first part went unsigned, was not confirmed, and went again signed; so did every part after it
    assert sent == [UNSIGNED, *digest.parts], sent
    with store.open_range("blobs/sha256/x") as s:
        assert hashlib.sha256(b"".join(s.chunks)).hexdigest() == digest.sha256
    # a whole-object PUT (a small image) is signed from the start now
    one = put(store, tmp_path / "s", 1 * MiB)
    assert uploads(proxy)[-1] == one.sha256


def test_a_server_that_refuses_unsigned_payloads_gets_signed_ones(proxied: Any, tmp_path: Path) -> None:
    store, proxy = proxied(refuse_unsigned=True)
    small = tmp_path / "s"
    one = put(store, small, 1 * MiB)
    assert store.unsigned_payloads is False
    assert uploads(proxy) == [UNSIGNED, one.sha256]
    assert store.read("blobs/sha256/s", 2 * MiB) == small.read_bytes()


def test_a_store_on_a_client_it_was_given_signs_every_payload(aws_env: s3server.S3Server, tmp_path: Path) -> None:
    """No twin can be built from a client handed in (its settings are the caller's): payloads stay signed."""
    store = S3Store(aws_env.shared_bucket(), f"{uuid.uuid4().hex}/cat", client=aws_env.client())
    store.transfer = TransferSettings(unsigned_min=0)  # any body would go unsigned, if this store could
    assert store.unsigned_payloads is False and store.clients() == (store.client,)
    seen: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: seen.append(request.headers["X-Amz-Content-SHA256"].decode())
    )
    assert seen == [put(store, tmp_path / "s", 1 * MiB).sha256]
