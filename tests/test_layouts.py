"""A binned name's signed record of the arches and formats its bins hold (``x-imagectl.layouts``; issue 10).

A lookup of one version of a binned name (promote, deprecate, rollback, a protected channel's check, a parent)
asks the bin of each target path the version may have. Without the record that was every arch and format imagectl
knows: 100 paths, ~90 of 512 bins of a 50,000-version name, 2.7 MB read by each promote. With it, the bins of the
pairs the name has. What must hold: the record says what the bins hold (kept by publishes, made by a re-bin, mended
by ``catalogue rebin`` for a name binned before it or written into by an older imagectl); a lookup reads only the
bins of recorded pairs; a catalogue without the record still reads every arch (all paths tried) and is told to
re-bin; a record missing a pair the bins hold is a problem ``catalogue verify`` reports, and a revocation trusts no
record (it still removes every arch); the record validates against the published schema; and the commands that
change one name pass the publisher's metadata cache (on S3: no GET after the first round once it is warm).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Targets

from imagectl.catalogue import bins, lifecycle
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import MetadataCache
from imagectl.catalogue.model import EXT, target_path
from imagectl.catalogue.publish import PublishRequest, deprecate, promote, publish
from imagectl.catalogue.state import CatalogueState, load_state, transact
from imagectl.store import Store
from imagectl.store.s3 import S3Store
from tests.conftest import Catalogue, CliResult
from tests.httpserver import TestHTTPServer
from tests.test_bins import EXPIRY
from tests.test_bins import small_bins as small_bins  # a fixture: bins past 4 targets
from tests.test_metacache import FIRST_ROUND, entries, reads_of, s3_gets, seeded
from tests.test_schema import assert_valid

pytestmark = pytest.mark.usefixtures("small_bins")

X86, IA64 = "x86_64/qcow2", "ia64/qcow2"


def role_of(store: Store, name: str = "wn") -> Metadata[Targets]:
    md = load_state(store).role(f"image-{name}")
    assert md is not None
    return md


def add(store: Store, keys: KeyRing, make_image: Callable[..., Path], version: str, arch: str, fmt: str) -> None:
    req = PublishRequest(
        file=str(make_image(4096, seed=f"{version}{arch}{fmt}")), name="wn", arch=arch, version=version, format=fmt
    )
    publish(store, keys, req, EXPIRY)


def set_layouts(store: Store, keys: KeyRing, value: Any) -> None:
    """Re-sign wn's image role with ``layouts`` set to ``value`` (None: without it, as an older imagectl binned)."""

    def apply(state: CatalogueState) -> None:
        md = state.role("image-wn")
        assert md is not None
        ext = md.signed.unrecognized_fields[EXT]
        if value is None:
            ext.pop("layouts")
        else:
            ext["layouts"] = value
        state.changed.add("image-wn")
        state.commit(keys, EXPIRY)

    transact(store, apply)


def bins_read(keys: list[str]) -> set[str]:
    return {k.split(".", 1)[1].removesuffix(".json") for k in keys if "~b" in k}


def bins_of(state: CatalogueState, version: str, pairs: list[str]) -> set[str]:
    succinct = state.succinct(state.role("image-wn"))  # type: ignore[arg-type]
    assert succinct is not None
    return {bins.bin_role_for(succinct, target_path("wn", version, *pair.split("/"))) for pair in pairs}


def test_publishes_keep_the_record_and_re_sign_the_role_only_for_a_new_pair(
    catalogue: Catalogue, make_image: Callable[..., Path]
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)  # 8 x86_64 qcow2 versions: binned
    assert bins.layouts(role_of(catalogue.store)) == [X86]
    before = role_of(catalogue.store).signed.version
    add(catalogue.store, keys, make_image, "1.0", "ia64", "qcow2")  # a pair new to the name
    md = role_of(catalogue.store)
    assert md.signed.version == before + 1
    assert md.signed.unrecognized_fields[EXT]["layouts"] == [IA64, X86]  # sorted, as signed
    assert bins.layouts(md) == [X86, IA64]  # imagectl's order of arches
    add(catalogue.store, keys, make_image, "2.0", "ia64", "qcow2")  # a pair it has: one bin re-signed, not the role
    add(catalogue.store, keys, make_image, "2.0", "x86_64", "qcow2")
    assert role_of(catalogue.store).signed.version == before + 1
    assert_valid("image-role-extension", role_of(catalogue.store).signed.unrecognized_fields[EXT], "binned role")


def test_a_lookup_by_version_reads_the_bins_of_recorded_pairs_only(
    catalogue: Catalogue, make_image: Callable[..., Path]
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    add(catalogue.store, keys, make_image, "1.3", "ia64", "qcow2")
    reads = reads_of(catalogue.store)
    promote(catalogue.store, keys, "wn:1.3", "stable", EXPIRY)
    state = load_state(catalogue.store)
    assert bins_read(reads) == bins_of(state, "1.3", [X86, IA64])
    assert {r.arch for r in state.version_images("wn", "1.3")} == {"x86_64", "ia64"}
    assert CatalogueState.ext(state.role("image-wn"))["channels"]["stable"]["version"] == "1.3"  # type: ignore[arg-type]
    # deprecate reads as little, and marks both arches
    reads.clear()
    assert deprecate(catalogue.store, keys, "wn:1.3", "old", EXPIRY) == 2
    assert bins_read(reads) == bins_of(state, "1.3", [X86, IA64])


def test_a_name_binned_without_the_record_reads_every_arch_and_is_told_to_rebin(
    catalogue: Catalogue, make_image: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    add(catalogue.store, keys, make_image, "1.3", "ia64", "qcow2")
    set_layouts(catalogue.store, keys, None)  # what an imagectl from before the record left
    assert bins.layouts(role_of(catalogue.store)) is None
    state = load_state(catalogue.store)
    reads = reads_of(catalogue.store)
    assert {r.arch for r in state.version_images("wn", "1.3")} == {"x86_64", "ia64"}  # every path was tried
    assert len(bins_read(reads)) == len(state.bin_roles("wn"))  # 100 paths reach all 4 bins here
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    report = json.loads(r.out)
    assert r.code == 0 and report["ok"] and "wn" in report["needs_rebin"], r.out
    r = cli("catalogue", "rebin", catalogue.dir, "--keys", catalogue.keys)
    assert r.code == 0 and "wn: its arches and formats recorded" in r.out, (r.out, r.err)
    assert bins.layouts(role_of(catalogue.store)) == [X86, IA64]
    report = json.loads(cli("catalogue", "verify", catalogue.dir, "--json").out)
    assert report["ok"] and report["needs_rebin"] == [], report


@pytest.mark.parametrize("value", [{"x86_64": "qcow2"}, [1, 2], "x86_64/qcow2", [None]])
def test_a_record_that_is_not_a_list_of_strings_is_as_none(
    catalogue: Catalogue, make_image: Callable[..., Path], value: Any
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    add(catalogue.store, keys, make_image, "1.3", "ia64", "qcow2")
    set_layouts(catalogue.store, keys, value)
    assert bins.layouts(role_of(catalogue.store)) is None
    assert {r.arch for r in load_state(catalogue.store).version_images("wn", "1.3")} == {"x86_64", "ia64"}
    # a publish of a new pair leaves it as it is: turned into a list, it would claim pairs it never saw
    add(catalogue.store, keys, make_image, "3.0", "ia64", "raw")
    assert role_of(catalogue.store).signed.unrecognized_fields[EXT]["layouts"] == value
    assert [(r.arch, r.format) for r in load_state(catalogue.store).version_images("wn", "3.0")] == [("ia64", "raw")]


def test_pairs_a_later_imagectl_recorded_are_kept(catalogue: Catalogue, make_image: Callable[..., Path]) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    set_layouts(catalogue.store, keys, ["sparc64/qcow2", X86])  # an arch this imagectl does not know
    add(catalogue.store, keys, make_image, "1.3", "ia64", "qcow2")
    assert role_of(catalogue.store).signed.unrecognized_fields[EXT]["layouts"] == [IA64, "sparc64/qcow2", X86]
    assert bins.layouts(role_of(catalogue.store)) == [X86, IA64]


def test_a_record_missing_a_pair_is_a_problem_and_revoke_trusts_no_record(
    catalogue: Catalogue, make_image: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    add(catalogue.store, keys, make_image, "1.3", "ia64", "qcow2")
    add(catalogue.store, keys, make_image, "1.4", "ia64", "qcow2")
    set_layouts(catalogue.store, keys, [X86])  # an older imagectl published ia64 and did not record it
    assert [r.arch for r in load_state(catalogue.store).version_images("wn", "1.3")] == ["x86_64"]  # the record
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    report = json.loads(r.out)
    assert r.code != 0 and not report["ok"], r.out
    assert any("ia64/qcow2" in p and "layouts" in p for p in report["problems"]), report["problems"]
    # a revocation removes every arch of the version, recorded or not
    lifecycle.revoke(catalogue.store, keys, "wn:1.3", "bad mirror", EXPIRY)
    state = load_state(catalogue.store)
    assert state.version_images("wn", "1.3", every_layout=True) == []
    assert state.target("wn", target_path("wn", "1.3", "ia64", "qcow2")) is None
    # `catalogue rebin NAME` mends the record from what the bins hold (1.4 ia64 is still there)
    r = cli("catalogue", "rebin", catalogue.dir, "wn", "--keys", catalogue.keys)
    assert r.code == 0 and "wn: its arches and formats recorded" in r.out, (r.out, r.err)
    assert bins.layouts(role_of(catalogue.store)) == [X86, IA64]
    assert json.loads(cli("catalogue", "verify", catalogue.dir, "--json").out)["ok"]


@pytest.mark.s3
def test_promote_deprecate_and_revoke_on_s3_send_no_get_the_cache_answers(
    s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    """On a real S3 server, through the library: once the publisher cache holds what a command on one name reads,
    it sends no GET but the first round's (roots and timestamp); and the CLI's promote keeps that cache."""
    keys = seeded(s3_store, tmp_path / "keys", make_image)
    cache = MetadataCache(tmp_path / "pubcache")
    gets = s3_gets(s3_store)
    steps: list[Callable[[], object]] = [
        lambda: promote(s3_store, keys, "wn:1.2", "stable", EXPIRY, meta_cache=cache),
        lambda: promote(s3_store, keys, "wn:1.2", "testing", EXPIRY, meta_cache=cache),
        lambda: deprecate(s3_store, keys, "wn:1.2", "superseded", EXPIRY, meta_cache=cache),
        lambda: lifecycle.revoke(s3_store, keys, "wn:1.1", "bad", EXPIRY, meta_cache=cache),
        lambda: lifecycle.restore(s3_store, keys, "wn:1.1", EXPIRY, meta_cache=cache),
    ]
    steps[0]()  # fills the cache with what a command on wn:1.2 reads
    for step in steps[1:3]:
        gets.clear()
        step()
        assert set(gets) <= FIRST_ROUND, gets
    for step in steps[3:]:  # a revocation tries every arch and format: their bins, once, then cached
        step()
    state = load_state(s3_store)
    ext = CatalogueState.ext(state.role("image-wn"))  # type: ignore[arg-type]
    assert {c: p["version"] for c, p in ext["channels"].items()} == {"stable": "1.2", "testing": "1.2"}
    assert [r.deprecated is not None for r in state.version_images("wn", "1.2")] == [True]
    assert [r.version for r in state.version_images("wn", "1.1")] == ["1.1"]  # restored
    # the CLI passes its cache (IMAGECTL's cache directory: tmp_path/cache)
    r = cli("promote", "wn:1.3", "stable", "--catalogue", s3_store.url, "--keys", tmp_path / "keys")
    assert r.code == 0, r.err
    assert "image-wn" in entries(tmp_path / "cache")


@pytest.mark.http
def test_a_cold_pull_tries_the_recorded_formats_of_its_arch_first(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A binned name of raw images: a pull fetches the bin of the raw path (beside the bin python-tuf reads with the
    image role), where without the record it fetched the qcow2 path's bin first (FORMATS' order), then the raw
    one's."""
    cat, srv = http_catalogue
    init_keys = KeyRing(cat.keys)
    for i in range(8):
        add(cat.store, init_keys, make_image, f"1.{i}", "x86_64", "raw")
    state = load_state(cat.store)
    assert state.succinct(state.role("image-wn")) is not None  # type: ignore[arg-type]
    assert bins.layouts(role_of(cat.store)) == ["x86_64/raw"]
    succinct = state.succinct(state.role("image-wn"))  # type: ignore[arg-type]
    assert succinct is not None
    probe = bins.bin_role_for(succinct, "wn/-/-/-")  # the client loads the image role by looking this path up
    version = next(
        v for v in (f"1.{i}" for i in range(8)) if len(bins_of(state, v, [X86, "x86_64/raw"]) - {probe}) == 2
    )
    (raw_bin,), (qcow2_bin,) = bins_of(state, version, ["x86_64/raw"]), bins_of(state, version, [X86])
    runs = iter(range(10))

    def bins_fetched() -> set[str]:
        srv.served.requests.clear()
        fresh = tmp_path / f"client{next(runs)}"
        r = cli(
            "pull", f"wn:{version}", "--arch", "x86_64", "--catalogue", srv.url, "--root", cat.root,
            "--cache-dir", fresh, "-o", fresh / "image.raw",
        )  # fmt: skip
        assert r.code == 0, r.err
        return bins_read([p.rsplit("/", 1)[1] for _m, p, _r in srv.served.requests if "~b" in p])

    assert bins_fetched() == {probe, raw_bin}
    set_layouts(cat.store, init_keys, None)
    assert bins_fetched() == {probe, qcow2_bin, raw_bin}
