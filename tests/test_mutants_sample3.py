"""Mutants of the third random sample (tests/mutants-sample3.txt) that the rest of the suite let survive; each
test names its mutant and checks exactly what the mutation changes (tests/MUTANTS.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Catalogue, CliResult, sha256
from tests.test_hostile_pull import error_line
from tests.test_mutants_verify_client import binned, indexed  # noqa: F401  (fixtures)

ARCH = "x86_64"


@pytest.mark.parametrize("name", ["wn.root", "wn.snapshot", "wn.timestamp", "buildroot"])
def test_image_names_ending_like_a_top_level_role_are_image_roles(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path, name: str
) -> None:
    """metadata.kind_of__mutmut_6 was a fix: the original took the part after the last dot of a metadata file's
    name for its role, so `catalogue verify` refused metadata/1.image-wn.root.json as "holds targets metadata, not
    root" (and the reader capped image-buildroot at the size of a root). The role is what follows the version."""
    image = make_image(seed=name)
    r = cli("publish", image, *catalogue.args(), "--name", name, "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    v = cli("catalogue", "verify", catalogue.dir, "--json")
    assert v.code == 0, v.out + v.err
    assert json.loads(v.out)["problems"] == []
    out = tmp_path / "out.qcow2"
    p = cli("pull", name, "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o", out)
    assert p.code == 0, p.err
    assert sha256(out) == sha256(image)


def _list(cli: Callable[..., CliResult], cat: Catalogue, cache: Path) -> CliResult:
    return cli("catalogue", "list", "--catalogue", cat.dir, "--root", cat.root, "--cache-dir", cache)


def test_a_cache_writable_by_its_group_is_refused_with_the_chmod_that_fixes_it(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """client.client_cache__mutmut_38, _39, _44: group-writable (not others) is said as such, with the fix."""
    cache = tmp_path / "group-cache"
    cache.mkdir()
    cache.chmod(0o770)
    r = _list(cli, catalogue, cache)
    assert r.code == 14, r.err
    assert error_line(r) == (
        f"imagectl: error: refusing the client cache {cache}: it is writable by its group (mode 0770), so someone "
        "else could plant trusted metadata in it"
    )
    assert f"hint: chmod go-w {cache}" in r.err


@pytest.mark.root
def test_a_cache_of_another_user_is_refused_naming_both_users(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """client.client_cache__mutmut_26: the refusal of a cache someone else owns says whose it is."""
    import os

    from tests.conftest import unavailable

    if os.geteuid() != 0:
        unavailable("making a directory another user owns needs root")
    cache = tmp_path / "their-cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    r = _list(cli, catalogue, cache)
    assert r.code == 14, r.err
    assert error_line(r) == (
        f"imagectl: error: refusing the client cache {cache}: it belongs to uid 65534, not to this user (0)"
    )
    assert "hint: use a cache of your own: --cache-dir DIR or IMAGECTL_CACHE_DIR" in r.err


def test_the_reader_lock_file_is_the_owners_only(catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path):
    """client.CatalogueReader.__init____mutmut_35: the lock file in the cache is made mode 0600."""
    import os
    import stat

    cache = tmp_path / "cache"
    old = os.umask(0)
    try:
        assert _list(cli, catalogue, cache).code == 0
    finally:
        os.umask(old)
    [lock] = list(cache.rglob(".lock"))
    assert stat.S_IMODE(lock.lstat().st_mode) == 0o600


def test_a_root_with_too_many_values_is_named_with_where_it_came_from(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """client.CatalogueReader._read_root__mutmut_3: a first root past the JSON value limit (under the size cap) is
    refused before parsing, naming the file and the catalogue."""
    from imagectl.catalogue.metadata import MAX_JSON_VALUES, ROOT_MAX

    cat = tmp_path / "cat"
    (cat / "metadata").mkdir(parents=True)
    body = b"[" * (MAX_JSON_VALUES + 1)
    assert len(body) < ROOT_MAX
    (cat / "metadata" / "1.root.json").write_bytes(body)
    r = cli("catalogue", "list", "--catalogue", cat, "--cache-dir", tmp_path / "cache")
    assert r.code == 8, r.err
    assert error_line(r) == (
        f"imagectl: error: metadata/1.root.json from {cat.as_uri()}/ holds more than {MAX_JSON_VALUES} JSON values: "
        "refused before parsing (metadata cap)"
    )


def test_a_directory_without_a_catalogue_is_named(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """client.CatalogueReader._bootstrap__mutmut_96: trust on first use of a place with no root says so."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("catalogue", "list", "--catalogue", empty, "--cache-dir", tmp_path / "cache")
    assert r.code == 16, r.err
    assert error_line(r) == f"imagectl: error: {empty.as_uri()}/ is not a catalogue (no metadata/1.root.json)"


def test_a_missing_signing_key_hints_at_the_key_ids(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """keys.KeyRing.signers_for__mutmut_10: the hint lists each key id the role needs, cut to 12 hex digits."""
    from imagectl.catalogue.state import load_state

    root = load_state(catalogue.store).root.signed
    keyids = root.roles["timestamp"].keyids
    for f in Path(catalogue.keys).glob("timestamp-*.key"):
        f.unlink()
    r = cli("publish", make_image(seed="nokey"), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code != 0
    assert f"hint: the timestamp key ids are {', '.join(k[:12] for k in keyids)}\n" in r.err, r.err


def test_a_parent_image_with_a_malformed_channel_is_refused() -> None:
    """model._parent_image__mutmut_37: the channel of a signed parent_image is checked like any channel."""
    from imagectl.catalogue import model
    from imagectl.errors import InvalidInputError

    good = {"name": "base", "version": "1", "sha256": "ab" * 32}
    assert model._parent_image(dict(good, channel="stable"), "t") == dict(good, channel="stable")
    with pytest.raises(InvalidInputError) as e:
        model._parent_image(dict(good, channel="Not A Channel!"), "t")
    assert "channel" in str(e.value) and "Not A Channel!" in str(e.value), str(e.value)


def test_a_new_catalogue_starts_every_role_at_version_1(catalogue: Catalogue) -> None:
    """publish.init_catalogue__mutmut_130: timestamp, snapshot and targets of a new catalogue are version 1."""
    meta = catalogue.dir / "metadata"
    assert json.loads((meta / "timestamp.json").read_bytes())["signed"]["version"] == 1
    assert json.loads((meta / "1.snapshot.json").read_bytes())["signed"]["version"] == 1
    assert json.loads((meta / "1.targets.json").read_bytes())["signed"]["version"] == 1


def test_a_file_of_no_known_format_is_raw(tmp_path: Path) -> None:
    """publish.detect_format__mutmut_45: no magic and no known extension: raw."""
    from imagectl.catalogue.publish import detect_format

    f = tmp_path / "disk.img"
    f.write_bytes(b"\0" * 4096)
    assert detect_format(str(f)) == "raw"


def test_a_version_conflict_hints_at_a_new_version(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """publish.publish__mutmut_65: other bytes under an existing version: refused, with the way out."""
    args = (*catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert cli("publish", make_image(seed="a"), *args).code == 0
    r = cli("publish", make_image(seed="b"), *args)
    assert r.code == 6, r.err
    assert "hint: publish under a new version (omit --version for an automatic one)" in r.err


def test_rebin_to_two_bins(catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]):
    """state.CatalogueState.rebin__mutmut_12: --bits 1 (two bins) is the smallest binning, and allowed."""
    from imagectl.catalogue.state import load_state

    assert cli("publish", make_image(seed="r"), *catalogue.args(), "--name", "wn", "--arch", ARCH).code == 0
    r = cli("catalogue", "rebin", catalogue.dir, "wn", "--bits", "1", "--keys", catalogue.keys, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["rebinned"] == {"wn": 2}
    assert len(load_state(catalogue.store).bin_roles("wn")) == 2


def test_verify_json_counts_the_roles_checked(catalogue: Catalogue, cli: Callable[..., CliResult]) -> None:
    """verify.Report.as_json__mutmut_11: the machine-readable report's key is roles_checked."""
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["roles_checked"] == 4 and got["images_checked"] == 0  # root, timestamp, snapshot, targets


def test_a_store_directory_ending_in_x_keeps_its_name(tmp_path: Path) -> None:
    """store.local.LocalStore.__init____mutmut_7: only slashes are stripped from the URL's end."""
    from imagectl.store.local import LocalStore

    d = tmp_path / "catX"
    d.mkdir()
    assert LocalStore(d).url == d.as_uri() + "/"


def test_the_too_slow_message_counts_the_bytes_of_the_window() -> None:
    """store.base.paced__mutmut_19: the bytes said are those of the slow window, not everything so far."""
    from unittest import mock

    from imagectl.errors import DownloadError
    from imagectl.store.base import Pace, paced

    clock = iter([0.0, 0.5, 10.0, 20.5])  # chunks at 0.5 s, 10 s (window 1: 3,000 bytes), 20.5 s (window 2: 10)
    chunks = [b"x" * 1000, b"x" * 2000, b"x" * 10]
    with mock.patch("imagectl.store.base.time.monotonic", lambda: next(clock)), pytest.raises(DownloadError) as e:
        list(paced(iter(chunks), Pace(min_rate=100, window=10.0), "u"))
    assert str(e.value) == "u: too slow: 10 bytes in 10 s, under the minimum 100 bytes/s"


def test_verify_names_a_symlinked_prefix_without_its_slash(catalogue: Catalogue, tmp_path: Path) -> None:
    """verify._Verifier.listing__mutmut_6: the problem names the directory as `blobs/sha256`."""
    from tests.test_mutants_verify_client import report

    (tmp_path / "elsewhere").mkdir()
    catalogue.symlink_blobs(tmp_path / "elsewhere")
    assert "blobs/sha256: a symlink or not a directory (not followed)" in report(catalogue).problems


def test_a_partial_mirror_missing_the_role_of_a_name_it_claims_says_so(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """verify._Verifier.image_role__mutmut_9: a name mirror.json claims must be there; its missing role is a
    problem, not a skip (the skip is for names the mirror does not claim)."""
    from tests.test_mutants_verify_client import report, role_key

    r = cli("publish", make_image(seed="claimed"), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    (catalogue.dir / "mirror.json").write_text('{"names": ["wn"], "images": []}')
    key = role_key(catalogue, "image-wn")
    (catalogue.dir / key).unlink()
    got = report(catalogue)
    assert got.partial and got.skipped == []
    assert f"{key}: missing" in got.problems, got.problems


def test_a_crowded_bin_that_is_not_the_last_still_asks_for_a_rebin(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch
) -> None:
    """verify._Verifier.image_role__mutmut_93: any crowded bin asks for a rebin, not only the last one checked."""
    from imagectl.catalogue import bins
    from imagectl.catalogue.state import load_state
    from tests.test_mutants_verify_client import bin_wn, report

    bin_wn(catalogue, cli, make_image, monkeypatch, 8, major=3)
    state = load_state(catalogue.store)
    md = state.role("image-wn")
    assert md is not None and md.signed.delegations is not None and md.signed.delegations.succinct_roles is not None
    order = list(md.signed.delegations.succinct_roles.get_roles())
    sizes = {role: len(md.signed.targets) for role in order if (md := state.role(role)) is not None}
    fullest = max(sizes.values())
    assert sizes[order[-1]] < fullest, sizes  # the last bin checked is not the fullest
    monkeypatch.setattr(bins, "BIN_THRESHOLD", fullest - 1)
    assert report(catalogue).needs_rebin == ["wn"]


def test_every_file_hashed_is_remembered_with_its_size(tmp_path: Path) -> None:
    """digest.file_digest__mutmut_45 and _54: the memo directory existing already does not stop a memo being
    written, and each memo holds the digest and the size that _read_memo checks."""
    import hashlib

    from imagectl.store.digest import file_digest

    memo_dir = tmp_path / "cache" / "digests"
    for name, data in (("a.raw", b"a" * 1000), ("b.raw", b"b" * 2000)):
        (tmp_path / name).write_bytes(data)
        assert file_digest(str(tmp_path / name), memo_dir=memo_dir).sha256 == hashlib.sha256(data).hexdigest()
    memos = sorted(p.read_text() for p in memo_dir.iterdir())
    assert memos == sorted(f"{hashlib.sha256(d).hexdigest()} {len(d)}\n" for d in (b"a" * 1000, b"b" * 2000))


def test_pull_into_a_directory_named_without_a_slash(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """pull.destination__mutmut_5 and _check_target__mutmut_27: `-o DIR` (an existing directory, no trailing
    slash) puts the image in it under its default name; a directory already at that name is refused as such."""
    image = make_image(seed="into")
    r = cli("publish", image, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    out = tmp_path / "images"
    out.mkdir()
    pull = ("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o")
    r = cli(*pull, out)
    assert r.code == 0, r.err
    assert sha256(out / f"wn-1-{ARCH}.qcow2") == sha256(image)
    blocked = tmp_path / "blocked"
    (blocked / f"wn-1-{ARCH}.qcow2").mkdir(parents=True)
    r = cli(*pull, f"{blocked}/")
    assert r.code == 14, r.err
    assert error_line(r) == f"imagectl: error: cannot write {blocked / f'wn-1-{ARCH}.qcow2'}: it is a directory"


def test_a_version_without_the_arch_asked_lists_the_arches_it_has(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """client.CatalogueReader.resolve__mutmut_90 and _105: NAME:VERSION without the arch asked names the arches
    it has; NAME without any image of the arch hints at --arch."""
    for arch in ("i386", "aarch64"):
        r = cli("publish", make_image(seed=arch), *catalogue.args(), "--name", "wn", "--arch", arch, "--version", "1")
        assert r.code == 0, r.err
    read = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o", tmp_path / "x")
    r = cli("pull", "wn:1", *read)
    assert r.code == 4, r.err
    assert error_line(r) == f"imagectl: error: wn:1 has no {ARCH} image (arches: aarch64, i386)"
    r = cli("pull", "wn", *read)
    assert r.code == 4, r.err
    assert error_line(r) == f"imagectl: error: wn has no {ARCH} image (arches: aarch64, i386)"
    assert "hint: choose one with --arch" in r.err


def test_a_stray_file_without_a_suffix_beside_the_target_files_is_ignored(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch
) -> None:
    """publish._existing__mutmut_18: for a binned name the formats published are read off the target files'
    suffixes; a file without one there (left by hand, or by another tool) is no format and no error."""
    from imagectl.catalogue import bins

    monkeypatch.setattr(bins, "BIN_THRESHOLD", 2)
    monkeypatch.setattr(bins, "BIN_FILL", 1)
    args = (*catalogue.args(), "--name", "wn", "--arch", ARCH)
    for i in range(3):
        assert cli("publish", make_image(seed=f"s{i}"), *args, "--version", str(i)).code == 0
    (catalogue.dir / "targets" / "wn" / "1" / ARCH / "README").write_text("hand-made\n")  # no dot in its key
    r = cli("publish", make_image(seed="s1"), *args, "--version", "1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] is False  # the same bytes again: a no-op, as without the stray file


def test_files_with_one_link_are_separate_files_whatever_their_inode_numbers(tmp_path: Path) -> None:
    """extract._plan__mutmut_108: only members with a link count above 1 form hard-link groups. Two files of link
    count 1 that share an inode number (cpio writers number inodes as they like) are two files."""
    from imagectl.imaging.slc.seed import unpack
    from tests.hostile_yum import DIR, REG, Member, write_rpm

    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    rpm = write_rpm(
        pkgs,
        "same-ino",
        [Member("./etc", DIR), Member("./etc/a", REG, b"one\n", ino=5), Member("./etc/b", REG, b"two\n", ino=5)],
    )
    unpack([rpm], tmp_path / "target")
    a, b = tmp_path / "target" / "etc" / "a", tmp_path / "target" / "etc" / "b"
    assert (a.read_bytes(), b.read_bytes()) == (b"one\n", b"two\n")
    assert a.stat().st_ino != b.stat().st_ino


def test_an_untested_arch_published_during_a_protected_publish_is_caught_at_the_commit(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """publish.publish__mutmut_286: the check before the upload passes (only x86_64, tested, is there); while the
    blob uploads, another publisher adds an untested i386 image to the same version. The commit checks every
    *other* arch of the version again, against the state it signs, and refuses."""
    import hashlib

    from imagectl.catalogue.keys import KeyRing
    from imagectl.catalogue.publish import PublishRequest, publish
    from imagectl.errors import ProtectedChannelError
    from imagectl.store.local import LocalStore
    from tests.conftest import EXPIRY, write_pattern
    from tests.test_mutants_group3 import BOOT_TEST

    keys = KeyRing(catalogue.keys)
    assert cli("catalogue", "protect", catalogue.dir, "stable", *catalogue.args()[2:]).code == 0
    x86 = write_pattern(tmp_path / "x86.qcow2", 4096, seed="x86")
    i386 = write_pattern(tmp_path / "i386.qcow2", 4096, seed="i386")

    class RacedStore(LocalStore):
        raced = False

        def upload_file(self, key, path, digest):  # type: ignore[no-untyped-def]
            done = super().upload_file(key, path, digest)
            if not RacedStore.raced:
                RacedStore.raced = True
                other = PublishRequest(str(i386), "wn", "i386", version="1")
                assert publish(LocalStore(catalogue.dir), keys, other, EXPIRY).created
            return done

    tested = dict(BOOT_TEST, image_sha256=hashlib.sha256(x86.read_bytes()).hexdigest())
    req = PublishRequest(str(x86), "wn", ARCH, version="1", channel="stable", boot_test=tested)
    with pytest.raises(ProtectedChannelError) as e:
        publish(RacedStore(catalogue.dir), keys, req, EXPIRY)
    assert RacedStore.raced
    assert str(e.value).startswith("refusing to publish wn:1 to stable: no passing boot test for i386 ")


@pytest.mark.http
@pytest.mark.parametrize("status", [301, 308])
def test_a_permanent_redirect_is_followed(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path, status: int
) -> None:
    """store.http.HTTPStore._request__mutmut_25: 301 (like 302, 303, 307 and 308) is a redirect to follow, checked
    like any other (same scheme rules)."""
    from tests.httpserver import Fault, TestHTTPServer

    image = make_image(seed="moved")
    assert cli("publish", image, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1").code == 0
    with TestHTTPServer(catalogue.dir, prefix="cat") as srv:
        srv.add_fault(Fault(suffix="timestamp.json", redirect="timestamp.json?moved", redirect_status=status, times=1))
        out = tmp_path / "x.qcow2"
        r = cli("pull", "wn", "--catalogue", srv.url, "--root", catalogue.root, "--arch", ARCH, "-o", out)
        assert r.code == 0, r.err
        assert sha256(out) == sha256(image)
        assert [p for _m, p, _r in srv.served.requests if "timestamp.json" in p] == [
            "/cat/metadata/timestamp.json",
            "/cat/metadata/timestamp.json?moved",
        ]


@pytest.mark.http
def test_a_server_that_never_answers_is_given_up_after_the_timeout(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """store.http.HTTPStore.__init____mutmut_8: --timeout bounds the wait for an answer's first byte (the pace
    only starts with the body): a server that accepts and says nothing for 8 s fails a pull with --timeout 1."""
    import time

    from tests.httpserver import Fault, TestHTTPServer

    with TestHTTPServer(catalogue.dir, prefix="cat") as srv:
        srv.add_fault(Fault(suffix="timestamp.json", stall=8.0))
        t0 = time.monotonic()
        r = cli("pull", "wn", "--catalogue", srv.url, "--root", catalogue.root, "--arch", ARCH, "--timeout", "1",
                "--retries", "0", "-o", tmp_path / "x.qcow2")  # fmt: skip
        elapsed = time.monotonic() - t0
    assert r.code == 13, r.err
    line = f"imagectl: error: cannot reach {srv.url}metadata/timestamp.json: no answer within --timeout"
    assert error_line(r) == line
    assert elapsed < 8, elapsed  # given up before the server answers (generous: the timeout is 1 s)


def test_an_index_of_more_bits_than_allowed_is_refused_with_the_range(catalogue: Catalogue) -> None:
    """state.CatalogueState.reindex__mutmut_9: the refusal says the range of index sizes."""
    from imagectl.catalogue import index
    from imagectl.catalogue.state import load_state
    from imagectl.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as e:
        load_state(catalogue.store).reindex(index.MAX_BITS + 1)
    assert str(e.value) == f"an index has 2 to {2**index.MAX_BITS} roles (1 to {index.MAX_BITS} bits)"
    assert e.value.exit_code == 3


def test_a_target_signed_into_the_wrong_bin_is_named(binned: Catalogue) -> None:  # noqa: F811
    """verify._Verifier.targets__mutmut_15: a bin holding a target whose path hashes to another bin is named."""
    from imagectl.catalogue import bins
    from imagectl.catalogue.state import CatalogueState, load_state
    from tests.test_mutants_verify_client import change, report, role_key

    state = load_state(binned.store)
    md = state.role("image-wn")
    assert md is not None and md.signed.delegations is not None and md.signed.delegations.succinct_roles is not None
    succinct = md.signed.delegations.succinct_roles
    src = next(r for r in state.bin_roles("wn") if (b := state.role(r)) is not None and b.signed.targets)
    dst = next(r for r in succinct.get_roles() if r != src)
    moved: list[str] = []

    def edit(s: CatalogueState) -> None:
        a, b = s.role(src), s.role(dst)
        assert a is not None and b is not None
        path = next(iter(a.signed.targets))
        b.signed.targets[path] = a.signed.targets.pop(path)
        moved.append(path)
        s.changed |= {src, dst}

    change(binned, edit, {src, dst})
    assert bins.bin_role_for(succinct, moved[0]) == src
    problems = report(binned).problems
    assert f"{role_key(binned, dst)}: target {moved[0]} is in the wrong bin (its path hashes elsewhere)" in problems


def test_an_index_role_delegating_a_name_targets_does_not_route_there_checks_its_other_names(
    indexed: Catalogue,  # noqa: F811
) -> None:
    """verify._Verifier.index_role__mutmut_58: one name an index role delegates but targets does not route to it
    is named (and its image role, left out, as listed but not delegated); the index role's other names are still
    checked (the mutant stopped there and reported each of them as listed but not delegated too)."""
    from imagectl.catalogue import index
    from imagectl.catalogue.state import CatalogueState, load_state
    from tests.test_mutants_verify_client import change, report, role_key

    state = load_state(indexed.store)
    by_role: dict[str, list[str]] = {}
    for name, holder in state.name_index().items():
        by_role.setdefault(holder, []).append(name)
    holder, names = next((r, sorted(n)) for r, n in sorted(by_role.items()) if len(n) >= 2)
    first = names[0]

    def edit(s: CatalogueState) -> None:
        d = s.targets.signed.delegations
        assert d is not None and d.roles is not None
        paths = d.roles[holder].paths
        assert paths is not None
        paths.remove(index.name_pattern(first))

    change(indexed, edit, {"targets"})
    problems = report(indexed).problems
    assert problems == [
        f"{role_key(indexed, holder)}: delegates {first}, which targets does not route to {holder}",
        f"{role_key(indexed, 'snapshot')}: lists image-{first}, which targets does not delegate",  # only that one
    ]
