"""Hashed bins (issue 10 item 2): an image name past a threshold spreads its versions over succinct hash-bin roles.

The threshold is lowered to 4 targets (and the fill to 2 per bin) so a handful of publishes bins a name. Checked
through the CLI where a user would see it: publish/list/pull/promote/deprecate/revoke across bins, that a publish
into a binned name re-signs one bin, concurrent publishers into one binned name, a stock python-tuf client
downloading a target held in a bin, an old (bin-less) catalogue read, re-binned and read again, verify catching a
tampered bin, and the metadata bytes of a cold pull.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue import bins
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.state import load_state, transact
from tests.conftest import Catalogue, CliResult, sha256
from tests.httpserver import TestHTTPServer
from tests.test_concurrency import run_publishers
from tests.test_stock_tuf import Client, client, tufjs  # noqa: F401 - pytest fixtures, used by name

ARCH = "x86_64"
EXPIRY = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}


@pytest.fixture
def small_bins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 4)
    monkeypatch.setattr(bins, "BIN_FILL", 2)


def publish(
    cli: Callable[..., CliResult], cat: Catalogue, image: Path, name: str, version: str, *extra: str
) -> CliResult:
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version, *extra, "--json")
    assert r.code == 0, r.err
    return r


def listing(cli: Callable[..., CliResult], cat: Catalogue, name: str) -> list[dict[str, object]]:
    r = cli("catalogue", "list", name, "--catalogue", cat.dir, "--root", cat.root, "--json")
    assert r.code == 0, r.err
    out: list[dict[str, object]] = json.loads(r.out)
    return out


def metadata_files(cat: Catalogue) -> set[str]:
    return {p.name for p in (cat.dir / "metadata").iterdir()}


def bin_files(cat: Catalogue, name: str) -> list[str]:
    return sorted(f for f in metadata_files(cat) if f".image-{name}~b" in f)


def verify(cli: Callable[..., CliResult], cat: Catalogue) -> dict[str, object]:
    r = cli("catalogue", "verify", cat.dir, "--json")
    out: dict[str, object] = json.loads(r.out)
    assert r.code == (0 if out["ok"] else 22) or r.code != 0, r.err
    return out


@pytest.mark.usefixtures("small_bins")
def test_a_name_past_the_threshold_is_binned_and_everything_works_across_bins(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    images = {f"1.{i}": make_image(20_000, seed=f"v{i}") for i in range(8)}
    for version, image in images.items():
        publish(cli, catalogue, image, "wn", version)
    state = load_state(catalogue.store)
    succinct = state.succinct(state.role("image-wn"))  # type: ignore[arg-type]
    assert succinct is not None and succinct.bit_length == bins.bin_bits(5)  # binned by the 5th publish
    assert state.role("image-wn").signed.targets == {}  # type: ignore[union-attr]
    held = {r: len(state.role(r).signed.targets) for r in state.bin_roles("wn")}  # type: ignore[union-attr]
    assert sum(held.values()) == 8 and sum(1 for n in held.values() if n) >= 2  # spread over several bins

    assert [e["version"] for e in listing(cli, catalogue, "wn")] == list(images)
    for version in ("1.0", "1.5"):
        out = tmp_path / f"{version}.qcow2"
        r = cli("pull", f"wn:{version}", "--catalogue", catalogue.dir, "--root", catalogue.root, "-o", out, "--json")
        assert r.code == 0, r.err
        assert sha256(out) == sha256(images[version])

    assert cli("promote", "wn:1.3", "stable", *catalogue.args()).code == 0
    assert cli("deprecate", "wn:1.7", "--reason", "broken", *catalogue.args()).code == 0
    r = cli("revoke", "wn:1.6", "--reason", "leaked key", *catalogue.args())
    assert r.code == 0, r.err
    out = tmp_path / "stable.qcow2"
    r = cli("pull", "wn@stable", "--catalogue", catalogue.dir, "--root", catalogue.root, "-o", out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == "1.3"
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "-o", tmp_path / "n", "--json")
    assert json.loads(r.out)["version"] == "1.5"  # 1.7 deprecated, 1.6 revoked
    r = cli("pull", "wn:1.6", "--catalogue", catalogue.dir, "--root", catalogue.root, "-o", tmp_path / "r")
    assert r.code == 5 and "leaked key" in r.err
    listed = {e["version"]: e for e in listing(cli, catalogue, "wn")}
    assert "1.6" not in listed and listed["1.7"]["deprecated"] is not None and listed["1.3"]["channels"] == ["stable"]
    r = cli("catalogue", "show", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    assert r.code == 0 and set(json.loads(r.out)["revoked"]) == {"1.6"}
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_rebin"] == [], report
    assert cli("catalogue", "gc", catalogue.dir, "--grace", "0").code == 0
    assert verify(cli, catalogue)["ok"]
    assert cli("catalogue", "resign", catalogue.dir, "--all", "--keys", catalogue.keys).code == 0
    r = cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", "targets")
    assert r.code == 0, r.err
    assert verify(cli, catalogue)["ok"]
    assert [e["version"] for e in listing(cli, catalogue, "wn")] == [v for v in images if v != "1.6"]


@pytest.mark.usefixtures("small_bins")
def test_a_publish_into_a_binned_name_re_signs_one_bin(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    for i in range(6):
        publish(cli, catalogue, make_image(10_000, seed=f"v{i}"), "wn", f"1.{i}")
    before = metadata_files(catalogue)
    publish(cli, catalogue, make_image(10_000, seed="new"), "wn", "2.0")
    new = sorted(metadata_files(catalogue) - before - {"timestamp.json"})
    assert len(new) == 2 and new[1].endswith(".snapshot.json"), new
    assert "image-wn~b" in new[0]  # one bin; not image-wn.json, not targets.json
    publish(cli, catalogue, make_image(10_000, seed="ch"), "wn", "2.1", "--channel", "testing")
    newer = sorted(metadata_files(catalogue) - before - set(new) - {"timestamp.json"})
    assert len(newer) == 3 and any(f.endswith(".image-wn.json") for f in newer), newer  # a channel: + image-wn


def test_concurrent_publishers_into_the_bins_of_one_name(catalogue: Catalogue, cli: Callable[..., CliResult]) -> None:
    keys = KeyRing(catalogue.keys)

    def seed(state):  # type: ignore[no-untyped-def]
        state.role_for_update("wn", state.targets.signed.expires)
        state.rebin("wn", 3)
        state.commit(keys, EXPIRY)

    transact(catalogue.store, seed)
    versions = run_publishers(str(catalogue.dir), catalogue.keys, workers=4, each=3)
    assert len(set(versions)) == 12
    assert sorted(e["version"] for e in listing(cli, catalogue, "wn")) == sorted(versions)
    state = load_state(catalogue.store)
    assert sum(1 for r in state.bin_roles("wn") if state.role(r).signed.targets) >= 2  # type: ignore[union-attr]
    assert verify(cli, catalogue)["ok"]


@pytest.mark.http
@pytest.mark.network
@pytest.mark.usefixtures("small_bins")
def test_stock_clients_download_a_target_held_in_a_bin(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    images = [make_image(30_000, seed=f"s{i}") for i in range(6)]
    for i, image in enumerate(images):
        publish(cli, cat, image, "wn", f"3.{i}")
    assert bin_files(cat, "wn")
    got = client(srv.url, cat.root, f"wn/3.2/{ARCH}/wn-3.2-{ARCH}.qcow2", tmp_path / "c")
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(images[2])
    asked = [p for _m, p, _r in srv.served.requests if "/metadata/" in p]
    assert any("image-wn~b" in p for p in asked), asked  # the walk went through the bin


def test_an_old_catalogue_without_bins_is_read_then_rebinned(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = {f"1.{i}": make_image(10_000, seed=f"o{i}") for i in range(7)}
    for version, image in images.items():  # the default threshold: a plain role, as an older imagectl wrote
        publish(cli, catalogue, image, "wn", version)
    assert not bin_files(catalogue, "wn")
    cache = tmp_path / "deployer-cache"
    pull = ["--catalogue", catalogue.dir, "--root", catalogue.root, "--cache-dir", cache, "--json"]
    r = cli("pull", "wn:1.2", *pull, "-o", tmp_path / "a")
    assert r.code == 0, r.err
    monkeypatch.setattr(bins, "BIN_THRESHOLD", 4)
    monkeypatch.setattr(bins, "BIN_FILL", 2)
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_rebin"] == ["wn"]
    assert "catalogue rebin" in cli("catalogue", "verify", catalogue.dir).out
    r = cli("catalogue", "rebin", catalogue.dir, "--keys", catalogue.keys, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["rebinned"] == {"wn": 2 ** bins.bin_bits(7)}
    assert bin_files(catalogue, "wn")
    report = verify(cli, catalogue)
    assert report["ok"] and report["needs_rebin"] == [], report
    r = cli("pull", "wn:1.6", *pull, "-o", tmp_path / "b")  # the deployer's trusted state moves on: no rollback
    assert r.code == 0, r.err
    assert sha256(tmp_path / "b") == sha256(images["1.6"])
    assert [e["version"] for e in listing(cli, catalogue, "wn")] == list(images)
    r = cli("catalogue", "rebin", catalogue.dir, "wn", "--bits", "3", "--keys", catalogue.keys, "--json")
    assert json.loads(r.out)["rebinned"] == {"wn": 8}  # re-bin again: new bin names, old ones stay listed
    assert verify(cli, catalogue)["ok"]
    r = cli("pull", "wn:1.0", *pull, "-o", tmp_path / "c")
    assert r.code == 0, r.err


@pytest.mark.usefixtures("small_bins")
def test_verify_catches_a_tampered_bin(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    for i in range(6):
        publish(cli, catalogue, make_image(10_000, seed=f"t{i}"), "wn", f"1.{i}")
    state = load_state(catalogue.store)
    full = [r for r in state.bin_roles("wn") if state.role(r).signed.targets]  # type: ignore[union-attr]
    victim = catalogue.dir / "metadata" / f"{state.snapshot.signed.meta[f'{full[0]}.json'].version}.{full[0]}.json"
    doc = json.loads(victim.read_text())
    path = next(iter(doc["signed"]["targets"]))
    doc["signed"]["targets"][path]["length"] += 1
    os.chmod(victim, 0o644)
    victim.write_text(json.dumps(doc))
    report = verify(cli, catalogue)
    assert not report["ok"]
    assert any(full[0] in p and "bad signatures" in p for p in report["problems"]), report["problems"]  # type: ignore[attr-defined]


def _cold_pull_metadata_bytes(cat: Catalogue, srv: TestHTTPServer, cli: Callable[..., CliResult], tmp: Path) -> int:
    srv.served.requests.clear()
    r = cli("pull", "wn:1.3", "--catalogue", srv.url, "--root", cat.root, "--cache-dir", tmp, "-o", tmp / "o")
    assert r.code == 0, r.err
    total = 0
    for _m, p, _r in srv.served.requests:
        if "/metadata/" in p:
            f = cat.dir / "metadata" / p.rsplit("/", 1)[1]
            total += f.stat().st_size if f.is_file() else 0
    return total


@pytest.mark.http
@pytest.mark.usefixtures("small_bins")
def test_cold_pull_metadata_is_bounded_by_the_bin_not_the_name(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    keys = KeyRing(cat.keys)
    blob = make_image(1000, seed="one")
    publish(cli, cat, blob, "wn", "1.3")
    from imagectl.catalogue.model import ImageRecord, target_path

    def grow(state, name: str, n: int, start: int) -> None:  # type: ignore[no-untyped-def]
        one = state.images("wn")[0] if state.role("image-wn") is not None else None
        for i in range(start, start + n):
            v = f"9.{i}"
            rec = ImageRecord(
                name,
                v,
                ARCH,
                "qcow2",
                "hvm",
                None,
                None,
                one.size,
                one.sha256,
                one.created,
                target_path(name, v, ARCH, "qcow2"),
            )
            state.add_image(rec, state.targets.signed.expires)

    def seed(n: int, start: int) -> None:
        def apply(state) -> None:  # type: ignore[no-untyped-def]
            grow(state, "wn", n, start)
            state.commit(keys, EXPIRY)

        transact(cat.store, apply)

    seed(40, 0)  # wn: 41 versions, binned (bin_bits(41) -> 5 bits: 32 bins)
    small = _cold_pull_metadata_bytes(cat, srv, cli, tmp_path / "c1")
    seed(400, 100)  # 441 versions: 10x more, bins re-signed as they fill (same 32 bins)
    big = _cold_pull_metadata_bytes(cat, srv, cli, tmp_path / "c2")
    state = load_state(cat.store)
    bin_bytes = max(
        (cat.dir / "metadata" / f"{state.snapshot.signed.meta[f'{r}.json'].version}.{r}.json").stat().st_size
        for r in state.bin_roles("wn")
    )
    # what grew is one bin's share (441/32 targets) and the snapshot's unchanged bin list: never the whole name
    assert big - small < 2 * bin_bytes, (small, big, bin_bytes)
    whole = sum(p.stat().st_size for p in (cat.dir / "metadata").glob("*.json"))
    assert big < whole / 10, (big, whole)
