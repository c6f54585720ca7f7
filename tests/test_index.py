"""The name index (issue 10 item 2): past a number of names, targets delegates index roles, not every image role.

Thresholds are lowered (3 names under targets, 2 per index role) so a handful of publishes indexes a catalogue.
Checked where a user would see it: publish/list/pull/promote/gc/resign/rotate across index roles, which files a
publish re-signs, an old (unindexed) catalogue read, indexed and read again by a deployer whose cache trusted the
old layout, a re-index to more roles, stock python-tuf and tuf-js clients walking targets -> index role -> image
role, verify catching a name routed to the wrong index role, and the metadata a cold pull reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue import index
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import target_path
from imagectl.catalogue.state import CatalogueState, load_state, transact
from tests.conftest import Catalogue, CliResult, sha256
from tests.httpserver import TestHTTPServer
from tests.test_bins import EXPIRY, listing, metadata_files, publish, verify
from tests.test_stock_tuf import Client, client, tufjs  # noqa: F401 - pytest fixtures, used by name

ARCH = "x86_64"


@pytest.fixture
def small_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "INDEX_THRESHOLD", 3)
    monkeypatch.setattr(index, "INDEX_FILL", 2)
    monkeypatch.setattr(index, "INDEX_CROWDED", 4)


def top_delegations(cat: Catalogue) -> list[str]:
    d = load_state(cat.store).targets.signed.delegations
    return sorted(d.roles or {}) if d is not None else []


def pull(cli: Callable[..., CliResult], cat: Catalogue, ref: str, out: Path, *extra: str) -> dict[str, object]:
    r = cli("pull", ref, "--catalogue", cat.dir, "--root", cat.root, "-o", out, "--json", *extra)
    assert r.code == 0, r.err
    result: dict[str, object] = json.loads(r.out)
    return result


@pytest.mark.usefixtures("small_index")
def test_names_past_the_threshold_are_indexed_and_everything_works_across_index_roles(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    images = {f"n{i}": make_image(10_000, seed=f"n{i}") for i in range(5)}
    for name, image in list(images.items())[:3]:
        publish(cli, catalogue, image, name, "1.0")
    assert top_delegations(catalogue) == ["image-n0", "image-n1", "image-n2"]  # not past the threshold yet
    for name, image in list(images.items())[3:]:
        publish(cli, catalogue, image, name, "1.0")
    bits = index.index_bits(4)  # indexed by the 4th name
    roles = top_delegations(catalogue)
    assert roles == sorted(f"names~b{bits}-{n:x}" for n in range(2**bits)), roles
    state = load_state(catalogue.store)
    assert state.names() == sorted(images)
    assert {state.name_index()[n] for n in images} <= set(roles)
    for name in images:  # each image role is delegated by the index role its name hashes to, and only there
        holder = state.role(index.index_role(name, bits))
        assert holder is not None and holder.signed.delegations is not None
        assert f"image-{name}" in (holder.signed.delegations.roles or {})

    r = cli("catalogue", "list", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    assert r.code == 0, r.err
    assert sorted({e["name"] for e in json.loads(r.out)}) == sorted(images)
    for name, image in images.items():
        pull(cli, catalogue, f"{name}:1.0", tmp_path / f"{name}.out")
        assert sha256(tmp_path / f"{name}.out") == sha256(image)
    assert cli("promote", "n3:1.0", "stable", *catalogue.args()).code == 0
    assert pull(cli, catalogue, "n3@stable", tmp_path / "s")["version"] == "1.0"
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_reindex"] is False, report
    assert cli("catalogue", "gc", catalogue.dir, "--grace", "0").code == 0
    assert cli("catalogue", "resign", catalogue.dir, "--all", "--keys", catalogue.keys).code == 0
    r = cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", "targets")
    assert r.code == 0, r.err
    assert verify(cli, catalogue)["ok"]
    assert [e["version"] for e in listing(cli, catalogue, "n1")] == ["1.0"]
    pull(cli, catalogue, "n4:1.0", tmp_path / "after-rotation")


@pytest.mark.usefixtures("small_index")
def test_a_publish_re_signs_the_image_role_and_a_new_name_one_index_role(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    for i in range(4):
        publish(cli, catalogue, make_image(5_000, seed=f"p{i}"), f"p{i}", "1.0")
    before = metadata_files(catalogue)
    publish(cli, catalogue, make_image(5_000, seed="again"), "p1", "2.0")
    new = sorted(metadata_files(catalogue) - before - {"timestamp.json"})
    assert len(new) == 2 and new[0].endswith(".image-p1.json") and new[1].endswith(".snapshot.json"), new
    before = metadata_files(catalogue)
    publish(cli, catalogue, make_image(5_000, seed="fresh"), "fresh", "1.0")
    new = sorted(metadata_files(catalogue) - before - {"timestamp.json"})
    holder = index.index_role("fresh", index.bits_of(top_delegations(catalogue)[0]))
    kinds = sorted(f.split(".", 1)[1] for f in new)
    assert kinds == sorted(["image-fresh.json", f"{holder}.json", "snapshot.json", "targets.json"]), new


def test_an_old_catalogue_is_read_then_indexed_and_re_indexed(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = {f"o{i}": make_image(5_000, seed=f"o{i}") for i in range(6)}
    for name, image in images.items():  # the default threshold: every image role under targets, as before
        publish(cli, catalogue, image, name, "1.0")
    assert all(r.startswith("image-") for r in top_delegations(catalogue))
    cache = ["--cache-dir", str(tmp_path / "deployer-cache")]
    pull(cli, catalogue, "o2:1.0", tmp_path / "a", *cache)
    image_role_files = {f for f in metadata_files(catalogue) if ".image-" in f}

    monkeypatch.setattr(index, "INDEX_THRESHOLD", 3)
    monkeypatch.setattr(index, "INDEX_FILL", 3)
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_reindex"] is True
    assert "catalogue rebin" in cli("catalogue", "verify", catalogue.dir).out
    r = cli("catalogue", "rebin", catalogue.dir, "--keys", catalogue.keys, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["index_roles"] == 2 ** index.index_bits(6)
    assert all(index.is_index(r) for r in top_delegations(catalogue))
    assert {f for f in metadata_files(catalogue) if ".image-" in f} == image_role_files  # none re-signed
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_reindex"] is False, report
    got = pull(cli, catalogue, "o5:1.0", tmp_path / "b", *cache)  # the deployer's trusted state moves on
    assert got["version"] == "1.0" and sha256(tmp_path / "b") == sha256(images["o5"])

    monkeypatch.setattr(index, "INDEX_CROWDED", 1)  # every index role now holds too many: re-index wider
    monkeypatch.setattr(index, "INDEX_FILL", 1)
    old_roles = top_delegations(catalogue)
    assert verify(cli, catalogue)["needs_reindex"] is True
    r = cli("catalogue", "rebin", catalogue.dir, "--keys", catalogue.keys, "--json")
    assert json.loads(r.out)["index_roles"] == 2 ** index.index_bits(6)
    state = load_state(catalogue.store)
    assert set(state.index_roles()).isdisjoint(old_roles)
    assert all(f"{r}.json" in state.snapshot.signed.meta for r in old_roles)  # listed for good
    assert verify(cli, catalogue)["ok"]
    for name, image in images.items():
        pull(cli, catalogue, f"{name}:1.0", tmp_path / f"c-{name}", *cache)
        assert sha256(tmp_path / f"c-{name}") == sha256(image)


@pytest.mark.http
@pytest.mark.network
@pytest.mark.usefixtures("small_index")
def test_stock_clients_walk_the_index(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    images = {f"s{i}": make_image(20_000, seed=f"s{i}") for i in range(5)}
    for name, image in images.items():
        publish(cli, cat, image, name, "3.1")
    assert all(index.is_index(r) for r in top_delegations(cat))
    srv.served.requests.clear()
    got = client(srv.url, cat.root, f"s3/3.1/{ARCH}/s3-3.1-{ARCH}.qcow2", tmp_path / "c")
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(images["s3"])
    asked = [p.rsplit("/", 1)[1] for _m, p, _r in srv.served.requests if "/metadata/" in p]
    holder = load_state(cat.store).name_index()["s3"]
    assert [p for p in asked if "names~b" in p] == [p for p in asked if p.endswith(f".{holder}.json")], asked
    assert any(p.endswith(f".{holder}.json") for p in asked) and any(p.endswith(".image-s3.json") for p in asked)
    missing = client(srv.url, cat.root, f"nope/3.1/{ARCH}/nope-3.1-{ARCH}.qcow2", tmp_path / "d")
    assert not missing["ok"], missing


@pytest.mark.usefixtures("small_index")
def test_verify_catches_a_name_routed_to_the_wrong_index_role(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    for i in range(5):
        publish(cli, catalogue, make_image(5_000, seed=f"w{i}"), f"w{i}", "1.0")
    keys = KeyRing(catalogue.keys)
    state = load_state(catalogue.store)
    victim = "w2"
    right = state.name_index()[victim]
    wrong = next(r for r in state.index_roles() if r != right)

    def misroute(s: CatalogueState) -> None:  # validly signed, wrongly routed: targets sends w2 elsewhere
        d = s.targets.signed.delegations
        assert d is not None and d.roles is not None
        d.roles[right].paths.remove(index.name_pattern(victim))  # type: ignore[union-attr]
        d.roles[wrong].paths.append(index.name_pattern(victim))  # type: ignore[union-attr]
        s.commit(keys, EXPIRY, resign=frozenset({"targets"}))

    transact(catalogue.store, misroute)
    report = verify(cli, catalogue)
    problems = "\n".join(report["problems"])  # type: ignore[arg-type]
    assert not report["ok"]
    assert f"delegates {victim}, which targets does not route to {right}" in problems, problems
    assert f"routes {victim}/*/*/* to {wrong}, which does not delegate it" in problems, problems


@pytest.mark.http
@pytest.mark.usefixtures("small_index")
def test_a_cold_pull_reads_targets_one_index_role_and_the_image_role(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    for i in range(8):
        publish(cli, cat, make_image(5_000, seed=f"c{i}"), f"c{i}", "1.0")
    state = load_state(cat.store)
    assert len(state.index_roles()) >= 2
    srv.served.requests.clear()
    r = cli("pull", "c6:1.0", "--catalogue", srv.url, "--root", cat.root, "--cache-dir", tmp_path, "-o", tmp_path / "o")
    assert r.code == 0, r.err
    asked = [p.rsplit("/", 1)[1] for _m, p, _r in srv.served.requests if "/metadata/" in p]
    roles = sorted(re.sub(r"^[0-9]+\.", "", f) for f in asked)
    assert [x for x in roles if "root" not in x] == sorted(
        ["timestamp.json", "snapshot.json", "targets.json", f"{state.name_index()['c6']}.json", "image-c6.json"]
    ), roles


def test_verify_lists_target_files_per_name_and_counts_missing_ones_beyond_twenty(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """At scale verify lists ``targets/NAME/`` once per name (not a HEAD per image) and reports the first 20
    missing target files one by one, the rest as a count: 100,000 seeded images made 100,000 problem lines."""
    for i in range(3):
        publish(cli, catalogue, make_image(2_000, seed=f"m{i}"), "many", f"1.{i}")
    assert verify(cli, catalogue)["ok"]
    one = load_state(catalogue.store).images("many")[0]
    keys = KeyRing(catalogue.keys)

    def seed(state: CatalogueState) -> None:  # 24 more versions on the same blob, without their target files
        for i in range(24):
            rec = dataclasses.replace(one, version=f"2.{i}", path=target_path("many", f"2.{i}", ARCH, "qcow2"))
            state.add_image(rec, state.targets.signed.expires)
        state.commit(keys, EXPIRY)

    transact(catalogue.store, seed)
    report = verify(cli, catalogue)
    problems: list[str] = report["problems"]  # type: ignore[assignment]
    assert report["needs_upgrade"] == 24 and len(problems) == 21, problems
    assert all("target file targets/many/2." in p for p in problems[:20])
    assert problems[20] == "4 more images lack their target file (stock TUF clients cannot download them)"
    r = cli("catalogue", "upgrade", catalogue.dir, "--json")
    assert r.code == 0, r.err
    assert verify(cli, catalogue)["ok"]
