"""``imagectl rebuild``: a published image built again from its signed build record, and the bytes compared.

These run the whole command (catalogue, signed record, build, normalization, comparison) with the stand-in
disk-image-create of tests/test_repro.py, whose runs hand out disks made differently (other creation order, times,
ids) from the same tree, as two real DIB runs do; the real rebuild of the demo is in test_build_integration.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Catalogue, CliResult
from tests.test_build_fake import DEMO
from tests.test_repro import (  # noqa: F401  (built, fake_repro_dib: fixtures)
    EPOCH,
    X86_HVM,
    _which_without_diffoscope,
    built,
    fake_repro_dib,
    other_disk,
    sha256,
)

pytestmark = [pytest.mark.root]

IMAGE = "debian12-demo-x86_64.qcow2"


def _manifest(bindir: Path, run: int, packages: dict[str, str]) -> None:
    """The package list the stand-in DIB's run ``run`` reports (as DIB's dpkg manifest)."""
    entries = [{"package": n, "version": v, "arch": "amd64"} for n, v in packages.items()]
    (bindir / f"manifest-{run}.json").write_text(json.dumps({"packages": entries}))


def _build(cli: Callable[..., CliResult], recipe: Path, out: Path) -> Path:
    """``imagectl build --reproducible`` of ``recipe``'s x86_64 hvm image into ``out``, at EPOCH; its record."""
    r = cli("build", recipe, *X86_HVM, "-o", out, "--reproducible", "--source-date-epoch", EPOCH)
    assert r.code == 0, r.err
    [record] = out.glob("*-x86_64.build.json")
    return record


def _publish_reproducible(cli: Callable[..., CliResult], catalogue: Catalogue, out: Path) -> str:
    """Build the demo reproducibly (stand-in DIB run 0) and publish it with its record; its sha256."""
    _build(cli, DEMO, out)
    r = cli("publish", "--from-build", out, *catalogue.args(), "--version", "1.0", "--channel", "stable")
    assert r.code == 0, r.err
    return sha256(out / IMAGE)


def _rebuild(cli: Callable[..., CliResult], catalogue: Catalogue, out: Path, *more: object) -> CliResult:
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    return cli("rebuild", "debian12-demo:1.0", *where, "-o", out, *more)


def test_a_published_image_rebuilt_from_its_signed_record_is_identical(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    catalogue: Catalogue,
    tmp_path: Path,
) -> None:
    packages = {"bash": "5.2.15-2+b2", "slurmd": "22.05.8-4+deb12u3"}
    _manifest(fake_repro_dib, 0, packages)
    _manifest(fake_repro_dib, 1, packages)
    signed = _publish_reproducible(cli, catalogue, tmp_path / "out")
    again = tmp_path / "again"
    r = _rebuild(cli, catalogue, again)
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        f"rebuilt debian12-demo:1.0 (x86_64): {again / IMAGE} (sha256 {signed}), identical to the signed {signed}"
    ]
    calls = [json.loads(x) for x in (fake_repro_dib / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and calls[1]["sde"] == str(EPOCH)  # built again (not from the build cache), same epoch
    assert sha256(again / IMAGE) == signed
    record = json.loads((again / "debian12-demo-x86_64.build.json").read_text())
    assert record["source_date_epoch"] == EPOCH and record["reproducible"] is True

    (fake_repro_dib / "disk-2.raw").write_bytes((fake_repro_dib / "disk-0.raw").read_bytes())
    _manifest(fake_repro_dib, 2, packages)
    r = _rebuild(cli, catalogue, tmp_path / "third", "--json")  # the build cache is never a rebuild's answer
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (doc["identical"], doc["sha256"], doc["expected_sha256"]) == (True, signed, signed)
    assert doc["packages"] == {"added": [], "removed": [], "changed": []}
    assert len((fake_repro_dib / "calls.jsonl").read_text().splitlines()) == 3


def test_a_rebuild_that_differs_exits_25_and_names_the_packages_and_files_that_moved(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    catalogue: Catalogue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _manifest(fake_repro_dib, 0, {"bash": "5.2.15-2+b2", "slurmd": "22.05.8-4+deb12u3", "ed": "1.19-1"})
    _manifest(fake_repro_dib, 1, {"bash": "5.2.15-2+b3", "slurmd": "22.05.8-4+deb12u3", "vim-tiny": "2:9.0-1"})
    other_disk(fake_repro_dib / "disk-1.raw", tmp_path / "tree-moved", {"etc/hostname": b"moved\n"})  # mirror moved
    signed = _publish_reproducible(cli, catalogue, tmp_path / "out")
    again = tmp_path / "again"
    monkeypatch.setattr("shutil.which", _which_without_diffoscope)  # imagectl's own comparison, as in CI
    r = _rebuild(cli, catalogue, again)
    assert r.code == 25, r.err
    got = sha256(again / IMAGE)
    assert got != signed
    report = again / f"{IMAGE}.differences.txt"
    assert r.out.splitlines() == [
        f"rebuilt debian12-demo:1.0 (x86_64): {again / IMAGE} (sha256 {got}), differs from the signed {signed}",
        "packages against the build record: 1 added, 1 removed, 1 changed",
        "+ vim-tiny 2:9.0-1 amd64",
        "- ed 1.19-1 amd64",
        "~ bash 5.2.15-2+b2 -> 5.2.15-2+b3 amd64",
        f"files: differing files: /etc/hostname (details: {report})",
    ]
    assert report.read_text() == "/etc/hostname\n"
    assert sha256(again / "original" / "debian12-demo-1.0-x86_64.qcow2") == signed  # pulled, verified
    assert r.err.splitlines() == [
        f"imagectl: error: rebuild of debian12-demo:1.0 (x86_64) differs: sha256 {got}, the catalogue signed "
        f"{signed} (3 packages differ from the build record)",
        "hint: the lines above say what differs; other packages need the mirror as it was: --mirror MIRROR SNAPSHOT",
    ]


def test_an_image_not_built_reproducibly_cannot_be_rebuilt(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    record = _build(cli, DEMO, out)
    doc = json.loads(record.read_text())
    del doc["source_date_epoch"], doc["reproducible"]  # as an ordinary build writes it
    plain = tmp_path / "plain.build.json"
    plain.write_text(json.dumps(doc))
    r = cli("rebuild", plain, "-o", tmp_path / "again")
    assert (r.code, r.out) == (3, "")
    assert r.err.splitlines() == [
        f"imagectl: error: {plain} was not built with --reproducible (its build record has no "
        "source_date_epoch), so a rebuild has no bytes to match",
        "hint: build with imagectl build --reproducible, then publish --from-build",
    ]
    assert len((fake_repro_dib / "calls.jsonl").read_text().splitlines()) == 1  # nothing built
    assert not (tmp_path / "again").exists()


def test_the_recipe_must_be_the_one_the_record_names(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    catalogue: Catalogue,
    tmp_path: Path,
) -> None:
    _publish_reproducible(cli, catalogue, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "debian12-demo-x86_64.build.json").read_text())
    edited = tmp_path / "edited.yaml"
    edited.write_text(Path(DEMO).read_text().replace("  - slurmd\n", "  - slurmd\n  - vim-tiny\n"))
    r = _rebuild(cli, catalogue, tmp_path / "again", "--recipe", edited)
    assert r.code == 3
    from imagectl.recipe.model import load_recipe

    assert r.err.splitlines() == [
        f"imagectl: error: {edited} is not the recipe debian12-demo:1.0 (x86_64) was built from: digest "
        f"{load_recipe(edited).digest()}, the record's {record['recipe']['digest']}"
    ]
    # the recipe file itself is accepted, and gives the same image
    r = _rebuild(cli, catalogue, tmp_path / "again", "--recipe", DEMO)
    assert r.code == 0, r.err
    assert len((fake_repro_dib / "calls.jsonl").read_text().splitlines()) == 2


def test_a_record_file_is_rebuilt_against_its_own_sha256(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    record = _build(cli, DEMO, out)
    r = cli("rebuild", record, "-o", tmp_path / "again")
    assert r.code == 0, r.err
    assert r.out.startswith(f"rebuilt {record}: {tmp_path / 'again' / IMAGE} (sha256 {sha256(out / IMAGE)}), identical")
    # into the record's own directory, the rebuild would overwrite the image it is compared with: refused first
    before = sha256(out / IMAGE)
    r = cli("rebuild", record, "-o", out)
    assert (r.code, r.err.splitlines()) == (
        3,
        [
            f"imagectl: error: -o {out} is the directory of {record}: the rebuild would replace the image it is "
            "compared with",
            "hint: give the rebuild its own directory",
        ],
    )
    assert sha256(out / IMAGE) == before and len((fake_repro_dib / "calls.jsonl").read_text().splitlines()) == 2


def test_a_record_file_that_differs_is_compared_with_the_image_beside_it(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other_disk(fake_repro_dib / "disk-1.raw", tmp_path / "tree-moved", {"etc/motd": b"moved\n"})
    out = tmp_path / "out"
    record = _build(cli, DEMO, out)
    monkeypatch.setattr("shutil.which", _which_without_diffoscope)
    expected = sha256(out / IMAGE)
    r = cli("rebuild", record, "-o", tmp_path / "again")
    assert r.code == 25
    got = sha256(tmp_path / "again" / IMAGE)
    report = tmp_path / "again" / f"{IMAGE}.differences.txt"
    assert r.out.splitlines() == [
        f"rebuilt {record}: {tmp_path / 'again' / IMAGE} (sha256 {got}), differs from the recorded {expected}",
        f"files: differing files: /etc/motd (details: {report})",
    ]
    assert r.err.splitlines()[0] == (
        f"imagectl: error: rebuild of {record} differs: sha256 {got}, its build record gives {expected} (the same "
        "packages as the build record)"
    )
    # an original whose bytes are no longer the record's is not compared with: nothing trustworthy to name
    (out / IMAGE).write_bytes(b"edited")
    (fake_repro_dib / "disk-2.raw").write_bytes((fake_repro_dib / "disk-1.raw").read_bytes())
    r = cli("rebuild", record, "-o", tmp_path / "third")
    assert r.code == 25 and not any(line.startswith("files: ") for line in r.out.splitlines())


def test_a_recipe_with_files_the_record_does_not_hold_needs_recipe(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    d = tmp_path / "r"
    d.mkdir()
    (d / "motd").write_text("welcome\n")
    recipe = d / "demo-motd.yaml"
    recipe.write_text(f"extends: {DEMO}\nname: demo-motd\nfiles:\n  - path: /etc/motd\n    source: motd\n")
    out = tmp_path / "out"
    record = _build(cli, recipe, out)
    r = cli("rebuild", record, "-o", tmp_path / "again")
    assert r.code == 3
    assert r.err.splitlines() == [
        f"imagectl: error: {record}: its recipe copies files or pins keys (files[].source, gpg_keys) that the "
        "build record does not hold",
        "hint: give the recipe it was built from with --recipe FILE",
    ]
    r = cli("rebuild", record, "-o", tmp_path / "again", "--recipe", recipe)
    assert r.code == 0, r.err


def test_the_demo_builds_reproducibly_at_an_epoch(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """`imagectl demo --source-date-epoch N` builds the demo's hvm image as `build --reproducible` does (so CI's
    reproducible demo build is the one the README's first command reuses), then publishes and pulls it."""
    work = tmp_path / "demo"
    r = cli("demo", "--workdir", work, "--no-boot", "--source-date-epoch", EPOCH)
    assert r.code == 0, r.err
    [call] = [json.loads(x) for x in (fake_repro_dib / "calls.jsonl").read_text().splitlines()]
    assert call["sde"] == str(EPOCH) and call["argv"][call["argv"].index("-t") + 1] == "raw"
    record = json.loads((work / "build" / "debian12-demo-x86_64.build.json").read_text())
    assert (record["source_date_epoch"], record["reproducible"], record["target"]["hypervisor"]) == (EPOCH, True, "hvm")
    assert any(line.startswith(f"2. built {work / 'build' / IMAGE} (") for line in r.out.splitlines())
    [pulled] = (work / "pulled").glob("debian12-demo-*-x86_64.qcow2")
    assert sha256(pulled) == sha256(work / "build" / IMAGE)
