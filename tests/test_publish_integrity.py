"""The publishing side against faults and hostile input (issue 7: items 2, 5, 7, 8, 14).

Each test names the finding it keeps closed; the ``store`` fixture runs it on a directory and on S3 (SeaweedFS).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import ImageRecord, blob_key, target_file_key
from imagectl.catalogue.publish import PublishRequest, init_catalogue, publish, publish_build
from imagectl.catalogue.state import CatalogueState, load_state
from imagectl.catalogue.verify import verify_catalogue
from imagectl.errors import ImagectlError, InvalidInputError
from imagectl.store import Store
from imagectl.store import digest as digest_mod
from imagectl.store.digest import FileChangedError, file_digest
from imagectl.store.local import LocalStore
from imagectl.store.s3 import S3Store, TransferSettings
from tests.conftest import EXPIRY, Catalogue, CliResult, write_pattern

MiB = 1 << 20
ARCH = "x86_64"


@pytest.fixture
def cat(store: Store, tmp_path: Path) -> tuple[Store, KeyRing]:
    """A fresh catalogue on the store under test; small parts on S3 so a few MiB are a multipart upload."""
    if isinstance(store, S3Store):
        store.transfer = TransferSettings(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=4)
    init_catalogue(store, tmp_path / "keys", EXPIRY)
    return store, KeyRing(tmp_path / "keys")


def stored(store: Store, rec: ImageRecord) -> bytes:
    """The image's bytes as clients read them: its target file (on S3 the one copy; on a directory a hard link of
    the blob, checked to be one)."""
    key = target_file_key(rec.path, rec.sha256)
    with store.open_range(key) as s:
        data = b"".join(s.chunks)
    if isinstance(store, S3Store):
        assert store.pointer(blob_key(rec.sha256)) == key
    else:
        assert store.same_object(blob_key(rec.sha256), key)
    return data


def after_hashing(monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]) -> None:
    """Make the file change right after publish has hashed it, as a build still writing it would."""
    real = digest_mod.file_digest

    def hashed_then_changed(path: str, **kw: Any) -> Any:
        digest = real(path, **kw)
        change(Path(path))
        return digest

    monkeypatch.setattr(digest_mod, "file_digest", hashed_then_changed)  # what publish's DigestAhead calls


# -- item 2: publish uploads exactly the bytes it hashed ----------------------------------------------------------
@pytest.mark.parametrize("size", [3 * MiB, 12 * MiB], ids=["single-put", "multipart"])
def test_a_file_that_grows_during_publish_stores_exactly_the_signed_bytes(
    cat: tuple[Store, KeyRing], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Finding: a file growing during publish was hashed in one read and uploaded in a second; the metadata
    said 460,000,000 bytes, the stored blob had 528,000,000, and write-once blobs made it unrepairable."""
    store, keys = cat
    image = write_pattern(tmp_path / "growing.raw", size)
    signed = image.read_bytes()

    def grow(p: Path) -> None:
        with p.open("ab") as f:
            f.write(b"\xee" * (2 * MiB))

    after_hashing(monkeypatch, grow)
    res = publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    assert res.record.size == size
    assert stored(store, res.record) == signed
    report = verify_catalogue(store)
    assert report.problems == [] and report.images == 1


@pytest.mark.parametrize("size", [3 * MiB, 12 * MiB], ids=["single-put", "multipart"])
def test_a_file_changed_in_place_during_publish_is_refused_and_nothing_stored(
    cat: tuple[Store, KeyRing], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    store, keys = cat
    image = write_pattern(tmp_path / "rewritten.raw", size)
    sha = file_digest(str(image)).sha256

    def scribble(p: Path) -> None:
        with p.open("r+b") as f:
            f.seek(size - 100)
            f.write(b"\x00" * 10)

    after_hashing(monkeypatch, scribble)
    with pytest.raises(FileChangedError, match="changed while it was being published") as e:
        publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    assert e.value.exit_code == 14
    assert e.value.hint == "publish a file nothing is writing to (wait for the build to finish)"
    assert not store.exists(blob_key(sha)) and list(store.list("targets/")) == []
    assert load_state(store).names() == []  # nothing signed either
    if isinstance(store, S3Store):  # and no unfinished multipart upload left behind
        assert store.abort_stale_uploads(0, dry_run=True) == ()


def test_a_truncated_file_is_refused(
    cat: tuple[Store, KeyRing], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys = cat
    image = write_pattern(tmp_path / "shrinking.raw", 12 * MiB)
    after_hashing(monkeypatch, lambda p: os.truncate(p, 7 * MiB))
    with pytest.raises(FileChangedError, match="changed while it was being published"):
        publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    assert load_state(store).names() == []


def test_a_damaged_blob_is_replaced_by_the_next_publish_of_the_right_bytes(
    cat: tuple[Store, KeyRing], tmp_path: Path
) -> None:
    """A blob left longer than its hash by the old bug (or damaged on disk) is not 'already there'."""
    store, keys = cat
    image = write_pattern(tmp_path / "img.raw", 3 * MiB)
    sha = file_digest(str(image)).sha256
    store.write(blob_key(sha), image.read_bytes() + b"\xee" * 4096)  # what the old publish could leave
    res = publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    assert res.uploaded is True
    assert stored(store, res.record) == image.read_bytes()  # on S3 the damaged blob is now a pointer
    assert verify_catalogue(store).problems == []
    again = publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="2"), EXPIRY)
    assert again.uploaded is False  # the right bytes are there now: nothing sent


@pytest.mark.s3
def test_s3_stores_the_checksum_the_server_verified(s3_store: S3Store, tmp_path: Path) -> None:
    """The server confirms the bytes: each part carries x-amz-checksum-sha256, and so does the object."""
    s3_store.transfer = TransferSettings(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=2)
    image = write_pattern(tmp_path / "img.raw", 12 * MiB)
    digest = file_digest(str(image), part_size=s3_store.part_size)
    assert s3_store.upload_file("blobs/sha256/x", str(image), digest) is True
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=s3_store.prefix + "blobs/sha256/x", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"].endswith("-3") and head["ContentLength"] == 12 * MiB
    # a blob of the right size but other bytes (and a checksum that says so) is replaced
    other = write_pattern(tmp_path / "other.raw", 12 * MiB, seed="b")
    wrong = file_digest(str(other), part_size=s3_store.part_size)
    assert s3_store.upload_file("blobs/sha256/y", str(other), wrong) is True
    assert s3_store.upload_file("blobs/sha256/y", str(image), digest) is True  # not "already there"
    assert s3_store.upload_file("blobs/sha256/y", str(image), digest) is False


# -- item 14: S3 leftovers ---------------------------------------------------------------------------------------
@pytest.mark.s3
def test_presigned_urls_are_sigv4_and_work_without_credentials(s3_store: S3Store) -> None:
    s3_store.write("blobs/sha256/p", b"presigned bytes")
    url = s3_store.presign("blobs/sha256/p", expires=60)
    assert "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "AWSAccessKeyId" not in url
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == b"presigned bytes"


@pytest.mark.s3
def test_s3_upload_checks_an_existing_blobs_size(s3_store: S3Store, tmp_path: Path) -> None:
    image = write_pattern(tmp_path / "img.raw", 1000)
    digest = file_digest(str(image), part_size=s3_store.part_size)
    s3_store.write("blobs/sha256/short", image.read_bytes()[:500])  # no checksum stored, wrong size
    assert s3_store.upload_file("blobs/sha256/short", str(image), digest) is True
    assert stored_key(s3_store, "blobs/sha256/short") == image.read_bytes()


def stored_key(store: Store, key: str) -> bytes:
    with store.open_range(key) as s:
        return b"".join(s.chunks)


@pytest.mark.parametrize("command", ["resign", "rotate-timestamp", "rotate-targets"])
def test_resign_and_rotate_retry_a_lost_swap(
    cat: tuple[Store, KeyRing], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Finding: resign and trust rotate stopped with exit 6 when another publisher committed at the same moment;
    now they start again from the fresh state, as publish does.

    The rival is a publisher on another machine: it read the catalogue before the command started (so, for a
    rotation, it still signs with the retired key), takes no lock, and wins the timestamp swap just before ours.
    """
    import datetime as dt

    from imagectl.catalogue import trust
    from imagectl.catalogue.model import utcnow

    store, keys = cat
    image = write_pattern(tmp_path / "img.raw", 1000)
    publish(store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    rival = load_state(store)
    rival_keys = KeyRing(keys.dir)  # the keys as they were: a rotation retires some of them
    real = CatalogueState.commit
    lost = {"n": 0}

    def rival_wins_first(self: CatalogueState, *args: Any, **kw: Any) -> None:
        if lost["n"] == 0:
            lost["n"] += 1
            md = rival.role_for_update("wn", utcnow() + dt.timedelta(days=30))
            CatalogueState.ext(md)["channels"]["rival"] = {"version": "1", "updated": "2026-01-01T00:00:00Z"}
            real(rival, rival_keys, EXPIRY)  # its swap succeeds: ours, below, then fails and is retried
        real(self, *args, **kw)

    monkeypatch.setattr(CatalogueState, "commit", rival_wins_first)
    if command == "resign":
        assert "timestamp" in trust.resign(store, keys, EXPIRY, everything=True)
    else:
        res = trust.rotate(store, KeyRing(keys.dir), command.removeprefix("rotate-"), EXPIRY)
        assert res.root_version == 2
    assert lost["n"] == 1
    report = verify_catalogue(store)
    assert report.problems == [] and report.images == 1
    assert "rival" in load_state(store).ext(load_state(store).role("image-wn"))["channels"]  # not lost


# -- item 5: inputs confined ----------------------------------------------------------------------------------------
def _build_dir(tmp_path: Path, image_file: str) -> Path:
    d = tmp_path / "build"
    d.mkdir(exist_ok=True)
    write_pattern(d / "wn-x86_64.qcow2", 4096)
    record = {
        "format": 1,
        "target": {"name": "wn", "arch": ARCH, "hypervisor": "hvm", "os": "debian", "os_version": "12"},
        "images": [{"file": image_file, "format": "qcow2", "size": 4096, "sha256": "0" * 64}],
    }
    (d / "wn-x86_64.build.json").write_text(json.dumps(record))
    return d


@pytest.mark.parametrize("name", ["../../../etc/hostname", "/etc/hostname", "..", "sub/wn.qcow2", ".hidden"])
def test_build_record_image_must_be_a_plain_file_in_the_build_directory(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, name: str
) -> None:
    """Finding: a record whose images[].file was ../../../etc/hostname published the build host's file."""
    d = _build_dir(tmp_path, name)
    r = cli("publish", "--from-build", d, *catalogue.args())
    assert r.code == 3, r.err
    assert "not a plain file name in the build directory" in r.err
    assert not list((catalogue.dir / "blobs").rglob("*")) if (catalogue.dir / "blobs").exists() else True


def test_build_record_image_that_is_a_symlink_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    d = _build_dir(tmp_path, "link.qcow2")
    (d / "link.qcow2").symlink_to("/etc/hostname")
    r = cli("publish", "--from-build", d, *catalogue.args())
    assert r.code == 3 and "not a regular file" in r.err, r.err


def test_recipe_file_sources_stay_inside_the_recipe_directory(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """Finding: a recipe's files: source: could copy any host file (/etc/shadow) into the image."""
    d = tmp_path / "recipes"
    d.mkdir()
    (d / "ok.txt").write_text("fine")
    (d / "escape").symlink_to("/etc/hostname")
    base = "name: r\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nfiles:\n"
    cases = {
        "up.yaml": ("  - {path: /etc/x, source: ../outside}\n", "leads outside the recipe's directory"),
        "abs.yaml": ("  - {path: /etc/x, source: /etc/hostname}\n", "leads outside the recipe's directory"),
        "link.yaml": ("  - {path: /etc/x, source: escape}\n", "leads outside the recipe's directory"),
        "good.yaml": ("  - {path: /etc/x, source: ok.txt}\n", None),
    }
    (tmp_path / "outside").write_text("secret")
    for fname, (entry, why) in cases.items():
        (d / fname).write_text(base + entry)
        r = cli("recipe", "validate", d / fname)
        if why is None:
            assert r.code == 0, r.err
        else:
            assert r.code == 3 and why in r.err and f"{d / fname}:5:" in r.err, r.err


def test_recipe_source_swapped_for_a_symlink_after_validation_is_refused_at_build(tmp_path: Path) -> None:
    from imagectl.imaging.configscript import script_text
    from imagectl.recipe.model import load_recipe

    d = tmp_path / "r"
    d.mkdir()
    (d / "motd").write_text("hello")
    head = "name: r\nos: {family: debian, release: 12}\narchitectures: [x86_64]\n"
    (d / "r.yaml").write_text(head + "files:\n  - {path: /etc/motd, source: motd}\n")
    recipe = load_recipe(d / "r.yaml")
    assert "hello" in script_text(recipe).replace("\\", "")
    (d / "motd").unlink()
    (d / "motd").symlink_to("/etc/hostname")
    with pytest.raises(InvalidInputError, match="leads outside"):
        script_text(recipe)


# -- item 7: verify cannot be silenced; mirror destinations ---------------------------------------------------------
def _damaged(cat: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]) -> None:
    for v in ("1", "2"):
        r = cli("publish", make_image(seed=v), *cat.args(), "--name", "wn", "--arch", ARCH, "--version", v)
        assert r.code == 0, r.err
    blobs = sorted((cat.dir / "blobs" / "sha256").iterdir())
    blobs[0].write_bytes(b"tampered")
    blobs[1].unlink()


def test_a_forged_mirror_json_cannot_silence_verify(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Finding: an unsigned {"names":[],"images":[]} mirror.json made verify report '0 images: OK' over real
    problems. It may excuse absences only; what is present is checked, and what it claims is checked."""
    _damaged(catalogue, cli, make_image)
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    full = json.loads(r.out)
    assert r.code == 15 and len(full["problems"]) == 2
    (catalogue.dir / "mirror.json").write_text(json.dumps({"names": [], "images": []}))
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    forged = json.loads(r.out)
    assert r.code == 15, r.out
    assert forged["partial_mirror"] is True
    assert any("has 8 bytes" in p for p in forged["problems"])  # the tampered blob is still found
    assert forged["images_checked"] >= 1
    (catalogue.dir / "mirror.json").write_text(json.dumps({"names": ["wn", "ghost"], "images": ["wn:9 x86_64"]}))
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 15
    assert "claims ghost" in r.out and "claims image wn:9 x86_64" in r.out
    (catalogue.dir / "mirror.json").write_text("{not json")
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 15 and "mirror.json: malformed" in r.out


def test_mirror_refuses_its_source_and_another_catalogue(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Finding: mirror overwrote the timestamp.json and root of a destination holding another catalogue."""
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    r = cli("mirror", catalogue.dir, catalogue.dir, "--root", catalogue.root)
    assert r.code == 16 and "onto itself" in r.err
    other = tmp_path / "other"
    assert cli("catalogue", "init", other, "--keys", tmp_path / "okeys").code == 0
    before = {p.name: p.read_bytes() for p in (other / "metadata").iterdir()}
    r = cli("mirror", catalogue.dir, other, "--root", catalogue.root)
    assert r.code == 16 and "holds another catalogue" in r.err
    assert {p.name: p.read_bytes() for p in (other / "metadata").iterdir()} == before
    # a publisher's full catalogue of the same root is refused too; an earlier mirror is fine
    copy = tmp_path / "copy"
    shutil.copytree(catalogue.dir, copy)
    r = cli("mirror", catalogue.dir, copy, "--root", catalogue.root)
    assert r.code == 16 and "full catalogue" in r.err
    assert cli("mirror", catalogue.dir, tmp_path / "m", "--root", catalogue.root).code == 0
    assert cli("mirror", catalogue.dir, tmp_path / "m", "--root", catalogue.root).code == 0


# -- item 8: no symlink followed out of a catalogue ------------------------------------------------------------------
def test_gc_never_deletes_through_a_symlinked_blob_directory(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Finding: gc with blobs/sha256 replaced by a symlink deleted the files it pointed at."""
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / ("a" * 64)).write_text("keep")  # a name that looks like an orphan blob
    (precious / "data").write_text("keep")
    blobs = catalogue.dir / "blobs" / "sha256"
    shutil.rmtree(blobs)
    blobs.symlink_to(precious)
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert sorted(p.name for p in precious.iterdir()) == sorted(["a" * 64, "data"])
    assert any("not followed" in s for s in json.loads(r.out)["skipped"])
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 15 and "not followed" in r.out


def test_gc_removes_temp_files_of_killed_publishers_after_the_grace(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Finding (the flaky suite): blobs/sha256/.HEX.XXXX.tmp of a killed publisher survived gc --grace 0."""
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    temp_blob = catalogue.dir / "blobs" / "sha256" / f".{'b' * 64}.1a2b3c4d.tmp"
    temp_meta = catalogue.dir / "metadata" / ".3.image-wn.json.0f0f0f0f.tmp"
    temp_blob.write_bytes(b"half an upload")
    temp_meta.write_bytes(b"{")
    r = cli("catalogue", "gc", catalogue.dir, "--json")  # default grace: young temp files are kept
    assert r.code == 0 and temp_blob.exists() and temp_meta.exists()
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert not temp_blob.exists() and not temp_meta.exists()
    assert cli("catalogue", "verify", catalogue.dir).code == 0


def test_dangling_lock_symlinks_in_a_catalogue_create_nothing(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Finding: dangling .lock symlinks made promote create files wherever they pointed."""
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    for lock in (".lock", ".cas.lock"):
        target = tmp_path / f"created-through-{lock}"
        (catalogue.dir / lock).unlink(missing_ok=True)
        (catalogue.dir / lock).symlink_to(target)
        r = cli("promote", "wn:1", "stable", *catalogue.args())
        assert r.code == 14 and "symlink" in r.err, r.err
        assert not target.exists()
        (catalogue.dir / lock).unlink()


def test_local_store_reads_no_symlinked_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cat")
    store.write("metadata/a.json", b"{}")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    (tmp_path / "cat" / "metadata" / "b.json").symlink_to(outside)
    with pytest.raises(ImagectlError, match="symlink"):
        store.read("metadata/b.json", 100)
    assert store.exists("metadata/b.json") is False
    store.delete("metadata/b.json")  # removes the link itself
    assert outside.read_bytes() == b"secret"
    entries = {e.key: e.regular for e in store.list_entries("metadata/")}
    assert entries == {"metadata/a.json": True}


def test_publish_build_refuses_a_record_that_is_a_fifo(catalogue: Catalogue, tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    os.mkfifo(d / "x.build.json")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        publish_build(catalogue.store, KeyRing(catalogue.keys), d, EXPIRY)


# -- found by tests/test_fuzz_metadata.py ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage",
    ["targets-as-timestamp", "float-in-role"],
)
def test_metadata_of_the_wrong_type_or_not_canonical_is_refused_everywhere(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], damage: str
) -> None:
    """Fuzzing found tracebacks: a targets document served as timestamp.json (AttributeError in verify, gc,
    publish) and a float anywhere in a signed part (SerializationError while checking signatures)."""
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    meta = catalogue.dir / "metadata"
    if damage == "targets-as-timestamp":
        (meta / "timestamp.json").write_bytes((meta / "1.targets.json").read_bytes())
    else:
        role = max(meta.glob("*.image-wn.json"), key=lambda p: int(p.name.split(".")[0]))
        doc = json.loads(role.read_bytes())
        doc["signed"]["x-imagectl"] = {"channels": {}, "revoked": {"0": {"reason": 1.5}}}
        role.write_text(json.dumps(doc))
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 15 and "Traceback" not in r.err, r.err
    for args in (
        ["publish", make_image(seed="2"), *catalogue.args(), "--name", "wn", "--arch", ARCH],
        ["catalogue", "gc", catalogue.dir],
        ["pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH],
    ):
        r = cli(*args)
        assert r.code == 8, (args[0], r.err)
        assert r.err.startswith("imagectl: error:") and "Traceback" not in r.err
