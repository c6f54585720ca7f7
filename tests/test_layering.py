"""The layering contracts of pyproject.toml (import-linter, run by tests/run.sh as `lint-imports`) hold, and they
can fail: a copy of the package with one forbidden import breaks exactly the contract it should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tools

CONTRACTS = 4


def lint(where: Path) -> subprocess.CompletedProcess[str]:
    require_tools("lint-imports", install="pip install import-linter")
    return subprocess.run(
        ["lint-imports", "--no-cache"], cwd=where, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_tree_keeps_every_contract() -> None:
    out = lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("imagectl/pull.py", "import imagectl.catalogue.state", "the deployer's reader does not import the publisher"),
        ("imagectl/families/slc.py", "import imagectl.families.debian", "OS families are independent"),
        ("imagectl/recipe/model.py", "import imagectl.catalogue.model", "recipes do not depend on the catalogue"),
        ("imagectl/sbom.py", "import imagectl.cli", "the CLI imports the domain, never the reverse"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(REPO / "imagectl", tmp_path / "imagectl", ignore=shutil.ignore_patterns("__pycache__", "_recipes"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and f"{CONTRACTS - 1} kept, 1 broken" in out.stdout, out.stdout[-2000:]
