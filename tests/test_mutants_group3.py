"""Mutants of imagectl/catalogue/publish.py and state.py that the rest of the suite let survive (issue 13;
tests/MUTANTS.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from imagectl.catalogue import trust
from imagectl.catalogue.keys import KeyRing, generate_key
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.catalogue.state import encoded, load_state, metadata_bytes
from imagectl.errors import CatalogueStateError, ImageMismatchError, UntrustedMetadataError
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, Catalogue, CliResult, write_pattern

ARCH = "x86_64"

BOOT_TEST = {
    "passed": True,
    "marker": "login:",
    "accel": "kvm",
    "seconds": 12,
    "host": "h",
    "at": "2026-11-25T15:02:03Z",
    "image_sha256": "0" * 64,
}


class CountingStore(LocalStore):
    """A directory store that counts the reads of ``metadata/timestamp.json`` (one per load of the state)."""

    timestamp_reads = 0

    def read_versioned(self, key: str, max_size: int) -> tuple[bytes, str]:
        if key == "metadata/timestamp.json":
            self.timestamp_reads += 1
        return super().read_versioned(key, max_size)


class SwapLostOnce(LocalStore):
    """A directory store on which the first timestamp swap is lost (another publisher committed first)."""

    lost = False

    def write_if_match(self, key: str, data: bytes, tag: str | None) -> bool:
        if key == "metadata/timestamp.json" and not self.lost:
            self.lost = True
            return False
        return super().write_if_match(key, data, tag)


def test_a_boot_test_of_other_bytes_hints_at_recording_one(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutants of publish: the hint of the refusal of a boot test that booted other bytes."""
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="bt")
    req = PublishRequest(str(img), "wn", ARCH, version="1", boot_test=dict(BOOT_TEST))
    with pytest.raises(ImageMismatchError) as e:
        publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert e.value.hint == "boot this image and record it: imagectl test IMAGE --record"


def test_publish_with_a_version_loads_the_catalogue_once(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutants of publish: the commit starts from the state the pre-upload check loaded and verified (``first=``),
    not from a second load of the catalogue."""
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="once")
    store = CountingStore(catalogue.dir)
    result = publish(store, KeyRing(catalogue.keys), PublishRequest(str(img), "wn", ARCH, version="1"), EXPIRY)
    assert result.created and result.record.version == "1"
    assert store.timestamp_reads == 1
    assert [r.version for r in load_state(catalogue.store).images("wn")] == ["1"]


def test_no_catalogue_hints_at_init(tmp_path: Path) -> None:
    """Mutants of load_state: the hint when the store holds no catalogue."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogueStateError) as e:
        load_state(LocalStore(tmp_path / "empty"))
    assert e.value.hint == "create one with: imagectl catalogue init DEST"


def test_a_missing_timestamp_is_named(catalogue: Catalogue) -> None:
    """Mutant of load_state: the message when timestamp.json is gone."""
    (catalogue.dir / "metadata" / "timestamp.json").unlink()
    with pytest.raises(UntrustedMetadataError) as e:
        load_state(catalogue.store)
    assert str(e.value) == f"metadata/timestamp.json is missing from {catalogue.store.shown}"


def test_a_timestamp_neither_root_accepts_names_the_old_root(catalogue: Catalogue) -> None:
    """Mutant of _verify_top: the message when the root before a rotation does not accept the role either."""
    root1 = Metadata.from_bytes(catalogue.root.read_bytes())
    path = catalogue.dir / "metadata" / "timestamp.json"
    data = json.loads(path.read_bytes())
    data["signed"]["version"] += 1  # no longer what was signed
    path.write_text(json.dumps(data))
    with pytest.raises(UntrustedMetadataError) as e:
        load_state(catalogue.store, also_trust=root1)
    assert str(e.value) == (
        "metadata/timestamp.json (by the root before the rotation): signature check failed: "
        "timestamp was signed by 0/1 keys"
    )
    assert e.value.exit_code == 8


def test_a_tampered_targets_is_named(catalogue: Catalogue) -> None:
    """Mutant of load_state: the targets file that does not verify is named."""
    path = catalogue.dir / "metadata" / "1.targets.json"
    data = json.loads(path.read_bytes())
    data["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(data))
    with pytest.raises(UntrustedMetadataError) as e:
        load_state(catalogue.store)
    assert str(e.value).startswith("metadata/1.targets.json: signature check failed: "), str(e.value)


def test_a_new_root_not_signed_by_its_own_keys_is_named(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant of _walk_roots: root 2 signed by root 1's key but not by its own new key; the refusal names it."""
    root = Metadata.from_bytes(catalogue.root.read_bytes())
    ring = KeyRing(catalogue.keys)
    (old_id,) = root.signed.roles["root"].keyids
    new = generate_key(tmp_path / "other-keys", "root")
    root.signed.revoke_key(old_id, "root")
    root.signed.add_key(new.public_key, "root")
    root.signed.version = 2
    root.signatures.clear()
    root.sign(ring.signers[old_id])
    (catalogue.dir / "metadata" / "2.root.json").write_bytes(metadata_bytes(root))
    with pytest.raises(UntrustedMetadataError) as e:
        load_state(catalogue.store)
    assert str(e.value).startswith("metadata/2.root.json: signature check failed: "), str(e.value)


def test_snapshot_rotation_survives_a_lost_swap(catalogue: Catalogue) -> None:
    """Mutant of load_state: on the retry of a snapshot-key rotation, the snapshot in the store is still signed by
    the retired key, which only the root before the rotation (``also_trust``) accepts."""
    store = SwapLostOnce(catalogue.dir)
    result = trust.rotate(store, KeyRing(catalogue.keys), "snapshot", EXPIRY)
    assert store.lost
    assert result.root_version == 2
    state = load_state(catalogue.store)
    assert state.root.signed.version == 2
    assert state.snapshot.signed.version == 3  # the lost attempt's version 2 is taken; the retry skips it


def test_a_publish_heals_a_root_json_left_behind(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant of commit: root.json a root rotation left one version behind is rewritten by the next commit."""
    assert trust.rotate(catalogue.store, KeyRing(catalogue.keys), "root", EXPIRY).root_version == 2
    meta = catalogue.dir / "metadata"
    (meta / "root.json").write_bytes(catalogue.root.read_bytes())  # as if killed before root.json was written
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="heal")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    assert (meta / "root.json").read_bytes() == (meta / "2.root.json").read_bytes()


def test_metadata_files_keep_the_signed_bytes(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant of _write_versioned: the file's ``signed`` is the canonical bytes just signed (UTF-8 as it is), not a
    second encoding of the metadata (which escapes every non-ASCII character)."""
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="utf8")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    r = cli("deprecate", "wn:1", "--reason", "überholt", *catalogue.args())
    assert r.code == 0, r.err
    meta = catalogue.dir / "metadata"
    (role,) = (p for p in meta.glob("2.*.json") if p.name not in ("2.snapshot.json", "2.targets.json"))
    data = role.read_bytes()
    assert "überholt".encode() in data and b"\\u00fc" not in data
    assert [r.deprecated["reason"] for r in load_state(catalogue.store).images("wn") if r.deprecated] == ["überholt"]


def test_metadata_over_its_cap_is_refused_by_name() -> None:
    """Mutant of encoded: the refusal of metadata a client would refuse names the file and why."""
    md = Metadata(Targets(version=1, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    md.signed.unrecognized_fields["x-pad"] = "a" * 20_000
    size = len(metadata_bytes(md))
    with pytest.raises(CatalogueStateError) as e:
        encoded(md, "metadata/timestamp.json")
    assert str(e.value) == (
        f"cannot write metadata/timestamp.json: metadata/timestamp.json is {size} bytes, over the 16384-byte cap of "
        "the format"
    )
    assert e.value.hint == "spread the name over more hash bins: imagectl catalogue rebin DEST NAME --bits B"


def test_an_untested_publish_into_a_protected_channel_sends_no_bytes(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant of publish: without --version, a publish into a protected channel is still checked (and refused)
    before the upload, so the refused image leaves no blob behind."""
    r = cli("catalogue", "protect", catalogue.dir, "stable", "--keys", catalogue.keys)
    assert r.code == 0, r.err
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="untested")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--channel", "stable")
    assert (r.code, r.err.splitlines()[0]) == (
        24,
        "imagectl: error: refusing to publish wn to stable: no passing boot test for x86_64 (stable is protected; "
        "boot it with imagectl test --record, then publish --from-build)",
    )
    assert not (catalogue.dir / "blobs").exists()
    assert load_state(catalogue.store).names() == []


def test_pull_of_a_deprecated_version_warns_with_its_reason(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant of pull: the warning for a deprecated version gives the reason the deprecation recorded."""
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="dep")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    r = cli("deprecate", "wn:1", "--reason", "use wn:2", *catalogue.args())
    assert r.code == 0, r.err
    out = tmp_path / "out.qcow2"
    r = cli("pull", "wn:1", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o", out)
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if line.startswith("imagectl: warning: wn:1 is deprecated")]
    assert len(warnings) == 1 and warnings[0].endswith(": use wn:2"), r.err
    assert out.read_bytes() == img.read_bytes()


def test_pull_without_o_writes_into_the_working_directory(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant of destination: without -o the image goes to ./NAME-VERSION-ARCH.FMT."""
    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="cwd")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = cli("pull", "wn:1", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH)
    assert r.code == 0, r.err
    assert sorted(p.name for p in work.iterdir()) == ["wn-1-x86_64.qcow2"]
    assert (work / "wn-1-x86_64.qcow2").read_bytes() == img.read_bytes()
