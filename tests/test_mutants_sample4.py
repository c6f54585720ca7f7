"""Tests for survivors of the fourth mutation sample (tests/MUTANTS.md), written after it was measured: they do not
count in its score. Each was checked to fail with its mutant and to pass without."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from imagectl.catalogue import bins, index, model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metadata import ROOT_MAX
from imagectl.catalogue.model import utcnow
from imagectl.catalogue.state import load_state
from imagectl.errors import InvalidInputError, LocalIOError
from imagectl.store import open_store
from imagectl.store.http import _timed_out
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, Catalogue, CliResult
from tests.test_mutants_verify_client import indexed, publish, report  # noqa: F401  (fixture)

SHA = "ab" * 32


def test_a_root_of_exactly_the_size_cap_is_read(catalogue: Catalogue, cli: Callable[..., CliResult]) -> None:
    """client._read_root__mutmut_8: the cap is a maximum, not a bound excluded: a first root of exactly ROOT_MAX
    bytes (padded with spaces, which JSON allows) is trusted on first use."""
    root = catalogue.dir / "metadata" / "1.root.json"
    data = root.read_bytes()
    root.write_bytes(data + b" " * (ROOT_MAX - len(data)))
    assert root.stat().st_size == ROOT_MAX
    r = cli("catalogue", "list", "--catalogue", catalogue.dir)
    assert r.code == 0, r.err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"name": "base", "version": 5, "sha256": SHA},
            "invalid version '': use 1-64 of A-Z a-z 0-9 . _ + ~ - starting with a letter or digit",
        ),
        (
            {"name": "base", "version": "1", "sha256": SHA, "channel": 5},
            "invalid channel '': use 1-32 of a-z 0-9 _ - starting with a letter",
        ),
    ],
)
def test_a_parent_image_field_that_is_not_a_string_is_refused(value: dict[str, object], message: str) -> None:
    """model._parent_image__mutmut_27, _28, _44: a version or channel that is not a string is refused as the
    empty string is, with the one-line error (not accepted, not a TypeError)."""
    with pytest.raises(InvalidInputError) as e:
        model._parent_image(value, "wn/1/x86_64/qcow2")
    assert str(e.value) == message


def test_an_index_of_the_largest_size_is_allowed(catalogue: Catalogue, cli: Callable[..., CliResult], make_image):
    """state.reindex__mutmut_8: MAX_BITS itself is allowed (4,096 index roles)."""
    publish(cli, catalogue, make_image(5_000, seed="a"), "wa", "1")
    state = load_state(catalogue.store)
    assert state.reindex(index.MAX_BITS) == index.MAX_BITS
    assert len(state.index_roles()) == 2**index.MAX_BITS


def test_a_name_of_exactly_the_bin_threshold_needs_no_rebin(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify.image_role__mutmut_59: a plain name of exactly BIN_THRESHOLD versions is not crowded (one more is,
    and publish bins it then)."""
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 3)
    for v in ("1", "2", "3"):
        publish(cli, catalogue, make_image(5_000, seed=v), "wn", v)
    assert load_state(catalogue.store).bin_roles("wn") == []
    assert report(catalogue).needs_rebin == []
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 2)
    assert report(catalogue).needs_rebin == ["wn"]


def test_a_first_root_of_another_version_is_named(catalogue: Catalogue) -> None:
    """verify.roots__mutmut_16: the version problem of metadata/1.root.json names that file."""
    root = catalogue.dir / "metadata" / "1.root.json"
    data = json.loads(root.read_bytes())
    data["signed"]["version"] = 7
    root.write_text(json.dumps(data))
    assert "metadata/1.root.json: has version 7, expected 1" in report(catalogue).problems


def test_a_bad_signature_on_an_image_role_names_its_file(catalogue: Catalogue, cli, make_image) -> None:
    """state.role__mutmut_23: loading an image role whose signature fails names the file."""
    publish(cli, catalogue, make_image(5_000, seed="a"), "wn", "1")
    snap = json.loads((catalogue.dir / "metadata" / "timestamp.json").read_bytes())["signed"]["meta"]
    snapshot = json.loads(
        (catalogue.dir / "metadata" / f"{snap['snapshot.json']['version']}.snapshot.json").read_bytes()
    )
    key = f"metadata/{snapshot['signed']['meta']['image-wn.json']['version']}.image-wn.json"
    data = json.loads((catalogue.dir / key).read_bytes())
    data["signed"]["x-imagectl-test"] = "changed after signing"
    (catalogue.dir / key).write_text(json.dumps(data))
    with pytest.raises(Exception) as e:
        load_state(catalogue.store).role("image-wn")
    assert str(e.value).startswith(f"{key}: signature check failed: "), str(e.value)


def test_place_target_names_a_blob_it_cannot_check(tmp_path: Path) -> None:
    """local.place_target__mutmut_14: the stat error of the blob names the blob."""
    store = LocalStore(tmp_path / "cat")
    store.write("blobs/b", b"hello")
    blob = "blobs/" + "n" * 300  # longer than a file name may be: ENAMETOOLONG
    with pytest.raises(LocalIOError) as e:
        store.place_target(blob, "targets/t", 5)
    assert str(e.value) == f"cannot check {store.root}/{blob}: {os.strerror(errno.ENAMETOOLONG)}"


def test_place_target_touches_the_blob_it_links(tmp_path: Path) -> None:
    """local.place_target__mutmut_83: the linked inode's mtime is refreshed (gc goes by age, and an old orphan
    blob reused by this publish must not look like garbage while the publish commits)."""
    store = LocalStore(tmp_path / "cat")
    store.write("blobs/b", b"hello")
    old = time.time() - 7 * 86400
    os.utime(store.root / "blobs" / "b", (old, old))
    assert store.place_target("blobs/b", "targets/t", 5) is True
    assert (store.root / "targets" / "t").stat().st_mtime > time.time() - 3600
    assert (store.root / "blobs" / "b").stat().st_ino == (store.root / "targets" / "t").stat().st_ino


def test_an_http_store_paces_over_the_timeout_window() -> None:
    """store.open_store__mutmut_33: the minimum rate is checked over --timeout seconds (at least 1), not over
    the default 30."""
    store = open_store("http://127.0.0.1:9/cat", timeout=2.5, retries=0, min_rate=1000)
    assert (store.pace.min_rate, store.pace.window) == (1000, 2.5)  # type: ignore[attr-defined]
    store = open_store("http://127.0.0.1:9/cat", timeout=0.2, retries=0, min_rate=1000)
    assert store.pace.window == 1.0  # type: ignore[attr-defined]


def test_a_timeout_beside_a_wrapped_exception_is_found() -> None:
    """http._timed_out__mutmut_12: the search of an exception chain keeps every branch: here the timeout is the
    cause, and the first thing expanded is an argument that is itself an exception with arguments."""
    e = requests.ConnectionError(ValueError("wrapped"))
    e.__cause__ = TimeoutError()
    assert _timed_out(e)
    assert not _timed_out(requests.ConnectionError(ValueError("wrapped")))


def test_a_binned_version_whose_target_file_is_gone_is_still_found_by_its_bin(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a binned name the listing of target files only adds formats to look up; the requested format's bin is
    read whatever it says. wn:1.3 whose target file was deleted (damage, or a gc gone wrong) is still the signed
    wn:1.3: other bytes under that version are a conflict (exit 6), not a new image, and the bytes signed before
    are what the catalogue still lists. (Written for publish._existing__mutmut_24 as tests/MUTANTS.md first
    described it; that mutant is the next test's.)"""
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 4)
    monkeypatch.setattr(bins, "BIN_FILL", 2)
    images = {f"1.{i}": make_image(5_000, seed=f"v{i}") for i in range(6)}
    for version, image in images.items():
        publish(cli, catalogue, image, "wn", version)
    state = load_state(catalogue.store)
    assert state.bin_roles("wn"), "not binned"
    path = model.target_path("wn", "1.3", "x86_64", "qcow2")
    signed = state.target("wn", path)
    assert signed is not None
    target_file = catalogue.dir / model.target_file_key(path, signed.hashes["sha256"])
    target_file.unlink()
    r = cli(
        "publish",
        make_image(5_000, seed="other"),
        *catalogue.args(),
        "--name",
        "wn",
        "--arch",
        "x86_64",
        "--version",
        "1.3",
    )
    assert r.code == 6, r.err
    assert "wn:1.3 (x86_64) is already published with other bytes" in r.err
    after = load_state(catalogue.store).target("wn", path)
    assert after is not None and after.hashes == signed.hashes


def test_an_index_role_a_reindex_replaced_has_no_delegator(indexed: Catalogue) -> None:  # noqa: F811
    """state.delegator__mutmut_5: after a re-index the old index roles stay listed in the snapshot, but targets no
    longer delegates them: delegator() says None for each (and role() does not load them), while every index role
    targets lists now is delegated by targets and holds its names."""
    state = load_state(indexed.store)
    old = state.index_roles()
    bits = index.bits_of(old[0])
    assert state.reindex(bits + 1) == bits + 1
    state.commit(KeyRing(indexed.keys), EXPIRY)
    state = load_state(indexed.store)
    new = state.index_roles()
    assert new and not set(new) & set(old)
    assert all(f"{r}.json" in state.snapshot.signed.meta for r in old)  # still listed
    assert [state.delegator(r) for r in old] == [None] * len(old)
    assert [state.role(r) for r in old] == [None] * len(old)
    assert all(state.delegator(r) is state.targets for r in new)
    assert sorted(state.names()) == [f"w{i}" for i in range(5)]


def test_a_version_held_in_two_formats_is_matched_by_the_format_asked_for_first(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image
) -> None:
    """publish._existing__mutmut_24 (the formats tried in name order, not the requested one first): a catalogue
    that holds wn:1.0 for x86_64 in two formats (publish refuses a second format, so an older publisher's or a
    hand-signed catalogue) re-publishes the raw one as a no-op (exit 0, nothing signed), not as a conflict with
    the qcow2 one that sorts first."""
    publish(cli, catalogue, make_image(5_000, seed="qcow2"), "wn", "1.0")
    raw = make_image(6_000, seed="raw", name="wn.raw")
    r = cli("publish", raw, *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--version", "9.9")
    assert r.code == 0, r.err
    state = load_state(catalogue.store)
    [other] = state.version_images("wn", "9.9")
    assert other.format == "raw"
    path = model.target_path("wn", "1.0", "x86_64", "raw")
    state.add_image(dataclasses.replace(other, version="1.0", path=path), utcnow() + dt.timedelta(days=90))
    state.commit(KeyRing(catalogue.keys), EXPIRY)
    assert sorted(r.format for r in load_state(catalogue.store).version_images("wn", "1.0")) == ["qcow2", "raw"]
    before = sorted(p.name for p in (catalogue.dir / "metadata").iterdir())
    r = cli("publish", raw, *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--version", "1.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] is False
    assert sorted(p.name for p in (catalogue.dir / "metadata").iterdir()) == before


def test_a_member_cut_short_after_parsing_is_refused_naming_the_package(tmp_path: Path) -> None:
    """Pass 1 of the unpacker reads each member's data again to check its digest: an archive found shorter then
    than when its members were parsed is refused naming the package file (extract._plan passes the package's
    name down; sample 4's ``x__plan__mutmut_119`` named None)."""
    import hashlib
    import io
    import stat

    from imagectl.imaging.slc.extract import _plan
    from imagectl.imaging.slc.rpmfile import FileEntry, RpmFormatError, cpio_members
    from tests.hostile_yum import Member, newc

    data = os.urandom(5000)
    archive = newc([Member("./a", data=data)])
    members = list(cpio_members(io.BytesIO(archive), "tiny-1.0-1.x86_64.rpm"))
    entry = FileEntry("a", stat.S_IFREG | 0o644, len(data), hashlib.sha256(data).hexdigest(), "", 0, "root", "root", 0)
    start = members[0].data_offset
    assert start is not None
    target = tmp_path / "target"
    target.mkdir()
    root = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        whole = _plan(members, {"a": entry}, io.BytesIO(archive), root, "tiny-1.0-1.x86_64.rpm", "sha256")
        assert [s.member.name for s in whole] == ["./a"]  # the whole archive passes: what fails is the cut
        with pytest.raises(RpmFormatError) as e:
            _plan(members, {"a": entry}, io.BytesIO(archive[: start + 100]), root, "tiny-1.0-1.x86_64.rpm", "sha256")
    finally:
        os.close(root)
    assert str(e.value) == "tiny-1.0-1.x86_64.rpm: truncated"
    assert list(target.iterdir()) == []  # pass 1 writes nothing


def test_a_symlink_planted_at_the_cache_entry_before_the_link_gives_no_link_to_its_target(tmp_path: Path) -> None:
    """The destination is a hard link of the verified cache entry, made by name: should the name be replaced
    between the open that verified it and the link (a symlink to another file of the same filesystem planted in
    the cache), the destination still gets the verified bytes, copied from the open file, and never becomes a
    second name of (or a symlink to) that other file (sample 4's ``x__place__mutmut_17`` linked through the symlink)."""
    import stat

    from imagectl.pull import Destination, _place

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    name = "ab" * 32
    entry = cache / name
    entry.write_bytes(b"the verified image")
    secret = tmp_path / "secret"
    secret.write_bytes(b"another file")
    d = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with entry.open("rb") as src:
            os.rename(entry, cache / "elsewhere")  # the open entry keeps its one name, so it may be linked
            entry.symlink_to(secret)  # planted between the check and the link
            dest = Destination(tmp_path / "out.qcow2")
            linked = _place(src, dest, d, name, private_cache=True)
    finally:
        os.close(d)
    st = os.lstat(dest.path)
    assert linked is False and stat.S_ISREG(st.st_mode) and st.st_ino != os.stat(secret).st_ino
    assert dest.path.read_bytes() == b"the verified image" and secret.read_bytes() == b"another file"
    # unplanted, the same call links the entry itself
    entry.unlink()
    os.rename(cache / "elsewhere", entry)
    d = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with entry.open("rb") as src:
            assert _place(src, Destination(tmp_path / "again.qcow2"), d, name, private_cache=True) is True
    finally:
        os.close(d)
    assert os.stat(tmp_path / "again.qcow2").st_ino == os.stat(entry).st_ino


def test_a_directory_the_unpacker_makes_is_never_wider_than_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the unpacker makes is created with its final mode (0755), never the umask's: under umask 002
    it would be group-writable until the fchmod that follows, a window another user of the group could use to
    plant a file in the image. The mode is read at that fchmod, the moment before it applies (sample 4's
    ``xǁ_Dirsǁopen__mutmut_32`` created it with the umask's mode)."""
    import stat

    from imagectl.imaging.slc.extract import _Dirs

    before: list[int] = []
    real = os.fchmod

    def observed(fd: int, mode: int) -> None:
        before.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", observed)
    target = tmp_path / "target"
    target.mkdir()
    root = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    old = os.umask(0o002)
    try:
        dirs = _Dirs(root, create=True)
        assert dirs.open(("usr", "share", "doc")) is not None
        dirs.close()
    finally:
        os.umask(old)
        os.close(root)
    assert before == [0o755, 0o755, 0o755]
    assert stat.S_IMODE((target / "usr" / "share" / "doc").stat().st_mode) == 0o755


def test_a_blob_another_publisher_stored_after_the_check_is_kept_and_not_counted_as_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publishers of the same image on one directory catalogue: the blob is absent when the first checks, and
    the other stores it before the first writes. The first must keep the other's file (create-if-absent: the
    same bytes, content-addressed) and report that it sent nothing (sample 4's
    ``xǁLocalStoreǁupload_file__mutmut_60`` replaced it and reported an upload). The race is injected at the
    check's return."""
    from imagectl.store.digest import file_digest

    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(300_000))
    digest = file_digest(str(image))
    store = LocalStore(tmp_path / "cat")
    key = model.blob_key(digest.sha256)
    real = store._holds
    theirs: list[int] = []

    def checked_then_raced(k: str, d: object) -> bool | None:
        found = real(k, d)  # type: ignore[arg-type]
        assert found is None  # absent at the check
        other = LocalStore(tmp_path / "cat")  # the other publisher
        assert other.upload_file(k, str(image), digest) is True
        theirs.append(os.stat(tmp_path / "cat" / k).st_ino)
        return found

    monkeypatch.setattr(store, "_holds", checked_then_raced)
    assert store.upload_file(key, str(image), digest) is False  # nothing of ours was stored
    assert os.stat(tmp_path / "cat" / key).st_ino == theirs[0]  # the other publisher's file, kept
    assert (tmp_path / "cat" / key).read_bytes() == image.read_bytes()
    assert [p.name for p in (tmp_path / "cat" / key).parent.iterdir() if p.name.startswith(".")] == []
