"""The S3 store against a real SeaweedFS, and the compare-and-swap primitives on both writable stores."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.errors import CatalogueStateError, DownloadError, InvalidInputError, KeyProblemError
from imagectl.store import ObjectMissingError, ObjectTooLargeError, Store, open_store
from imagectl.store import s3 as s3mod
from imagectl.store.digest import file_digest
from imagectl.store.s3 import S3Store, TransferSettings
from tests.conftest import require_tools
from tests.s3server import VOLUME_MAX, S3Server, is_loopback, listening_sockets, seaweedfs_server

MiB = 1 << 20


def _race(n: int, fn: Callable[[int], bool]) -> list[int]:
    """Run ``fn(i)`` in ``n`` threads released at once; return the i whose call returned True."""
    barrier = threading.Barrier(n)
    wins: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            if fn(i):
                wins.append(i)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    assert not errors, errors
    return wins


# -- both stores -----------------------------------------------------------------------------------------------


def test_round_trip(store: Store) -> None:
    store.write("metadata/a.json", b'{"a": 1}')
    store.write("blobs/sha256/00", b"blob")
    store.write("metadata/a.json", b'{"a": 2}')  # replace
    assert store.read("metadata/a.json", 100) == b'{"a": 2}'
    assert store.exists("blobs/sha256/00") and not store.exists("blobs/sha256/01")
    assert sorted(store.list("metadata/")) == ["metadata/a.json"]
    assert sorted(store.list("")) == ["blobs/sha256/00", "metadata/a.json"]
    with pytest.raises(ObjectTooLargeError, match="larger than the allowed 3 bytes") as too_large:
        store.read("metadata/a.json", 3)
    assert too_large.value.exit_code == 8  # whole reads are of metadata: over its cap is untrusted
    store.delete("blobs/sha256/00")
    store.delete("blobs/sha256/00")  # a missing key is not an error
    assert not store.exists("blobs/sha256/00")
    with pytest.raises(ObjectMissingError):
        store.read("blobs/sha256/00", 100)
    with pytest.raises(ObjectMissingError):
        store.read("../escape", 100)


def test_list_entries(store: Store) -> None:
    store.write("blobs/sha256/aa", b"x" * 10)
    store.write("blobs/sha256/bb", b"")
    store.write("metadata/1.root.json", b"{}")
    entries = sorted(store.list_entries("blobs/"), key=lambda e: e.key)
    assert [(e.key, e.size) for e in entries] == [("blobs/sha256/aa", 10), ("blobs/sha256/bb", 0)]
    assert all(0 <= e.age < 120 for e in entries)


def test_empty_objects(store: Store) -> None:
    assert store.write_new("blobs/sha256/empty", b"") is True
    store.write("metadata/empty.json", b"")
    store.write("metadata/after.json", b"x")  # the connection an empty PUT used still answers
    assert store.read("blobs/sha256/empty", 10) == b"" and store.read("metadata/after.json", 10) == b"x"


def test_open_range(store: Store) -> None:
    data = bytes(range(256)) * 1000
    store.write("blobs/x", data)
    with store.open_range("blobs/x") as s:
        assert s.offset == 0 and s.total == len(data) and b"".join(s.chunks) == data
    with store.open_range("blobs/x", 1000) as s:
        assert s.offset == 1000 and s.total == len(data) and b"".join(s.chunks) == data[1000:]
    with pytest.raises(ObjectMissingError), store.open_range("blobs/none", 10):
        pass


def test_write_new_creates_once(store: Store) -> None:
    assert store.write_new("metadata/1.root.json", b"first") is True
    assert store.write_new("metadata/1.root.json", b"second") is False
    assert store.read("metadata/1.root.json", 100) == b"first"


def test_write_if_match(store: Store) -> None:
    store.write("metadata/timestamp.json", b"v1")
    data, tag = store.read_versioned("metadata/timestamp.json", 100)
    assert data == b"v1"
    assert store.write_if_match("metadata/timestamp.json", b"v2", tag) is True
    data2, tag2 = store.read_versioned("metadata/timestamp.json", 100)
    assert data2 == b"v2" and tag2 != tag
    assert store.write_if_match("metadata/timestamp.json", b"v3", tag) is False  # stale tag
    assert store.read("metadata/timestamp.json", 100) == b"v2"
    store.delete("metadata/timestamp.json")
    assert store.write_if_match("metadata/timestamp.json", b"v4", tag2) is False  # vanished
    assert not store.exists("metadata/timestamp.json")
    with pytest.raises(ObjectMissingError):
        store.read_versioned("metadata/timestamp.json", 100)


def test_write_if_match_race_has_one_winner(store: Store) -> None:
    key = "metadata/timestamp.json"
    for rnd in range(3):
        store.write(key, b"base %d" % rnd)
        _, tag = store.read_versioned(key, 100)
        wins = _race(6, lambda i: store.write_if_match(key, b"round %d writer %d" % (rnd, i), tag))  # noqa: B023
        assert len(wins) == 1
        assert store.read(key, 100) == b"round %d writer %d" % (rnd, wins[0])


def test_write_new_race_has_one_winner(store: Store) -> None:
    wins = _race(6, lambda i: store.write_new("metadata/7.snapshot.json", b"writer %d" % i))
    assert len(wins) == 1
    assert store.read("metadata/7.snapshot.json", 100) == b"writer %d" % wins[0]


def test_write_if_match_inside_the_writer_lock(store: Store) -> None:
    """A publisher holds lock() while it swaps the timestamp: that must not wait for itself."""
    store.write("metadata/timestamp.json", b"v1")
    result: list[bool] = []

    def publish() -> None:
        with store.lock():
            _, tag = store.read_versioned("metadata/timestamp.json", 100)
            result.append(store.write_if_match("metadata/timestamp.json", b"v2", tag))

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    t.join(timeout=20)
    assert result == [True], "write_if_match under lock() deadlocked or failed"


# -- S3 only --------------------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_urls_and_prefix_isolation(aws_env: S3Server) -> None:
    bucket = aws_env.make_bucket()
    a = open_store(f"s3://{bucket}/team/cat", retries=0)
    b = open_store(f"s3://{bucket}/team/cat2", retries=0)
    assert a.url == f"s3://{bucket}/team/cat/"
    assert a.key_url("metadata/root.json") == f"s3://{bucket}/team/cat/metadata/root.json"
    a.write("metadata/root.json", b"a")
    b.write("metadata/root.json", b"b")
    assert list(a.list("metadata/")) == ["metadata/root.json"]
    assert a.read("metadata/root.json", 10) == b"a"
    raw = aws_env.client().get_object(Bucket=bucket, Key="team/cat/metadata/root.json")
    assert raw["ContentType"] == "application/json"
    whole = open_store(f"s3://{bucket}", retries=0)
    assert whole.url == f"s3://{bucket}/"
    assert sorted(whole.list("team/")) == ["team/cat/metadata/root.json", "team/cat2/metadata/root.json"]


@pytest.mark.s3
def test_s3_list_pages(s3_store: S3Store) -> None:
    keys = {f"blobs/sha256/{i:02x}" for i in range(7)}
    for k in keys:
        s3_store.write(k, b"x")
    s3_store.write("blobs/.hidden", b"x")
    s3_store.list_page_size = 2
    pages: list[int] = []
    s3_store.client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda parsed, **kw: pages.append(parsed.get("KeyCount", 0))
    )
    assert set(s3_store.list("blobs")) == keys  # dot-files skipped as in a directory
    assert pages == [2, 2, 2, 2], pages  # 8 keys at 2 per page: every page was fetched and read


@pytest.mark.s3
def test_s3_tag_is_the_etag(s3_store: S3Store) -> None:
    s3_store.write("metadata/timestamp.json", b"hello")
    _, tag = s3_store.read_versioned("metadata/timestamp.json", 100)
    assert tag == '"' + hashlib.md5(b"hello").hexdigest() + '"'


@pytest.mark.s3
def test_s3_range_past_the_end_restarts_from_zero(s3_store: S3Store) -> None:
    s3_store.write("blobs/short", b"0123456789")
    with s3_store.open_range("blobs/short", 10) as s:  # e.g. a stale partial download as long as the blob
        assert s.offset == 0 and b"".join(s.chunks) == b"0123456789"


@pytest.mark.s3
def test_s3_upload_file_multipart_once(s3_store: S3Store, tmp_path: Path) -> None:
    path = tmp_path / "image.qcow2"
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    with path.open("wb") as f:
        for _ in range(20 * MiB // len(block)):
            f.write(block)
    s3_store.transfer = TransferSettings(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=4)
    digest = file_digest(str(path), part_size=s3_store.part_size)
    key = "blobs/sha256/" + digest.sha256

    assert s3_store.upload_file(key, str(path), digest) is True
    assert s3_store.stats.parts == 4
    assert s3_store.stats.bytes_sent == 20 * MiB
    with s3_store.open_range(key) as s:
        assert hashlib.sha256(b"".join(s.chunks)).hexdigest() == key.rsplit("/", 1)[1]
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=s3_store.prefix + key)
    assert head["ETag"].endswith('-4"')  # the multipart ETag names its part count

    before = s3_store.stats.bytes_sent
    assert s3_store.upload_file(key, str(path), digest) is False  # content-addressed: already there
    assert s3_store.stats.bytes_sent == before


@pytest.mark.s3
def test_s3_concurrency_setting_bounds_the_parts_in_flight(aws_env: S3Server, tmp_path: Path) -> None:
    """``s3_concurrency`` (IMAGECTL_S3_CONCURRENCY) reaches the store the CLI opens and bounds the parts of an
    upload sent at once, and is reached; metadata reads keep their own, larger, concurrency."""
    import dataclasses

    from imagectl.config import load_config

    for value, bound in (("0", "at least 1"), ("33", "at most 32")):
        with pytest.raises(
            InvalidInputError, match=rf"^IMAGECTL_S3_CONCURRENCY: s3_concurrency must be {bound}, got '{value}'$"
        ):
            load_config({}, {"IMAGECTL_S3_CONCURRENCY": value})
    assert load_config({}, {}).s3_concurrency == TransferSettings().concurrency == 4
    cfg = load_config({}, {"IMAGECTL_S3_CONCURRENCY": "3"})
    store = open_store(f"s3://{aws_env.shared_bucket()}/{uuid.uuid4().hex}/cat", **cfg.store_options())
    assert isinstance(store, S3Store)
    assert store.transfer.concurrency == 3
    assert store.concurrent_requests == s3mod.METADATA_REQUESTS == 8
    store.transfer = dataclasses.replace(store.transfer, multipart_threshold=5 * MiB, part_size=5 * MiB)

    path = tmp_path / "image.raw"
    path.write_bytes(hashlib.sha256(b"parts").digest() * (12 * 5 * MiB // 32))  # 12 parts
    digest = file_digest(str(path), part_size=store.part_size)
    in_flight, peak, lock = 0, 0, threading.Lock()
    send = store._send_checked

    def counting(op: str, *args: object) -> object:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return send(op, *args)  # type: ignore[arg-type]
        finally:
            with lock:
                in_flight -= 1

    store._send_checked = counting  # type: ignore[method-assign,assignment]
    assert store.upload_file("blobs/sha256/" + digest.sha256, str(path), digest) is True
    assert store.stats.parts == 12
    assert peak == 3


@pytest.mark.s3
def test_s3_small_file_single_put(s3_store: S3Store, tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"z" * 1000)
    digest = file_digest(str(path), part_size=s3_store.part_size)
    assert s3_store.upload_file("blobs/sha256/small", str(path), digest) is True
    assert s3_store.stats.parts == 0 and s3_store.stats.bytes_sent == 1000
    with pytest.raises(Exception, match="cannot read") as exc:
        s3_store.upload_file("blobs/sha256/other", str(tmp_path / "absent"), digest)
    assert exc.value.__class__.__name__ == "LocalIOError"


@pytest.mark.s3
def test_s3_conditional_writes_through_header_hook(s3_store: S3Store) -> None:
    """The fallback for a botocore that predates IfMatch/IfNoneMatch sends the same headers."""
    s3_store._native_conditions = False
    s3mod._install_header_hook(s3_store.client)
    assert s3_store.write_new("metadata/1.root.json", b"one") is True
    assert s3_store.write_new("metadata/1.root.json", b"two") is False
    _, tag = s3_store.read_versioned("metadata/1.root.json", 100)
    assert s3_store.write_if_match("metadata/1.root.json", b"three", '"0000"') is False
    assert s3_store.write_if_match("metadata/1.root.json", b"three", tag) is True
    assert s3_store.read("metadata/1.root.json", 100) == b"three"


@pytest.mark.s3
@pytest.mark.parametrize("op", ["write_new", "write_if_match"])
def test_s3_conditional_write_whose_answer_was_lost(aws_env: S3Server, op: str) -> None:
    """The server stored the PUT but the answer never arrived; botocore's retry then meets 412. That is a
    success (the key holds exactly our bytes), not a lost race."""
    import botocore.exceptions

    store = open_store(f"s3://{aws_env.shared_bucket()}/{uuid.uuid4().hex}", retries=2)
    assert isinstance(store, S3Store)
    store.write("metadata/timestamp.json", b"old")
    _, tag = store.read_versioned("metadata/timestamp.json", 100)
    session = store.client._endpoint.http_session
    real_send = session.send
    dropped: list[str] = []

    def send(request: object) -> object:
        response = real_send(request)
        if getattr(request, "method", "") == "PUT" and not dropped:
            dropped.append(str(getattr(request, "url", "")))
            raise botocore.exceptions.ConnectionClosedError(endpoint_url="dropped by the test")
        return response

    session.send = send
    if op == "write_new":
        assert store.write_new("metadata/2.root.json", b"mine") is True
        assert store.read("metadata/2.root.json", 100) == b"mine"
    else:
        assert store.write_if_match("metadata/timestamp.json", b"new", tag) is True
        assert store.read("metadata/timestamp.json", 100) == b"new"
    assert len(dropped) == 1
    # a real conflict after a retry stays a conflict
    dropped.clear()
    assert store.write_new("metadata/timestamp.json", b"other") is False
    assert store.read("metadata/timestamp.json", 100) != b"other"


@pytest.mark.s3
def test_s3_missing_key(s3_store: S3Store) -> None:
    assert not s3_store.exists("metadata/none.json")
    with pytest.raises(ObjectMissingError, match=r"metadata/none.json not found in s3://"):
        s3_store.read("metadata/none.json", 100)
    with pytest.raises(ObjectMissingError):
        s3_store.read_versioned("metadata/none.json", 100)
    with pytest.raises(ObjectMissingError), s3_store.open_range("metadata/none.json"):
        pass


@pytest.mark.s3
def test_s3_missing_bucket(aws_env: S3Server) -> None:
    store = open_store("s3://no-such-bucket-here/cat", retries=0)
    with pytest.raises(CatalogueStateError, match="bucket no-such-bucket-here does not exist"):
        store.read("metadata/root.json", 100)
    with pytest.raises(CatalogueStateError):
        store.write("metadata/root.json", b"x")
    with pytest.raises(CatalogueStateError):
        list(store.list("metadata/"))


@pytest.mark.s3
@pytest.mark.parametrize("which", ["secret", "access key"])
def test_s3_wrong_credentials(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    bucket = aws_env.make_bucket()
    aws_env.client().put_object(Bucket=bucket, Key="cat/metadata/root.json", Body=b"x")
    bad_secret = "not-the-secret-" + "x" * 20
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOBODY")
    store = open_store(f"s3://{bucket}/cat", retries=0)
    with pytest.raises(KeyProblemError, match="rejected the credentials") as exc:
        store.read("metadata/root.json", 100)
    with pytest.raises(KeyProblemError):
        store.write_new("metadata/2.root.json", b"x")
    with pytest.raises(KeyProblemError, match="HTTP 403"):
        store.exists("metadata/root.json")  # HEAD has no error body: 403 is all S3 says
    text = f"{exc.value} {exc.value.hint}"
    for secret in (bad_secret, aws_env.secret_key):
        assert secret not in text
    assert "\n" not in str(exc.value)


@pytest.mark.s3
def test_s3_no_credentials(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(f"s3://{aws_env.make_bucket()}/cat", retries=0)
    with pytest.raises(KeyProblemError, match="no S3 credentials found") as exc:
        store.read("metadata/root.json", 100)
    assert exc.value.hint and "AWS_ACCESS_KEY_ID" in exc.value.hint


@pytest.mark.s3
def test_seaweedfs_volume_count_does_not_follow_free_disk(seaweedfs: S3Server) -> None:
    """Every bucket holds a volume of its own; left to itself, weed sizes the volume count from free disk (5 GB free
    gave 40) and a session's later buckets then fail their first PUT with InternalError (CI run of 8c5d36d)."""
    port = seaweedfs.ports["master.port"]
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/dir/status"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    topology = json.loads(out)["Topology"]
    assert topology["Max"] == VOLUME_MAX
    assert topology["Free"] > VOLUME_MAX // 2, topology  # room left for the rest of the session's buckets


@pytest.mark.s3
def test_seaweedfs_listens_on_loopback_only(seaweedfs: S3Server) -> None:
    sockets = listening_sockets(seaweedfs.pid)
    assert sockets, "found no listening sockets: is /proc readable?"
    assert [s for s in sockets if not is_loopback(s[1])] == []
    assert {port for _proto, _addr, port in sockets} == set(seaweedfs.ports.values())
    require_tools("ss", install="iproute2")  # the same seen by ss, a second reader of the kernel's tables
    out = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[4] for line in out.splitlines() if f"pid={seaweedfs.pid}," in line]
    assert mine and all(addr.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "::1") for addr in mine), mine


@pytest.mark.s3
def test_seaweedfs_server_leaves_nothing_behind(tmp_path: Path) -> None:
    def sockets(ports: dict[str, int]) -> list[Path]:  # the gRPC sockets weed makes in /tmp, by exact name
        return [Path(f"/tmp/seaweedfs-{k.split('.')[0]}-grpc-{n}.sock") for k, n in ports.items() if ".grpc" in k]

    with seaweedfs_server(tmp_path) as srv:
        pid, root, ports = srv.pid, srv.root, srv.ports
        assert Path(f"/proc/{pid}").exists()
        assert [p for p in sockets(ports) if p.is_socket()], "weed made none of its sockets in /tmp"
    assert not Path(f"/proc/{pid}").exists(), "weed mini still running"
    assert not root.exists()
    # (matched by exact name: a socket another server left behind in a killed run may share digits with our ports)
    assert [p for p in sockets(ports) if p.is_socket() or p.exists()] == []


# -- no server needed -----------------------------------------------------------------------------------------


def test_open_store_s3_locations(no_aws: None) -> None:
    store = open_store("s3://bucket-1/a/b/", retries=0)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == ("bucket-1", "a/b/", "s3://bucket-1/a/b/")
    assert store.endpoint.startswith("https://") and "amazonaws.com" in store.endpoint  # default: AWS itself
    for bad in ("s3:///cat", "s3://b/cat?x=1", "s3://x/cat"):
        with pytest.raises(InvalidInputError):
            open_store(bad)


def test_s3_unreachable_endpoint(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    store = open_store("s3://bucket-1/cat", retries=0, timeout=5)
    with pytest.raises(DownloadError, match=r"cannot reach S3 at http://127.0.0.1:9") as exc:
        store.read("metadata/root.json", 100)
    assert "very-secret-value" not in str(exc.value)
