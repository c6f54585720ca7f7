"""An S3 catalogue read over plain HTTP from the same bucket, and publishers killed mid-publish on S3.

Plain HTTP: the test SeaweedFS lets anyone GET/HEAD the objects of one bucket (``S3Server.public_bucket()``, a
public-read bucket) and nothing else; a catalogue published there with the S3 API is pulled, listed and verified
through its path-style URL ``http://HOST:PORT/BUCKET/PREFIX/cat/`` with no AWS credentials at all, an interrupted
pull resumes with a Range request, and a private blob is readable through a presigned URL only.

Crashes: publishers (``tests.publisher_worker``) are SIGKILLed at random points of the publishing protocol, then
``catalogue verify``, ``catalogue gc --grace 0`` and the next publish are checked. The worker runs under
``_TRACED_WORKER``, which only prints one line per S3 request it starts (so a kill point can be chosen among the
protocol's steps: the publish itself is ~0.15 s of a ~1 s process) and, when asked, kills its own process at one
exact moment: after the server's ``100 Continue`` for a chosen PUT, before the first body byte.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import target_file_key, target_path
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.catalogue.state import load_state
from imagectl.errors import DownloadError
from imagectl.store import open_store
from imagectl.store.http import HTTPStore
from imagectl.store.s3 import S3Store, TransferSettings
from tests.conftest import EXPIRY, REPO, sha256
from tests.s3server import S3Server

pytestmark = pytest.mark.s3

MiB = 1 << 20
IMAGE_PUT = r"^PUT .*/targets/wn/[^/]+/x86_64/[0-9a-f]{64}\.wn-[^/]+-x86_64\.raw$"  # its one copy, the target file

# Runs tests.publisher_worker unchanged (argv: CAT KEYS NAME N SEED [SIZE]). Before each S3 request it prints
# "REQ METHOD PATH[?QUERY-NAMES]" to stderr. With IMAGECTL_TEST_KILL_ON=REGEX it SIGKILLs its own process when a
# matching request has sent its headers and got "100 Continue" (botocore sends every PUT body that way), i.e. the
# server is waiting for a body that will never come.
_TRACED_WORKER = r"""
import os, re, runpy, signal, sys
from botocore.awsrequest import AWSHTTPConnection

kill_on = re.compile(os.environ["IMAGECTL_TEST_KILL_ON"]) if os.environ.get("IMAGECTL_TEST_KILL_ON") else None
putrequest, send_body = AWSHTTPConnection.putrequest, AWSHTTPConnection._send_message_body

def traced_putrequest(self, method, url, *args, **kwargs):
    path, _, query = url.partition("?")
    names = sorted(q.split("=", 1)[0] for q in query.split("&") if q)
    self._imagectl_req = f"{method} {path}" + ("?" + "&".join(names) if names else "")
    sys.stderr.write(f"REQ {self._imagectl_req}\n")  # one write per line: parts go up from several threads
    sys.stderr.flush()
    return putrequest(self, method, url, *args, **kwargs)

def killing_send_body(self, message_body):
    if kill_on is not None and kill_on.search(getattr(self, "_imagectl_req", "")):
        sys.stderr.write(f"KILL {self._imagectl_req}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return send_body(self, message_body)

AWSHTTPConnection.putrequest = traced_putrequest
AWSHTTPConnection._send_message_body = killing_send_body
sys.argv = ["tests.publisher_worker", *sys.argv[1:]]
runpy.run_module("tests.publisher_worker", run_name="__main__", alter_sys=True)
"""


@dataclass
class S3Cat:
    server: S3Server
    bucket: str
    prefix: str  # key prefix of the catalogue, "…/cat/"
    url: str  # s3://BUCKET/…/cat
    keys: Path
    root: Path  # 1.root.json as a deployer pins it

    @functools.cached_property
    def client(self) -> Any:
        """A boto3 client with the server's key (for looking behind imagectl's back)."""
        return self.server.client()

    @functools.cached_property
    def store(self) -> S3Store:
        store = open_store(self.url)
        assert isinstance(store, S3Store)
        return store

    @property
    def http(self) -> str:
        """The same catalogue as a plain-HTTP, path-style URL."""
        return f"{self.server.endpoint}/{self.bucket}/{self.prefix}"

    def objects(self, under: str = "") -> dict[str, int]:
        """Every object under the catalogue (or under ``under`` inside it): key relative to the catalogue -> size."""
        found: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + under)
        for page in pages:
            for obj in page.get("Contents", ()):
                found[obj["Key"][len(self.prefix) :]] = obj["Size"]
        return found

    def multipart_uploads(self) -> list[dict[str, Any]]:
        """Incomplete multipart uploads under the catalogue."""
        resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return list(resp.get("Uploads", []))


@pytest.fixture
def aws(aws_env: S3Server) -> S3Server:
    return aws_env


def _init(server: S3Server, bucket: str, tmp_path: Path, cli) -> S3Cat:
    prefix = f"{uuid.uuid4().hex}/cat/"
    url = f"s3://{bucket}/{prefix.rstrip('/')}"
    keys = tmp_path / "keys"
    r = cli("catalogue", "init", url, "--keys", keys, "--json")
    assert r.code == 0, r.err
    root = tmp_path / "root.json"
    root.write_bytes(open_store(url).read("metadata/1.root.json", 1 << 20))
    assert sha256(root) == json.loads(r.out)["root_sha256"]
    return S3Cat(server, bucket, prefix, url, keys, root)


@pytest.fixture
def public_cat(aws: S3Server, tmp_path: Path, cli) -> S3Cat:
    """A fresh catalogue in the anonymously readable bucket."""
    return _init(aws, aws.public_bucket(), tmp_path, cli)


@pytest.fixture
def private_cat(aws: S3Server, tmp_path: Path, cli) -> S3Cat:
    """A fresh catalogue in the session's private bucket."""
    return _init(aws, aws.shared_bucket(), tmp_path, cli)


def _publish_cli(cli, cat: S3Cat, img: Path, version: str, *extra: str) -> None:
    where = ["--catalogue", cat.url, "--keys", cat.keys]
    r = cli("publish", img, *where, "--name", "wn", "--arch", "x86_64", "--version", version, *extra)
    assert r.code == 0, r.err


def _no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on this process has no AWS settings: whatever still works, works anonymously."""
    for key in list(os.environ):
        if key.startswith("AWS_") and key != "AWS_EC2_METADATA_DISABLED":
            monkeypatch.delenv(key)


@pytest.fixture
def blob_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, int | None]]:
    """Every image download over HTTP from now on (its target file, or a blob): (key, offset asked, offset served,
    total size)."""
    calls: list[tuple[str, int, int, int | None]] = []
    real = HTTPStore.open_range

    @contextlib.contextmanager
    def spy(self: HTTPStore, key: str, offset: int = 0) -> Iterator[Any]:
        with real(self, key, offset) as stream:
            if key.startswith(("blobs/", "targets/")):  # metadata is streamed through open_range too
                calls.append((key, offset, stream.offset, stream.total))
            yield stream

    monkeypatch.setattr(HTTPStore, "open_range", spy)
    return calls


# -- plain HTTP ------------------------------------------------------------------------------------------------------


def test_public_bucket_is_anonymously_readable_and_write_protected(seaweedfs: S3Server) -> None:
    public, private = seaweedfs.public_bucket(), seaweedfs.shared_bucket()
    key = f"{uuid.uuid4().hex}/blob"
    data = os.urandom(300_000)
    client = seaweedfs.client()
    for bucket in (public, private):
        client.put_object(Bucket=bucket, Key=key, Body=data)
    url = f"{seaweedfs.endpoint}/{public}/{key}"
    with requests.Session() as http:  # no credentials, no signature: what a deployer's plain HTTP client sends
        r = http.get(url)
        assert (r.status_code, r.content) == (200, data)
        r = http.head(url)
        assert (r.status_code, int(r.headers["Content-Length"])) == (200, len(data))
        r = http.get(url, headers={"Range": "bytes=100000-"})  # how an interrupted pull resumes
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes 100000-{len(data) - 1}/{len(data)}"
        assert r.content == data[100000:]
        assert http.get(f"{seaweedfs.endpoint}/{public}/{uuid.uuid4().hex}").status_code == 404

        # Read only: every way of writing is refused without credentials, and nothing changed.
        new = f"{seaweedfs.endpoint}/{public}/{uuid.uuid4().hex}"
        assert http.put(new, data=b"planted").status_code == 403
        assert http.put(url, data=b"overwritten").status_code == 403
        assert http.put(url, data=b"x", headers={"If-None-Match": "*"}).status_code == 403
        assert http.delete(url).status_code == 403
        assert http.post(f"{new}?uploads").status_code == 403  # no multipart upload either
        assert http.get(f"{seaweedfs.endpoint}/{public}?list-type=2").status_code == 403  # nor listing
        assert client.get_object(Bucket=public, Key=key)["Body"].read() == data
        assert client.list_objects_v2(Bucket=public, Prefix=new.rsplit("/", 1)[1]).get("KeyCount", 0) == 0

        # Only that bucket: the same object in any other bucket needs the key.
        assert http.get(f"{seaweedfs.endpoint}/{private}/{key}").status_code == 403
        assert http.head(f"{seaweedfs.endpoint}/{private}/{key}").status_code == 403


def test_pull_list_and_verify_over_plain_http(public_cat: S3Cat, cli, make_image, tmp_path, monkeypatch, blob_requests):
    """Published with the S3 API, read by deployers over plain HTTP with no AWS credentials at all."""
    img1, img2 = make_image(1_500_000, seed="one"), make_image(700_001, seed="two")
    _publish_cli(cli, public_cat, img1, "1", "--channel", "stable")
    _publish_cli(cli, public_cat, img2, "2")
    _no_aws_credentials(monkeypatch)
    http = public_cat.http
    assert http.startswith("http://127.0.0.1:") and http.endswith("/cat/")
    reader = ("--catalogue", http, "--root", public_cat.root)

    def pull(ref: str, dest: Path) -> dict[str, Any]:
        r = cli("pull", ref, *reader, "--arch", "x86_64", "-o", dest, "--json")
        assert r.code == 0, r.err
        return dict(json.loads(r.out))

    r = cli("catalogue", "list", *reader, "--json")
    assert r.code == 0, r.err
    assert sorted((e["name"], e["version"], e["channels"]) for e in json.loads(r.out)) == [
        ("wn", "1", ["stable"]),
        ("wn", "2", []),
    ]

    newest, stable = tmp_path / "newest.img", tmp_path / "stable.img"
    assert pull("wn", newest)["version"] == "2"
    assert pull("wn@stable", stable)["version"] == "1"
    assert newest.read_bytes() == img2.read_bytes() and stable.read_bytes() == img1.read_bytes()
    # Each image came in one anonymous GET of its target file, the only copy on S3 (no Range: nothing to resume).
    assert blob_requests == [
        (target_file_key("wn/2/x86_64/wn-2-x86_64.qcow2", sha256(img2)), 0, 0, 700_001),
        (target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", sha256(img1)), 0, 0, 1_500_000),
    ]

    r = cli("catalogue", "verify", http, "--json")
    assert r.code == 0, r.out
    report = json.loads(r.out)
    assert report["ok"] and report["images_checked"] == 2
    # every target file read back over HTTP and hashed, once: the blob keys are pointers to them (no second copy)
    assert report["blob_bytes_hashed"] == 1_500_000 + 700_001

    # Pulling again comes from the client cache: metadata is refreshed over HTTP, no blob byte is fetched.
    blob_requests.clear()
    again = tmp_path / "again.img"
    result = pull("wn", again)
    assert (result["version"], result["cached"]) == ("2", True)
    assert blob_requests == []
    assert again.read_bytes() == img2.read_bytes()

    # The HTTP catalogue is read-only: publishing through it is refused (publish to the s3:// URL instead).
    r = cli("publish", img2, "--catalogue", http, "--keys", public_cat.keys, "--name", "wn", "--arch", "x86_64")
    assert r.code == 16 and "read-only" in r.err, r.err


def test_interrupted_http_pull_resumes_with_range(
    public_cat: S3Cat, cli, make_image, tmp_path, monkeypatch, blob_requests
):
    img = make_image(5 * MiB + 123, seed="resume")
    _publish_cli(cli, public_cat, img, "1")
    _no_aws_credentials(monkeypatch)
    want = sha256(img)
    part = Path(os.environ["IMAGECTL_CACHE_DIR"]) / "blobs" / "sha256" / f"{want}.part"
    args = ("pull", "wn:1", "--catalogue", public_cat.http, "--root", public_cat.root, "--arch", "x86_64")

    # The connection drops once 2 MiB of the blob have arrived (IMAGECTL_RETRIES=0: the pull gives up at once).
    real_iter = HTTPStore._iter
    cut = {"on": True}

    def dropping(self: HTTPStore, resp: requests.Response, url: str) -> Iterator[bytes]:
        got = 0
        for chunk in real_iter(self, resp, url):
            yield chunk
            got += len(chunk)
            if cut["on"] and "/targets/" in url and got >= 2 * MiB:
                raise DownloadError(f"connection lost while reading {url} (simulated)")

    monkeypatch.setattr(HTTPStore, "_iter", dropping)
    dest = tmp_path / "out.raw"
    r = cli(*args, "-o", dest)
    assert r.code == DownloadError.exit_code, r.err
    assert not dest.exists()
    have = part.stat().st_size
    assert 2 * MiB <= have < img.stat().st_size
    assert part.read_bytes() == img.read_bytes()[:have]

    cut["on"] = False
    blob_requests.clear()
    r = cli(*args, "-o", dest, "--json")
    assert r.code == 0, r.err
    # One request, for the rest only: SeaweedFS answered the anonymous Range GET with 206 from exactly that byte.
    assert blob_requests == [(target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", want), have, have, img.stat().st_size)]
    assert dest.read_bytes() == img.read_bytes()
    assert not part.exists()
    assert json.loads(r.out)["cached"] is False


def test_presigned_url_reads_one_private_image(private_cat: S3Cat, make_image) -> None:
    """Without a public bucket: a presigned GET of one image (its target file) works over plain HTTP; the plain
    URL does not."""
    store = private_cat.store
    img = make_image(600_000, seed="presign")
    res = publish(store, KeyRing(private_cat.keys), PublishRequest(file=str(img), name="wn", arch="x86_64"), EXPIRY)
    key = target_file_key(res.record.path, sha256(img))
    data = img.read_bytes()
    with requests.Session() as http:
        assert http.get(private_cat.http + key).status_code == 403
        signed = store.presign(key, expires=60)
        assert signed.startswith(private_cat.server.endpoint + "/") and "Signature=" in signed  # SigV2 or SigV4
        r = http.get(signed)
        assert (r.status_code, r.content) == (200, data)
        r = http.get(signed, headers={"Range": "bytes=500000-"})
        assert (r.status_code, r.content) == (206, data[500000:])
        assert http.put(signed, data=b"x").status_code == 403  # a GET signature does not allow a write
        assert http.get(private_cat.http + "metadata/timestamp.json").status_code == 403  # nor other keys


# -- publishers killed on S3 -----------------------------------------------------------------------------------------


def _spawn(cat: S3Cat, seed: str, size: int, kill_on: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "IMAGECTL_TEST_KILL_ON"}
    if kill_on:
        env["IMAGECTL_TEST_KILL_ON"] = kill_on
    return subprocess.Popen(
        [sys.executable, "-c", _TRACED_WORKER, cat.url, str(cat.keys), "wn", "1", seed, str(size)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str]) -> tuple[str, str]:
    return p.communicate(timeout=120)


def _publish_worker(cat: S3Cat, seed: str, size: int) -> str:
    """One publish by the plain worker, to completion; returns the version it got."""
    r = subprocess.run(
        [sys.executable, "-m", "tests.publisher_worker", cat.url, str(cat.keys), "wn", "1", seed, str(size)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (version,) = r.stdout.split()
    return version


def _verify_clean(cli, cat: S3Cat, context: str) -> None:
    r = cli("catalogue", "verify", cat.url)
    assert r.code == 0, f"{context}: {r.out}{r.err}"


def _image_key(entry: dict[str, Any]) -> str:
    """The target file of a `catalogue list --json` entry: where its bytes are, once, on S3."""
    path = target_path(entry["name"], entry["version"], entry["arch"], entry["format"])
    return target_file_key(path, entry["sha256"])


def _listed(cli, cat: S3Cat) -> list[dict[str, Any]]:
    r = cli("catalogue", "list", "wn", "--catalogue", cat.url, "--root", cat.root, "--json")
    if r.code != 0:  # nothing published under that name yet
        assert "no image named" in r.err, r.err
        return []
    return list(json.loads(r.out))


def _live_metadata(cat: S3Cat) -> set[str]:
    """The metadata keys gc must keep: every root file, timestamp, and the versions the current timestamp reaches."""
    state = load_state(cat.store)
    keep = {k for k in cat.objects("metadata/") if k.endswith("root.json")}
    keep |= {"metadata/timestamp.json", f"metadata/{state.snapshot.signed.version}.snapshot.json"}
    keep |= {f"metadata/{m.version}.{name}" for name, m in state.snapshot.signed.meta.items()}
    return keep


TRIALS = 30  # an image is stored in one PUT, so fewer kill points than before land between it and the commit
TRIAL_SIZE = 4 * MiB  # one single-part PUT (below the multipart threshold); ~15 ms on the wire
MAX_REQUESTS = 15  # S3 requests of one publish: 7 GETs, HEAD+PUT target file, HEAD+PUT pointer, up to 4
# conditional PUTs, GET root.json


def test_publisher_killed_at_random_points_s3(private_cat: S3Cat, cli, request: pytest.FixtureRequest) -> None:
    """30 publishers SIGKILLed at random points: verify is clean after each, no truncated object is ever left,
    nothing a publisher reported done is lost, gc --grace 0 removes exactly the orphans, the next publish works."""
    cat = private_cat
    rng = random.Random(20261125)
    outcomes: list[str] = []
    reported: list[str] = []  # versions killed workers printed (committed) before the kill landed
    objects = cat.objects()
    for trial in range(TRIALS):
        seed = f"k{trial // 2}"  # each image is tried twice: the second try finds whatever the first left
        before = set(objects)
        ts_before = cat.store.read("metadata/timestamp.json", 1 << 20)
        p = _spawn(cat, seed, TRIAL_SIZE)
        watchdog = threading.Timer(60, p.kill)
        watchdog.start()
        try:
            point = rng.randrange(-1, MAX_REQUESTS + 1)  # -1: start-up; k: just after the k-th request began
            if point < 0:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                seen = 0
                while seen <= point and (line := p.stderr.readline()):  # EOF: it finished first
                    seen += line.startswith("REQ ")
                time.sleep(rng.uniform(0.0, 0.006))
            p.send_signal(signal.SIGKILL)  # a no-op if it already exited
            out, err = _finish(p)
        finally:
            watchdog.cancel()
        assert p.returncode in (0, -signal.SIGKILL), err[-2000:]
        reported += out.split()

        _verify_clean(cli, cat, f"trial {trial} (point {point})")
        objects = cat.objects()
        empty = [k for k, size in objects.items() if size == 0 and cat.store.pointer(k) is None]
        assert empty == [], f"trial {trial}: empty objects that are not pointers"
        images = {k: size for k, size in objects.items() if k.startswith("targets/")}
        assert set(images.values()) <= {TRIAL_SIZE}, f"trial {trial}: a truncated image: {images}"
        blobs = {k: size for k, size in objects.items() if k.startswith("blobs/")}
        assert set(blobs.values()) <= {0}, f"trial {trial}: a second copy at a blob key: {blobs}"
        committed = cat.store.read("metadata/timestamp.json", 1 << 20) != ts_before
        outcomes.append("committed" if committed else "orphans" if set(objects) - before else "nothing")

    summary = {o: outcomes.count(o) for o in ("nothing", "orphans", "committed")}
    # The kill points did land inside publishes: some left orphans without committing, some committed first.
    assert summary["orphans"] >= 3 and summary["committed"] >= 1, outcomes
    listed = _listed(cli, cat)
    versions = [e["version"] for e in listed]
    assert len(versions) == summary["committed"]  # each commit added exactly one version
    assert set(reported) <= set(versions)  # nothing a publisher reported done was lost
    referenced = {f"blobs/sha256/{e['sha256']}" for e in listed}
    referenced |= {_image_key(e) for e in listed}
    held_before = set(cat.objects("blobs/")) | set(cat.objects("targets/"))
    assert referenced <= held_before

    r = cli("catalogue", "gc", cat.url, "--grace", "0", "--json")
    assert r.code == 0, r.err
    removed = set(json.loads(r.out)["removed"])
    # every image file and pointer left is referenced, none referenced is gone
    assert set(cat.objects("blobs/")) | set(cat.objects("targets/")) == referenced
    assert {k for k in removed if k.startswith(("blobs/", "targets/"))} == held_before - referenced
    assert set(cat.objects("metadata/")) == _live_metadata(cat)  # and only live metadata is left
    assert not removed & _live_metadata(cat)
    _verify_clean(cli, cat, "after gc")
    multipart_left = cat.multipart_uploads()
    request.node.user_properties += [("kill_outcomes", summary), ("multipart_uploads_left", len(multipart_left))]
    assert multipart_left == []  # single-part PUTs only (4 MiB < the multipart threshold): nothing to leak

    version = _publish_worker(cat, "after-the-crashes", TRIAL_SIZE)
    _verify_clean(cli, cat, "next publish")
    assert sorted(e["version"] for e in _listed(cli, cat)) == sorted([*versions, version])


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("image", IMAGE_PUT),
        ("image role", r"^PUT .*/metadata/\d+\.image-wn\.json$"),
        ("snapshot", r"^PUT .*/metadata/\d+\.snapshot\.json$"),
        ("timestamp swap", r"^PUT .*/metadata/timestamp\.json$"),
    ],
)
def test_publisher_killed_before_a_put_body(private_cat: S3Cat, cli, target: str, pattern: str) -> None:
    """The worst moment for a PUT: headers sent, server said 100 Continue, the body never comes (the publisher
    died). SeaweedFS must store nothing (imagectl's PUTs carry a Content-Type and a CRC32 checksum), the catalogue
    verifies, and publishing the same bytes again stores them in full, once. (The pointer's PUT has no body, so no
    such moment: the random kills above land around it.)"""
    cat = private_cat
    p = _spawn(cat, "worst", TRIAL_SIZE, kill_on=pattern)
    _out, err = _finish(p)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("KILL PUT "), err[-2000:]
    if target == "image":  # the pointer comes after the image: not written yet
        assert cat.objects("blobs/") == {} and cat.objects("targets/") == {}
    # no empty object from the body-less PUT (the only empty object may be the image's pointer)
    assert [k for k, size in cat.objects().items() if size == 0 and cat.store.pointer(k) is None] == []
    _verify_clean(cli, cat, f"killed before the {target} body")
    assert _listed(cli, cat) == []  # the swap never happened

    version = _publish_worker(cat, "worst", TRIAL_SIZE)
    _verify_clean(cli, cat, "republish")
    (entry,) = _listed(cli, cat)
    assert entry["version"] == version
    assert cat.objects("targets/") == {_image_key(entry): TRIAL_SIZE}
    assert cat.objects("blobs/") == {f"blobs/sha256/{entry['sha256']}": 0}
    assert cat.store.pointer(f"blobs/sha256/{entry['sha256']}") == _image_key(entry)


def test_publisher_killed_in_a_multipart_upload(private_cat: S3Cat, cli, request: pytest.FixtureRequest) -> None:
    """A large image goes up to its target file in parallel parts; a publisher killed mid-upload (one part waiting
    for its body, the others wherever they are) leaves an incomplete multipart upload. It is not an object:
    readers, verify and gc never see it; `catalogue gc` aborts it once it is older than the grace period."""
    cat = private_cat
    size = TransferSettings().multipart_threshold + MiB
    p = _spawn(cat, "big", size, kill_on=IMAGE_PUT[:-1] + r"\?partNumber&uploadId$")
    _out, err = _finish(p)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    # parts go up from several threads: another one may still print its REQ line between the KILL line and the kill
    assert "\nREQ POST " in err and "KILL PUT " in err, err[-2000:]

    uploads = cat.multipart_uploads()
    assert len(uploads) == 1 and uploads[0]["Key"].startswith(cat.prefix + "targets/wn/"), uploads
    parts = cat.client.list_parts(Bucket=cat.bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
    request.node.user_properties.append(("parts_in_killed_upload", len(parts.get("Parts", []))))
    assert cat.objects("targets/") == {} and cat.objects("blobs/") == {}  # the image never became an object
    _verify_clean(cli, cat, "killed mid-multipart")
    r = cli("catalogue", "gc", cat.url, "--json")  # default grace: a running publish may still finish it
    assert r.code == 0 and json.loads(r.out)["aborted_uploads"] == []
    assert [u["UploadId"] for u in cat.multipart_uploads()] == [uploads[0]["UploadId"]]
    r = cli("catalogue", "gc", cat.url, "--grace", "0", "--dry-run", "--json")
    assert json.loads(r.out)["aborted_uploads"] == [uploads[0]["Key"][len(cat.prefix) :]]
    assert len(cat.multipart_uploads()) == 1  # dry run
    r = cli("catalogue", "gc", cat.url, "--grace", "0", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["removed"] == [] and report["aborted_uploads"] == [uploads[0]["Key"][len(cat.prefix) :]]
    assert cat.multipart_uploads() == []

    version = _publish_worker(cat, "big", size)  # the same bytes: uploaded in full this time
    _verify_clean(cli, cat, "republish after the abort")
    (entry,) = _listed(cli, cat)
    assert entry["version"] == version
    assert cat.objects("targets/") == {_image_key(entry): size}
    assert cat.objects("blobs/") == {f"blobs/sha256/{entry['sha256']}": 0}
    assert cat.multipart_uploads() == []
