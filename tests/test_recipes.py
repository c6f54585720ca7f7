"""Recipes: the corpus of broken recipes (exact message and position), extends merging, the real recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError
from imagectl.recipe.model import load_recipe
from imagectl.recipe.schema import RecipeError
from tests.conftest import shipped_recipes

DATA = Path(__file__).parent / "data" / "recipes"
BAD = sorted(DATA.glob("bad/*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"# expect: (.*)", first)
    assert m, f"{path} lacks an '# expect:' first line"
    exp = m.group(1)
    # "LINE:COL: ..." is in this file; "OTHER.yaml:LINE:COL: ..." names the file the error is in
    return f"{path.parent / exp}" if re.match(r"[\w.-]+\.yaml:", exp) else f"{path}:{exp}"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_broken_recipe_corpus(path: Path):
    with pytest.raises(InvalidInputError) as exc:  # RecipeError, or the YAML loader's own InvalidInputError
        load_recipe(path)
    assert str(exc.value).startswith(expected_message(path)), str(exc.value)
    assert "\n" not in str(exc.value)


def test_every_problem_is_reported(tmp_path: Path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: wn\nos: {family: slc, release: 6}\narchitectures: [sparc]\npakages: []\nformats: [iso]\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(bad)
    assert len(exc.value.problems) == 3
    assert str(exc.value).endswith("(and 2 more)")
    assert [p.split(": ")[1] for p in exc.value.problems] == ["architectures[0]", "pakages", "formats[0]"]


def test_extends_merge_rules():
    r = load_recipe(DATA / "good" / "child.yaml")
    d = r.data
    assert d["name"] == "child" and d["description"] == "base"  # scalars inherited unless overridden
    assert d["os"] == {"family": "slc", "release": "6"}  # mappings merged key by key
    assert d["architectures"] == ["x86_64"] and d["hypervisors"] == ["hvm", "xen-pv"]  # these lists replace
    assert d["packages"] == ["openssh-server", "yum", "ntpdate"]  # parent first, -ntp removed, no duplicates
    assert [(x["name"], x["url"]) for x in d["repositories"]] == [
        ("os", "http://mirror.example/slc/{arch}/os"),
        ("updates", "http://site.example/updates/{arch}"),  # same name: replaced in place
        ("site", "http://site.example/site/{arch}"),
    ]
    assert [u["name"] for u in d["users"]] == ["ops", "lsfadmin"]
    assert d["files"] == [{"path": "/etc/motd", "content": "child\n"}]
    assert d["network"] == {"mode": "dhcp", "hostname": "wn01"}
    assert "abstract" not in d and "extends" not in d
    assert [p.name for p in r.chain] == ["child.yaml", "base.yaml"]


def test_abstract_base_validates_alone_but_is_partial():
    base = load_recipe(DATA / "good" / "base.yaml")
    assert base.data.get("abstract") is True and "name" not in base.data


def test_digest_changes_when_and_only_when_the_meaning_changes(tmp_path: Path):
    src = tmp_path / "r.yaml"
    src.write_text("name: wn\nos: {family: slc, release: 6}\narchitectures: [x86_64]\npackages: [a, b]\n")
    d1 = load_recipe(src).digest()
    src.write_text(
        "# a comment\nname: wn\nos:\n  family: slc\n  release: '6'\narchitectures: [x86_64]\npackages:\n  - a\n  - b\n"
    )
    assert load_recipe(src).digest() == d1  # same meaning, other spelling
    src.write_text("name: wn\nos: {family: slc, release: 6}\narchitectures: [x86_64]\npackages: [a, b, c]\n")
    assert load_recipe(src).digest() != d1
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", d1)


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path: Path):
    r = load_recipe(path)
    if not r.data.get("abstract"):
        assert r.architectures and r.hypervisors and r.data["formats"]
