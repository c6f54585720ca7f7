"""Mutants of imagectl/catalogue/verify.py, client.py and model.py that the rest of the suite let survive.

Each test checks what an operator or deployer sees: the exact problem lines of ``catalogue verify`` (every one
names the file it is about), the flags of its report, the roles a reader walks to a name, the error a malformed
``parent_image`` raises and the UTC stamp a scheduled revocation is compared with.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from imagectl.catalogue import bins, client, index, model, verify
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.state import CatalogueState, load_state, transact
from imagectl.errors import CatalogueStateError, InvalidInputError
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult

ARCH = "x86_64"
EXPIRY = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
SHA = "ab" * 32


def publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, name: str = "wn", version: str = "1") -> None:
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version)
    assert r.code == 0, r.err


def report(cat: Catalogue) -> verify.Report:
    return verify.verify_catalogue(LocalStore(cat.dir))


def change(cat: Catalogue, edit: Callable[[CatalogueState], None], resign: set[str]) -> None:
    """Validly sign a change the writer would never make (the catalogue's own keys)."""
    keys = KeyRing(cat.keys)

    def run(s: CatalogueState) -> None:
        edit(s)
        s.commit(keys, EXPIRY, resign=frozenset(resign))

    transact(cat.store, run)


def role_key(cat: Catalogue, role: str) -> str:
    """The versioned metadata key of ``role`` the current snapshot lists."""
    ts = json.loads((cat.dir / "metadata" / "timestamp.json").read_bytes())["signed"]
    snap_v = ts["meta"]["snapshot.json"]["version"]
    if role == "snapshot":
        return f"metadata/{snap_v}.snapshot.json"
    snap = json.loads((cat.dir / "metadata" / f"{snap_v}.snapshot.json").read_bytes())["signed"]
    return f"metadata/{snap['meta'][f'{role}.json']['version']}.{role}.json"


@pytest.fixture
def binned(catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch):
    """A catalogue whose name ``wn`` is binned (thresholds lowered), versions 1.0 to 1.5."""
    return bin_wn(catalogue, cli, make_image, monkeypatch, 6)


def bin_wn(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    major: int = 1,
) -> Catalogue:
    """Publish ``count`` versions MAJOR.0, MAJOR.1, ... of ``wn`` with the bin thresholds lowered (4 versions make
    a name binned, 2 per bin), so that ``wn`` ends up binned."""
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 4)
    monkeypatch.setattr(bins, "BIN_FILL", 2)
    for i in range(count):
        publish(cli, catalogue, make_image(5_000, seed=f"b{major}.{i}"), "wn", f"{major}.{i}")
    assert load_state(catalogue.store).bin_roles("wn"), "not binned"
    return catalogue


@pytest.fixture
def indexed(catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch):
    """A catalogue whose names are delegated through index roles (thresholds lowered)."""
    monkeypatch.setattr(index, "INDEX_THRESHOLD", 3)
    monkeypatch.setattr(index, "INDEX_FILL", 2)
    monkeypatch.setattr(index, "INDEX_CROWDED", 4)
    for i in range(5):
        publish(cli, catalogue, make_image(5_000, seed=f"w{i}"), f"w{i}", "1.0")
    assert load_state(catalogue.store).index_roles(), "not indexed"
    return catalogue


@pytest.fixture
def utc_plus_one() -> Iterator[None]:
    """The process's local time zone is UTC+1 (a POSIX TZ string: no time zone database needed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XXX-1"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


# -- client.py -------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("utc_plus_one")
def test_stamp_is_utc_whatever_the_local_time_zone() -> None:
    """Mutant: astimezone(None) would stamp in local time ('+01:00'), which sorts wrongly against 'Z' stamps."""
    t = dt.datetime(2026, 3, 1, 12, 30, 15, 999, tzinfo=dt.UTC)
    assert client._stamp(t) == "2026-03-01T12:30:15Z"
    assert client._stamp(t.astimezone(dt.timezone(dt.timedelta(hours=5)))) == "2026-03-01T12:30:15Z"


def test_role_names_of_an_indexed_name_start_with_its_index_role(indexed: Catalogue, tmp_path: Path) -> None:
    """Mutant: the index role left out of the roles on the way to a name (a mirror would then lack it)."""
    holder = load_state(indexed.store).name_index()["w2"]
    assert index.is_index(holder)
    with client.CatalogueReader(
        LocalStore(indexed.dir), tmp_path / "cache", str(indexed.root), lambda _m: None, retries=0
    ) as reader:
        assert reader.role_names("w2") == [holder, "image-w2"]


# -- model.py ----------------------------------------------------------------------------------------------------
def test_parent_image_that_is_not_an_object_is_refused_with_its_place() -> None:
    with pytest.raises(InvalidInputError) as e:
        model._parent_image("wn:1", "target wn/1/x86_64/qcow2")
    assert str(e.value) == (
        "target wn/1/x86_64/qcow2: parent_image is not an object of name, version, sha256 (and channel)"
    )


def test_parent_image_without_a_string_name_is_refused_as_an_empty_name() -> None:
    with pytest.raises(InvalidInputError) as e:
        model._parent_image({"name": 7, "version": "1", "sha256": SHA}, "here")
    assert str(e.value) == "invalid image name '': use 1-64 of a-z 0-9 . _ - starting with a letter or digit"


# -- verify.py: reading, roots, expiry ----------------------------------------------------------------------------
def test_no_catalogue_says_which_store(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    store = LocalStore(tmp_path / "empty")
    with pytest.raises(CatalogueStateError) as e:
        verify.verify_catalogue(store)
    assert str(e.value) == f"{store.shown} is not a catalogue (no metadata/1.root.json)"


def test_an_unreadable_metadata_file_says_why(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant: the problem line of a metadata file that exists but cannot be read (here a symlink)."""
    ts = catalogue.dir / "metadata" / "timestamp.json"
    real = tmp_path / "ts.json"
    real.write_bytes(ts.read_bytes())
    ts.unlink()
    ts.symlink_to(real)
    problems = report(catalogue).problems
    assert len(problems) == 2, problems
    assert (
        problems[0] == "metadata/timestamp.json: not a regular file (a symlink, device, FIFO or socket; not followed)"
    )
    assert problems[1].startswith("metadata/timestamp.json: unreadable: "), problems


def test_everything_expired_is_named_file_by_file(binned: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: the verifier's clock (not the real one), and the file each expiry line names, bins included."""
    later = model.utcnow() + dt.timedelta(days=400)
    monkeypatch.setattr(verify, "utcnow", lambda: later)
    r = report(binned)
    expired = sorted(p.split(": expired on ")[0] for p in r.problems)
    assert len(expired) == len(r.problems) == r.roles, r.problems
    state = load_state(binned.store)
    want = ["metadata/1.root.json", "metadata/timestamp.json"] + [
        role_key(binned, role) for role in ["snapshot", "targets", "image-wn", *state.bin_roles("wn")]
    ]
    assert expired == sorted(want)


def test_an_unparsable_newer_root_does_not_stop_the_check(catalogue: Catalogue) -> None:
    """Mutant: returning (not breaking) at a broken N.root.json skips timestamp, snapshot and targets."""
    (catalogue.dir / "metadata" / "2.root.json").write_text("{")
    r = report(catalogue)
    assert r.roles == 4, r.problems
    # named once, with the parser's error (its wording is python-tuf's)
    assert len(r.problems) == 1, r.problems
    assert r.problems[0].startswith("metadata/2.root.json is not valid TUF metadata: DeserializationError: "), (
        r.problems
    )


def test_a_newer_root_at_the_wrong_version_is_named(catalogue: Catalogue) -> None:
    meta = catalogue.dir / "metadata"
    (meta / "2.root.json").write_bytes((meta / "1.root.json").read_bytes())
    assert report(catalogue).problems == ["metadata/2.root.json: has version 1, expected 2"]


# -- verify.py: target files, mirror.json, listing --------------------------------------------------------------
def test_a_wrong_target_file_is_named_with_its_image(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Mutants: the label and the word 'target file' of a target file that is not the blob's bytes."""
    publish(cli, catalogue, make_image(5_000))
    (rec,) = load_state(catalogue.store).images("wn")
    key = model.target_file_key(rec.path, rec.sha256)
    f = catalogue.dir / key
    f.unlink()  # no longer a hard link of the blob
    f.write_bytes(b"x" * 10)
    assert report(catalogue).problems == [f"{rec.path}: target file {key} has 10 bytes, signed length is {rec.size}"]


def test_a_blob_longer_than_signed_is_read_only_a_chunk_past_its_length(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """A blob that grew (or a store that sends without end) is not read through: hashing stops one chunk past the
    signed length (Store.hash_object), and the problem says it is longer, not by how much."""
    publish(cli, catalogue, make_image(5_000))
    (rec,) = load_state(catalogue.store).images("wn")
    key = model.target_file_key(rec.path, rec.sha256)
    (catalogue.dir / key).unlink()  # the target file no longer shares the blob's inode
    (catalogue.dir / key).write_bytes(b"y" * rec.size)
    blob = catalogue.dir / model.blob_key(rec.sha256)
    with open(blob, "ab") as f:
        f.truncate(64 << 20)  # 64 MiB where 5,000 bytes are signed
    r = report(catalogue)
    assert r.problems[0] == f"{rec.path}: blob {model.blob_key(rec.sha256)} has more than {rec.size} bytes, " + (
        f"signed length is {rec.size}"
    )
    assert r.blob_bytes < 16 << 20  # this blob's 5,000 bytes and a chunk past them, the target file, the record


def test_an_unreadable_mirror_file_is_a_problem(catalogue: Catalogue, tmp_path: Path) -> None:
    real = tmp_path / "mirror.json"
    real.write_text('{"names": [], "images": []}')
    (catalogue.dir / "mirror.json").symlink_to(real)
    r = report(catalogue)
    assert not r.partial
    (line,) = r.problems
    assert line.startswith("mirror.json: unreadable (") and line.endswith("); checked as a full catalogue"), line


def test_a_mirror_file_without_lists_is_malformed(catalogue: Catalogue) -> None:
    (catalogue.dir / "mirror.json").write_text('{"names": "wn", "images": []}')
    assert report(catalogue).problems == [
        "mirror.json: malformed (names and images must be lists); checked as a full catalogue"
    ]


def test_a_symlink_in_metadata_is_named(catalogue: Catalogue) -> None:
    (catalogue.dir / "metadata" / "extra.json").symlink_to(catalogue.dir / "metadata" / "1.root.json")
    assert report(catalogue).problems == [
        "metadata/extra.json: not a regular file (a symlink, device, FIFO or socket; not followed)"
    ]


# -- verify.py: signed but wrong metadata -----------------------------------------------------------------------
def _target(length: int = 5_000) -> TargetFile:
    return TargetFile(length, {"sha256": SHA}, "x")


def test_signed_targets_outside_the_name_or_malformed_are_each_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Mutants: the lines for a target outside its name and for a malformed target; checking goes on after one."""
    publish(cli, catalogue, make_image(5_000))

    def edit(s: CatalogueState) -> None:
        md = s.role("image-wn")
        assert md is not None
        good = dict(md.signed.targets)
        md.signed.targets.clear()
        md.signed.targets["other/1/x86_64/qcow2"] = TargetFile(5, {"sha256": SHA}, "other/1/x86_64/qcow2")
        md.signed.targets["wn/2/x86_64/qcow2"] = TargetFile(5, {"sha256": SHA}, "wn/2/x86_64/qcow2")
        md.signed.targets.update(good)  # after the malformed ones: still checked
        s.changed.add("image-wn")

    change(catalogue, edit, {"image-wn"})
    key = role_key(catalogue, "image-wn")
    r = report(catalogue)
    assert r.problems[0] == f"{key}: target other/1/x86_64/qcow2 is outside the role's image name"
    assert r.problems[1].startswith(f"{key}: "), r.problems
    assert r.problems[2].startswith(f"{key}: "), r.problems
    assert len(r.problems) == 3, r.problems
    assert r.images == 1  # the good image after the malformed targets was still checked


def test_an_index_role_delegating_a_role_not_of_its_own_name_is_named(indexed: Catalogue) -> None:
    state = load_state(indexed.store)
    holder = state.name_index()["w2"]

    def edit(s: CatalogueState) -> None:
        md = s.role(holder)
        assert md is not None and md.signed.delegations is not None and md.signed.delegations.roles is not None
        md.signed.delegations.roles["image-w2"].paths = ["w3/*/*/*"]
        s.changed.add(holder)

    change(indexed, edit, {holder})
    key = role_key(indexed, holder)
    problems = report(indexed).problems
    assert f"{key}: delegates image-w2, which is not an image role of its own name" in problems, problems


def test_an_index_role_holding_a_name_that_hashes_elsewhere_is_named(indexed: Catalogue) -> None:
    state = load_state(indexed.store)
    right = state.name_index()["w2"]
    wrong = next(r for r in state.index_roles() if r != right)

    def edit(s: CatalogueState) -> None:  # targets routes w2 to the wrong index role, which delegates it
        d = s.targets.signed.delegations
        assert d is not None and d.roles is not None
        d.roles[right].paths.remove(index.name_pattern("w2"))  # type: ignore[union-attr]
        d.roles[wrong].paths.append(index.name_pattern("w2"))  # type: ignore[union-attr]
        src, dst = s.role(right), s.role(wrong)
        assert src is not None and dst is not None
        assert src.signed.delegations is not None and src.signed.delegations.roles is not None
        assert dst.signed.delegations is not None and dst.signed.delegations.roles is not None
        dst.signed.delegations.roles["image-w2"] = src.signed.delegations.roles.pop("image-w2")
        for keyid, k in src.signed.delegations.keys.items():
            dst.signed.delegations.keys.setdefault(keyid, k)
        s.changed |= {right, wrong}

    change(indexed, edit, {"targets", right, wrong})
    key = role_key(indexed, wrong)
    problems = report(indexed).problems
    assert problems == [f"{key}: holds w2, whose name hashes to another index role"], problems


def test_a_missing_index_role_of_a_full_catalogue_is_missing(indexed: Catalogue) -> None:
    """Mutant: a full catalogue (no mirror.json) would report a missing index role as skipped."""
    holder = load_state(indexed.store).name_index()["w2"]
    key = role_key(indexed, holder)
    (indexed.dir / key).unlink()
    r = report(indexed)
    assert r.skipped == []
    assert r.problems[0] == f"{key}: missing", r.problems  # then the names it delegated are unaccounted for


# -- verify.py: thresholds and partial mirrors --------------------------------------------------------------------
def test_a_bin_at_the_threshold_is_not_crowded(binned: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    state = load_state(binned.store)
    most = max(len(md.signed.targets) for md in state.target_roles("wn"))
    assert most > 0
    monkeypatch.setattr(bins, "BIN_THRESHOLD", most)
    r = report(binned)
    assert r.problems == [] and r.needs_rebin == []
    monkeypatch.setattr(bins, "BIN_THRESHOLD", most - 1)
    assert report(binned).needs_rebin == ["wn"]


def test_names_at_the_index_threshold_need_no_index(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch
) -> None:
    publish(cli, catalogue, make_image(5_000, seed="a"), "a1")
    publish(cli, catalogue, make_image(5_000, seed="b"), "b1")
    monkeypatch.setattr(index, "INDEX_THRESHOLD", 2)
    assert report(catalogue).needs_reindex is False
    monkeypatch.setattr(index, "INDEX_THRESHOLD", 1)
    assert report(catalogue).needs_reindex is True


def test_bins_of_a_name_a_mirror_does_not_claim_are_still_checked(binned: Catalogue) -> None:
    """Mutant: the bin's key (not None) is what is looked for when mirror.json does not claim the name."""
    (binned.dir / "mirror.json").write_text('{"names": [], "images": []}')
    n_bins = len(load_state(binned.store).bin_roles("wn"))
    r = report(binned)
    assert r.partial and r.problems == [], r.problems
    assert r.roles == 5 + n_bins  # root, timestamp, snapshot, targets, image-wn and every bin
    assert r.images == 6
