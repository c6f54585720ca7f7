"""Mutants of imagectl/catalogue/publish.py and imagectl/pull.py that the rest of the suite let survive
(tests/MUTANTS.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl import pull
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.catalogue.state import load_state
from imagectl.errors import ProtectedChannelError
from tests.conftest import EXPIRY, Catalogue, CliResult, sha256
from tests.test_bins import small_bins as small_bins  # a fixture: bins past 4 targets

ARCH = "x86_64"


def _boot_test(image: Path) -> dict[str, Any]:
    return {
        "passed": True,
        "marker": "login:",
        "accel": "tcg",
        "seconds": 85,
        "host": "builder01",
        "at": "2026-11-25T15:02:03Z",
        "image_sha256": sha256(image),
    }


def _custom(catalogue: Catalogue, name: str, version: str, arch: str = ARCH) -> dict[str, Any]:
    [rec] = [r for r in load_state(catalogue.store).version_images(name, version) if r.arch == arch]
    return {"boot_test": rec.boot_test, "parent_image": rec.parent_image, "sha256": rec.sha256}


def _blobs(catalogue: Catalogue) -> set[str]:
    d = catalogue.dir / "blobs" / "sha256"
    return {p.name for p in d.rglob("*") if p.is_file()} if d.exists() else set()


def _drop_reason(cat: Catalogue, role: str) -> None:
    """Remove the 'reason' of every revoked entry in the latest ``role`` file and sign it again with the role's key
    (what another writer holding that key could publish)."""
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    def latest(r: str) -> Path:
        return max((cat.dir / "metadata").glob(f"*.{r}.json"), key=lambda p: int(p.name.split(".")[0]))

    path = latest(role)
    data = json.loads(path.read_bytes())
    revoked = data["signed"]["x-imagectl"]["revoked"]
    assert revoked and all("reason" in entry for entry in revoked.values())
    for entry in revoked.values():
        del entry["reason"]
    md = Metadata.from_dict(data)
    delegations = Metadata.from_bytes(latest("targets").read_bytes()).signed.delegations
    assert delegations is not None and delegations.roles is not None
    ring = KeyRing(cat.keys)
    md.signatures.clear()
    for keyid in delegations.roles[role].keyids:
        md.sign(ring.signers[keyid], append=True)
    path.write_bytes(md.to_bytes(JSONSerializer(compact=True)))


def test_a_revoked_version_without_a_signed_reason_says_no_reason_given(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    for v in ("1", "2"):
        r = cli("publish", make_image(seed=v), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", v)
        assert r.code == 0, r.err
    assert cli("revoke", "wn:2", "--reason", "PLACEHOLDER", *catalogue.args()).code == 0
    _drop_reason(catalogue, "image-wn")
    assert cli("catalogue", "verify", catalogue.dir).code == 0  # genuinely signed
    r = cli("promote", "wn:2", "stable", *catalogue.args())
    assert r.code != 0
    assert "wn:2 was revoked (no reason given); versions are never reused" in r.err, r.err
    r = cli("publish", make_image(seed="3"), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "2")
    assert r.code != 0
    assert "wn:2 was revoked (no reason given); versions are never reused" in r.err, r.err


@pytest.mark.usefixtures("small_bins")
def test_republishing_the_same_bytes_into_a_binned_name_is_a_no_op(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    images = {}
    for v in ("1", "2", "3", "4", "5", "6"):
        images[v] = make_image(size=4096, seed=v)
        r = cli("publish", images[v], *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", v)
        assert r.code == 0, r.err
    state = load_state(catalogue.store)
    assert state.succinct(state.role("image-wn")) is not None  # type: ignore[arg-type]
    before = sorted(p.name for p in (catalogue.dir / "metadata").iterdir())
    r = cli("publish", images["3"], *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "3", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert (out["created"], out["version"]) == (False, "3")
    assert sorted(p.name for p in (catalogue.dir / "metadata").iterdir()) == before


def _protect(catalogue: Catalogue, cli: Callable[..., CliResult]) -> None:
    r = cli("catalogue", "protect", catalogue.dir, "stable", "--keys", catalogue.keys)
    assert r.code == 0, r.err


def test_a_tested_publish_into_a_protected_channel_is_accepted_and_signed(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    _protect(catalogue, cli)
    image = make_image(seed="t")
    bt = _boot_test(image)
    req = PublishRequest(file=str(image), name="wn", arch=ARCH, version="1", channel="stable", boot_test=bt)
    res = publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert (res.created, res.record.boot_test) == (True, bt)
    assert _custom(catalogue, "wn", "1") == {"boot_test": bt, "parent_image": None, "sha256": sha256(image)}
    md = load_state(catalogue.store).role("image-wn")
    assert md is not None
    assert md.signed.unrecognized_fields["x-imagectl"]["channels"]["stable"]["version"] == "1"


def test_a_new_image_with_a_boot_test_carries_it_signed(catalogue: Catalogue, make_image: Callable[..., Path]) -> None:
    image = make_image(seed="n")
    bt = _boot_test(image)
    req = PublishRequest(file=str(image), name="wn", arch=ARCH, version="1", boot_test=bt)
    res = publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert res.created is True
    assert _custom(catalogue, "wn", "1")["boot_test"] == bt


def test_an_untested_other_arch_refuses_a_protected_publish_before_any_upload(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    other = make_image(seed="i386")
    r = cli("publish", other, *catalogue.args(), "--name", "wn", "--arch", "i386", "--version", "1")
    assert r.code == 0, r.err
    _protect(catalogue, cli)
    before = _blobs(catalogue)
    assert sha256(other) in before
    image = make_image(seed="x86")
    req = PublishRequest(
        file=str(image), name="wn", arch=ARCH, version="1", channel="stable", boot_test=_boot_test(image)
    )
    with pytest.raises(ProtectedChannelError) as e:
        publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert "no passing boot test for i386" in str(e.value)
    assert _blobs(catalogue) == before
    assert sha256(image) not in _blobs(catalogue)


def test_publish_with_a_parent_signs_the_parent_image(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    base = make_image(seed="base")
    r = cli("publish", base, *catalogue.args(), "--name", "base", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    child = make_image(seed="child")
    r = cli("publish", child, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--parent", "base:1")
    assert r.code == 0, r.err
    assert _custom(catalogue, "wn", "1")["parent_image"] == {"name": "base", "version": "1", "sha256": sha256(base)}


def test_republishing_the_same_bytes_with_a_boot_test_adds_it(
    catalogue: Catalogue, make_image: Callable[..., Path]
) -> None:
    image = make_image(seed="r")
    keys = KeyRing(catalogue.keys)
    first = publish(catalogue.store, keys, PublishRequest(file=str(image), name="wn", arch=ARCH, version="1"), EXPIRY)
    assert first.created is True and first.record.boot_test is None
    bt = _boot_test(image)
    req = PublishRequest(file=str(image), name="wn", arch=ARCH, version="1", boot_test=bt)
    res = publish(catalogue.store, keys, req, EXPIRY)
    assert (res.created, res.boot_test_added, res.record.boot_test) == (False, True, bt)
    assert res.record.created == first.record.created
    assert _custom(catalogue, "wn", "1") == {"boot_test": bt, "parent_image": None, "sha256": sha256(image)}


def test_start_writeback_advises_the_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *a: calls.append(a), raising=False)
    monkeypatch.setattr(os, "POSIX_FADV_DONTNEED", 4, raising=False)
    with (tmp_path / "x.part").open("wb") as f:
        f.write(b"x" * 3000)
        assert pull._start_writeback(f, 1000, 3000) == 3000
        assert calls == [(f.fileno(), 1000, 2000, 4)]
