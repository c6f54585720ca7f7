"""Mutants of the second random sample (tests/mutants-sample2.txt) that the rest of the suite let survive; each
test names its mutant and checks exactly what the mutation changes (tests/MUTANTS.md)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.imaging.slc.seed import unpack
from tests.conftest import Catalogue, CliResult
from tests.hostile_yum import DIR, REG, Decl, Member, declare, write_rpm
from tests.httpserver import Fault, TestHTTPServer
from tests.test_hostile_pull import error_line
from tests.test_mutants_group1 import binned, reader_of  # noqa: F401  (binned: a fixture)
from tests.test_mutants_verify_client import indexed  # noqa: F401  (a fixture)

ARCH = "x86_64"


def _publish(cat: Catalogue, cli: Callable[..., CliResult], image: Path) -> str:
    r = cli("publish", image, *cat.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--json")
    assert r.code == 0, r.err
    return str(json.loads(r.out)["sha256"])


def test_a_root_pin_that_is_no_sha256_is_named(catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path):
    """client._bootstrap__mutmut_18: the refusal of a malformed `--root sha256:` pin says what it got."""
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", "sha256:XYZ", "-o", tmp_path / "x")
    assert r.code == 3
    assert error_line(r) == "imagectl: error: --root sha256: needs 64 hex digits, got 'xyz'"


@pytest.mark.http
def test_pull_onto_a_fifo_says_how_to_name_a_file(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """pull._check_target__mutmut_36: the refusal of a FIFO destination carries its hint."""
    cat, srv = http_catalogue
    _publish(cat, cli, make_image(seed="fifo"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = cli("pull", "wn", "--catalogue", srv.url, "--root", cat.root, "--arch", ARCH, "-o", fifo)
    assert r.code == 14
    assert "hint: name a file or a directory with -o" in r.err


@pytest.mark.http
@pytest.mark.parametrize("points_at", ["a-file", "nothing"])
def test_a_symlink_destination_is_replaced_by_the_image(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image,
    tmp_path: Path,
    points_at: str,
) -> None:
    """pull._check_target__mutmut_38: `-o LINK`, LINK a symlink to a regular file (or to nothing): the link itself
    is replaced by the image, and what it pointed at is neither written nor created."""
    cat, srv = http_catalogue
    image = make_image(seed="symlinked")
    _publish(cat, cli, image)
    pointed = tmp_path / "elsewhere" / "target.img"
    if points_at == "a-file":
        pointed.parent.mkdir()
        pointed.write_bytes(b"old")
    link = tmp_path / "out.img"
    link.symlink_to(pointed)
    r = cli("pull", "wn", "--catalogue", srv.url, "--root", cat.root, "--arch", ARCH, "-o", link)
    assert r.code == 0, r.err
    assert not link.is_symlink() and link.read_bytes() == image.read_bytes()
    assert (pointed.read_bytes() == b"old") if points_at == "a-file" else not pointed.parent.exists()


@pytest.mark.http
def test_verify_over_http_hashes_a_target_file_that_is_its_own_copy(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], make_image
) -> None:
    """store.base.same_object__mutmut_1: only a local store can tell that a target file is the blob itself (a
    hard link); over HTTP the target file is hashed too, so a damaged one is found."""
    cat, srv = http_catalogue
    sha = _publish(cat, cli, make_image(seed="copy"))
    [target] = [p for p in (cat.dir / "targets").rglob(f"{sha}.*") if p.is_file()]
    data = bytearray(target.read_bytes())
    target.unlink()  # its own file now, not the blob's hard link
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))
    r = cli("catalogue", "verify", srv.url)
    assert r.code != 0
    key = target.relative_to(cat.dir).as_posix()
    assert f"target file {key} has sha256 " in r.out + r.err, r.out + r.err


def test_a_component_of_exactly_255_bytes_is_unpacked(tmp_path: Path) -> None:
    """extract._split__mutmut_42: NAME_MAX (255 bytes) is the longest a component may be, and is allowed."""
    name = "n" * 255
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    rpm = write_rpm(pkgs, "long", [Member("./opt", DIR), Member(f"./opt/{name}", REG, b"x\n")])
    unpack([rpm], tmp_path / "target")
    assert (tmp_path / "target" / "opt" / name).read_bytes() == b"x\n"


def _pull_tofu(cli: Callable[..., CliResult], cat: Catalogue, out: Path) -> CliResult:
    return cli("pull", "wn", "--catalogue", cat.dir, "--arch", ARCH, "-o", out)  # no --root: trust on first use


def test_the_root_trusted_on_first_use_is_kept(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """client._bootstrap__mutmut_82: the root trusted on first use is the one read from the client's cache next
    time (no second "first use": a server that swaps its root later is caught by the cached one)."""
    _publish(catalogue, cli, make_image(seed="tofu"))
    first = _pull_tofu(cli, catalogue, tmp_path / "a.img")
    assert first.code == 0 and "on first use" in first.err, first.err
    [cached] = list(Path(os.environ["IMAGECTL_CACHE_DIR"]).rglob("root.json"))
    second = _pull_tofu(cli, catalogue, tmp_path / "b.img")
    assert second.code == 0 and "on first use" not in second.err, second.err
    assert cached.is_file()


def test_a_cached_root_that_is_no_file_is_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """client._bootstrap__mutmut_89: a cached root replaced by a FIFO is refused (exit 14), named by its path,
    without hanging."""
    _publish(catalogue, cli, make_image(seed="fifo-root"))
    assert _pull_tofu(cli, catalogue, tmp_path / "a.img").code == 0
    [cached] = list(Path(os.environ["IMAGECTL_CACHE_DIR"]).rglob("root.json"))
    cached.unlink()
    os.mkfifo(cached)
    r = _pull_tofu(cli, catalogue, tmp_path / "b.img")
    assert r.code == 14
    assert error_line(r) == f"imagectl: error: refusing {cached}: it is a FIFO"


def test_a_cached_root_that_is_a_symlink_is_not_followed(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """The cached root is python-tuf's link to root_history/N.root.json, and only that is followed: a symlink
    planted in its place (pointing at a root that would be accepted, the one it replaced) is refused (exit 14)."""
    _publish(catalogue, cli, make_image(seed="symlink-root"))
    assert _pull_tofu(cli, catalogue, tmp_path / "a.img").code == 0
    [cached] = list(Path(os.environ["IMAGECTL_CACHE_DIR"]).rglob("root.json"))
    elsewhere = tmp_path / "root.json"
    elsewhere.write_bytes(cached.read_bytes())
    cached.unlink()
    cached.symlink_to(elsewhere)
    r = _pull_tofu(cli, catalogue, tmp_path / "b.img")
    assert r.code == 14
    assert error_line(r) == f"imagectl: error: refusing {cached}: a symlink to {str(elsewhere)!r}, not to root_history/"
    assert not (tmp_path / "b.img").exists()


@pytest.mark.http
def test_a_filesystem_that_refuses_fadvise_still_gets_the_image(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pull._start_writeback__mutmut_1: the early writeback is advice; where the file system refuses it (OSError,
    as some network and FUSE file systems do), the pull goes on and the image is whole."""
    import imagectl.pull

    cat, srv = http_catalogue
    image = make_image(size=imagectl.pull.WRITEBACK + 1024, seed="fadvise")
    _publish(cat, cli, image)
    calls = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    r = cli("pull", "wn", "--catalogue", srv.url, "--root", cat.root, "--arch", ARCH, "-o", tmp_path / "out.img")
    assert r.code == 0, r.err
    assert calls and (tmp_path / "out.img").read_bytes() == image.read_bytes()


def test_a_name_whose_every_version_is_revoked_has_no_arch_left(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """client.resolve__mutmut_104: with its only version revoked, a name has no image of any arch, and says so
    (no "choose one with --arch" hint: there is none to choose)."""
    _publish(catalogue, cli, make_image(seed="revoked"))
    assert cli("revoke", "wn:1", *catalogue.args(), "--reason", "bad").code == 0
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o", tmp_path / "x")
    assert r.code == 4
    assert r.err == "imagectl: error: wn has no image of any arch (none published, or every version revoked)\n"


def test_a_member_naming_the_root_itself_is_the_root(tmp_path: Path) -> None:
    """extract._split__mutmut_23: a member "." (the header's "/") is the target directory itself, not a '.'
    component."""
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    f = Member("./f", REG, b"f\n")
    declared = [Decl("/", stat.S_IFDIR | 0o755), *declare([f])]
    rpm = write_rpm(pkgs, "dot", [Member(".", DIR), f], declared=declared)
    unpack([rpm], tmp_path / "target")
    assert (tmp_path / "target" / "f").read_bytes() == b"f\n"


def test_an_unknown_name_is_answered_with_the_names_there_are(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path
) -> None:
    """client.role__mutmut_11: the hint lists the catalogue's names, comma-separated."""
    for name in ("alpha", "beta"):
        r = cli("publish", make_image(seed=name), *catalogue.args(), "--name", name, "--arch", ARCH, "--version", "1")
        assert r.code == 0, r.err
    r = cli("pull", "gamma", "--catalogue", catalogue.dir, "--root", catalogue.root, "-o", tmp_path / "x")
    assert r.code == 4
    assert error_line(r) == f"imagectl: error: no image named 'gamma' in file://{catalogue.dir}/"
    assert "hint: images: alpha, beta\n" in r.err


def test_metadata_files_are_compact_json_with_sorted_keys(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image
) -> None:
    """state.metadata_bytes__mutmut_7: every metadata file is written as compact JSON with sorted keys (the same
    bytes whoever writes them, whatever order python-tuf builds its dicts in), ending in one newline."""
    _publish(catalogue, cli, make_image(seed="sorted"))
    files = sorted((catalogue.dir / "metadata").glob("*.json"))
    assert len(files) >= 5
    for f in files:
        data = f.read_bytes()
        assert data == json.dumps(json.loads(data), separators=(",", ":"), sort_keys=True).encode() + b"\n", f


@pytest.mark.parametrize("blocks", [[10, 10], [3, 7, 9, 1], [25]])
def test_part_digests_are_of_part_size_slices_whatever_the_blocks(blocks: list[int]) -> None:
    """digest.Hasher.update__mutmut_12: a block that crosses a part boundary is split exactly at it."""
    import hashlib

    from imagectl.store.digest import Hasher

    data = bytes(range(sum(blocks)))
    h = Hasher(part_size=8)
    pos = 0
    for n in blocks:
        h.update(data[pos : pos + n])
        pos += n
    want = tuple(hashlib.sha256(data[i : i + 8]).hexdigest() for i in range(0, len(data), 8))
    assert h.result().parts == want and h.result().sha256 == hashlib.sha256(data).hexdigest()


def test_verify_names_a_root_json_that_is_not_the_newest_root(
    catalogue: Catalogue, cli: Callable[..., CliResult]
) -> None:
    """verify.roots__mutmut_79: metadata/root.json must be a copy of the newest N.root.json; verify says which."""
    root = catalogue.dir / "metadata" / "root.json"
    data = json.loads(root.read_bytes())
    root.write_text(json.dumps(data, indent=1))  # the same root, other bytes
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code != 0
    assert "metadata/root.json is not the newest versioned root (1)" in json.loads(r.out)["problems"], r.out


def test_verify_names_a_blob_it_cannot_read(catalogue: Catalogue, cli: Callable[..., CliResult], make_image) -> None:
    """verify.blob__mutmut_13: a blob that is no longer a readable file (here a FIFO) is a problem naming the
    image, the blob and why."""
    sha = _publish(catalogue, cli, make_image(seed="unreadable"))
    blob = catalogue.dir / "blobs" / "sha256" / sha
    blob.unlink()
    os.mkfifo(blob)
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code != 0
    problems = json.loads(r.out)["problems"]
    assert any(p.startswith(f"wn/1/{ARCH}/") and f": blob blobs/sha256/{sha} unreadable: " in p for p in problems), (
        problems
    )


def test_a_malformed_record_found_by_version_names_its_image(
    binned: Catalogue,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """client._version_for_arch__mutmut_17: a pull of NAME:VERSION of a binned name reads only that version's
    bins; a malformed record found there names its image (the error said 'signed metadata of None')."""
    from imagectl.catalogue import model
    from imagectl.errors import InvalidInputError, UntrustedMetadataError

    cat = binned

    def malformed(*_a: object) -> model.ImageRecord:
        raise InvalidInputError("bad record")

    with reader_of(cat, tmp_path / "c") as reader:
        reader.role("wn")
        monkeypatch.setattr(model.ImageRecord, "from_target", malformed)
        with pytest.raises(UntrustedMetadataError) as e:
            reader.resolve(model.parse_ref("wn:1.3"), ARCH)
    assert str(e.value) == "signed metadata of wn is malformed: bad record"


def test_a_signed_hypervisor_that_is_no_token_is_named() -> None:
    """model.from_target__mutmut_113: a signed record whose hypervisor is not a plain token is refused, the
    message naming the member."""
    from imagectl.catalogue.model import ImageRecord
    from imagectl.errors import InvalidInputError

    custom = {"name": "wn", "version": "1", "arch": ARCH, "format": "qcow2", "hypervisor": "hvm x",
              "size": 10, "created": "2026-11-25T15:02:03Z"}  # fmt: skip
    path = f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2"
    with pytest.raises(InvalidInputError) as e:
        ImageRecord.from_target(path, 10, {"sha256": "0" * 64}, custom)
    assert str(e.value).startswith(f"target {path} has an invalid hypervisor "), str(e.value)


def test_a_record_the_delegation_walk_does_not_find_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client._verified__mutmut_5: the image role lists the image, but python-tuf's walk from targets does not
    find it (never expected: the two disagree); refused, naming the path."""
    from imagectl.catalogue import model
    from imagectl.errors import UntrustedMetadataError

    _publish(catalogue, cli, make_image(seed="walk"))
    with reader_of(catalogue, tmp_path / "c") as reader:
        reader.role("wn")  # the image role read (through the walk, which then stops finding the image)
        monkeypatch.setattr(reader.updater, "get_targetinfo", lambda _path: None)
        with pytest.raises(UntrustedMetadataError) as e:
            reader.resolve(model.parse_ref("wn:1"), ARCH)
    assert str(e.value) == f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2 is listed but not found by the TUF delegation walk"


def test_a_missing_targets_file_the_snapshot_names_is_named(catalogue: Catalogue) -> None:
    """state._read__mutmut_10: the publisher's load of a catalogue whose snapshot names a targets.json version
    that is gone says which file is missing, and where."""
    from imagectl.catalogue.state import load_state
    from imagectl.errors import UntrustedMetadataError

    [targets] = sorted((catalogue.dir / "metadata").glob("*.targets.json"))
    targets.unlink()
    with pytest.raises(UntrustedMetadataError) as e:
        load_state(catalogue.store)
    assert str(e.value) == f"metadata/{targets.name} is missing from {catalogue.store.shown}"


def test_the_parent_recorded_is_the_parents_image_of_the_same_arch(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image
) -> None:
    """publish.publish__mutmut_256: an image built from a parent that exists for several arches records the sha256
    of the parent's image for its own arch, not of the parent's first arch."""
    from imagectl.catalogue.state import load_state

    shas = {}
    for arch in ("i386", ARCH):
        r = cli("publish", make_image(seed=f"base-{arch}"), *catalogue.args(), "--name", "base", "--arch", arch,
                "--version", "1", "--json")  # fmt: skip
        assert r.code == 0, r.err
        shas[arch] = json.loads(r.out)["sha256"]
    r = cli("publish", make_image(seed="child"), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1",
            "--parent", "base:1")  # fmt: skip
    assert r.code == 0, r.err
    [child] = load_state(catalogue.store).images("wn")
    assert child.parent_image is not None and child.parent_image["sha256"] == shas[ARCH]


def test_publish_of_a_file_that_fails_to_read_says_why(catalogue: Catalogue, cli: Callable[..., CliResult]) -> None:
    """publish.publish__mutmut_15: a regular file whose read fails (/proc/self/mem at offset 0: EIO) is refused
    with the file and the system's reason, and nothing is published."""
    r = cli("publish", "/proc/self/mem", *catalogue.args(), "--name", "wn", "--arch", ARCH, "--format", "raw")
    assert r.code == 14
    assert error_line(r) == "imagectl: error: cannot read /proc/self/mem: Input/output error"


def test_a_publish_request_with_a_malformed_boot_test_names_its_file() -> None:
    """publish.PublishRequest.validated__mutmut_42: the refusal of a malformed boot_test names the image file."""
    from imagectl.catalogue.publish import PublishRequest
    from imagectl.errors import InvalidInputError

    req = PublishRequest(file="/b/wn.qcow2", name="wn", arch=ARCH, boot_test={"passed": True})
    with pytest.raises(InvalidInputError) as e:
        req.validated()
    assert str(e.value).startswith("/b/wn.qcow2: boot_test "), str(e.value)


def test_file_digest_reads_in_bounded_chunks(tmp_path: Path) -> None:
    """digest.file_digest__mutmut_30: hashing a file holds one chunk at a time, never the whole file."""
    import hashlib
    import tracemalloc

    from imagectl.store.digest import file_digest

    f = tmp_path / "big.raw"
    with f.open("wb") as out:
        out.truncate(64 << 20)  # 64 MiB of zeros, sparse
    tracemalloc.start()
    try:
        digest = file_digest(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.sha256 == hashlib.sha256(bytes(64 << 20)).hexdigest()
    assert peak < 16 << 20, f"peak {peak} bytes"


def test_a_binned_version_republished_in_another_format_is_refused(
    binned: Catalogue,  # noqa: F811
    cli: Callable[..., CliResult],
    make_image,
) -> None:
    """publish._existing__mutmut_16: for a binned name the formats published for NAME:VERSION:ARCH are found by
    listing its target files; an image of that version in another format (other bytes) is refused as for a name
    that is not binned."""
    r = cli("publish", make_image(seed="other-format"), *binned.args(), "--name", "wn", "--arch", ARCH,
            "--version", "1.3", "--format", "raw")  # fmt: skip
    assert r.code == 6, r.err
    assert error_line(r).startswith(f"imagectl: error: wn:1.3 ({ARCH}) is already published with other bytes ")


def test_write_if_match_into_a_store_that_does_not_exist_writes_nothing(tmp_path: Path) -> None:
    """store.local.write_if_match__mutmut_9: without the store's directory there is no such key: no match."""
    from imagectl.store.local import LocalStore

    store = LocalStore(tmp_path / "gone")
    assert store.write_if_match("metadata/timestamp.json", b"{}", "sha256:" + "0" * 64) is False
    assert not (tmp_path / "gone").exists()


# -- the ten that survived the first round (tests/MUTANTS.md, "Sample 2: still surviving") ------------------------
def test_a_key_directory_only_its_owner_can_search_but_not_list_is_refused(tmp_path: Path) -> None:
    """keys._check_dir__mutmut_21: R_OK & X_OK is 0 (F_OK), which any existing directory passes. Root reads
    every directory, so the check runs as an unprivileged user, on a key directory of mode 0300 (no read)."""
    import sys
    import tempfile

    from tests.test_pull_http import NOBODY, as_unprivileged

    # a directory every user can reach (tmp_path's parents are the owner's only); access() checks the path too
    top = Path(tempfile.mkdtemp(prefix="imagectl-keys-", dir="/tmp"))
    try:
        top.chmod(0o711)
        keydir = top / "keys"
        keydir.mkdir(mode=0o300)
        keydir.chmod(0o300)
        if os.geteuid() == 0:
            os.chown(keydir, NOBODY, NOBODY)
        code = (
            "import sys; from pathlib import Path; from imagectl.catalogue.keys import KeyRing\n"
            "try:\n    KeyRing(Path(sys.argv[1]))\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "else:\n    print('accepted')\n"
        )
        p = as_unprivileged([sys.executable, "-c", code, str(keydir)], dict(os.environ))
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == f"KeyProblemError key directory {keydir} is not readable"
    finally:
        (top / "keys").chmod(0o700)
        import shutil

        shutil.rmtree(top)


def test_a_tested_version_published_again_into_a_protected_channel_keeps_its_boot_test(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """publish.publish__mutmut_114: publishing NAME:VERSION again (same bytes) with the --channel of a protected
    channel needs no boot test of its own when the published image has a passing one: the check before the upload
    takes the published test, as the commit does. The mutant forgot it and refused before any byte was sent."""
    import hashlib

    from imagectl.catalogue.keys import KeyRing
    from imagectl.catalogue.publish import PublishRequest, publish
    from imagectl.catalogue.state import load_state
    from tests.conftest import EXPIRY, write_pattern
    from tests.test_mutants_group3 import BOOT_TEST

    img = write_pattern(tmp_path / "wn.qcow2", 4096, seed="tested")
    tested = dict(BOOT_TEST, image_sha256=hashlib.sha256(img.read_bytes()).hexdigest())
    keys = KeyRing(catalogue.keys)
    first = publish(catalogue.store, keys, PublishRequest(str(img), "wn", ARCH, version="1", boot_test=tested), EXPIRY)
    assert first.created
    assert cli("catalogue", "protect", catalogue.dir, "stable", *catalogue.args()[2:]).code == 0
    again = publish(catalogue.store, keys, PublishRequest(str(img), "wn", ARCH, version="1", channel="stable"), EXPIRY)
    assert (again.created, again.uploaded, again.channel, again.record.boot_test) == (False, False, "stable", tested)
    md = load_state(catalogue.store).role("image-wn")
    assert md is not None
    assert md.signed.unrecognized_fields["x-imagectl"]["channels"]["stable"]["version"] == "1"


def test_an_image_role_with_an_empty_list_of_delegated_roles_is_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image
) -> None:
    """verify._Verifier.image_role__mutmut_50: an image role may delegate only to its own hash bins. One signed
    with ``"roles": []`` (no bins, no roles: valid TUF) is named; the mutant read succinct_roles of it and crashed."""
    from tuf.api.metadata import Delegations

    from tests.test_mutants_verify_client import change, report, role_key

    _publish(catalogue, cli, make_image(seed="empty-roles"))

    def edit(s) -> None:  # type: ignore[no-untyped-def]
        md = s.role("image-wn")
        md.signed.delegations = Delegations(keys={}, roles={})
        s.changed.add("image-wn")

    change(catalogue, edit, {"image-wn"})
    key = role_key(catalogue, "image-wn")
    assert json.loads((catalogue.dir / key).read_bytes())["signed"]["delegations"] == {"keys": {}, "roles": []}
    assert report(catalogue).problems == [
        f"{key}: delegates other than wn's hash bins (image roles delegate only to bins)"
    ]


def test_a_partial_mirror_missing_one_bin_checks_every_other_bin(binned: Catalogue) -> None:  # noqa: F811
    """verify._Verifier.image_role__mutmut_76: in a partial mirror that does not claim the name, a bin it does not
    hold is passed over and the next one checked; the mutant stopped at the first bin missing."""
    from imagectl.catalogue import bins
    from imagectl.catalogue.state import load_state
    from tests.test_mutants_verify_client import report, role_key

    (binned.dir / "mirror.json").write_text('{"names": [], "images": []}')
    state = load_state(binned.store)
    held = state.bin_roles("wn")
    md = state.role("image-wn")
    assert md is not None and md.signed.delegations is not None and md.signed.delegations.succinct_roles is not None
    first = next(iter(md.signed.delegations.succinct_roles.get_roles()))
    assert first in held and len(held) >= 3
    (binned.dir / role_key(binned, first)).unlink()
    damaged = sorted(held)[-1]
    path = binned.dir / role_key(binned, damaged)
    path.write_bytes(path.read_bytes().replace(b'"version"', b'"vers1on"', 1))
    r = report(binned)
    assert r.partial
    key = role_key(binned, damaged)
    assert r.problems[0] == f"{key}: bad signatures: {damaged} was signed by 0/1 keys", r.problems
    assert all(p.startswith(f"{key}: ") for p in r.problems), r.problems
    assert bins.name_of_bin(damaged) == "wn"


def test_a_partial_mirror_of_an_indexed_catalogue_checks_the_index_roles_it_holds(indexed: Catalogue) -> None:  # noqa: F811
    """verify._Verifier.index_role__mutmut_9: a partial mirror holding an index role has it checked, not
    skipped; the mutant asked the store about None instead of the role's file."""
    from imagectl.catalogue.state import load_state
    from tests.test_mutants_verify_client import report

    (indexed.dir / "mirror.json").write_text('{"names": [], "images": []}')
    state = load_state(indexed.store)
    n_index, n_names = len(state.index_roles()), len(state.names())
    r = report(indexed)
    assert r.partial and r.problems == [] and r.skipped == [], (r.problems, r.skipped)
    assert r.roles == 4 + n_index + n_names  # root, timestamp, snapshot, targets, each index and image role


def test_a_stray_role_listed_after_an_index_role_a_reindex_replaced_is_named(
    indexed: Catalogue,  # noqa: F811
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify._Verifier.run__mutmut_108: the snapshot lists the index roles a re-index replaced for good, and
    verify passes over them; a role listed after them that nothing delegates is still named (the mutant stopped
    at the first replaced index role)."""
    from tuf.api.metadata import MetaFile

    from imagectl.catalogue import index
    from imagectl.catalogue.state import load_state
    from tests.test_mutants_verify_client import change, report, role_key

    old = load_state(indexed.store).index_roles()
    monkeypatch.setattr(index, "INDEX_CROWDED", 1)
    monkeypatch.setattr(index, "INDEX_FILL", 1)
    r = cli("catalogue", "rebin", indexed.dir, "--keys", indexed.keys)
    assert r.code == 0, r.err
    assert set(load_state(indexed.store).index_roles()).isdisjoint(old)
    assert report(indexed).problems == []

    def edit(s) -> None:  # type: ignore[no-untyped-def]
        s.snapshot.signed.meta["zz-stray.json"] = MetaFile(version=1)

    change(indexed, edit, {"targets"})
    listed = [k.removesuffix(".json") for k in load_state(indexed.store).snapshot.signed.meta]
    assert set(old) <= set(listed) and "zz-stray" in listed and max(old) < "zz-stray"
    snap = role_key(indexed, "snapshot")
    assert report(indexed).problems == [f"{snap}: lists zz-stray, which targets does not delegate"]


def test_an_upload_of_a_file_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    """store.local.upload_file__mutmut_19: the refusal of a source that cannot be opened carries the reason (the
    mutant raised TypeError building it)."""
    from imagectl.errors import LocalIOError
    from imagectl.store.digest import FileDigest
    from imagectl.store.local import LocalStore

    store = LocalStore(tmp_path / "cat")
    (tmp_path / "cat").mkdir()
    gone = tmp_path / "gone.qcow2"
    with pytest.raises(LocalIOError) as e:
        store.upload_file("blobs/sha256/" + "ab" * 32, str(gone), FileDigest("ab" * 32, 10))
    assert str(e.value) == f"cannot read {gone}: No such file or directory"
    assert not (tmp_path / "cat" / "blobs").exists() or list((tmp_path / "cat" / "blobs").rglob("*")) == []


@pytest.mark.http
def test_a_drip_fed_s3_read_fails_on_the_minimum_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_aws: None
) -> None:
    """store.open_store__mutmut_56: an s3:// catalogue gets the --min-rate pace too; an endpoint that drips one byte
    every 0.5 s (each read well inside --timeout) fails within one window, naming the object. The endpoint is the
    tests' HTTP server on 127.0.0.1 answering GetObject (path-style: /BUCKET/KEY)."""
    import time

    from imagectl.errors import DownloadError
    from imagectl.store import open_store

    obj = tmp_path / "s3" / "bucket" / "cat" / "metadata" / "timestamp.json"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"{}" * 100)
    with TestHTTPServer(tmp_path / "s3") as srv:
        srv.add_fault(Fault(suffix="timestamp.json", drip=0.5))
        for key, value in {
            "AWS_ENDPOINT_URL": srv.url.rstrip("/"),
            "AWS_ACCESS_KEY_ID": "AKTEST",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        store = open_store("s3://bucket/cat", timeout=2, retries=0, min_rate=1000)
        t0 = time.monotonic()
        with pytest.raises(DownloadError) as e:
            store.read("metadata/timestamp.json", 1 << 20)
        elapsed = time.monotonic() - t0
    assert re.fullmatch(
        # how many bytes and seconds depends on when the first chunk past the window arrives (a loaded machine)
        r"s3://bucket/cat/metadata/timestamp\.json: too slow: \d+ bytes in \d+ s, under the minimum 1000 bytes/s",
        str(e.value),
    ), str(e.value)
    assert elapsed < 60, elapsed  # generous (a loaded machine); without the pace: 100 s of dripping


def test_a_refusal_without_a_member_says_so() -> None:
    """extract._unsafe__mutmut_3: a refusal that names no member (none of the current paths raises one: this pins
    the helper's contract for the next) reads ``?`` where the member would be; the mutant crashed on None."""
    from imagectl.imaging.slc import extract

    e = extract._unsafe("bash-4.2.rpm", None, extract._Refused("the payload ends early"))
    assert str(e) == "bash-4.2.rpm: refusing archive member ?: the payload ends early"
