"""Reading ahead (issue 10 item 2): ``load_state(want=...)`` fetches what a publish will read of one name beside
``targets.json``, and ``Store.gather`` sends independent reads at once on S3.

What must hold: every result is still verified where it is used (a tampered bin fetched ahead is refused as if it
were read then), an error surfaces at the step that uses it, a guess the snapshot cannot settle is never made,
no metadata file is read twice by a publish, and on S3 the reads really overlap.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue import bins
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import target_path
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.catalogue.state import Want, _wanted_roles, load_state
from imagectl.errors import UntrustedMetadataError
from imagectl.store import ObjectMissingError, Store
from imagectl.store.base import Outcome
from imagectl.store.local import LocalStore
from imagectl.store.s3 import S3Store
from tests.conftest import Catalogue, CliResult
from tests.test_bins import ARCH, EXPIRY
from tests.test_bins import small_bins as small_bins  # a fixture: bins past 4 targets


def binned(cli: Callable[..., CliResult], cat: Catalogue, make_image: Callable[..., Path], name: str) -> None:
    """NAME with 8 versions: binned (the small_bins threshold is 4)."""
    for i in range(8):
        image = make_image(4096, seed=f"{name}{i}")
        r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", f"1.{i}", "--json")
        assert r.code == 0, r.err


def binned_on_s3(store: S3Store, tmp_path: Path, make_image: Callable[..., Path]) -> KeyRing:
    """A catalogue on S3 whose name ``wn`` holds 8 versions (library publishes): binned under small_bins; its keys."""
    from imagectl.catalogue.publish import init_catalogue

    keydir = tmp_path / "keys"
    init_catalogue(store, keydir, EXPIRY)
    keys = KeyRing(keydir)
    for i in range(8):
        req = PublishRequest(file=str(make_image(4096, seed=f"s{i}")), name="wn", arch=ARCH, version=f"1.{i}")
        publish(store, keys, req, EXPIRY)
    assert len(load_state(store).bin_roles("wn")) > 2
    return keys


class Reads:
    """Counts the reads of a store, by key."""

    def __init__(self, store: LocalStore) -> None:
        self.keys: list[str] = []
        inner = store.read

        def read(key: str, max_length: int) -> bytes:
            self.keys.append(key)
            return inner(key, max_length)

        store.read = read  # type: ignore[method-assign]


def test_gather_returns_in_order_and_raises_where_used(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cat")
    store.write("a", b"A")
    order: list[str] = []

    def read(key: str) -> Callable[[], bytes]:
        return lambda: (order.append(key), store.read(key, 10))[1]

    got = store.gather([read("a"), read("missing"), read("a")])
    assert order == ["a", "missing", "a"]  # a directory: one after another, in order
    assert got[0].get() == b"A" and got[2].get() == b"A"
    with pytest.raises(ObjectMissingError):
        got[1].get()  # raised where the result is used, not by gather
    assert isinstance(got[1].error, ObjectMissingError) and got[1].value is None
    with pytest.raises(KeyError):
        Outcome[int](error=KeyError("k")).get()


def test_gather_runs_the_first_call_here_and_never_more_than_the_limit_at_once(tmp_path: Path) -> None:
    """A store that sends requests at once runs the first call in the calling thread and the others on helper
    threads, never more than ``concurrent_requests`` at a time; results come back in order, errors where used."""
    store = LocalStore(tmp_path / "cat")
    store.concurrent_requests = 3  # type: ignore[misc]
    lock, running, peak, threads = threading.Lock(), [0], [0], []
    first_three = threading.Barrier(3, timeout=10)  # only passed if calls 0-2 run at once

    def call(n: int) -> Callable[[], int]:
        def run() -> int:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                threads.append((n, threading.get_ident()))
            if n < 3:
                first_three.wait()
            threading.Event().wait(0.01)
            with lock:
                running[0] -= 1
            if n == 4:
                raise ObjectMissingError("four")
            return n

        return run

    got = store.gather([call(n) for n in range(8)])
    assert [g.value for g in got] == [0, 1, 2, 3, None, 5, 6, 7] and isinstance(got[4].error, ObjectMissingError)
    assert peak[0] == 3, peak
    assert dict(threads)[0] == threading.get_ident() and {t for n, t in threads if n} - {threading.get_ident()}


@pytest.mark.s3
def test_gather_overlaps_the_requests_on_s3(s3_store: S3Store) -> None:
    """Two reads that can only both finish if they run at once (a barrier of two) do, on S3."""
    s3_store.write("metadata/x.json", b"{}")
    barrier = threading.Barrier(2, timeout=10)

    def read() -> bytes:
        barrier.wait()
        return s3_store.read("metadata/x.json", 100)

    assert s3_store.concurrent_requests >= 2
    got = s3_store.gather([read, read])
    assert [g.get() for g in got] == [b"{}", b"{}"]


@pytest.mark.usefixtures("small_bins")
def test_a_publish_into_a_binned_name_reads_each_file_once(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    binned(cli, catalogue, make_image, "wn")
    reads = Reads(catalogue.store)
    req = PublishRequest(file=str(make_image(4096, seed="new")), name="wn", arch=ARCH, version="2.0", format="qcow2")
    publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    metadata = [k for k in reads.keys if k.startswith("metadata/")]
    assert len(metadata) == len(set(metadata)), metadata  # nothing read twice (check, commit, heal)
    state = load_state(catalogue.store)
    held = state.holder("wn", target_path("wn", "2.0", ARCH, "qcow2"))
    assert held is not None and target_path("wn", "2.0", ARCH, "qcow2") in held.signed.targets
    # the bin it hashes into was among the reads, and read once
    bin_role = bins.bin_role_for(state.succinct(state.role("image-wn")), target_path("wn", "2.0", ARCH, "qcow2"))  # type: ignore[arg-type]
    assert sum(1 for k in metadata if k.endswith(f".{bin_role}.json")) == 1


@pytest.mark.usefixtures("small_bins")
def test_what_is_fetched_ahead_is_verified_where_it_is_used(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """A bin changed on the server (its signature no longer covers it) is fetched ahead, then refused by the
    signature check when the publish uses it; nothing is written."""
    binned(cli, catalogue, make_image, "wn")
    path = target_path("wn", "2.0", ARCH, "qcow2")
    state = load_state(catalogue.store)
    bin_role = bins.bin_role_for(state.succinct(state.role("image-wn")), path)  # type: ignore[arg-type]
    version = state.snapshot.signed.meta[f"{bin_role}.json"].version
    victim = catalogue.dir / "metadata" / f"{version}.{bin_role}.json"
    doc = json.loads(victim.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a change the signature does not cover
    victim.write_text(json.dumps(doc))
    ahead = load_state(catalogue.store, want=Want("wn", paths=(path,), listing=("2.0", ARCH)))
    assert f"metadata/{version}.{bin_role}.json" in ahead._fetched  # it was fetched ahead
    with pytest.raises(UntrustedMetadataError, match=rf"{bin_role}.*signature"):
        ahead.role(bin_role)
    before = sorted(p.name for p in (catalogue.dir / "metadata").iterdir())
    req = PublishRequest(file=str(make_image(4096, seed="new")), name="wn", arch=ARCH, version="2.0", format="qcow2")
    with pytest.raises(UntrustedMetadataError):
        publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert sorted(p.name for p in (catalogue.dir / "metadata").iterdir()) == before


@pytest.mark.usefixtures("small_bins")
def test_no_guess_where_the_snapshot_lists_two_bin_sizes(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """After a re-bin the old bins stay listed: which size is current only the verified image role says, so no
    bin is fetched ahead, and the publish reads the current one."""
    binned(cli, catalogue, make_image, "wn")
    path = target_path("wn", "2.0", ARCH, "qcow2")
    meta = load_state(catalogue.store).snapshot.signed.meta
    one_size = _wanted_roles(meta, Want("wn", paths=(path,)))
    assert any("~b" in k for k in one_size)  # one bin size listed: its bin is named
    old_bits = load_state(catalogue.store).succinct(load_state(catalogue.store).role("image-wn")).bit_length  # type: ignore[union-attr, arg-type]
    r = cli("catalogue", "rebin", catalogue.dir, "wn", "--bits", str(old_bits + 1), "--keys", catalogue.keys)
    assert r.code == 0, r.err
    meta = load_state(catalogue.store).snapshot.signed.meta
    keys = _wanted_roles(meta, Want("wn", paths=(path,)))
    assert not any("~b" in k for k in keys) and any(k.endswith(".image-wn.json") for k in keys)
    req = PublishRequest(file=str(make_image(4096, seed="new")), name="wn", arch=ARCH, version="2.0", format="qcow2")
    publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    state = load_state(catalogue.store)
    held = state.holder("wn", path)
    assert held is not None and path in held.signed.targets
    assert state.succinct(state.role("image-wn")).bit_length == old_bits + 1  # type: ignore[union-attr, arg-type]


def test_the_roles_wanted_are_named_from_the_snapshot_list_alone() -> None:
    """Index and bin sizes are told by the first role of each size (every size is made whole): the name's index
    role and the bin of its path are named; a look-alike name's bins, a malformed size and a size whose first
    bin is missing count for nothing (nothing is guessed, the publish reads what the verified roles say)."""
    from tuf.api.metadata import MetaFile, SuccinctRoles

    from imagectl.catalogue import index

    def listed(*groups: list[str]) -> dict[str, MetaFile]:
        return {f"{r}.json": MetaFile(7) for g in groups for r in g}

    index_roles = [f"names~b2-{n:x}" for n in range(4)]
    a_bins = [f"image-a~b3-{n:x}" for n in range(8)]
    decoys = [f"image-ab~b2-{n:x}" for n in range(4)] + ["image-a~bX-0", "image-a~b5-1f"]
    path = target_path("a", "1.0", ARCH, "qcow2")
    want = Want("a", paths=(path,))
    keys = _wanted_roles(listed(["targets", "image-a"], index_roles, a_bins, decoys), want)
    the_bin = bins.bin_role_for(SuccinctRoles([], 1, 3, bins.bin_prefix("a", 3)), path)
    assert keys == [f"metadata/7.{r}.json" for r in ("image-a", index.index_role("a", 2), the_bin)]
    keys = _wanted_roles(listed(["targets", "image-a"], index_roles, a_bins[1:], decoys), want)
    assert keys == [f"metadata/7.{r}.json" for r in ("image-a", index.index_role("a", 2))]
    two_indexes = [f"names~b1-{n}" for n in range(2)]
    keys = _wanted_roles(listed(["targets", "image-a"], index_roles, two_indexes, a_bins), want)
    assert keys == [f"metadata/7.{r}.json" for r in ("image-a", the_bin)]


def test_the_listing_is_taken_with_the_snapshot_and_spares_a_plain_name_its_head(
    s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """A publish under a given version lists ``targets/NAME/VERSION/ARCH/`` in the round of the snapshot (after
    the timestamp that fixes its state, so the listing names every target file that state can list): a binned
    name's version check reads it, and any name's target file is asked for with a ``HEAD`` only where the
    listing has it. A plain name makes as many requests as with the ``HEAD``, one round fewer."""
    from imagectl.catalogue.model import target_file_key
    from imagectl.catalogue.publish import init_catalogue

    keydir = tmp_path / "keys"
    init_catalogue(s3_store, keydir, EXPIRY)
    keys = KeyRing(keydir)
    for i in range(3):  # a plain role
        req = PublishRequest(file=str(make_image(4096, seed=f"p{i}")), name="few", arch=ARCH, version=f"1.{i}")
        publish(s3_store, keys, req, EXPIRY)
    calls: list[tuple[str, str]] = []

    def log(params: dict[str, str], model: object, **_: object) -> None:
        what = params.get("Key", params.get("Prefix", "?"))
        calls.append((getattr(model, "name", "?"), str(what).removeprefix(s3_store.prefix)))

    for client in s3_store.clients():  # the image's bytes go through the unsigned twin
        client.meta.events.register("before-parameter-build.s3", log)
    new = make_image(4096, seed="p-new")
    done = publish(s3_store, keys, PublishRequest(file=str(new), name="few", arch=ARCH, version="2.0"), EXPIRY)
    made = len(calls)  # the publish's requests (the check below reads too)
    tkey = target_file_key(done.record.path, done.record.sha256)
    assert done.created and done.uploaded and s3_store.read(tkey, 1 << 20) == new.read_bytes()
    ops = [op for op, _ in calls]
    snap = next(i for i, (op, key) in enumerate(calls) if op == "GetObject" and key.endswith(".snapshot.json"))
    ts = next(i for i, (op, key) in enumerate(calls) if key == "metadata/timestamp.json")
    listing = ops.index("ListObjectsV2")
    assert calls[listing][1] == f"targets/few/2.0/{ARCH}/" and ops.count("ListObjectsV2") == 1
    assert ts < listing and abs(listing - snap) == 1, calls  # sent together with the snapshot's GET
    assert not [k for op, k in calls if op == "HeadObject" and k.startswith("targets/")], calls
    assert made == 14, "\n".join(map(str, calls))


@pytest.mark.usefixtures("small_bins")
def test_target_file_unlisted_answers_only_from_a_listing(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """``target_file_unlisted`` is True only for a file missing from a directory the state listed: a directory
    not listed, or a key of another shape, says nothing (the store is asked as before)."""
    binned(cli, catalogue, make_image, "wn")
    state = load_state(catalogue.store, want=Want("wn", listing=("1.3", ARCH)))
    held = [k for k in catalogue.store.list(f"targets/wn/1.3/{ARCH}/")]
    assert len(held) == 1
    assert state.target_file_unlisted(held[0]) is False  # listed, and there
    assert state.target_file_unlisted(f"targets/wn/1.3/{ARCH}/{'0' * 64}.wn-1.3-{ARCH}.raw") is True
    assert state.target_file_unlisted(f"targets/wn/1.4/{ARCH}/{'0' * 64}.wn-1.4-{ARCH}.raw") is False  # not listed
    assert state.target_file_unlisted(f"targets/wn/1.3/{ARCH}") is False
    assert state.target_file_unlisted(f"blobs/sha256/{'0' * 64}") is False


def test_list_children_names_the_directories_of_one_level(store: Store) -> None:
    """A directory and S3 agree: the names right under a prefix that begin with ``start``, nothing deeper, no
    dot-names, and nothing for a prefix that does not exist."""
    for key in (
        "targets/wn/20261203.1/x86_64/a.qcow2",
        "targets/wn/20261203.1/i386/a.qcow2",
        "targets/wn/20261203.12/x86_64/a.qcow2",
        "targets/wn/20261202.3/x86_64/a.qcow2",
        "targets/wn/.20261203.9/x86_64/a.qcow2",
        "targets/wn/20261203.flat",  # a file, not a directory
        "targets/wnx/20261203.5/x86_64/a.qcow2",
    ):
        store.write(key, b"x")
    assert store.list_children("targets/wn/", "20261203.") == {"20261203.1", "20261203.12"}
    assert store.list_children("targets/wn/") == {"20261203.1", "20261203.12", "20261202.3"}
    assert store.list_children("targets/none/", "2026") == set()


def test_list_children_of_a_directory_never_follows_a_symlink(tmp_path: Path) -> None:
    """A directory catalogue is only as trusted as its files: a symlinked version directory is not one of the
    name's versions (an automatic version would otherwise count a directory outside the catalogue), and a
    symlinked name directory is refused, not read through."""
    import os

    from imagectl.fsio import SymlinkRefusedError

    store = LocalStore(tmp_path / "cat")
    store.write("targets/wn/20261203.1/x86_64/a.qcow2", b"x")
    outside = tmp_path / "outside"
    (outside / "20261203.7" / "x86_64").mkdir(parents=True)
    os.symlink(outside / "20261203.7", tmp_path / "cat/targets/wn/20261203.5")
    assert store.list_children("targets/wn/", "20261203.") == {"20261203.1"}
    os.symlink(outside, tmp_path / "cat/targets/ln")
    with pytest.raises(SymlinkRefusedError, match="not followed"):
        store.list_children("targets/ln/")


@pytest.mark.usefixtures("small_bins")
def test_automatic_versions_of_a_binned_name_read_no_bin_but_the_one_written(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """``publish`` without --version into a binned name finds the day's versions from one listing of its target
    files: YYYYMMDD.N continues after the day's highest N (a revoked one included), and the only bin read is
    the one the new version goes into (every bin was read before)."""
    binned(cli, catalogue, make_image, "wn")
    day = dt.date(2026, 12, 3)
    keys = KeyRing(catalogue.keys)

    def auto(seed: str) -> tuple[str, list[str]]:
        reads = Reads(catalogue.store)
        req = PublishRequest(file=str(make_image(4096, seed=seed)), name="wn", arch=ARCH, format="qcow2")
        result = publish(catalogue.store, keys, req, EXPIRY, today=day)
        return result.record.version, [k for k in reads.keys if "~b" in k]

    first, bins_read = auto("a1")
    state = load_state(catalogue.store)
    assert first == "20261203.1" and len(state.bin_roles("wn")) > 2
    assert len(bins_read) == 1  # the bin of 20261203.1, not all of them
    assert auto("a2")[0] == "20261203.2"
    r = cli("revoke", "wn:20261203.2", *catalogue.args(), "--reason", "bad")
    assert r.code == 0, r.err
    third, _ = auto("a4")
    assert third == "20261203.3"  # after .2, revoked (its version stays taken)


@pytest.mark.s3
@pytest.mark.usefixtures("small_bins")
def test_publishes_into_a_binned_name_on_s3(s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path]) -> None:
    """The read-ahead on S3 for real (requests at once through boto3's pool): explicit and automatic versions
    into a binned name land in their bins, each publish reading no metadata file twice."""
    keys = binned_on_s3(s3_store, tmp_path, make_image)
    reads: list[str] = []
    inner = s3_store.read

    def read(key: str, max_length: int) -> bytes:
        reads.append(key)
        return inner(key, max_length)

    s3_store.read = read  # type: ignore[method-assign]
    explicit = PublishRequest(file=str(make_image(4096, seed="x")), name="wn", arch=ARCH, version="2.0")
    publish(s3_store, keys, explicit, EXPIRY)
    assert len(reads) == len(set(reads)), reads
    auto = publish(
        s3_store,
        keys,
        PublishRequest(file=str(make_image(4096, seed="y")), name="wn", arch=ARCH),
        EXPIRY,
        today=dt.date(2026, 12, 3),
    )
    assert auto.record.version == "20261203.1"
    state = load_state(s3_store)
    for version in ("2.0", "20261203.1"):
        path = target_path("wn", version, ARCH, "qcow2")
        held = state.holder("wn", path)
        assert held is not None and path in held.signed.targets, version


@pytest.mark.s3
@pytest.mark.usefixtures("small_bins")
def test_a_binned_publish_asks_for_its_target_file_only_where_the_listing_has_it(
    s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """A publish into a binned name lists ``targets/NAME/VERSION/ARCH/`` to check the version; that listing
    already says whether the image's target file exists, so no HEAD asks it again. Where the listing has it (a
    publisher killed after its upload, before its commit), it is asked for, found whole, and not sent again."""
    from imagectl.catalogue.model import target_file_key

    keys = binned_on_s3(s3_store, tmp_path, make_image)
    heads: list[str] = []

    def head(params: dict[str, str], **_: object) -> None:
        heads.append(str(params.get("Key", "?")).removeprefix(s3_store.prefix))

    s3_store.client.meta.events.register("before-parameter-build.s3.HeadObject", head)
    new = make_image(4096, seed="h-new")
    first = publish(s3_store, keys, PublishRequest(file=str(new), name="wn", arch=ARCH, version="2.0"), EXPIRY)
    tkey = target_file_key(first.record.path, first.record.sha256)
    assert first.uploaded and s3_store.read(tkey, 1 << 20) == new.read_bytes()
    assert tkey not in heads and heads, heads  # the blob key is still asked for (another version's bytes?)

    left = make_image(4096, seed="h-left")  # a killed publisher's upload: the target file, no metadata
    from imagectl.store.digest import file_digest

    digest = file_digest(str(left), part_size=s3_store.part_size)
    left_key = target_file_key(target_path("wn", "2.1", ARCH, "qcow2"), digest.sha256)
    s3_store.upload_file(left_key, str(left), digest)
    heads.clear()
    again = publish(s3_store, keys, PublishRequest(file=str(left), name="wn", arch=ARCH, version="2.1"), EXPIRY)
    assert left_key in heads and again.created and not again.uploaded
    assert s3_store.read(left_key, 1 << 20) == left.read_bytes()
