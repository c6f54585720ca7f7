"""Lifecycle (issue 11 item 4): channel history and rollback, scheduled revocation, restore, ancestry (--parent,
`catalogue list --outdated`, `revoke --cascade`), through the CLI on a real catalogue directory."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl.catalogue import model
from imagectl.catalogue.lifecycle import HISTORY_MAX, _earlier
from imagectl.catalogue.state import load_state
from tests.conftest import Catalogue, CliResult, sha256
from tests.test_build_fake import DEMO, fake_dib  # noqa: F401 - fake_dib is a fixture, used by name
from tests.test_schema import assert_valid

ARCH = "x86_64"
Cli = Callable[..., CliResult]


def run(cli: Cli, *args: object, code: int = 0) -> Any:
    r = cli(*args, "--json")
    assert r.code == code, r.err
    return json.loads(r.out) if code == 0 else r.err


def publish(cli: Cli, cat: Catalogue, image: Path, name: str, version: str, *extra: str) -> Any:
    return run(cli, "publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version, *extra)


def pull(cli: Cli, cat: Catalogue, ref: str, out: Path, code: int = 0) -> Any:
    return run(cli, "pull", ref, "--catalogue", cat.dir, "--root", cat.root, "-o", out, code=code)


def show(cli: Cli, cat: Catalogue, name: str) -> Any:
    return run(cli, "catalogue", "show", name, "--catalogue", cat.dir, "--root", cat.root, "--history")


def test_history_and_rollback(catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path) -> None:
    for v in ("1.0", "1.1", "1.2"):
        publish(cli, catalogue, make_image(4_000, seed=v), "wn", v)
        run(cli, "promote", f"wn:{v}", "stable", *catalogue.args())
    moves = show(cli, catalogue, "wn")["history"]["stable"]
    assert [(m["version"], m["action"]) for m in moves] == [("1.0", "promote"), ("1.1", "promote"), ("1.2", "promote")]
    out = run(cli, "promote", "wn", "--rollback", "stable", *catalogue.args())
    assert (out["previous"], out["version"]) == ("1.2", "1.1")
    assert pull(cli, catalogue, "wn@stable", tmp_path / "a")["version"] == "1.1"
    out = run(cli, "promote", "wn", "--rollback", "stable", *catalogue.args())  # back again, never forward
    assert (out["previous"], out["version"]) == ("1.1", "1.0")
    err = run(cli, "promote", "wn", "--rollback", "stable", *catalogue.args(), code=4)
    assert "wn@stable has no earlier version to roll back to (it points at 1.0)" in err
    r = cli("catalogue", "show", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--history")
    assert "history stable: " in r.out and "rollback -> 1.0" in r.out
    ext = load_state(catalogue.store).role("image-wn").signed.unrecognized_fields["x-imagectl"]  # type: ignore[union-attr]
    assert_valid("image-role-extension", ext)
    r = cli("promote", "wn:1.2", *catalogue.args())
    assert r.code == 3 and "promote needs NAME:VERSION CHANNEL, or NAME --rollback CHANNEL" in r.err


def test_rollback_skips_a_revoked_version_and_history_stays_bounded() -> None:
    moves = [{"version": v, "action": "promote"} for v in ("1", "2", "3")]
    assert _earlier(moves, "3") == ["1", "2"]
    assert _earlier([*moves, {"version": None, "action": "revoke"}], "") == ["1", "2"]
    assert _earlier([*moves, {"version": "2", "action": "rollback"}], "2") == ["1"]
    assert HISTORY_MAX >= 10


def test_revocation_scheduled_for_later(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(cli, catalogue, make_image(4_000, seed="a"), "wn", "1.0")
    publish(cli, catalogue, make_image(4_000, seed="b"), "wn", "2.0")
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = run(cli, "revoke", "wn:2.0", "--reason", "end of support", "--at", at, *catalogue.args())
    assert out == {"ref": "wn:2.0", "at": at, "scheduled": True}
    assert pull(cli, catalogue, "wn:2.0", tmp_path / "before")["version"] == "2.0"  # not yet
    assert pull(cli, catalogue, "wn", tmp_path / "newest")["version"] == "2.0"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    monkeypatch.setattr(model, "utcnow", lambda: later)  # the deployer's clock, three days on
    err = pull(cli, catalogue, "wn:2.0", tmp_path / "after", code=5)
    assert f"wn:2.0 was revoked on {at}: end of support" in err
    assert pull(cli, catalogue, "wn", tmp_path / "newest-after")["version"] == "1.0"  # newest skips it now
    monkeypatch.undo()
    r = cli("revoke", "wn:1.0", "--reason", "x", "--at", "2001-01-01", *catalogue.args())
    assert r.code == 3 and "is not in the future" in r.err
    r = cli("revoke", "wn:1.0", "--reason", "x", "--at", "next week", *catalogue.args())
    assert r.code == 3 and "is not a date or time" in r.err


def test_restore_a_revoked_version(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    images = {v: make_image(4_000, seed=v) for v in ("1.0", "1.1")}
    for v, image in images.items():
        publish(cli, catalogue, image, "wn", v)
    run(cli, "promote", "wn:1.1", "stable", *catalogue.args())
    out = run(cli, "revoke", "wn:1.1", "--reason", "bad kernel", *catalogue.args())
    assert out["revoked"] == ["wn:1.1"] and out["dropped_channels"] == ["wn@stable"]
    assert show(cli, catalogue, "wn")["history"]["stable"][-1] == {
        "version": None,
        "at": show(cli, catalogue, "wn")["history"]["stable"][-1]["at"],
        "action": "revoke",
    }
    pull(cli, catalogue, "wn:1.1", tmp_path / "x", code=5)
    md = load_state(catalogue.store).role("image-wn")
    assert md is not None and set(md.signed.unrecognized_fields["x-imagectl"]["revoked"]["1.1"]["targets"]) == {
        model.target_path("wn", "1.1", ARCH, "qcow2")
    }
    assert_valid("image-role-extension", md.signed.unrecognized_fields["x-imagectl"])
    out = run(cli, "restore", "wn:1.1", *catalogue.args())
    assert [i["version"] for i in out["images"]] == ["1.1"]
    pull(cli, catalogue, "wn:1.1", tmp_path / "back")
    assert sha256(tmp_path / "back") == sha256(images["1.1"])
    assert run(cli, "catalogue", "verify", catalogue.dir)["ok"]
    err = run(cli, "restore", "wn:1.1", *catalogue.args(), code=4)
    assert "wn:1.1 is not revoked" in err
    run(cli, "revoke", "wn:1.1", "--reason", "bad kernel again", *catalogue.args())  # and once collected, no more
    run(cli, "catalogue", "gc", catalogue.dir, "--grace", "0")
    err = run(cli, "restore", "wn:1.1", *catalogue.args(), code=6)
    assert "cannot be restored: blobs/sha256/" in err and "garbage-collected" in err


def test_ancestry_outdated_and_cascade(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    base = make_image(4_000, seed="base1")
    publish(cli, catalogue, base, "base", "1.0")
    run(cli, "promote", "base:1.0", "stable", *catalogue.args())
    publish(cli, catalogue, make_image(4_000, seed="wn1"), "wn", "1.0", "--parent", "base@stable")
    publish(cli, catalogue, make_image(4_000, seed="lsf1"), "lsf", "1.0", "--parent", "wn:1.0")
    publish(cli, catalogue, make_image(4_000, seed="other"), "other", "1.0")
    listed = run(cli, "catalogue", "list", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root)
    assert listed and all(e["version"] == "1.0" for e in listed)
    state = load_state(catalogue.store)
    parent = state.images("wn")[0].parent_image
    assert parent == {"name": "base", "channel": "stable", "version": "1.0", "sha256": sha256(base)}
    assert_valid("image-custom", state.images("wn")[0].custom())
    outdated = ["catalogue", "list", "--outdated", "--catalogue", catalogue.dir, "--root", catalogue.root]
    assert run(cli, *outdated) == []
    publish(cli, catalogue, make_image(4_000, seed="base2"), "base", "2.0", "--channel", "stable")
    found = run(cli, *outdated)
    assert [(e["name"], e["version"], e["parent_now"]) for e in found] == [("wn", "1.0", "2.0")]
    text = cli("catalogue", "list", "--outdated", "--catalogue", catalogue.dir, "--root", catalogue.root).out
    assert "wn:1.0 x86_64: built from base@stable = 1.0, which now points at 2.0" in text

    out = run(cli, "revoke", "base:1.0", "--reason", "CVE-2026-0001", "--cascade", *catalogue.args())
    assert out["revoked"] == ["base:1.0", "wn:1.0", "lsf:1.0"]
    for ref in ("wn:1.0", "lsf:1.0"):
        assert "CVE-2026-0001" in pull(cli, catalogue, ref, tmp_path / ref.replace(":", "-"), code=5)
    pull(cli, catalogue, "other:1.0", tmp_path / "other")
    assert pull(cli, catalogue, "base@stable", tmp_path / "b")["version"] == "2.0"
    err = run(cli, "publish", make_image(10, seed="x"), *catalogue.args(), "--name", "z", "--arch", ARCH,
              "--version", "1", "--parent", "nothing@stable", code=4)  # fmt: skip
    assert "parent nothing@stable: no image named 'nothing'" in err


def test_a_recipe_parent_is_signed_by_publish_from_build(
    catalogue: Catalogue,
    cli: Cli,
    make_image: Callable[..., Path],
    tmp_path: Path,
    fake_dib: Path,  # noqa: F811
) -> None:
    """`parent: NAME@CHANNEL` in a recipe travels in the build record; publish --from-build resolves it in the
    destination catalogue (a stand-in disk-image-create makes the build fast: tests/test_build_fake.py)."""
    base = make_image(4_000, seed="base")
    publish(cli, catalogue, base, "base", "7.0", "--channel", "stable")
    recipe = tmp_path / "child.yaml"
    recipe.write_text(f"extends: {DEMO}\nname: child\nparent: base@stable\n")
    out = tmp_path / "out"
    assert cli("build", recipe, "--arch", "x86_64", "--hypervisor", "hvm", "-o", out).code == 0
    run(cli, "publish", "--from-build", out, *catalogue.args(), "--version", "1.0")
    [rec] = load_state(catalogue.store).images("child")
    assert rec.parent == "base@stable"
    assert rec.parent_image == {"name": "base", "channel": "stable", "version": "7.0", "sha256": sha256(base)}
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {DEMO}\nname: child\nparent: base\n")
    r = cli("recipe", "validate", bad)
    assert r.code == 3 and "bad.yaml:3:9: parent:" in r.err and "NAME@CHANNEL or NAME:VERSION" in r.err
