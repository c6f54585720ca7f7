"""A real HTTP server on 127.0.0.1 for tests: serves a directory with Range support, counts the bytes it sends
and can misbehave on request, as a hostile catalogue host would: drop the connection mid-body, ignore Range, send
endless or huge data, serve other bytes, answer with an error status, drip-feed the body a byte at a time, lie
about lengths (Content-Length, Content-Range), redirect to other schemes, hosts or in circles.

With ``tls=make_tls_cert(dir)`` it speaks HTTPS instead, with a self-signed certificate for 127.0.0.1 that a client
trusts through ``REQUESTS_CA_BUNDLE`` (imagectl's one requests session reads it from the environment).
"""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Fault:
    """Misbehaviour for request paths ending in ``suffix``; ``times`` requests are affected (None: all)."""

    suffix: str
    drop_after: int | None = None  # close the connection after this many body bytes
    ignore_range: bool = False  # answer 200 with the whole body to a Range request
    endless: bool = False  # keep sending bytes past the end of the file (bounded by endless_limit)
    endless_limit: int = 64 << 20
    body: bytes | None = None  # serve these bytes instead of the file's
    status: int | None = None  # answer with this status and no body
    times: int | None = None
    drip: float | None = None  # send the body one byte every ``drip`` seconds (a slow-loris server)
    content_length: int | None = None  # claim this Content-Length whatever the body is (then close)
    content_range: str | None = None  # send this Content-Range header (with a 206) whatever was asked
    redirect: str | None = None  # answer redirect_status with this Location (relative paths: resolved by the client)
    redirect_status: int = 302
    stall: float | None = None  # wait this long (seconds) before answering at all: no status line, no headers
    chunked_endless: bool = False  # chunked transfer encoding, no length at all, bounded by endless_limit
    headers: dict[str, str] | None = None  # extra headers on an ordinary answer (an S3 object's x-amz-meta-*)


@dataclass
class Served:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    body_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Handler threads add paths to body_bytes while a test sums them: the sum took "dictionary changed size during
    # iteration" one run in many (test_attacks' endless-metadata test, polling while the server counted).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.body_bytes[path] += n

    def bytes_for(self, suffix: str) -> int:
        with self.lock:
            return sum(n for p, n in self.body_bytes.items() if p.endswith(suffix))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-answer is what refusals look like; anything else is still reported."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):  # also a TLS connection cut short
            return
        super().handle_error(request, client_address)


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by ``openssl req -x509`` in ``directory``:
    (certificate, key). The certificate is its own CA: point REQUESTS_CA_BUNDLE at it to trust it."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class TestHTTPServer:
    """``with TestHTTPServer(root) as srv:`` serves ``root`` at ``srv.url`` until the block ends."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, prefix: str = "", tls: tuple[Path, Path] | None = None) -> None:
        self.root = Path(root)
        self.prefix = prefix.strip("/")
        self.faults: list[Fault] = []
        self.served = Served()
        self.lock = threading.Lock()
        handler = self._handler()
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # the handshake happens in the handler's thread (setup), never in the accepting one
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}/" + (f"{self.prefix}/" if self.prefix else "")

    def add_fault(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.served = Served()

    def _fault_for(self, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if path.endswith(f.suffix) and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def __enter__(self) -> TestHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # seconds a silent client may hold a handler thread

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                if isinstance(self.connection, ssl.SSLSocket):
                    self.connection.do_handshake()

            def _file(self) -> Path | None:
                path = self.path.split("?", 1)[0].lstrip("/")
                if server.prefix:
                    if not path.startswith(server.prefix + "/"):
                        return None
                    path = path[len(server.prefix) + 1 :]
                target = (server.root / path).resolve()
                if server.root.resolve() not in target.parents or not target.is_file():
                    return None
                return target

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                rng = self.headers.get("Range")
                with server.lock:
                    # Counted where it started: a request still finishing its bytes when a test calls clear() must
                    # not add them to what is served after (the client has its bytes before _count runs).
                    self.served = server.served
                    self.served.requests.append((self.command, self.path, rng))
                fault = server._fault_for(self.path)
                if fault and fault.stall is not None:
                    time.sleep(fault.stall)
                if fault and fault.redirect is not None:
                    self.send_response(fault.redirect_status)
                    self.send_header("Location", fault.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault and fault.status:
                    self.send_response(fault.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                target = self._file()
                if target is None and not (fault and fault.body is not None):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = fault.body if fault and fault.body is not None else target.read_bytes()  # type: ignore[union-attr]
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if fault and fault.content_range is not None:  # a 206 that says what the fault says
                    start = int(m.group(1)) if m and int(m.group(1)) < len(data) else 0
                    self.send_response(206)
                    self.send_header("Content-Range", fault.content_range)
                elif m and not (fault and fault.ignore_range) and int(m.group(1)) < len(data):
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if fault and fault.chunked_endless:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    sent = 0
                    try:
                        while not head and sent < fault.endless_limit:
                            self.wfile.write(b"10000\r\n" + b"\0" * 65536 + b"\r\n")
                            self.wfile.flush()
                            sent += 65536
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self._count(sent)  # body bytes the kernel took (those in its buffers included)
                    self.close_connection = True
                    return
                if fault and fault.drip is not None:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    sent = 0
                    try:
                        for i in range(0 if head else len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            sent += 1
                            time.sleep(fault.drip)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self._count(sent)
                    self.close_connection = True
                    return
                if fault and fault.content_length is not None:
                    self.send_header("Content-Length", str(fault.content_length))
                    self.end_headers()
                    try:
                        if not head:
                            self.wfile.write(body[: fault.content_length])
                            self.wfile.flush()
                            self._count(len(body[: fault.content_length]))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if fault and fault.endless:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if not head:
                        sent = 0
                        try:
                            self.wfile.write(body)
                            sent = len(body)
                            while sent < fault.endless_limit:
                                self.wfile.write(b"\0" * 65536)
                                sent += 65536
                        except (BrokenPipeError, ConnectionResetError):
                            pass
                        self._count(sent)
                    self.close_connection = True
                    return
                for name, value in (fault.headers or {}).items() if fault else ():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if fault and fault.drop_after is not None:
                    body = body[: fault.drop_after]
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                self._count(len(body))

            def _count(self, n: int) -> None:
                """Add ``n`` body bytes sent for this request's path to ``served.body_bytes``."""
                self.served.count(self.path, n)

        return Handler
