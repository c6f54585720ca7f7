"""Counted nouns in messages: ``1 image``, ``2 images``, never ``image(s)`` (imagectl/text.py), pinned whole where
the summaries and refusals that count things are printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.text import agree, count
from tests.conftest import Catalogue, CliResult


@pytest.mark.parametrize(
    ("n", "noun", "plural", "want"),
    [
        (0, "image", None, "0 images"),
        (1, "image", None, "1 image"),
        (2, "image", None, "2 images"),
        (1, "arch", "arches", "1 arch"),
        (3, "arch", "arches", "3 arches"),
        (1, "root key", None, "1 root key"),
    ],
)
def test_count(n, noun, plural, want):
    assert count(n, noun, plural) == want


def test_agree():
    assert [agree(n, "has", "have") for n in (0, 1, 2)] == ["have", "has", "have"]


def _recipe(d: Path, name: str, arches: str, hypervisors: str = "[hvm]") -> Path:
    p = d / f"{name}.yaml"
    p.write_text(
        f"name: {name}\nos: {{family: debian, release: 12}}\narchitectures: {arches}\nhypervisors: {hypervisors}\n"
    )
    return p


def test_recipe_validate_counts_arches_and_hypervisors(cli: Callable[..., CliResult], tmp_path: Path):
    one, two = _recipe(tmp_path, "one", "[x86_64]"), _recipe(tmp_path, "two", "[x86_64, i386]", "[hvm, xen-pv]")
    r = cli("recipe", "validate", one, two)
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        f"ok: {one} (one: 1 arch x 1 hypervisor)",
        f"ok: {two} (two: 2 arches x 2 hypervisors)",
    ]


def test_recipe_validate_failures_are_counted_in_agreement(cli: Callable[..., CliResult], tmp_path: Path):
    bad = _recipe(tmp_path, "bad", "[]")
    r = cli("recipe", "validate", bad)
    assert r.code == 3
    assert r.err.splitlines() == [
        f"{bad}:3:16: architectures: expected at least 1 item",
        "imagectl: error: 1 of 1 recipe has problems",
    ]
    worse = _recipe(tmp_path, "worse", "[sparc]")
    r = cli("recipe", "validate", bad, worse, _recipe(tmp_path, "fine", "[x86_64]"))
    assert r.code == 3 and r.err.splitlines()[-1] == "imagectl: error: 2 of 3 recipes have problems"


def test_gc_summary_counts_files(cli: Callable[..., CliResult], catalogue: Catalogue):
    r = cli("catalogue", "gc", catalogue.dir, "--dry-run")
    assert r.code == 0, r.err
    assert r.out.splitlines()[-1] == "would remove 0 unreferenced files, 0 B; kept 3 referenced and 0 younger than 24 h"
    stray = catalogue.dir / "blobs" / "sha256" / ("ab" * 32)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x" * 10)
    r = cli("catalogue", "gc", catalogue.dir, "--dry-run", "--grace", "0")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        f"would remove: blobs/sha256/{'ab' * 32}",
        "would remove 1 unreferenced file, 10 B; kept 3 referenced and 0 younger than 0 h",
    ]
