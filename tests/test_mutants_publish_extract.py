"""Mutants of imagectl/catalogue/publish.py, imagectl/catalogue/state.py and imagectl/imaging/slc/extract.py that
the rest of the suite let survive (issue 13; tests/MUTANTS.md): the exact messages, and the cases only an unusual
catalogue or package reaches."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue import bins, index, model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.state import load_state
from imagectl.catalogue.upgrade import rebin_catalogue
from imagectl.errors import CatalogueStateError, KeyProblemError
from imagectl.imaging.slc.extract import UnsafeArchiveError
from imagectl.imaging.slc.rpmfile import RpmFormatError
from imagectl.imaging.slc.seed import unpack
from imagectl.store.local import LocalStore
from tests import hostile_yum
from tests.conftest import EXPIRY, Catalogue, CliResult, sha256, write_pattern
from tests.hostile_yum import DIR, LNK, REG, Member, write_rpm

ARCH = "x86_64"


def _publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, name: str, version: str, *extra: str) -> None:
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version, *extra)
    assert r.code == 0, r.err


class ReadLog(LocalStore):
    """A directory store that records the key of every read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read(self, key: str, max_length: int) -> bytes:
        self.reads.append(key)
        return super().read(key, max_length)


# -- imagectl/catalogue/state.py ---------------------------------------------------------------------------------------
@pytest.fixture
def indexed(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Catalogue:
    """A catalogue of four names spread over index roles."""
    monkeypatch.setattr(index, "INDEX_THRESHOLD", 3)
    monkeypatch.setattr(index, "INDEX_FILL", 2)
    monkeypatch.setattr(index, "INDEX_CROWDED", 4)
    for i in range(4):
        _publish(cli, catalogue, make_image(5_000, seed=f"n{i}"), f"n{i}", "1.0")
    assert load_state(catalogue.store).index_roles()
    return catalogue


def test_index_roles_are_terminating_delegations(indexed: Catalogue) -> None:
    """Mutant of ``_delegate``: targets delegates each index role terminating (a name's search ends there)."""
    d = load_state(indexed.store).targets.signed.delegations
    assert d is not None and d.roles
    assert {r.name: r.terminating for r in d.roles.values()} == dict.fromkeys(d.roles, True)


def test_a_reindex_to_the_bits_it_has_changes_nothing(indexed: Catalogue) -> None:
    """Mutant of ``reindex``: with the index already that wide there is nothing to do (nothing to re-sign)."""
    state = load_state(indexed.store)
    bits = index.bits_of(state.index_roles()[0])
    roles = state.index_roles()
    assert state.reindex(bits) == bits
    assert (state.changed, state.new_roles, state.index_roles()) == (set(), set(), roles)


def test_a_reindex_over_an_index_role_without_delegations_says_so(indexed: Catalogue) -> None:
    """Mutant of ``reindex``: an index role holding a name but no delegations is reported, not an AttributeError."""
    state = load_state(indexed.store)
    holder = state.name_index()["n0"]
    md = state.role(holder)
    assert md is not None
    md.signed.delegations = None
    with pytest.raises(CatalogueStateError) as e:
        state.reindex(index.bits_of(holder) + 1)
    assert str(e.value) == f"{holder} is delegated but missing"


@pytest.fixture
def binned(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> tuple[Catalogue, Path]:
    """wn:1.0 and wn:2.0 (x86_64, qcow2) spread over 512 bins; returns the catalogue and the image of 1.0."""
    image = make_image(5_000, seed="one")
    _publish(cli, catalogue, image, "wn", "1.0")
    _publish(cli, catalogue, make_image(5_000, seed="two"), "wn", "2.0")
    rebin_catalogue(catalogue.store, KeyRing(catalogue.keys), EXPIRY, ["wn"], bits=9)
    return catalogue, image


def test_a_binned_version_is_read_from_its_own_bins_whole(binned: tuple[Catalogue, Path]) -> None:
    """Mutants of ``version_images``: a binned name is asked by target path (only the bins the paths of the
    version hash into are read, not all 512), and each record keeps its size and custom fields."""
    catalogue, image = binned
    store = ReadLog(catalogue.dir)
    state = load_state(store)
    succinct = state.succinct(state.role("image-wn"))  # type: ignore[arg-type]
    assert succinct is not None
    store.reads.clear()
    records = state.version_images("wn", "1.0")
    wanted = {
        bins.bin_role_for(succinct, model.target_path("wn", "1.0", a, f)) for a in model.ARCHES for f in model.FORMATS
    }
    read = {k.split(".", 2)[1] for k in store.reads if "~b" in k}
    assert read <= wanted and len(wanted) < 2**9
    assert [(r.version, r.arch, r.format, r.size, r.sha256) for r in records] == [
        ("1.0", ARCH, "qcow2", 5_000, sha256(image))
    ]
    assert records[0].custom()["name"] == "wn"


def test_add_target_puts_a_binned_record_into_its_bin(binned: tuple[Catalogue, Path]) -> None:
    """Mutant of ``add_target``: a record of a binned name goes into the bin its path hashes into."""
    catalogue, _ = binned
    state = load_state(catalogue.store)
    md = state.role("image-wn")
    assert md is not None
    succinct = state.succinct(md)
    assert succinct is not None
    [rec] = state.version_images("wn", "2.0")
    note = {"at": "2026-01-01T00:00:00Z", "reason": "x"}
    state.add_target(md, dataclasses.replace(rec, deprecated=note))
    assert md.signed.targets == {}
    assert state.changed == {bins.bin_role_for(succinct, rec.path)}
    [again] = state.version_images("wn", "2.0")
    assert again.deprecated == note


def test_write_root_without_the_root_keys_names_the_role(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant of ``write_root``: the missing keys are named as root keys."""
    state = load_state(catalogue.store)
    empty = tmp_path / "no-keys"
    empty.mkdir()
    with pytest.raises(KeyProblemError) as e:
        state.write_root(KeyRing(empty), [], EXPIRY)
    assert str(e.value) == f"need 1 root key to sign, found 0 in {empty}"


# -- imagectl/imaging/slc/extract.py -----------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "target").mkdir()
    return tmp_path / "target"


def _rpm(root: Path, members: list[Member], name: str = "pkg") -> Path:
    pkgs = root.parent / "pkgs"
    pkgs.mkdir(exist_ok=True)
    return write_rpm(pkgs, name, members)


def _refusal(root: Path, members: list[Member]) -> str:
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([_rpm(root, members, "evil")], root)
    assert e.value.exit_code == 11
    assert list(root.iterdir()) == []
    return str(e.value)


def test_an_empty_or_dot_component_is_refused_with_its_reason(root: Path) -> None:
    """Mutant of ``_split``: the reason's text."""
    for name in ("./a/./b", "./a//b"):
        assert _refusal(root, [Member(name, REG, b"x")]) == (
            f"evil-1.0-1.x86_64.rpm: refusing archive member {name!r}: it has an empty or '.' component"
        )


def test_the_target_root_as_a_file_is_refused_with_its_reason(root: Path) -> None:
    """Mutant of ``_plan``: the reason's text."""
    assert _refusal(root, [Member("./", REG, b"")]) == (
        "evil-1.0-1.x86_64.rpm: refusing archive member './': the target root itself can only be a directory"
    )


def test_a_directory_the_archive_made_only_on_the_way_may_become_a_file(root: Path) -> None:
    """Mutant of ``_View.make_dir``: a directory created only in pass 1's view (``./l -> d/..`` makes ``/d`` on
    the way and climbs back out) has no children there; a later member ``./d`` replaces it. Without the record
    that it is fresh it would be looked for on disk (absent) and refused as a non-empty directory."""
    members = [Member("./l", LNK, b"d/.."), Member("./l/f", REG, b"f\n"), Member("./d", REG, b"d\n")]
    unpack([_rpm(root, members)], root)
    assert sorted(p.name for p in root.iterdir()) == ["d", "f", "l"]
    assert (root / "d").read_bytes() == b"d\n" and (root / "f").read_bytes() == b"f\n"
    assert os.readlink(root / "l") == "d/.."


def test_two_hard_link_groups_are_kept_apart(root: Path) -> None:
    """Mutant of ``_plan``: hard-link groups keyed by device and inode; one key for all would make one group of
    four with a link count of two (refused)."""
    members = [
        Member("./a1", REG, b"", nlink=2, ino=7),
        Member("./a2", REG, b"aaa\n", nlink=2, ino=7),
        Member("./b1", REG, b"", nlink=2, ino=8),
        Member("./b2", REG, b"bbbb\n", nlink=2, ino=8),
    ]
    unpack([_rpm(root, members)], root)
    assert {n: (root / n).read_bytes() for n in ("a1", "a2", "b1", "b2")} == {
        "a1": b"aaa\n", "a2": b"aaa\n", "b1": b"bbbb\n", "b2": b"bbbb\n"
    }  # fmt: skip
    assert (root / "a1").stat().st_ino == (root / "a2").stat().st_ino != (root / "b1").stat().st_ino
    assert (root / "b1").stat().st_ino == (root / "b2").stat().st_ino


def test_a_file_that_is_not_an_rpm_is_named_in_the_error(root: Path) -> None:
    """Mutant of ``extract_rpm``: the package's file name in a header read error."""
    junk = root.parent / "junk-1.0-1.x86_64.rpm"
    junk.write_bytes(b"\0" * 200)
    with pytest.raises(RpmFormatError) as e:
        unpack([junk], root)
    assert str(e.value) == "junk-1.0-1.x86_64.rpm: not an rpm file (bad lead magic)"


def test_a_payload_that_is_not_newc_cpio_is_named_in_the_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant of ``extract_rpm``: the package's file name in a payload (cpio) read error."""
    monkeypatch.setattr(hostile_yum, "newc", lambda members: b"070707" + b"0" * 200)
    with pytest.raises(RpmFormatError) as e:
        unpack([_rpm(root, [Member("./f", REG, b"x")])], root)
    assert str(e.value) == "pkg-1.0-1.x86_64.rpm: not a newc cpio archive (magic b'070707')"
    assert list(root.iterdir()) == []


def test_the_payload_copy_is_named_for_imagectl(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant of ``extract_rpm``: the temporary copy of the payload. Where a file system cannot make an unnamed
    file (no O_TMPFILE) it has a name for a moment in the temporary directory: one that says whose it is."""
    monkeypatch.setattr(tempfile, "_O_TMPFILE_WORKS", False)
    tmp_dir = root.parent / "tmp"
    tmp_dir.mkdir()
    seen: list[str] = []
    real_unlink = os.unlink

    def unlink(path: str | bytes | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if os.path.dirname(os.fsdecode(path)) == str(tmp_dir):
            seen.append(os.path.basename(os.fsdecode(path)))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    unpack([_rpm(root, [Member("./d", DIR), Member("./d/f", REG, b"x")])], root, tmp_dir=tmp_dir)
    assert len(seen) == 1 and seen[0].startswith("imagectl-payload-"), seen
    assert (root / "d/f").read_bytes() == b"x" and list(tmp_dir.iterdir()) == []


# -- imagectl/catalogue/publish.py -------------------------------------------------------------------------------------
PROTECTED_HINT = "(stable is protected; boot it with imagectl test --record, then publish --from-build)"


def _build_record(build: Path, name: str, arch: str, formats: tuple[str, ...]) -> None:
    """``NAME-ARCH.build.json`` with one image file per format (each with its size and SHA-256), none booted."""
    images = []
    for fmt in formats:
        image = write_pattern(build / f"{name}-{arch}.{fmt}", 8192, seed=f"{name}-{arch}-{fmt}")
        images.append({"format": fmt, "file": image.name, "size": 8192, "sha256": sha256(image)})
    target = {"name": name, "arch": arch, "os": "debian", "os_version": "12", "hypervisor": "hvm"}
    record = {"format": 1, "target": target, "images": images, "packages": [{"name": "bash"}]}
    (build / f"{name}-{arch}.build.json").write_text(json.dumps(record))


def test_a_build_of_two_names_refused_by_a_protected_channel_names_both(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutants of ``publish_build``: the refusal names every image name of the build, the untested arches and
    the channel."""
    w = catalogue.args()
    assert cli("catalogue", "protect", catalogue.dir, "stable", *w[2:]).code == 0
    build = tmp_path / "build"
    build.mkdir()
    _build_record(build, "wn", "x86_64", ("qcow2",))
    _build_record(build, "zz", "i386", ("qcow2",))
    r = cli("publish", "--from-build", build, *w, "--channel", "stable", "--version", "3")
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to publish wn, zz:3 to stable: no passing boot test for i386, x86_64 "
        f"{PROTECTED_HINT}\n",
    )
    assert load_state(catalogue.store).names() == []


def test_the_stored_sbom_describes_the_published_format(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutant of ``_store_sbom``: of a record's several images, the SBOM describes the one published (``--format
    qcow2``), not the record's first (raw)."""
    build = tmp_path / "build"
    build.mkdir()
    _build_record(build, "wn", "x86_64", ("raw", "qcow2"))
    r = cli("publish", "--from-build", build, *catalogue.args(), "--format", "qcow2", "--version", "1")
    assert r.code == 0, r.err
    [rec] = load_state(catalogue.store).images("wn")
    assert rec.format == "qcow2" and rec.sha256 == sha256(build / "wn-x86_64.qcow2")
    assert rec.build_record is not None
    sbom = json.loads((catalogue.dir / "blobs/sha256" / rec.build_record["sbom"]["sha256"]).read_bytes())
    assert sbom["packages"][0]["checksums"] == [{"algorithm": "SHA256", "checksumValue": rec.sha256}]
