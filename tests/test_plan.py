"""`imagectl plan`: the CI build matrix, computed without building, with the key a build files its cache under."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.imaging.matrix import runner_for
from imagectl.imaging.plan import host_machine, targets
from imagectl.recipe.model import load_recipe
from tests.conftest import REPO, CliResult, run_imagectl
from tests.test_build_fake import fake_dib as fake_dib  # the stand-in disk-image-create (a fixture)

pytestmark = pytest.mark.skipif(host_machine() != "x86_64", reason="the expectations are an x86_64 host's")

DEMO = REPO / "recipes" / "demo" / "debian12-demo.yaml"
X86_WHY = (
    "x86_64 builds on an x86_64 host (VT-x); the boot test uses KVM when it works and falls back to TCG (slower) "
    "when it does not"
)
I386_WHY = (
    "i386 builds natively on an x86_64 host (VT-x); the boot test uses KVM when it works and falls back to TCG "
    "(slower) when it does not"
)
IA64_WHY = "ia64 builds need an Itanium build host (VT-i); QEMU has no ia64 emulator, so it boots only there too"
XEN_WHY = (
    "{} builds {}on an x86_64 host (VT-x); a xen-pv image is boot-tested through Xen's pygrub (xen-utils-4.17) and qemu"
)


def plan(cli: Callable[..., CliResult], *args: object) -> list[dict[str, object]]:
    r = cli("plan", *args, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert list(doc) == ["entries"]
    entries: list[dict[str, object]] = doc["entries"]
    return entries


@pytest.fixture
def slc_all(tmp_path: Path) -> Path:
    """A copy of the shipped SLC recipes plus one child that builds every arch (x86_64, i386, ia64) x (hvm, xen-pv)."""
    d = tmp_path / "recipes" / "slc"
    shutil.copytree(REPO / "recipes" / "slc", d)
    child = d / "slc4-all.yaml"
    child.write_text("name: slc4-all\nextends: slc4-worker.yaml\narchitectures: [x86_64, i386, ia64]\n")
    return child


def test_demo_plan_entries(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    entries = plan(cli, DEMO)
    keys = [str(e.pop("build_key")) for e in entries]
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys) and len(set(keys)) == 4
    x86_runner = {"arch": "x86_64", "kvm": True, "tags": ["imagectl", "x86_64"], "buildable_here": True}
    whys = {
        ("x86_64", "hvm"): X86_WHY,
        ("x86_64", "xen-pv"): XEN_WHY.format("x86_64", ""),
        ("i386", "hvm"): I386_WHY,
        ("i386", "xen-pv"): XEN_WHY.format("i386", "natively "),
    }
    assert entries == [
        {
            "job": f"debian12-demo-{arch}-{hv}",
            "recipe": str(DEMO),
            "name": "debian12-demo" + ("-xen" if hv == "xen-pv" else ""),
            "arch": arch,
            "hypervisor": hv,
            "formats": ["qcow2"],
            "os": "debian",
            "os_version": "12",
            "source_date_epoch": None,
            "cached": False,
            "runner": {**x86_runner, "why": whys[arch, hv]},
        }
        for arch, hv in whys
    ]
    # a shipped recipe named instead of a path: "recipe" is what was given, the key the same
    named = plan(cli, "debian12-demo", "--arch", "i386")
    assert [e["recipe"] for e in named] == ["debian12-demo"] * 2 and [e["build_key"] for e in named] == keys[2:]
    # the readable table
    r = cli("plan", DEMO)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    header = "JOB                          ARCH    HYPERVISOR  RUNNER TAGS      BOOT  BUILDS HERE  CACHE  BUILD KEY"
    assert lines[0] == header
    row = ["debian12-demo-x86_64-hvm", "x86_64", "hvm", "imagectl,x86_64", "kvm", "yes", "-", keys[0][:12]]
    assert lines[1].split() == row
    assert lines[5:] == [
        f"i386 hvm: {I386_WHY}",
        f"i386 xen-pv: {XEN_WHY.format('i386', 'natively ')}",
        f"x86_64 hvm: {X86_WHY}",
        f"x86_64 xen-pv: {XEN_WHY.format('x86_64', '')}",
    ]


def test_slc_plan_every_arch_and_hypervisor(cli: Callable[..., CliResult], slc_all: Path) -> None:
    entries = plan(cli, slc_all)
    got = [
        (e["job"], e["name"], e["arch"], e["hypervisor"], e["runner"]["tags"], e["runner"]["kvm"])  # type: ignore[index]
        for e in entries
    ]
    assert got == [
        ("slc4-all-x86_64-hvm", "slc4-all", "x86_64", "hvm", ["imagectl", "x86_64"], True),
        ("slc4-all-x86_64-xen-pv", "slc4-all-xen", "x86_64", "xen-pv", ["imagectl", "x86_64"], True),
        ("slc4-all-i386-hvm", "slc4-all", "i386", "hvm", ["imagectl", "x86_64"], True),
        ("slc4-all-i386-xen-pv", "slc4-all-xen", "i386", "xen-pv", ["imagectl", "x86_64"], True),
        ("slc4-all-ia64-hvm", "slc4-all", "ia64", "hvm", ["imagectl", "ia64"], False),
        ("slc4-all-ia64-xen-pv", "slc4-all-xen", "ia64", "xen-pv", ["imagectl", "ia64"], False),
    ]
    by_job = {e["job"]: e for e in entries}
    for job in ("slc4-all-ia64-hvm", "slc4-all-ia64-xen-pv"):
        assert by_job[job]["runner"] == {
            "arch": "ia64",
            "kvm": False,
            "tags": ["imagectl", "ia64"],  # never an x86 tag: no x86 runner can build it
            "buildable_here": False,
            "why": IA64_WHY,
        }
    assert by_job["slc4-all-i386-xen-pv"]["runner"]["why"] == XEN_WHY.format("i386", "natively ")  # type: ignore[index]
    assert by_job["slc4-all-x86_64-xen-pv"]["runner"]["why"] == XEN_WHY.format("x86_64", "")  # type: ignore[index]
    assert {(e["os"], e["os_version"], tuple(e["formats"])) for e in entries} == {("slc", "4", ("qcow2", "raw"))}  # type: ignore[arg-type]
    # `build` refuses the ia64 targets on this host; `plan` lists them, and the key of the x86 ones is the same
    r = cli("build", slc_all, "-o", slc_all.parent / "out")
    assert r.code == 22 and "Itanium (ia64, VT-i) build host" in r.err
    x86_hvm, _x86_xen = plan(cli, slc_all, "--arch", "x86_64")
    assert x86_hvm == entries[0]


def test_shipped_slc_recipes_together(cli: Callable[..., CliResult]) -> None:
    """Several recipes at once, by name: each contributes the given arches it builds; job names stay unique."""
    entries = plan(cli, "slc3-worker", "slc4-worker", "debian12-demo", "--arch", "i386", "--arch", "ia64")
    assert [e["job"] for e in entries] == [
        "slc3-worker-i386-hvm",
        "slc3-worker-i386-xen-pv",
        "slc3-worker-ia64-hvm",
        "slc3-worker-ia64-xen-pv",
        "slc4-worker-ia64-hvm",
        "slc4-worker-ia64-xen-pv",
        "debian12-demo-i386-hvm",
        "debian12-demo-i386-xen-pv",
    ]
    assert [e["recipe"] for e in entries] == ["slc3-worker"] * 4 + ["slc4-worker"] * 2 + ["debian12-demo"] * 2
    assert {e["os_version"] for e in entries if e["os"] == "slc"} == {"3", "4"}
    assert len({e["build_key"] for e in entries}) == len(entries)


def test_plan_refusals(cli: Callable[..., CliResult], slc_all: Path) -> None:
    r = cli("plan", DEMO, "--arch", "ia64")
    assert (r.code, r.err) == (
        3,
        "imagectl: error: recipe debian12-demo does not build ia64 (it builds x86_64, i386)\n",
    )
    r = cli("plan", DEMO, "debian12-demo", "--arch", "ia64")
    assert (r.code, r.err) == (3, "imagectl: error: none of the recipes builds ia64\n")
    r = cli("plan", DEMO, "debian12-demo")
    assert (r.code, r.err) == (
        3,
        f"imagectl: error: debian12-demo and {DEMO} would both build debian12-demo-x86_64-hvm: give each recipe once\n",
    )
    base = slc_all.parent / "slc-worker-base.yaml"
    r = cli("plan", base)
    assert (r.code, r.err) == (
        3,
        f"imagectl: error: recipe {base} is an abstract base: it is only extended, never built\n",
    )
    r = cli("plan", DEMO, "--arch", "sparc")
    assert r.code == 3 and "unknown arch 'sparc'" in r.err
    r = cli("plan", slc_all.parent / "missing.yaml")
    assert r.code == 3 and "no such recipe file" in r.err
    (slc_all.parent / "odd.yaml").write_text("name: odd\nextends: slc4-worker.yaml\nelements: [no-such-element]\n")
    r = cli("plan", slc_all.parent / "odd.yaml")
    assert r.code == 3 and "no-such-element" in r.err


def test_plan_key_is_the_key_of_a_real_cached_build(
    fake_dib: Path, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """`cached` flips once `imagectl build` has filed the build under the very key the plan printed."""
    before = {e["arch"]: e for e in plan(cli, DEMO) if e["hypervisor"] == "hvm"}
    assert before["x86_64"]["cached"] is False and before["i386"]["cached"] is False
    r = cli("build", DEMO, "--arch", "x86_64", "--hypervisor", "hvm", "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    record = json.loads((tmp_path / "out" / "debian12-demo-x86_64.build.json").read_text())
    assert record["build_key"] == before["x86_64"]["build_key"]
    assert (tmp_path / "cache" / "builds" / record["build_key"] / "build.json").is_file()
    after = {e["arch"]: e for e in plan(cli, DEMO) if e["hypervisor"] == "hvm"}
    assert after["x86_64"]["cached"] is True and after["i386"]["cached"] is False
    assert {a: e["build_key"] for a, e in after.items()} == {a: e["build_key"] for a, e in before.items()}
    # another output directory is the same build (a copy from the cache; DIB not run again)
    r = cli("build", DEMO, "--arch", "x86_64", "--hypervisor", "hvm", "-o", tmp_path / "elsewhere", "--json")
    assert r.code == 0 and json.loads(r.out)[0]["cached"] is True
    assert len(fake_dib.read_text().splitlines()) == 1
    # a different recipe meaning is a different key, not cached
    changed = tmp_path / "demo-changed.yaml"
    changed.write_text(DEMO.read_text().replace("disk_size: 2G", "disk_size: 3G"))
    moved, _xen = plan(cli, changed, "--arch", "x86_64")
    assert moved["build_key"] != before["x86_64"]["build_key"] and moved["cached"] is False


def test_plan_for_reproducible_builds(cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """The epoch is part of a reproducible build's key: `plan --source-date-epoch N` (or `--reproducible`, which
    takes the epoch as build does) prints the keys `build --reproducible` files under; the real build's key is
    checked in test_build_integration (test_plan_names_the_reproducible_build)."""
    plain = plan(cli, DEMO, "--arch", "x86_64")
    at = plan(cli, DEMO, "--arch", "x86_64", "--source-date-epoch", "1700000000")
    assert [e["source_date_epoch"] for e in at] == [1700000000] * 2
    assert [e["source_date_epoch"] for e in plain] == [None] * 2
    assert {str(e["build_key"]) for e in at}.isdisjoint(str(e["build_key"]) for e in plain)
    later = plan(cli, DEMO, "--arch", "x86_64", "--source-date-epoch", "1700000001")
    assert {str(e["build_key"]) for e in later}.isdisjoint(str(e["build_key"]) for e in at)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert plan(cli, DEMO, "--arch", "x86_64", "--reproducible") == at
    assert plan(cli, DEMO, "--arch", "x86_64") == plain  # the environment alone does not make a plan reproducible
    r = run_imagectl("plan", DEMO, "--source-date-epoch", "yesterday")  # argparse's refusal: a real process
    assert r.code == 2 and "'yesterday' is not a whole number of seconds since 1970" in r.err


def test_runner_on_an_itanium_host() -> None:
    """What the same plan says on an ia64 runner: the ia64 targets build there, the x86 ones do not."""
    recipe = load_recipe(REPO / "recipes" / "slc" / "slc3-worker.yaml")
    by = {(t.arch, t.hypervisor): runner_for(t, host="ia64") for t in targets(recipe)}
    assert by[("ia64", "hvm")].buildable_here is True and by[("ia64", "hvm")].tags == ["imagectl", "ia64"]
    assert by[("i386", "hvm")].buildable_here is False and by[("i386", "hvm")].tags == ["imagectl", "x86_64"]
