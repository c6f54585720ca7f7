"""Users install a wheel: the tool must work from one, with no source checkout in sight (issue 7, item 13).

Finding: `pip install .` (not editable) gave a tool whose `imagectl demo` failed "no demo recipe at
…/site-packages/recipes/…" and whose SLC builds failed at start-up: the recipes and DIB elements were not in the
wheel. Here the wheel is built, installed into a fresh venv (dependencies from PyPI), and run from a directory
that is not the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.network]


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    p = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv (no system site-packages) with imagectl installed from a wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGECTL_", "PYTHON"))}
    env |= {"HOME": str(tmp / "home"), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    if "XDG_CACHE_HOME" not in env and Path("/root/.cache/pip").is_dir():
        env["PIP_CACHE_DIR"] = "/root/.cache/pip"  # reuse downloads of this machine; CI fetches from PyPI
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", REPO], tmp, env)
    [wheel] = (tmp / "dist").glob("imagectl-*.whl")
    venv.create(tmp / "venv", with_pip=True)
    py = tmp / "venv" / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", wheel], tmp, env)
    env["PATH"] = f"{tmp / 'venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return tmp, env


def test_the_wheel_is_what_runs(installed: tuple[Path, dict[str, str]]) -> None:
    tmp, env = installed
    where = _run(["python", "-c", "import imagectl; print(imagectl.__file__)"], tmp, env).strip()
    assert where.startswith(str(tmp / "venv")), where  # not the checkout


def test_shipped_recipes_validate_by_name_and_path(installed: tuple[Path, dict[str, str]]) -> None:
    tmp, env = installed
    listed = json.loads(_run(["imagectl", "recipe", "list", "--json"], tmp, env))
    names = {r["name"] for r in listed}
    # Every recipe of the checkout, no more and no less, byte for byte: a recipe left out of the wheel fails here.
    checkout = {p.relative_to(REPO / "recipes"): p for p in (REPO / "recipes").glob("*/*.yaml")}
    checkout = {rel: p for rel, p in checkout.items() if "elements" not in rel.parts}
    assert len(checkout) >= 5 and names == {rel.stem for rel in checkout}
    shipped = {Path(*Path(r["path"]).parts[-2:]): Path(r["path"]) for r in listed}
    assert set(shipped) == set(checkout)
    assert all(shipped[rel].read_bytes() == p.read_bytes() for rel, p in checkout.items())
    assert all(r["path"].startswith(str(tmp / "venv")) for r in listed)
    out = _run(["imagectl", "recipe", "validate", *sorted(names)], tmp, env)
    assert out.count("ok: ") == len(names)
    out = _run(["imagectl", "recipe", "validate", *(r["path"] for r in listed)], tmp, env)
    assert out.count("ok: ") == len(names)


def test_demo_quick_runs_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    tmp, env = installed
    out = _run(["imagectl", "demo", "--quick", "--workdir", tmp / "demo"], tmp, env)
    assert "5. pulled demo-disk@testing" in out and "6. catalogue verify" in out and "OK" in out


def test_elements_and_shims_are_in_the_wheel_with_their_modes(installed: tuple[Path, dict[str, str]]) -> None:
    """What an SLC build needs at start-up: our elements on DIB's path, executable; the host shims too."""
    tmp, env = installed
    code = (
        "import json\n"
        "from imagectl.imaging.elements import elements_paths\n"
        "from imagectl.recipe.model import load_recipe\n"
        "from imagectl.resources import hostcompat_dir, shipped_recipes\n"
        "r = load_recipe(shipped_recipes()['slc6-worker'])\n"
        "print(json.dumps({'elements': [str(p) for p in elements_paths(r)], 'shims': str(hostcompat_dir())}))\n"
    )
    found = json.loads(_run(["python", "-c", code], tmp, env))
    [elements] = found["elements"]
    assert elements.startswith(str(tmp / "venv"))
    for script in (
        "slc-bootstrap/root.d/10-slc-bootstrap",
        "imagectl-config/install.d/60-imagectl-config",
        "imagectl-package-cache/root.d/50-imagectl-package-cache-pinned",
        "imagectl-package-cache/cleanup.d/50-imagectl-package-cache-pinned",
    ):
        assert os.access(Path(elements) / script, os.X_OK), script
    assert os.access(Path(found["shims"]) / "bin" / "sudo", os.X_OK)


def test_catalogue_site_runs_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    """The browse site's template, CSS and JS are package data."""
    tmp, env = installed
    cat, site = tmp / "site-cat", tmp / "site"
    _run(["imagectl", "catalogue", "init", cat, "--keys", tmp / "site-keys"], tmp, env)
    (tmp / "img.raw").write_bytes(b"x" * 4096)
    _run(["imagectl", "publish", tmp / "img.raw", "--catalogue", cat, "--keys", tmp / "site-keys", "--name", "wn",
          "--arch", "x86_64", "--version", "1"], tmp, env)  # fmt: skip
    _run(["imagectl", "catalogue", "site", cat, "-o", site, "--root", cat / "metadata" / "1.root.json"], tmp, env)
    for asset in ("assets/site.css", "assets/site.js", "index.json", "images/wn.html"):
        assert (site / asset).stat().st_size > 0, asset
    assert "imagectl pull wn:1 --arch x86_64" in (site / "images" / "wn.html").read_text()
