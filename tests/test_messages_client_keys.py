"""Every user-facing message of imagectl/catalogue/{client,keys,metadata,gc}.py, pinned whole (issue 13).

Mutation runs showed that a mutant changing the text of an error or hint (``"text"`` -> ``"XXtextXX"``, another
case, a dropped f-string part) survived wherever tests read the message with ``"word" in err``. Each test here
triggers one message through its natural path (the CLI, or the module's public function where no command reaches
it cheaply) and compares the whole of it with ``==``: for the CLI, all of stderr (error line, hint line, nothing
else) and the documented exit code. Variable parts (paths, URLs, versions, key ids, sizes) are computed here.
Texts that python-tuf or cryptography put into a message are python-tuf's or cryptography's, as the installed
versions word them (tuf>=6,<8).

Messages pinned whole elsewhere, so not repeated here (file:line of the message):
client.py:203 with metadata.py:86 (a first root over the JSON value limit; test_mutants_sample3), client.py:219
(test_mutants_sample2), :251 (cached root; test_mutants_sample2), :254 (test_mutants_sample3), :256 (trust on first
use; test_mutants_group1), :281-282 with a non-empty hint (test_mutants_sample2), :320 (test_protected,
test_mutants_group1), :388 (test_mutants_group1), :392 (test_mutants_sample3), :404-405 (test_mutants_group1), :414
(test_mutants_sample2); keys.py:30 (test_mutants_group1), :37 (test_mutants_sample2), :79-80 (test_mutants_keys),
:95-96 (test_mutants_publish_extract, test_mutants_sample3); metadata.py:86 (test_mutants_group2, test_hostile_pull),
:126 (test_hostile_pull); gc.py:77, :81 (test_mutants_gc).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tuf.api.metadata import Metadata

from imagectl.catalogue.cachedir import cache_key
from imagectl.catalogue.keys import KEY_MAX, KeyRing
from imagectl.catalogue.metadata import ROOT_MAX, SNAPSHOT_MAX, TARGETS_MAX, TIMESTAMP_MAX, check_bounds
from imagectl.catalogue.model import EXT, role_for, utcnow
from imagectl.catalogue.state import load_state
from imagectl.errors import UntrustedMetadataError
from tests.conftest import EXPIRY, REPO, Catalogue, CliResult, unavailable
from tests.test_attacks import _in_the_past, current, meta, publish, pull, resigned, tampered
from tests.test_pull_http import NOBODY, as_unprivileged

Cli = Callable[..., CliResult]
ARCH = "x86_64"
SIZE = 4096  # bytes per test image


def url_of(cat: Catalogue) -> str:
    """How messages name a directory catalogue (CatalogueReader.shown_url)."""
    return f"{cat.dir.as_uri()}/"


def stderr(message: str, hint: str | None = None) -> str:
    """All of stderr for one refusal: ``imagectl: error: MESSAGE`` and, when given, ``hint: HINT``."""
    return f"imagectl: error: {message}\n" + (f"hint: {hint}\n" if hint is not None else "")


def refused(r: CliResult, code: int, message: str, hint: str | None = None) -> None:
    assert (r.code, r.err) == (code, stderr(message, hint)), r.err


@pytest.fixture
def published(catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]) -> Catalogue:
    """The catalogue fixture with one image, wn:1 for x86_64."""
    publish(cli, catalogue, make_image(SIZE, seed="1"))
    return catalogue


def sign_into_image_role(cat: Catalogue, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Sign, with the catalogue's own keys, NAME's ``x-imagectl`` as ``change`` leaves it: what another writer
    holding the targets key could publish (imagectl's own commands never write these shapes)."""
    with cat.store.lock():
        state = load_state(cat.store)
        md = state.role_for_update(name, utcnow().replace(year=utcnow().year + 1))
        change(md.signed.unrecognized_fields.setdefault(EXT, {}))
        state.commit(KeyRing(cat.keys), EXPIRY)


# -- client.py: python-tuf's refusals, one exit code per cause (translate_tuf) -------------------------------------
def _unsigned(cat: Catalogue) -> tuple[int, str, str | None]:
    ts = meta(cat, "timestamp.json")
    ts.write_bytes(tampered(ts.read_bytes(), lambda s: s.update(version=s["version"] + 1)))
    return 8, f"metadata from {url_of(cat)} is not validly signed: timestamp was signed by 0/1 keys", None


def _length_signed_otherwise(cat: Catalogue) -> tuple[int, str, str | None]:
    """A timestamp (validly signed, as a TUF writer that records lengths signs it) giving the snapshot a length
    one byte over its real one."""
    length = meta(cat, f"{current(cat, 'snapshot')}.snapshot.json").stat().st_size

    def longer(signed: Any) -> None:
        signed.snapshot_meta.length = length + 1

    ts = meta(cat, "timestamp.json")
    ts.write_bytes(resigned(cat, ts.read_bytes(), "timestamp", longer))
    why = f"Observed length {length} does not match expected length {length + 1}"
    return 8, f"metadata from {url_of(cat)} does not match its signed length/hash: {why}", None


def _over_the_cap(cat: Catalogue) -> tuple[int, str, str | None]:
    meta(cat, "timestamp.json").write_bytes(b" " * (TIMESTAMP_MAX + 1))
    why = f"Downloaded {TIMESTAMP_MAX + 1} bytes exceeding the maximum allowed length of {TIMESTAMP_MAX}"
    return 8, f"metadata from {url_of(cat)} is too long: {why}", None


def _other_type(cat: Catalogue) -> tuple[int, str, str | None]:
    snapshot = meta(cat, f"{current(cat, 'snapshot')}.snapshot.json")
    meta(cat, "timestamp.json").write_bytes(snapshot.read_bytes())
    return 8, f"bad metadata from {url_of(cat)}: Expected 'timestamp', got 'snapshot'", None


def _missing(cat: Catalogue) -> tuple[int, str, str | None]:
    key = f"metadata/{current(cat, 'snapshot')}.snapshot.json"
    (cat.dir / key).unlink()
    return 4, f"missing catalogue file at {url_of(cat)}: {key} not found in {url_of(cat)}", None


def _expired(cat: Catalogue) -> tuple[int, str, str | None]:
    ts = meta(cat, "timestamp.json")
    ts.write_bytes(resigned(cat, ts.read_bytes(), "timestamp", _in_the_past))
    return (
        10,
        f"expired metadata from {url_of(cat)}: timestamp.json is expired",
        "the catalogue must be re-signed: imagectl catalogue resign",
    )


def _mixed(cat: Catalogue) -> tuple[int, str, str | None]:
    """The snapshot the timestamp names replaced by the one before it (validly signed, another version)."""
    n = current(cat, "snapshot")
    meta(cat, f"{n}.snapshot.json").write_bytes(meta(cat, f"{n - 1}.snapshot.json").read_bytes())
    return 17, f"inconsistent metadata versions from {url_of(cat)}: Expected snapshot version {n}, got {n - 1}", None


@pytest.mark.parametrize(
    "damage", [_unsigned, _length_signed_otherwise, _over_the_cap, _other_type, _missing, _expired, _mixed]
)
def test_pull_names_what_is_wrong_with_the_catalogues_metadata(
    published: Catalogue, cli: Cli, tmp_path: Path, damage: Callable[[Catalogue], tuple[int, str, str | None]]
) -> None:
    """client.py:70-88: each python-tuf refusal says what it is, where it came from, and (expired) what fixes it."""
    code, message, hint = damage(published)
    dest = tmp_path / "out.qcow2"
    refused(pull(cli, published.dir, published.root, dest), code, message, hint)
    assert not dest.exists()


def test_pull_of_metadata_older_than_trusted_is_a_rollback(
    published: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """client.py:75: a timestamp older than the one the client already trusts."""
    old = meta(published, "timestamp.json").read_bytes()
    publish(cli, published, make_image(SIZE, seed="2"), version="2")
    new_version = json.loads(meta(published, "timestamp.json").read_bytes())["signed"]["version"]
    old_version = json.loads(old)["signed"]["version"]
    assert pull(cli, published.dir, published.root, tmp_path / "first.qcow2").code == 0
    meta(published, "timestamp.json").write_bytes(old)
    r = pull(cli, published.dir, published.root, tmp_path / "second.qcow2")
    why = f"New timestamp version {old_version} must be >= {new_version}"
    refused(r, 9, f"rollback refused: {why} (metadata older than already trusted)")


def test_a_pinned_root_that_does_not_sign_itself_is_not_valid_root_metadata(
    published: Catalogue, cli: Cli, tmp_path: Path
) -> None:
    """client.py:186: the pinned root is the catalogue's own (same document), but its signature no longer holds."""
    published.root.write_bytes(tampered(published.root.read_bytes(), lambda s: s.update(x_imagectl_test=1)))
    r = pull(cli, published.dir, published.root, tmp_path / "out.qcow2")
    refused(r, 12, "the trusted root is not valid root metadata: root was signed by 0/1 keys")


# -- client.py: the trust anchor (_bootstrap, _read_root) ---------------------------------------------------------
def test_a_sha256_pin_no_root_has(published: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:228."""
    want = hashlib.sha256(b"not the root").hexdigest()
    r = pull(cli, published.dir, f"sha256:{want}", tmp_path / "out.qcow2")
    refused(r, 12, f"no root of {url_of(published)} has the pinned SHA-256 {want[:16]}…")


def test_a_first_root_over_the_size_cap_is_too_long(cli: Cli, tmp_path: Path) -> None:
    """client.py:210: trust on first use reads metadata/1.root.json, refused past ROOT_MAX bytes."""
    cat = tmp_path / "cat"
    (cat / "metadata").mkdir(parents=True)
    (cat / "metadata" / "1.root.json").write_bytes(b" " * (ROOT_MAX + 1))
    r = cli("catalogue", "list", "--catalogue", cat)
    refused(r, 8, f"metadata/1.root.json from {cat.as_uri()}/ is too long: over {ROOT_MAX} bytes")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_pinned_root_that_is_no_regular_file(published: Catalogue, cli: Cli, tmp_path: Path, kind: str) -> None:
    """client.py:231 (the words "trusted root" in read_regular's refusals)."""
    root = tmp_path / "pinned"
    if kind == "directory":
        root.mkdir()
    r = pull(cli, published.dir, root, tmp_path / "out.qcow2")
    what = "does not exist" if kind == "missing" else "is a directory, not a regular file"
    refused(r, 3, f"trusted root {root} {what}")


@pytest.mark.parametrize("kind", ["not-json", "timestamp"])
def test_a_pinned_file_that_is_not_root_metadata(published: Catalogue, cli: Cli, tmp_path: Path, kind: str) -> None:
    """client.py:235. A pinned timestamp gets the same words: client.py:237 ("is timestamp metadata, not root")
    cannot be reached, parse_metadata already refuses a document of another type under a root's key."""
    root = tmp_path / "pinned.json"
    root.write_bytes(b"{}" if kind == "not-json" else meta(published, "timestamp.json").read_bytes())
    r = pull(cli, published.dir, root, tmp_path / "out.qcow2")
    refused(r, 3, f"{root} is not TUF root metadata")


def test_the_root_of_another_catalogue_is_refused_with_the_root_to_pin(
    published: Catalogue, cli: Cli, tmp_path: Path
) -> None:
    """client.py:244-247: the message names the pinned file, its version and the catalogue; the hint the fix."""
    other = tmp_path / "other"
    assert cli("catalogue", "init", other, "--keys", tmp_path / "other-keys").code == 0
    root = other / "metadata" / "1.root.json"
    r = pull(cli, published.dir, root, tmp_path / "out.qcow2")
    refused(
        r,
        12,
        f"the pinned root {root} (version 1) is not a root of {url_of(published)}",
        "pin the root.json that `imagectl catalogue init` printed for this catalogue",
    )


# -- client.py: the client cache -----------------------------------------------------------------------------------
def _list(cli: Cli, cat: Catalogue, cache: Path) -> CliResult:
    return cli("catalogue", "list", "--catalogue", cat.dir, "--root", cat.root, "--cache-dir", cache)


def test_a_client_cache_that_is_a_file(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """A regular file where the cache should be is named as such (it read "cannot create …: File exists")."""
    cache = tmp_path / "file"
    cache.write_text("not a directory")
    refused(_list(cli, catalogue, cache), 14, f"the client cache {cache} is not a directory")


def test_a_client_cache_that_cannot_be_made(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """Its parent is a regular file: mkdir fails with ENOTDIR."""
    (tmp_path / "file").write_text("not a directory")
    cache = tmp_path / "file" / "cache"
    refused(_list(cli, catalogue, cache), 14, f"cannot create the client cache {cache}: {os.strerror(errno.ENOTDIR)}")


@pytest.mark.parametrize(("mode", "who"), [(0o770, "its group"), (0o702, "others"), (0o722, "others")])
def test_a_client_cache_others_can_write(catalogue: Catalogue, cli: Cli, tmp_path: Path, mode: int, who: str) -> None:
    """client.py:116-120: who can write, the mode, why it matters, and the chmod that fixes it."""
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(mode)
    refused(
        _list(cli, catalogue, cache),
        14,
        f"refusing the client cache {cache}: it is writable by {who} (mode {mode:04o}), so someone else could plant "
        "trusted metadata in it",
        f"chmod go-w {cache}",
    )


@pytest.mark.root
def test_a_client_cache_of_another_user(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:110-113: whose cache it is, and the hint to use one's own."""
    if os.geteuid() != 0:
        unavailable("making a directory another user owns needs root")
    cache = tmp_path / "their-cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, NOBODY, NOBODY)
    refused(
        _list(cli, catalogue, cache),
        14,
        f"refusing the client cache {cache}: it belongs to uid {NOBODY}, not to this user (0)",
        "use a cache of your own: --cache-dir DIR or IMAGECTL_CACHE_DIR",
    )


def test_a_lock_file_that_is_a_symlink(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:153: the lock of the catalogue's cache directory is never opened through a symlink."""
    cache = tmp_path / "cache"
    assert _list(cli, catalogue, cache).code == 0
    lock = cache.resolve() / "tuf" / cache_key(catalogue.store.url) / ".lock"  # the cache as resolved
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")
    message = f"refusing {lock}: a symlink or non-directory is in the way (not followed)"
    refused(_list(cli, catalogue, cache), 14, message)
    assert not (tmp_path / "elsewhere").exists()


# -- client.py: what a name, version, channel or arch resolves to ---------------------------------------------------
def test_no_image_of_that_name_in_an_empty_catalogue(catalogue: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:280-283, the hint of a catalogue with no image at all."""
    r = pull(cli, catalogue.dir, catalogue.root, tmp_path / "out.qcow2", ref="nosuch")
    refused(r, 4, f"no image named 'nosuch' in {url_of(catalogue)}", "the catalogue is empty")


@pytest.mark.parametrize("channels", [[], ["testing"], ["beta", "testing"]])
def test_no_such_channel_lists_the_channels(published: Catalogue, cli: Cli, tmp_path: Path, channels: list[str]):
    """client.py:371-372: the channels NAME has, or none."""
    for channel in channels:
        assert cli("promote", "wn:1", channel, *published.args()).code == 0
    r = pull(cli, published.dir, published.root, tmp_path / "out.qcow2", ref="wn@stable")
    refused(r, 4, f"wn has no channel 'stable' (channels: {', '.join(channels) or 'none'})")


def test_a_signed_channel_of_another_shape(published: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:374: a channel signed as a bare string instead of {"version": ...}."""
    sign_into_image_role(published, "wn", lambda ext: ext.setdefault("channels", {}).update(stable="1"))
    r = pull(cli, published.dir, published.root, tmp_path / "out.qcow2", ref="wn@stable")
    refused(r, 8, "signed channel 'stable' of wn is malformed")


def test_a_revocation_says_when_and_why(published: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:378, through `imagectl revoke`: the signed time and the reason."""
    assert cli("revoke", "wn:1", "--reason", "end of support", *published.args()).code == 0
    at = load_state(published.store).role(role_for("wn")).signed.unrecognized_fields[EXT]["revoked"]["1"]["at"]
    r = pull(cli, published.dir, published.root, tmp_path / "out.qcow2", ref="wn:1")
    refused(r, 5, f"wn:1 was revoked on {at}: end of support")


def test_a_signed_revocation_without_a_time(published: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """client.py:378: a tombstone signed without "at" (another writer's) says so with a question mark."""
    sign_into_image_role(published, "wn", lambda ext: ext.setdefault("revoked", {}).update({"1": {"reason": "gone"}}))
    r = pull(cli, published.dir, published.root, tmp_path / "out.qcow2", ref="wn:1")
    refused(r, 5, "wn:1 was revoked on ?: gone")


def test_no_image_for_this_arch_hints_at_arch(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """client.py:397-400: the arches there are, and the hint to choose one."""
    for arch in ("aarch64", "i386"):
        r = cli("publish", make_image(SIZE, seed=arch), *catalogue.args(), "--name", "wn", "--arch", arch)
        assert r.code == 0, r.err
    r = pull(cli, catalogue.dir, catalogue.root, tmp_path / "out.qcow2")
    refused(r, 4, f"wn has no {ARCH} image (arches: aarch64, i386)", "choose one with --arch")


# -- keys.py --------------------------------------------------------------------------------------------------------
def test_keys_that_name_a_file(catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path):
    """keys.py:32-35."""
    keys = tmp_path / "keys.pem"
    keys.write_text("")
    r = cli("publish", make_image(SIZE), "--catalogue", catalogue.dir, "--keys", keys, "--name", "wn", "--arch", ARCH)
    refused(
        r,
        7,
        f"--keys names {keys}, which is not a directory",
        "--keys takes the directory that holds the *.key files",
    )


def _directory(path: Path) -> str:
    path.mkdir()
    return "is a directory, not a regular file"


def _oversized(path: Path) -> str:
    path.write_bytes(b"k" * (KEY_MAX + 1))
    path.chmod(0o600)
    return f"is larger than the allowed {KEY_MAX} bytes ({KEY_MAX + 1} bytes)"


@pytest.mark.parametrize("make", [_directory, _oversized])
def test_a_key_file_that_is_no_key_file(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], make: Callable[[Path], str]
) -> None:
    """keys.py:83 (the words "private key" in read_regular's refusals)."""
    path = catalogue.keys / "extra.key"
    what = make(path)
    r = cli("publish", make_image(SIZE), *catalogue.args(), "--name", "wn", "--arch", ARCH)
    refused(r, 7, f"private key {path} {what}")


def test_a_key_file_that_is_not_pem(catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]) -> None:
    """keys.py:88: the file, and cryptography's own reason."""
    path = catalogue.keys / "extra.key"
    path.write_bytes(b"not a key\n")
    path.chmod(0o600)
    with pytest.raises(ValueError) as why:
        load_pem_private_key(path.read_bytes(), password=None)
    r = cli("publish", make_image(SIZE), *catalogue.args(), "--name", "wn", "--arch", ARCH)
    refused(r, 7, f"{path} is not an unencrypted PEM private key: {why.value}")


def test_a_key_that_cannot_be_written(tmp_path: Path) -> None:
    """keys.py:53, through `imagectl catalogue init` as a user who may not write to the key directory (as root:
    uid 65534, see tests/test_pull_http.py)."""
    # a directory every user can reach (tmp_path's parents are the owner's only; access() checks the whole path)
    top = Path(tempfile.mkdtemp(prefix="imagectl-keys-", dir="/tmp"))
    try:
        top.chmod(0o711)
        keys = top / "keys"
        keys.mkdir()
        keys.chmod(0o555)
        env = {**os.environ, "IMAGECTL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "imagectl", "catalogue", "init", str(top / "cat"), "--keys", str(keys)]
        p = as_unprivileged(argv, env)
        message = f"cannot write key {keys / 'root-1.key'}: {os.strerror(errno.EACCES)}"
        assert (p.returncode, p.stderr) == (7, stderr(message)), p.stderr
        assert list(keys.iterdir()) == []
    finally:
        shutil.rmtree(top)


# -- metadata.py ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "cap"),
    [
        ("metadata/timestamp.json", TIMESTAMP_MAX),
        ("metadata/3.snapshot.json", SNAPSHOT_MAX),
        ("metadata/2.root.json", ROOT_MAX),
        ("metadata/4.image-wn.json", TARGETS_MAX),
    ],
)
def test_metadata_over_the_cap_of_its_role(key: str, cap: int) -> None:
    """metadata.py:94, through check_bounds: every reader asks the store for at most the cap, so no command
    hands it more (the writer's refusal, state.encoded, wraps this same message)."""
    check_bounds(b" " * cap, key)
    with pytest.raises(UntrustedMetadataError) as e:
        check_bounds(b" " * (cap + 1), key)
    assert str(e.value) == f"{key} is {cap + 1} bytes, over the {cap}-byte cap of the format"


def test_metadata_over_a_cap_given_by_the_caller() -> None:
    """metadata.py:94, with the cap passed in."""
    with pytest.raises(UntrustedMetadataError) as e:
        check_bounds(b"{}   ", "metadata/timestamp.json", cap=4)
    assert str(e.value) == "metadata/timestamp.json is 5 bytes, over the 4-byte cap of the format"


def test_publish_on_a_snapshot_that_does_not_parse(
    published: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """metadata.py:114: the file, the parser's exception type and its words."""
    key = f"metadata/{current(published, 'snapshot')}.snapshot.json"
    body = b'{"signed": '
    (published.dir / key).write_bytes(body)
    with pytest.raises(Exception) as parser:
        Metadata.from_bytes(body)
    r = cli("publish", make_image(SIZE, seed="2"), *published.args(), "--name", "wn", "--arch", ARCH, "--version", "2")
    refused(r, 8, f"{key} is not valid TUF metadata: {type(parser.value).__name__}: {parser.value}")


def test_publish_on_a_timestamp_of_another_type(published: Catalogue, cli: Cli, make_image: Callable[..., Path]):
    """metadata.py:116: a snapshot document served as timestamp.json."""
    snapshot = meta(published, f"{current(published, 'snapshot')}.snapshot.json")
    meta(published, "timestamp.json").write_bytes(snapshot.read_bytes())
    r = cli("publish", make_image(SIZE, seed="2"), *published.args(), "--name", "wn", "--arch", ARCH, "--version", "2")
    refused(r, 8, "metadata/timestamp.json holds snapshot metadata, not timestamp")


def test_pull_of_a_timestamp_with_a_float(published: Catalogue, cli: Cli, tmp_path: Path) -> None:
    """The deployer's side of the same: python-tuf's SerializationError is a RepositoryError, and was reported as
    "bad metadata from URL:" with nothing after the colon."""
    ts = meta(published, "timestamp.json")
    ts.write_bytes(tampered(ts.read_bytes(), lambda s: s.update(x_imagectl_test=1.5)))
    r = cli("pull", "wn", "--catalogue", published.dir, "--root", published.root, "-o", tmp_path / "x")
    refused(r, 8, f"metadata from {url_of(published)} cannot be checked: not canonical JSON")
    assert not (tmp_path / "x").exists()


def test_publish_on_a_timestamp_with_a_float(published: Catalogue, cli: Cli, make_image: Callable[..., Path]):
    """metadata.py:128: canonical JSON has no floats, so the signatures cannot be checked."""
    ts = meta(published, "timestamp.json")
    ts.write_bytes(tampered(ts.read_bytes(), lambda s: s.update(x_imagectl_test=1.5)))
    r = cli("publish", make_image(SIZE, seed="2"), *published.args(), "--name", "wn", "--arch", ARCH, "--version", "2")
    refused(r, 8, "metadata/timestamp.json: cannot be checked: not canonical JSON (a float?)")
