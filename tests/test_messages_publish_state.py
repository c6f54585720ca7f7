"""Every user-facing message of imagectl/catalogue/publish.py, model.py and state.py, pinned whole (issue 13).

Mutation testing showed that most surviving mutants change the text of an error message or hint (``"XXtextXX"``, a
case change, an f-string part dropped) that tests only checked with ``"word" in err``. Each test here triggers one
message through its natural path (the CLI where it can reach it, else the module's public function) and compares
the whole message, and the exit code, with ``==``. Messages an existing test already pins exactly (test_mutants_*.py,
test_protected.py) are not repeated here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile

from imagectl.catalogue import bins, index, state
from imagectl.catalogue.keys import KeyRing, generate_key
from imagectl.catalogue.model import ImageRecord
from imagectl.catalogue.publish import init_catalogue
from imagectl.catalogue.state import CatalogueState, load_state, metadata_bytes, transact
from imagectl.errors import ConflictError, InvalidInputError, NotFoundError
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, Catalogue, CliResult, sha256, write_pattern
from tests.test_mutants_last import _drop_reason
from tests.test_mutants_publish import _build_dir, _record, _refused
from tests.test_mutants_verify_client import change, indexed  # noqa: F401 - indexed is a fixture, used by name

ARCH = "x86_64"
Cli = Callable[..., CliResult]


def _publish(cli: Cli, cat: Catalogue, image: Path, *args: str, name: str = "wn") -> CliResult:
    return cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, *args)


# -- publish.py: catalogue init ---------------------------------------------------------------------------------------
def test_init_refuses_a_key_directory_inside_the_catalogue(cli: Cli, tmp_path: Path) -> None:
    d = tmp_path / "cat"
    r = cli("catalogue", "init", d, "--keys", d / "keys")
    _refused(r, 7, f"key directory {d / 'keys'} is inside the catalogue {d}: private keys would be published",
             "keep keys outside the directory a web server serves")  # fmt: skip


@pytest.mark.parametrize("left", ["root.json", "1.root.json"], ids=["a-catalogue", "an-init-cut-short"])
def test_init_refuses_a_location_that_is_already_a_catalogue(cli: Cli, tmp_path: Path, left: str) -> None:
    """publish.py:72 (root.json there) and publish.py:106 (only the 1.root.json an interrupted init wrote first)."""
    d = tmp_path / "cat"
    assert cli("catalogue", "init", d, "--keys", tmp_path / "keys").code == 0
    for p in (d / "metadata").iterdir():
        if p.name != left:
            p.unlink()
    r = cli("catalogue", "init", d, "--keys", tmp_path / "keys2")
    _refused(r, 16, f"{LocalStore(d).shown} is already a catalogue", "use a new, empty location")


@pytest.mark.parametrize(("role", "threshold", "count"), [("snapshot", 2, 1), ("root", 0, 3)])
def test_init_refuses_a_threshold_outside_its_keys(tmp_path: Path, role: str, threshold: int, count: int) -> None:
    """publish.py:81, through the library: the CLI's --threshold parser refuses these first, in its own words.
    Every threshold is checked before any key is made: none is left in the key directory (the keys of the roles
    before snapshot were)."""
    with pytest.raises(InvalidInputError) as e:
        init_catalogue(LocalStore(tmp_path / "cat"), tmp_path / "keys", EXPIRY, {role: (threshold, count)})
    assert str(e.value) == f"threshold for {role} must be between 1 and the number of keys ({count})"
    assert e.value.exit_code == 3
    assert not (tmp_path / "keys").exists() and not (tmp_path / "cat").exists()


# -- publish.py: publish FILE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_publish_refuses_what_is_not_a_file(catalogue: Catalogue, cli: Cli, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.qcow2"
    if kind == "directory":
        path.mkdir()
    _refused(_publish(cli, catalogue, path), 14, f"{path} is not a file")


def test_publish_refuses_an_empty_file(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "empty.qcow2"
    path.touch()
    _refused(_publish(cli, catalogue, path), 3, f"{path} is empty")


def test_publish_of_other_bytes_under_a_taken_version_is_refused_with_the_way_out(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    first = make_image(seed="first")
    assert _publish(cli, catalogue, first, "--version", "1").code == 0
    r = _publish(cli, catalogue, make_image(seed="second"), "--version", "1")
    _refused(r, 6, f"wn:1 ({ARCH}) is already published with other bytes (sha256 {sha256(first)[:12]}…); "
             "versions are immutable", "publish under a new version (omit --version for an automatic one)")  # fmt: skip


@pytest.mark.parametrize(
    ("first", "second", "differs"),
    [
        (["--hypervisor", "hvm"], ["--hypervisor", "xen-pv"], "hypervisor hvm, not xen-pv"),
        (["--os", "debian", "--os-version", "12"], [], "os debian, not unset; os version 12, not unset"),
        (["--os", "debian", "--os-version", "12"], ["--os", "debian", "--os-version", "13"], "os version 12, not 13"),
    ],
    ids=["hypervisor", "os", "os-version"],
)
def test_publish_of_the_same_bytes_with_other_metadata_is_refused(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], first: list[str], second: list[str],
    differs: str,
) -> None:  # fmt: skip
    img = make_image()
    assert _publish(cli, catalogue, img, "--version", "1", *first).code == 0
    r = _publish(cli, catalogue, img, "--version", "1", *second)
    _refused(r, 6, f"wn:1 ({ARCH}) is already published with the same bytes but {differs}; versions are immutable")


def test_publish_refuses_a_version_against_the_rule(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """model.py:82 with check_version's rule (the other identifiers' rules are pinned in test_mutants_model)."""
    r = _publish(cli, catalogue, make_image(), "--version=.1")
    _refused(r, 3, "invalid version '.1': use 1-64 of A-Z a-z 0-9 . _ + ~ - starting with a letter or digit")


def test_a_version_revoked_without_a_signed_reason_is_refused_saying_so(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """publish.py:227, the default of a revocation whose signed entry has no reason (another writer's)."""
    assert _publish(cli, catalogue, make_image(seed="1"), "--version", "1").code == 0
    assert cli("revoke", "wn:1", "--reason", "PLACEHOLDER", *catalogue.args()).code == 0
    _drop_reason(catalogue, "image-wn")
    message = "wn:1 was revoked (no reason given); versions are never reused"
    _refused(cli("promote", "wn:1", "stable", *catalogue.args()), 5, message)
    _refused(_publish(cli, catalogue, make_image(seed="2"), "--version", "1"), 5, message)


# -- publish.py: publish --from-build ---------------------------------------------------------------------------------
def test_publish_from_build_refuses_a_malformed_recipe_digest(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    record = _record(ARCH, "wn.qcow2", "qcow2", recipe={"digest": "md5:d41d8cd98f00b204e9800998ecf8427e"})
    d = _build_dir(tmp_path, {"wn.build.json": record})
    r = cli("publish", "--from-build", d, *catalogue.args())
    _refused(r, 3, "recipe digest must be sha256:<64 hex digits>, got 'md5:d41d8cd98f00b204e9800998ecf8427e'")


@pytest.mark.parametrize(
    ("kind", "words"), [("symlink", "a symbolic link"), ("directory", "a directory"), ("fifo", "a FIFO")]
)
def test_publish_from_build_refuses_an_image_that_is_not_a_regular_file(
    catalogue: Catalogue, cli: Cli, tmp_path: Path, kind: str, words: str
) -> None:
    d = _build_dir(tmp_path, {"wn.build.json": _record(ARCH, "wn.qcow2", "qcow2")})
    image = d / "wn.qcow2"
    image.unlink()
    if kind == "symlink":
        image.symlink_to(d / f"wn-{ARCH}.raw")
    elif kind == "directory":
        image.mkdir()
    else:
        os.mkfifo(image)
    r = cli("publish", "--from-build", d, *catalogue.args())
    _refused(r, 3, f"{d / 'wn.build.json'}: image file wn.qcow2 is {words}, not a regular file")


def test_publish_from_build_refuses_a_boot_test_of_other_bytes(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """publish.py:557: the record's boot test booted other bytes than the record says its image holds."""
    image_sha = sha256(write_pattern(tmp_path / "wn.qcow2", 8192, seed="wn.qcow2"))
    boot_test = {"passed": True, "marker": "login:", "accel": "tcg", "seconds": 85, "host": "builder01",
                 "at": "2026-11-25T15:02:03Z", "image_sha256": "ab" * 32}  # fmt: skip
    images = [{"format": "qcow2", "file": "wn.qcow2", "sha256": image_sha}]
    d = _build_dir(tmp_path, {"wn.build.json": _record(ARCH, "", "", images=images, boot_test=boot_test)})
    r = cli("publish", "--from-build", d, *catalogue.args())
    _refused(r, 11, f"build record {d / 'wn.build.json'}: its boot test booted other bytes (sha256 abababababab…) "
             f"than wn.qcow2 (sha256 {image_sha[:12]}…): a record from another build",
             "boot this image and record it: imagectl test IMAGE --record")  # fmt: skip


# -- model.py: a signed target read back (ImageRecord.from_target) ----------------------------------------------------
PATH = f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2"
SHA = "0" * 64
CUSTOM: dict[str, Any] = {"name": "wn", "version": "1", "arch": ARCH, "format": "qcow2", "hypervisor": "hvm",
                          "size": 10, "created": "2026-11-25T15:02:03Z"}  # fmt: skip
GOOD_TEST = {"passed": True, "marker": "login:", "accel": "kvm", "seconds": 12, "host": "h",
             "at": "2026-11-25T15:02:03Z", "image_sha256": SHA}  # fmt: skip


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in CUSTOM.items() if k != key}


@pytest.mark.parametrize(
    ("hashes", "custom", "message"),
    [
        ({"sha256": SHA}, "wn", f"target {PATH} is not an imagectl image (no custom fields or no sha256)"),
        ({"sha512": SHA}, CUSTOM, f"target {PATH} is not an imagectl image (no custom fields or no sha256)"),
        ({"sha256": SHA}, _without("created"), f"target {PATH} lacks the custom field 'created'"),
        ({"sha256": SHA}, {**CUSTOM, "arch": "x 86"}, f"target {PATH} has an invalid arch 'x 86'"),
        ({"sha256": SHA}, {**CUSTOM, "format": "q/cow"}, f"target {PATH} has an invalid format 'q/cow'"),
        ({"sha256": SHA}, {**CUSTOM, "hypervisor": "hvm x"}, f"target {PATH} has an invalid hypervisor 'hvm x'"),
        ({"sha256": SHA}, {**CUSTOM, "os": "bad value"}, f"target {PATH} has an invalid os 'bad value'"),
        ({"sha256": SHA}, {**CUSTOM, "os": "slc", "os_version": 6}, f"target {PATH} has an invalid os_version '6'"),
        ({"sha256": SHA}, {**CUSTOM, "created": "yesterday"}, f"target {PATH} has an invalid created time 'yesterday'"),
        ({"sha256": SHA}, {**CUSTOM, "version": "2"},
         f"target {PATH} has custom fields of wn/2/{ARCH}/wn-2-{ARCH}.qcow2"),
        ({"sha256": SHA}, {**CUSTOM, "size": 11}, f"target {PATH} has size 11 but length 10"),
        ({"sha256": SHA}, _without("size"), f"target {PATH} has size None but length 10"),
        ({"sha256": SHA}, {**CUSTOM, "boot_test": None},
         f"target {PATH} has a null boot_test (optional fields are omitted, never null)"),
        ({"sha256": SHA}, {**CUSTOM, "boot_test": {**GOOD_TEST, "image_sha256": "1" * 64}},
         f"target {PATH} has a boot_test of other bytes (sha256 111111111111…)"),
        ({"sha256": SHA}, {**CUSTOM, "parent_image": {"name": "base", "version": "3", "sha256": "B" * 64}},
         f"target {PATH}: parent_image has no valid sha256"),
    ],
    ids=["custom-not-object", "no-sha256", "lacks-field", "arch", "format", "hypervisor", "os", "os_version",
         "created", "path-mismatch", "size-mismatch", "size-missing", "null-boot-test", "boot-test-other-bytes",
         "parent-image-sha256"],
)  # fmt: skip
def test_a_malformed_signed_target_is_refused_with_its_reason(
    hashes: dict[str, str], custom: object, message: str
) -> None:
    assert ImageRecord.from_target(PATH, 10, {"sha256": SHA}, CUSTOM).path == PATH  # the base target is valid
    with pytest.raises(InvalidInputError) as e:
        ImageRecord.from_target(PATH, 10, hashes, custom)
    assert str(e.value) == message
    assert e.value.exit_code == 3


# -- state.py: loading the catalogue ----------------------------------------------------------------------------------
def test_a_location_without_a_catalogue_is_refused_with_how_to_make_one(
    catalogue: Catalogue, cli: Cli, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("promote", "wn:1", "stable", "--catalogue", empty, "--keys", catalogue.keys)
    _refused(r, 16, f"{LocalStore(empty).shown} is not a catalogue (no metadata/root.json)",
             "create one with: imagectl catalogue init DEST")  # fmt: skip


def _sign_root(cat: Catalogue, version: int, signer_dir: Path | None = None) -> None:
    """Write ``metadata/2.root.json``: root 1 as version ``version``, signed by the root key (or by a new key made
    in ``signer_dir``, which root 1 does not trust)."""
    root = Metadata.from_bytes(cat.root.read_bytes())
    root.signed.version = version
    root.signatures.clear()
    if signer_dir is None:
        (keyid,) = root.signed.roles["root"].keyids
        root.sign(KeyRing(cat.keys).signers[keyid])
    else:
        root.sign(generate_key(signer_dir, "root"))
    (cat.dir / "metadata" / "2.root.json").write_bytes(metadata_bytes(root))


def test_a_root_the_previous_root_did_not_sign_is_refused_by_name(
    catalogue: Catalogue, cli: Cli, tmp_path: Path
) -> None:
    """state.py:590: the root chain names the root that refused the next one."""
    _sign_root(catalogue, 2, tmp_path / "other-keys")
    r = cli("promote", "wn:1", "stable", *catalogue.args())
    _refused(r, 8, "metadata/2.root.json (by root 1): signature check failed: root was signed by 0/1 keys")


def test_a_root_file_of_another_version_is_refused(catalogue: Catalogue, cli: Cli) -> None:
    """state.py:593: 2.root.json holding a (validly signed) version 3."""
    _sign_root(catalogue, 3)
    _refused(cli("promote", "wn:1", "stable", *catalogue.args()), 8, "metadata/2.root.json has version 3")


def _snapshot_version(cat: Catalogue) -> int:
    """The snapshot version timestamp.json names."""
    ts = json.loads((cat.dir / "metadata" / "timestamp.json").read_bytes())
    return int(ts["signed"]["meta"]["snapshot.json"]["version"])


def test_a_snapshot_without_targets_is_refused(catalogue: Catalogue, cli: Cli) -> None:
    """state.py:624: a validly signed snapshot that lists no targets.json."""

    def drop(s: CatalogueState) -> None:
        del s.snapshot.signed.meta["targets.json"]

    change(catalogue, drop, set())
    version = _snapshot_version(catalogue)
    r = cli("promote", "wn:1", "stable", *catalogue.args())
    _refused(r, 8, f"metadata/{version}.snapshot.json does not list targets.json")


def test_a_role_file_of_another_version_than_the_snapshot_says_is_refused(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """state.py:153: the snapshot names ``7.image-wn.json``, which holds the (genuinely signed) version 1."""
    assert _publish(cli, catalogue, make_image(), "--version", "1").code == 0
    meta = catalogue.dir / "metadata"
    (meta / "7.image-wn.json").write_bytes((meta / "1.image-wn.json").read_bytes())

    def point(s: CatalogueState) -> None:
        s.snapshot.signed.meta["image-wn.json"] = MetaFile(version=7)

    change(catalogue, point, set())
    r = cli("promote", "wn:1", "stable", *catalogue.args())
    _refused(r, 8, "metadata/7.image-wn.json has version 1, snapshot says 7")


def test_a_new_name_whose_index_role_is_missing_is_refused(
    indexed: Catalogue,  # noqa: F811
    cli: Cli,
    make_image: Callable[..., Path],
) -> None:
    """state.py:255: a (validly signed) snapshot that leaves out the index role a new name belongs in."""
    bits = index.bits_of(load_state(indexed.store).index_roles()[0])
    holder = index.index_role("newname", bits)

    def drop(s: CatalogueState) -> None:
        del s.snapshot.signed.meta[f"{holder}.json"]

    change(indexed, drop, set())
    r = _publish(cli, indexed, make_image(seed="new"), name="newname")
    _refused(r, 8, f"index role {holder} is delegated but missing")  # inconsistent signed metadata


# -- state.py: re-binning, committing -------------------------------------------------------------------------------
def test_rebinning_an_unknown_name_is_refused(catalogue: Catalogue) -> None:
    """state.py:384; ``catalogue rebin`` refuses an unknown name before (upgrade.py), with the same exit 4."""
    with pytest.raises(NotFoundError) as e:
        load_state(catalogue.store).rebin("nope", 1)
    assert str(e.value) == "no image named 'nope' in the catalogue"
    assert e.value.exit_code == 4


def test_rebinning_into_more_bins_than_allowed_is_refused_with_the_range(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """state.py:388; ``catalogue rebin --bits`` refuses it before, in its own words."""
    assert _publish(cli, catalogue, make_image(), "--version", "1").code == 0
    with pytest.raises(InvalidInputError) as e:
        load_state(catalogue.store).rebin("wn", bins.MAX_BITS + 1)
    assert str(e.value) == f"a name has 2 to {2**bins.MAX_BITS} bins (1 to {bins.MAX_BITS} bits)"


class Contended(LocalStore):
    """A directory store another publisher keeps winning on: every snapshot version is taken (``taken``), or
    every timestamp swap is lost."""

    def __init__(self, root: Path, *, taken: bool) -> None:
        super().__init__(root)
        self.taken = taken

    def write_new(self, key: str, data: bytes) -> bool:
        return False if self.taken and key.endswith(".snapshot.json") else super().write_new(key, data)

    def write_if_match(self, key: str, data: bytes, tag: str) -> bool:
        return False if key == "metadata/timestamp.json" else super().write_if_match(key, data, tag)


@pytest.mark.parametrize(
    ("taken", "message"),
    [
        (True, f"{state._MAX_SKIPS} versions of snapshot in a row were taken"),
        (False, "another publisher changed the catalogue first"),
    ],
)
def test_a_commit_that_loses_to_another_publisher_says_how(catalogue: Catalogue, taken: bool, message: str) -> None:
    """state.py:434 and :494 (CommitConflict: :func:`transact` catches it and starts again)."""
    s = load_state(Contended(catalogue.dir, taken=taken))
    with pytest.raises(state.CommitConflict) as e:
        s.commit(KeyRing(catalogue.keys), EXPIRY)
    assert str(e.value) == message
    assert e.value.exit_code == 6


def test_a_command_that_loses_every_swap_gives_up_and_says_to_retry(catalogue: Catalogue) -> None:
    """state.py:553: what a user sees when ``transact`` runs out of attempts."""
    store = Contended(catalogue.dir, taken=False)
    keys = KeyRing(catalogue.keys)
    with pytest.raises(ConflictError) as e:
        transact(store, lambda s: s.commit(keys, EXPIRY), attempts=2)
    assert str(e.value) == "the catalogue changed under this command 2 times in a row; try again"
    assert e.value.exit_code == 6
