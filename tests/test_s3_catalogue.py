"""Catalogues on a real S3 server (SeaweedFS on 127.0.0.1): round trip, dedupe, concurrent publishers, gc."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import PUBLISHER_DIR
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.store import open_store
from tests.conftest import EXPIRY, sha256
from tests.s3server import S3Server
from tests.test_concurrency import run_publishers
from tests.test_schema import assert_valid

pytestmark = pytest.mark.s3


@pytest.fixture
def s3cat(aws_env: S3Server, tmp_path, cli):
    """A fresh catalogue at s3://BUCKET/PREFIX/cat with keys in tmp_path; AWS_* point at the server."""
    seaweedfs = aws_env
    url = f"s3://{seaweedfs.shared_bucket()}/{uuid.uuid4().hex}/cat"
    keys = tmp_path / "keys"
    r = cli("catalogue", "init", url, "--keys", keys, "--json")
    assert r.code == 0, r.err
    root = tmp_path / "root.json"
    root.write_bytes(open_store(url).read("metadata/1.root.json", 1 << 20))
    assert sha256(root) == json.loads(r.out)["root_sha256"]
    return url, keys, root


def test_round_trip_on_s3(s3cat, cli, make_image, tmp_path):
    url, keys, root = s3cat
    img = make_image(1_500_000)
    r = cli(
        "publish",
        img,
        "--catalogue",
        url,
        "--keys",
        keys,
        "--name",
        "wn",
        "--arch",
        "x86_64",
        "--version",
        "1",
        "--channel",
        "stable",
    )
    assert r.code == 0, r.err
    r = cli("catalogue", "list", "--catalogue", url, "--root", root, "--json")
    assert [(e["name"], e["version"], e["channels"]) for e in json.loads(r.out)] == [("wn", "1", ["stable"])]
    dest = tmp_path / "out.qcow2"
    r = cli("pull", "wn@stable", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", dest, "--json")
    assert r.code == 0, r.err
    assert dest.read_bytes() == img.read_bytes()
    for cmd in (("deprecate", "wn:1"), ("revoke", "wn:1", "--reason", "test")):
        assert cli(*cmd, "--catalogue", url, "--keys", keys).code == 0
    assert cli("catalogue", "verify", url).code == 0


def test_same_bytes_are_uploaded_once(s3cat, make_image):
    url, keys, _root = s3cat
    store, ring = open_store(url), KeyRing(keys)
    img = make_image(6 << 20)
    first = publish(store, ring, PublishRequest(file=str(img), name="wn", arch="x86_64", version="1"), EXPIRY)
    sent = store.stats.bytes_sent
    assert first.uploaded and sent >= 6 << 20
    again = publish(store, ring, PublishRequest(file=str(img), name="wn", arch="x86_64", version="2"), EXPIRY)
    assert not again.uploaded
    assert store.stats.bytes_sent - sent < 64 << 10  # only metadata: no blob byte was sent twice


@pytest.mark.slow
def test_eight_publishers_five_each_s3(s3cat, cli):
    url, keys, root = s3cat
    versions = run_publishers(url, keys, workers=8, each=5)  # sharing one publisher cache, as on one host
    assert len(versions) == 40 and len(set(versions)) == 40
    r = cli("catalogue", "list", "wn", "--catalogue", url, "--root", root, "--json")
    assert sorted(e["version"] for e in json.loads(r.out)) == sorted(versions)
    r = cli("catalogue", "verify", url)
    assert r.code == 0, r.out
    # what 8 racing writers left in their shared cache is, entry by entry, the store's bytes of that version
    (held,) = (Path(os.environ["IMAGECTL_CACHE_DIR"]) / PUBLISHER_DIR).iterdir()
    entries = {p.name: p.read_bytes() for p in held.iterdir() if p.suffix == ".json"}
    assert {"snapshot.json", "targets.json", "image-wn.json"} <= entries.keys(), sorted(entries)
    store = open_store(url)
    for name, data in entries.items():
        version, _, body = data.partition(b"\n")
        assert body == store.read(f"metadata/{int(version)}.{name}", 1 << 24), name


def test_gc_on_s3_removes_orphans_only(s3cat, cli, make_image, tmp_path):
    url, keys, root = s3cat
    assert (
        cli(
            "publish",
            make_image(seed="a"),
            "--catalogue",
            url,
            "--keys",
            keys,
            "--name",
            "wn",
            "--arch",
            "x86_64",
            "--version",
            "1",
        ).code
        == 0
    )
    store = open_store(url)
    store.write_new("blobs/sha256/" + "0" * 64, b"an orphan blob a dead publisher uploaded")
    store.write_new("metadata/99.snapshot.json", b"{}")
    r = cli("catalogue", "gc", url, "--dry-run", "--grace", "0", "--json")
    # the two planted orphans, and the metadata versions the publish superseded (init's snapshot and targets)
    orphans = [
        "blobs/sha256/" + "0" * 64,
        "metadata/1.snapshot.json",
        "metadata/1.targets.json",
        "metadata/99.snapshot.json",
    ]
    assert sorted(json.loads(r.out)["removed"]) == orphans
    assert store.exists("metadata/99.snapshot.json")  # dry run
    r = cli("catalogue", "gc", url, "--json")  # default grace: too young to touch
    assert json.loads(r.out)["removed"] == []
    r = cli("catalogue", "gc", url, "--grace", "0", "--json")
    assert sorted(json.loads(r.out)["removed"]) == orphans and not store.exists("metadata/99.snapshot.json")
    assert store.exists("metadata/1.root.json") and store.exists("metadata/root.json")  # roots are never orphans
    assert cli("catalogue", "verify", url).code == 0
    r = cli("pull", "wn:1", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", tmp_path / "x.img")
    assert r.code == 0, r.err  # the referenced image survived


def test_mirror_directory_to_s3_and_pull(s3cat, cli, make_image, tmp_path):
    """Any store on either side: a directory catalogue mirrored into S3, pulled from there with the same root."""
    src, src_keys = tmp_path / "src", tmp_path / "src-keys"
    assert cli("catalogue", "init", src, "--keys", src_keys).code == 0
    img = make_image(300_000, seed="m")
    assert cli("publish", img, "--catalogue", src, "--keys", src_keys, "--name", "wn", "--arch", "x86_64").code == 0
    url = s3cat[0].rsplit("/", 1)[0] + "/mirror"
    root = src / "metadata" / "1.root.json"
    r = cli("mirror", src, url, "--root", root, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["blobs_copied"] == 1
    assert cli("catalogue", "verify", url).code == 0
    r = cli("pull", "wn", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", tmp_path / "p.img")
    assert r.code == 0, r.err
    assert (tmp_path / "p.img").read_bytes() == img.read_bytes()
    r = cli("mirror", src, url, "--root", root, "--json")  # up to date: nothing copied again
    assert json.loads(r.out)["blobs_copied"] == 0 and json.loads(r.out)["blobs_present"] == 1


@pytest.mark.parametrize("copy_max", [None, 1 << 20], ids=["CopyObject", "UploadPartCopy"])
def test_an_image_on_s3_is_stored_once_at_its_target_file(s3cat, cli, make_image, monkeypatch, copy_max):
    """On S3 an image's bytes are uploaded once, to targets/NAME/VERSION/ARCH/HEX.FILE (what stock TUF clients
    and imagectl fetch); its blob key is an empty pointer to that file. Another version of the same bytes is a
    server-side copy of it (in parts above 64 MiB, here above 1 MiB), no byte sent; verify says when a target
    file is missing, upgrade makes it from a copy of the same bytes, gc drops a revoked one."""
    from imagectl.catalogue.model import blob_key, target_file_key
    from imagectl.store import s3 as s3_mod

    copies: list[str] = []
    if copy_max:
        monkeypatch.setattr(s3_mod, "COPY_MAX", copy_max)
        monkeypatch.setattr(s3_mod, "COPY_PART", 5 << 20)  # S3's smallest part: 12 MiB is 3 parts
        real = s3_mod.S3Store._copy_parts

        def counting(self, source, etag, key, size):
            self.client.meta.events.register("after-call.s3.UploadPartCopy", lambda **_k: copies.append(key))
            return real(self, source, etag, key, size)

        monkeypatch.setattr(s3_mod.S3Store, "_copy_parts", counting)
    url, keys, _root = s3cat
    store = open_store(url)
    img = make_image(12 << 20)
    digest = sha256(img)
    sent: list[str] = []
    for version in ("1", "2"):
        r = cli(
            "publish", img, "--catalogue", url, "--keys", keys, "--name", "wn", "--arch", "x86_64", "--version",
            version, "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        sent.append(json.loads(r.out)["uploaded"])
    assert sent == [True, False]  # the second version's bytes came from the first's target file
    keys_of = {v: target_file_key(f"wn/{v}/x86_64/wn-{v}-x86_64.qcow2", digest) for v in ("1", "2")}
    before = store.stats.bytes_sent
    for v in ("1", "2"):
        assert store.read(keys_of[v], 13 << 20) == img.read_bytes()
    assert store.stats.bytes_sent == before
    assert store.read(blob_key(digest), 1) == b""  # a pointer, not a second copy of the bytes
    assert store.pointer(blob_key(digest)) == keys_of["1"]
    assert cli("catalogue", "verify", url).code == 0
    assert copies == ([keys_of["2"]] * 3 if copy_max else [])

    store.delete(keys_of["1"])  # the file the pointer names: upgrade makes it again from version 2's copy
    r = cli("catalogue", "verify", url, "--no-blobs", "--json")
    assert r.code == 15 and json.loads(r.out)["needs_upgrade"] == 1
    r = cli("catalogue", "upgrade", url, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] == [keys_of["1"]] and json.loads(r.out)["present"] == 1
    assert store.read(keys_of["1"], 13 << 20) == img.read_bytes()

    assert cli("revoke", "wn:2", "--catalogue", url, "--keys", keys, "--reason", "test").code == 0
    r = cli("catalogue", "gc", url, "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert keys_of["2"] in json.loads(r.out)["removed"] and keys_of["1"] not in json.loads(r.out)["removed"]
    assert not store.exists(keys_of["2"]) and store.exists(keys_of["1"])
    assert cli("catalogue", "verify", url).code == 0


def _publish(cli, url, keys, img, version: str) -> None:
    r = cli(
        "publish", img, "--catalogue", url, "--keys", keys, "--name", "wn", "--arch", "x86_64", "--version", version
    )
    assert r.code == 0, r.err


def test_images_held_as_full_blobs_on_s3_are_read_and_reused(s3cat, cli, make_image, tmp_path):
    """A catalogue written before images were stored once holds each image's bytes at blobs/sha256/HEX. Pull
    reads the blob where the target file is still missing; a new version of those bytes is copied from the blob
    server-side (nothing sent) and the blob is kept, bytes and all, for the clients that read it."""
    from imagectl.catalogue.model import blob_key, target_file_key

    url, keys, root = s3cat
    store = open_store(url)
    img = make_image(300_000, seed="old")
    digest = sha256(img)
    _publish(cli, url, keys, img, "1")
    t1 = target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", digest)
    store.write(blob_key(digest), img.read_bytes())  # the layout an older imagectl wrote: bytes at the blob key...
    store.delete(t1)  # ...and (older still) no target file
    r = cli("pull", "wn:1", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", tmp_path / "a.img")
    assert r.code == 0, r.err
    assert (tmp_path / "a.img").read_bytes() == img.read_bytes()

    r = cli(
        "publish", img, "--catalogue", url, "--keys", keys, "--name", "wn", "--arch", "x86_64", "--version", "2",
        "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["uploaded"] is False
    assert store.read(blob_key(digest), 1 << 20) == img.read_bytes() and store.pointer(blob_key(digest)) is None
    t2 = target_file_key("wn/2/x86_64/wn-2-x86_64.qcow2", digest)
    assert store.read(t2, 1 << 20) == img.read_bytes()
    r = cli("catalogue", "upgrade", url, "--json")
    assert r.code == 0 and json.loads(r.out)["created"] == [t1], r.out
    assert cli("catalogue", "verify", url).code == 0


def test_an_image_pointer_is_followed_only_to_its_own_bytes(s3cat, cli, make_image, tmp_path):
    """The blob key of an image on S3 is an empty object naming the target file that holds the bytes. A pointer
    is data from the bucket: one that names something other than a target file of its hash, or a file with other
    bytes, or a file gc removed, is not copied from; the publish uploads the bytes and writes a good pointer."""
    from imagectl.catalogue.model import blob_key, target_file_key
    from imagectl.store.base import POINTER_META

    url, keys, root = s3cat
    store = open_store(url)
    img = make_image(300_000, seed="ptr")
    digest = sha256(img)
    blob = blob_key(digest)
    _publish(cli, url, keys, img, "1")
    t1 = target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", digest)
    assert store.pointer(blob) == t1

    def plant(at: str) -> None:
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + blob, Body=b"", Metadata={POINTER_META: at})

    decoy = target_file_key("wn/9/x86_64/wn-9-x86_64.qcow2", digest)  # the right name, other bytes
    store.client.put_object(
        Bucket=store.bucket, Key=store.prefix + decoy, Body=bytes(300_000), ChecksumAlgorithm="SHA256"
    )
    hostile = [
        "metadata/timestamp.json",  # not a target file
        f"targets/wn/1/x86_64/{'0' * 64}.wn-1-x86_64.qcow2",  # a target file of another hash
        f"targets/wn/../../{digest}.x",  # a path out of targets/
        decoy,
        target_file_key("wn/8/x86_64/wn-8-x86_64.qcow2", digest),  # a file that is not there (gc took it)
    ]
    for n, at in enumerate(hostile, start=2):
        plant(at)
        r = cli(
            "publish", img, "--catalogue", url, "--keys", keys, "--name", "wn", "--arch", "x86_64", "--version",
            str(n), "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        assert json.loads(r.out)["uploaded"] is True, at  # sent again: the planted pointer led nowhere usable
        mine = target_file_key(f"wn/{n}/x86_64/wn-{n}-x86_64.qcow2", digest)
        assert store.read(mine, 1 << 20) == img.read_bytes()
        assert store.pointer(blob) == mine  # re-pointed at the copy just uploaded
    r = cli("pull", f"wn:{n}", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", tmp_path / "p.img")
    assert r.code == 0, r.err
    assert (tmp_path / "p.img").read_bytes() == img.read_bytes()
    assert store.read(decoy, 1 << 20) == bytes(300_000)  # never copied from, never written


def _old_layout(cli, url, keys, make_image, versions: dict[str, str]) -> dict[str, bytes]:
    """Publish ``versions`` (VERSION -> seed) of ``wn`` and give each image's blob key its bytes, as an imagectl
    before one copy per image wrote them (the target files stay, each a copy); the images' bytes by sha256."""
    from imagectl.catalogue.model import blob_key

    store, held = open_store(url), {}
    for version, seed in versions.items():
        img = make_image(300_000 + 4096 * ord(seed[0]), seed=seed)  # the size follows the bytes
        _publish(cli, url, keys, img, version)
        held[sha256(img)] = img.read_bytes()
    for digest, data in held.items():
        store.write(blob_key(digest), data)
        assert store.pointer(blob_key(digest)) is None
    return held


def test_upgrade_one_copy_turns_old_full_blobs_into_pointers(s3cat, cli, make_image, tmp_path):
    """``catalogue upgrade --one-copy`` drops the second copy an older S3 catalogue keeps of each image: the blob
    key becomes a pointer to a target file found to hold the same bytes (two versions of one image: one blob,
    one pointer). The catalogue verifies clean and pulls; a second run finds nothing to do. Without the flag the
    blobs keep their bytes (older clients read them)."""
    from imagectl.catalogue.model import blob_key

    url, keys, root = s3cat
    held = _old_layout(cli, url, keys, make_image, {"1": "a", "2": "b", "3": "a"})  # 3 holds 1's bytes
    assert len(held) == 2
    store = open_store(url)
    r = cli("catalogue", "upgrade", url, "--json")
    assert r.code == 0 and json.loads(r.out)["pointers"] == [], r.out
    assert all(store.read(blob_key(d), 1 << 20) == data for d, data in held.items())  # untouched by default

    r = cli("catalogue", "upgrade", url, "--one-copy")
    assert r.code == 0, r.err
    assert "2 blobs made pointers (" in r.out and "freed" in r.out
    r = cli("catalogue", "upgrade", url, "--one-copy", "--json")
    out = json.loads(r.out)
    assert r.code == 0 and out["pointers"] == [] and out["freed_bytes"] == 0  # done already: idempotent
    for digest, data in held.items():
        assert store.read(blob_key(digest), 1) == b""
        at = store.pointer(blob_key(digest))
        assert at is not None and digest in at and store.read(at, 1 << 20) == data
    assert cli("catalogue", "verify", url).code == 0
    for version in ("1", "2", "3"):
        dest = tmp_path / f"{version}.img"
        r = cli("pull", f"wn:{version}", "--catalogue", url, "--root", root, "--arch", "x86_64", "-o", dest)
        assert r.code == 0, r.err
        assert sha256(dest) in held


def test_upgrade_one_copy_keeps_a_blob_whose_target_file_is_damaged(s3cat, cli, make_image, monkeypatch):
    """The second copy goes only where the first is intact: a target file holding other bytes of the right size
    (bit rot; no checksum the server keeps to tell) is read and hashed, and its blob is kept, bytes and all,
    reported as a problem (exit 15); the other image is made one copy. A blob a publisher rewrote while it was
    being checked is not replaced (If-Match on the ETag checked)."""
    from imagectl.catalogue.model import blob_key, target_file_key
    from imagectl.store.s3 import S3Store

    url, keys, _ = s3cat
    held = _old_layout(cli, url, keys, make_image, {"1": "a", "2": "b"})
    store = open_store(url)
    bad, good = sorted(held, key=lambda d: len(held[d]))  # version 1 ("a") is the smaller image
    bad_key = target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", bad)
    store.write(bad_key, b"\0" * len(held[bad]))
    r = cli("catalogue", "upgrade", url, "--one-copy", "--json")
    out = json.loads(r.out)
    assert r.code == 15 and out["pointers"] == [blob_key(good)] and out["freed_bytes"] == len(held[good]), r.out
    assert_valid("upgrade-result", out, "catalogue upgrade --one-copy")
    assert out["problems"] == [
        f"{blob_key(bad)}: {bad_key} does not hold the image's {len(held[bad])} bytes of sha256 {bad[:12]}…: "
        f"{blob_key(bad)} is kept"
    ]
    assert store.read(blob_key(bad), 1 << 20) == held[bad]

    store.write(bad_key, held[bad])  # repaired; now a publisher re-points the blob while it is being checked
    inner = S3Store._holds_image

    def racing(self, key, head, size, digest):  # type: ignore[no-untyped-def]
        self.write(blob_key(digest), b"")  # another ETag: stands for what a publisher wrote meanwhile
        return inner(self, key, head, size, digest)

    monkeypatch.setattr(S3Store, "_holds_image", racing)
    r = cli("catalogue", "upgrade", url, "--one-copy", "--json")
    assert r.code == 0 and json.loads(r.out)["pointers"] == [], r.out
    assert store.read(blob_key(bad), 1) == b"" and store.pointer(blob_key(bad)) is None  # the racer's write kept


def test_upgrade_one_copy_on_a_directory_frees_nothing(catalogue, cli, make_image):
    """A directory links a blob and its target files to one copy already: ``--one-copy`` has nothing to do."""
    img = make_image(4096, seed="d")
    r = cli("publish", img, *catalogue.args(), "--name", "d", "--arch", "x86_64", "--version", "1")
    assert r.code == 0, r.err
    r = cli("catalogue", "upgrade", catalogue.dir, "--one-copy", "--json")
    out = json.loads(r.out)
    assert r.code == 0 and out["pointers"] == [] and out["freed_bytes"] == 0 and out["present"] == 1


def test_a_target_file_longer_than_its_head_said_is_not_taken_for_the_image(s3_store):
    """``release_blob`` judges a target file by its bytes where the server keeps no checksum: a body longer than
    the length its HEAD gave (the first ``size`` bytes right) is refused, and so are a short one and other bytes."""
    import hashlib

    data = bytes(range(256)) * 64
    digest = hashlib.sha256(data).hexdigest()
    s3_store.write("t/long", data + b"x" * 4096)
    s3_store.write("t/short", data[:-1])
    s3_store.write("t/other", data[:-1] + b"\0")
    s3_store.write("t/right", data)
    lying = {"ContentLength": len(data)}  # what a server lying about the object's length would answer
    assert not s3_store._holds_image("t/long", lying, len(data), digest)
    assert not s3_store._holds_image("t/short", lying, len(data), digest)
    assert not s3_store._holds_image("t/other", lying, len(data), digest)
    assert s3_store._holds_image("t/right", lying, len(data), digest)
    assert not s3_store._holds_image("t/right", {"ContentLength": len(data) + 1}, len(data), digest)
    # a whole-object checksum the server stored decides without a read; a composite one (multipart) does not
    import base64

    whole = base64.b64encode(bytes.fromhex(digest)).decode()
    assert s3_store._holds_image("t/absent", {"ContentLength": len(data), "ChecksumSHA256": whole}, len(data), digest)
    other = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    wrong = {"ContentLength": len(data), "ChecksumSHA256": other}
    assert not s3_store._holds_image("t/right", wrong, len(data), digest)
    composite = {"ContentLength": len(data), "ChecksumSHA256": f"{other}-2"}
    assert not s3_store._holds_image("t/other", composite, len(data), digest)
    assert s3_store._holds_image("t/right", composite, len(data), digest)
