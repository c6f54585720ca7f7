"""The real thing: build the Debian demo with diskimage-builder, boot it under qemu, publish it, pull it back.

Needs root and the packages ci/host-setup.sh installs (CI runs as root on the same machine type); takes about
five minutes. One build serves every test in this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult, sha256

pytestmark = [pytest.mark.build, pytest.mark.slow]

REPO = Path(__file__).parent.parent
DEMO = REPO / "recipes" / "demo" / "debian12-demo.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run one real `imagectl build` of the demo for x86_64 (in a subprocess, as a user would)."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.fail("the build integration test needs root (diskimage-builder mounts loop devices)")
    tmp = tmp_path_factory.mktemp("build")
    env = {**os.environ, "IMAGECTL_CACHE_DIR": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "imagectl", "build", str(DEMO), "--arch", "x86_64", "-o", str(tmp / "out"), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    [out] = json.loads(r.stdout)
    return {"tmp": tmp, "env": env, "out": out, "cmd": cmd}


def test_build_leaves_image_and_record(built):
    out = built["out"]
    assert out["cached"] is False and out["name"] == "debian12-demo" and out["arch"] == "x86_64"
    [image] = [Path(p) for p in out["images"]]
    assert image.suffix == ".qcow2" and image.read_bytes()[:4] == b"QFI\xfb"
    rec = json.loads(Path(out["record"]).read_text())
    assert rec["images"][0]["sha256"] == sha256(image) and rec["images"][0]["size"] == image.stat().st_size
    assert rec["recipe"]["digest"].startswith("sha256:") and rec["recipe"]["merged"]["name"] == "debian12-demo"
    assert rec["dib"]["version"] and rec["dib"]["command"][0] == "disk-image-create"
    assert rec["dib"]["elements_digest"].startswith("sha256:")
    names = {p["name"] for p in rec["packages"]}
    assert {"openssh-server", "linux-image-amd64", "grub-pc", "systemd"} <= names  # read from the image
    assert rec["started"] <= rec["finished"] and rec["host"]["qemu-img"].startswith("qemu-img version")


def test_cached_rebuild_is_reused(built):
    import subprocess

    r = subprocess.run(built["cmd"], capture_output=True, text=True, env=built["env"], timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    [out] = json.loads(r.stdout)
    assert out["cached"] is True
    assert Path(out["images"][0]).read_bytes()[:4] == b"QFI\xfb"


@pytest.mark.boot
def test_boots_to_login_prompt(built, cli: Callable[..., CliResult]):
    [image] = built["out"]["images"]
    log = Path(built["tmp"]) / "console.log"
    r = cli("test", image, "--arch", "x86_64", "--timeout", "600", "--log", log, "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["passed"] is True and "login:" in log.read_text(errors="replace")


def test_publish_from_build_and_pull_verified(built, cli: Callable[..., CliResult], tmp_path):
    cat, keys = tmp_path / "cat", tmp_path / "keys"
    assert cli("catalogue", "init", cat, "--keys", keys).code == 0
    out_dir = Path(built["out"]["record"]).parent
    r = cli("publish", "--from-build", out_dir, "--catalogue", cat, "--keys", keys, "--channel", "testing", "--json")
    assert r.code == 0, r.err
    [pub] = json.loads(r.out)
    assert (pub["name"], pub["arch"], pub["os"], pub["os_version"], pub["hypervisor"], pub["format"]) == (
        "debian12-demo",
        "x86_64",
        "debian",
        "12",
        "hvm",
        "qcow2",
    )
    dest = tmp_path / "pulled.qcow2"
    r = cli(
        "pull",
        "debian12-demo@testing",
        "--catalogue",
        cat,
        "--root",
        cat / "metadata" / "1.root.json",
        "--arch",
        "x86_64",
        "-o",
        dest,
        "--json",
    )
    assert r.code == 0, r.err
    [image] = built["out"]["images"]
    assert json.loads(r.out)["sha256"] == sha256(Path(image)) == sha256(dest)
    r = cli(
        "catalogue",
        "show",
        "debian12-demo@testing",
        "--arch",
        "x86_64",
        "--catalogue",
        cat,
        "--root",
        cat / "metadata" / "1.root.json",
        "--json",
    )
    shown = json.loads(r.out)
    rec = json.loads(Path(built["out"]["record"]).read_text())
    assert shown["recipe_digest"] == rec["recipe"]["digest"]
    assert shown["build_record"]["packages"] == len(rec["packages"])
    blob = cat / "blobs" / "sha256" / shown["build_record"]["sha256"]
    assert json.loads(blob.read_text())["build_key"] == rec["build_key"]  # the full record, content-addressed
    assert cli("catalogue", "verify", cat).code == 0


def test_demo_main_job(built, tmp_path):
    """The README's first command: the demo reuses the module's build from the build cache (same build key)."""
    import subprocess
    import sys

    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "imagectl", "demo", "--workdir", str(work), "--no-boot"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=built["env"], timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2. reused" in r.stdout  # the build key matched the integration build: no second DIB run
    assert "6. catalogue verify:" in r.stdout and r.stdout.rstrip().endswith("OK")
    [pulled] = (work / "pulled").glob("debian12-demo-*-x86_64.qcow2")
    assert sha256(pulled) == sha256(Path(built["out"]["images"][0]))
