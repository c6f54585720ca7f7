"""Keeping a catalogue trustworthy over time: key rotation that old clients follow, re-signing, thresholds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata

from tests.conftest import Catalogue, CliResult, sha256
from tests.httpserver import TestHTTPServer

SIZE = 100 * 1024
ARCH = "x86_64"
Served = tuple[Catalogue, TestHTTPServer]


# -- helpers -------------------------------------------------------------------------------------------------
def publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, version: str, name: str = "wn") -> None:
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version)
    assert r.code == 0, r.err


def pull(cli: Callable[..., CliResult], url: str | Path, root: str | Path, dest: Path, ref: str) -> CliResult:
    return cli("pull", ref, "--catalogue", url, "--root", root, "--arch", ARCH, "-o", dest, "--json")


def verify_clean(cli: Callable[..., CliResult], cat: Catalogue) -> None:
    r = cli("catalogue", "verify", cat.dir)
    assert r.code == 0, r.out + r.err
    assert r.out.rstrip().endswith("OK"), r.out


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes())["signed"])


def versions(cat: Catalogue) -> dict[str, int]:
    """The current version of every role: root, timestamp, snapshot, targets and each image role."""
    md = cat.dir / "metadata"
    ts = load(md / "timestamp.json")
    snap_v = ts["meta"]["snapshot.json"]["version"]
    snap = load(md / f"{snap_v}.snapshot.json")
    out = {"root": load(md / "root.json")["version"], "timestamp": ts["version"], "snapshot": snap_v}
    for name, info in snap["meta"].items():
        out[name.removesuffix(".json")] = info["version"]
    return out


def listing(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` with its bytes (to show a refused command changed nothing)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def root_keyids(cat_dir: Path, role: str) -> list[str]:
    return list(load(cat_dir / "metadata" / "root.json")["roles"][role]["keyids"])


# -- rotation an old client follows --------------------------------------------------------------------------
@pytest.mark.http
@pytest.mark.parametrize("role", ["root", "timestamp", "snapshot", "targets"])
def test_old_client_follows_rotation(http_catalogue: Served, cli, make_image, tmp_path, role):
    cat, srv = http_catalogue
    first = make_image(SIZE, seed="1")
    publish(cli, cat, first, "1")
    r = pull(cli, srv.url, cat.root, tmp_path / "one.qcow2", "wn")
    assert r.code == 0, r.err  # the client now trusts root v1 and the metadata it signs
    old_ids = root_keyids(cat.dir, role)
    old_root = Metadata.from_bytes((cat.dir / "metadata" / "root.json").read_bytes())

    r = cli("trust", "rotate", cat.dir, "--keys", cat.keys, "--role", role, "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["root_version"] == 2 and res["retired"] == [f"{role}-1.key"]
    verify_clean(cli, cat)

    # The new root lists only new keys for the role, is signed by the old root's keys as well as its own,
    # and the old private key is retired, not deleted.
    new_ids = root_keyids(cat.dir, role)
    assert new_ids and not set(new_ids) & set(old_ids)
    new_root = Metadata.from_bytes((cat.dir / "metadata" / "2.root.json").read_bytes())
    old_root.verify_delegate("root", new_root)
    new_root.verify_delegate("root", new_root)
    assert (cat.keys / "retired" / f"{role}-1.key").is_file()
    assert not (cat.keys / f"{role}-1.key").exists()
    assert (cat.keys / f"{role}-2.key").is_file()

    # Still pinning 1.root.json, with its old cache: the old image before any new publish, then a new one.
    r = pull(cli, srv.url, cat.root, tmp_path / "one-again.qcow2", "wn:1")
    assert r.code == 0, r.err
    second = make_image(SIZE, seed="2")
    publish(cli, cat, second, "2")
    verify_clean(cli, cat)
    out = tmp_path / "two.qcow2"
    r = pull(cli, srv.url, cat.root, out, "wn")
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == "2"
    assert out.read_bytes() == second.read_bytes()
    assert "imagectl: warning" not in r.err
    # The client moved on to root v2: it is what it trusts now (kept in its metadata cache).
    [cached_root] = (tmp_path / "cache" / "tuf").glob("*/root.json")
    assert load(cached_root)["version"] == 2


@pytest.mark.http
def test_old_client_follows_two_rotations(http_catalogue: Served, cli, make_image, tmp_path):
    """Root v1 -> v2 -> v3 (root keys, then timestamp keys): a client pinned to v1 walks the whole chain."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), "1")
    assert pull(cli, srv.url, cat.root, tmp_path / "one.qcow2", "wn").code == 0
    for role in ("root", "timestamp"):
        assert cli("trust", "rotate", cat.dir, "--keys", cat.keys, "--role", role).code == 0
        verify_clean(cli, cat)
    img = make_image(SIZE, seed="2")
    publish(cli, cat, img, "2")
    r = pull(cli, srv.url, cat.root, tmp_path / "two.qcow2", "wn:2")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sha256"] == sha256(img)
    # A brand-new client pinning v1 gets there too.
    r = cli(
        "pull", "wn:2", "--catalogue", srv.url, "--root", cat.root, "--arch", ARCH, "-o", tmp_path / "three.qcow2",
        "--cache-dir", tmp_path / "other-cache",
    )  # fmt: skip
    assert r.code == 0, r.err


# -- resign --------------------------------------------------------------------------------------------------
def test_resign_all_bumps_every_version(catalogue: Catalogue, cli, make_image, tmp_path):
    publish(cli, catalogue, make_image(SIZE, seed="1"), "1")
    publish(cli, catalogue, make_image(SIZE, seed="b"), "1", name="other")
    assert pull(cli, catalogue.dir, catalogue.root, tmp_path / "a.qcow2", "wn").code == 0
    before = versions(catalogue)
    assert set(before) == {"root", "timestamp", "snapshot", "targets", "image-wn", "image-other"}

    r = cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys, "--all", "--json")
    assert r.code == 0, r.err
    assert sorted(json.loads(r.out)["resigned"]) == sorted(before)
    after = versions(catalogue)
    assert after == {role: v + 1 for role, v in before.items()}
    verify_clean(cli, catalogue)
    # The same client (pinned to root v1) follows the re-signed root and pulls.
    r = pull(cli, catalogue.dir, catalogue.root, tmp_path / "b.qcow2", "other")
    assert r.code == 0, r.err


def test_resign_default_does_nothing_on_fresh_catalogue(catalogue: Catalogue, cli):
    before = listing(catalogue.dir / "metadata")
    r = cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"resigned": []}
    assert listing(catalogue.dir / "metadata") == before
    r = cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys)
    assert r.code == 0 and "nothing about to expire" in r.out


def test_resign_within_days_resigns_timestamp(catalogue: Catalogue, cli):
    """The timestamp (valid 1 day) expires within 2 days; root (365), targets (90), snapshot (7) do not."""
    before = versions(catalogue)
    r = cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys, "--within", "2", "--json")
    assert r.code == 0, r.err
    resigned = json.loads(r.out)["resigned"]
    assert "timestamp" in resigned
    assert "root" not in resigned and "targets" not in resigned
    after = versions(catalogue)
    assert after["timestamp"] == before["timestamp"] + 1
    assert after["root"] == before["root"] and after["targets"] == before["targets"]
    assert not (catalogue.dir / "metadata" / "2.root.json").exists()
    assert not (catalogue.dir / "metadata" / "2.targets.json").exists()
    verify_clean(cli, catalogue)


# -- thresholds ----------------------------------------------------------------------------------------------
@pytest.fixture
def threshold_catalogue(tmp_path: Path, cli) -> Catalogue:
    from imagectl.store.local import LocalStore

    d, keys = tmp_path / "cat", tmp_path / "keys"
    r = cli("catalogue", "init", d, "--keys", keys, "--threshold", "root=2/3", "--json")
    assert r.code == 0, r.err
    assert sorted(k.split(":")[0] for k in json.loads(r.out)["generated_keys"]) == [
        "root",
        "root",
        "root",
        "snapshot",
        "targets",
        "timestamp",
    ]
    return Catalogue(d, keys, d / "metadata" / "1.root.json", LocalStore(d))


def test_init_threshold_root_2_of_3(threshold_catalogue: Catalogue, cli):
    cat = threshold_catalogue
    assert sorted(p.name for p in cat.keys.glob("root-*.key")) == ["root-1.key", "root-2.key", "root-3.key"]
    root = load(cat.dir / "metadata" / "root.json")
    assert root["roles"]["root"]["threshold"] == 2
    assert len(root["roles"]["root"]["keyids"]) == 3
    assert root["roles"]["timestamp"]["threshold"] == 1
    md = Metadata.from_bytes((cat.dir / "metadata" / "root.json").read_bytes())
    md.verify_delegate("root", md)  # at least 2 of the 3 root keys signed
    verify_clean(cli, cat)


@pytest.mark.parametrize("role", ["root", "targets"])
def test_rotate_refused_below_root_threshold(threshold_catalogue: Catalogue, cli, make_image, role):
    cat = threshold_catalogue
    publish(cli, cat, make_image(SIZE), "1")
    (cat.keys / "root-2.key").unlink()
    (cat.keys / "root-3.key").unlink()
    metadata_before = listing(cat.dir / "metadata")
    keys_before = listing(cat.keys)
    r = cli("trust", "rotate", cat.dir, "--keys", cat.keys, "--role", role)
    assert r.code == 7, r.err
    assert "Traceback" not in r.err
    [line] = [x for x in r.err.splitlines() if x.startswith("imagectl: error:")]
    assert "need 2 root keys" in line and "found 1" in line
    assert listing(cat.dir / "metadata") == metadata_before  # no new root, nothing re-signed
    assert listing(cat.keys) == keys_before  # no key generated, nothing retired
    assert not (cat.keys / "retired").exists()
    verify_clean(cli, cat)


def test_rotate_with_threshold_of_root_keys_present(threshold_catalogue: Catalogue, cli, make_image, tmp_path):
    """Two of three root keys are enough: the new root verifies against old root v1 and old clients follow."""
    cat = threshold_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), "1")
    assert pull(cli, cat.dir, cat.root, tmp_path / "one.qcow2", "wn").code == 0
    (cat.keys / "root-3.key").unlink()
    r = cli("trust", "rotate", cat.dir, "--keys", cat.keys, "--role", "root", "--threshold", "2/2", "--json")
    assert r.code == 0, r.err
    assert sorted(json.loads(r.out)["retired"]) == ["root-1.key", "root-2.key"]
    root = load(cat.dir / "metadata" / "2.root.json")
    assert root["roles"]["root"]["threshold"] == 2 and len(root["roles"]["root"]["keyids"]) == 2
    verify_clean(cli, cat)
    img = make_image(SIZE, seed="2")
    publish(cli, cat, img, "2")
    r = pull(cli, cat.dir, cat.root, tmp_path / "two.qcow2", "wn")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sha256"] == sha256(img)


# -- a refused command changes nothing (and does not wedge the catalogue) ------------------------------------
@pytest.mark.parametrize(
    ("role", "missing"),
    [("targets", "snapshot"), ("targets", "timestamp"), ("snapshot", "timestamp"), ("timestamp", "snapshot")],
)
def test_rotate_refused_when_an_online_key_is_missing(catalogue: Catalogue, cli, make_image, tmp_path, role, missing):
    """Rotating one online role re-signs the others; without their keys it is refused before any change."""
    publish(cli, catalogue, make_image(SIZE, seed="1"), "1")
    assert pull(cli, catalogue.dir, catalogue.root, tmp_path / "one.qcow2", "wn").code == 0
    aside = tmp_path / f"{missing}-1.key"
    (catalogue.keys / f"{missing}-1.key").rename(aside)
    metadata_before, keys_before = listing(catalogue.dir / "metadata"), listing(catalogue.keys)
    r = cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", role)
    assert r.code == 7, r.err
    assert f"need 1 {missing} key" in r.err and "Traceback" not in r.err
    assert listing(catalogue.dir / "metadata") == metadata_before
    assert listing(catalogue.keys) == keys_before
    verify_clean(cli, catalogue)
    assert pull(cli, catalogue.dir, catalogue.root, tmp_path / "again.qcow2", "wn").code == 0
    # With the key back, the same rotation and the next publish work.
    aside.rename(catalogue.keys / f"{missing}-1.key")
    assert cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", role).code == 0
    publish(cli, catalogue, make_image(SIZE, seed="2"), "2")
    verify_clean(cli, catalogue)


@pytest.mark.parametrize("missing", ["timestamp", "snapshot", "targets"])
def test_resign_refused_when_a_key_is_missing(catalogue: Catalogue, cli, make_image, tmp_path, missing):
    publish(cli, catalogue, make_image(SIZE, seed="1"), "1")
    aside = tmp_path / f"{missing}-1.key"
    (catalogue.keys / f"{missing}-1.key").rename(aside)
    before = listing(catalogue.dir / "metadata")
    r = cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys, "--all")
    assert r.code == 7, r.err
    assert f"need 1 {missing} key" in r.err
    assert listing(catalogue.dir / "metadata") == before  # not even a new root or an unreferenced role file
    aside.rename(catalogue.keys / f"{missing}-1.key")
    # Nothing half-written is in the way of the next writers.
    assert cli("catalogue", "resign", catalogue.dir, "--keys", catalogue.keys, "--all").code == 0
    publish(cli, catalogue, make_image(SIZE, seed="2"), "2")
    verify_clean(cli, catalogue)


def test_sha256_pin_of_an_intermediate_root(catalogue: Catalogue, cli, make_image, tmp_path):
    publish(cli, catalogue, make_image(SIZE), "1")
    assert cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", "root").code == 0
    pin = sha256(catalogue.dir / "metadata" / "2.root.json")
    assert cli("trust", "rotate", catalogue.dir, "--keys", catalogue.keys, "--role", "root").code == 0
    r = pull(cli, catalogue.dir, f"sha256:{pin}", tmp_path / "a.img", "wn")  # root 2 is neither root.json nor 1
    assert r.code == 0, r.err
    r = pull(cli, catalogue.dir, "sha256:" + "ab" * 32, tmp_path / "b.img", "wn")
    assert r.code == 12 and not (tmp_path / "b.img").exists()
