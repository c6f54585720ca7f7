"""OS families (imagectl/families/): one module per family owns its releases, arch names, elements, environment,
filesystem and bootloader; recipes and the build planner only ask the registry."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from imagectl.families import ARCHITECTURES, FAMILIES, HYPERVISORS, RELEASES, DibPlan, Family, Release
from imagectl.imaging.plan import BuildTarget, plan_dib, targets
from imagectl.recipe.model import RECIPE_SCHEMA, load_recipe
from imagectl.recipe.schema import RecipeError
from tests.conftest import REPO, shipped_recipes

RECIPES = [p for p in shipped_recipes() if not load_recipe(p).data.get("abstract")]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_consistent(name: str) -> None:
    fam = FAMILIES[name]
    assert fam.name == name and fam.title
    for key, rel in fam.releases.items():
        assert (rel.family, rel.release) == (name, key)
        assert rel.arches and all(a in fam.dib_arch for a in rel.arches), rel  # DIB can be told every arch
        assert set(rel.hypervisors) <= set(HYPERVISORS) and "hvm" in rel.hypervisors
        assert rel.fs_type in ("ext3", "ext4") and rel.bootloader
        assert RELEASES[(name, key)] is rel


def test_the_recipe_schema_is_made_from_the_registry() -> None:
    os_fields = RECIPE_SCHEMA.fields["os"].fields  # type: ignore[attr-defined]
    assert set(os_fields["family"].enum) == set(FAMILIES)
    assert set(RECIPE_SCHEMA.fields["architectures"].item.enum) == set(ARCHITECTURES)  # type: ignore[attr-defined]
    assert set(ARCHITECTURES) == {a for rel in RELEASES.values() for a in rel.arches}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_target_is_planned_by_its_family(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    fam = FAMILIES[recipe.release.family]
    for t in targets(recipe):
        inv = plan_dib(t, tmp_path, tmp_path / "cfg", [tmp_path / "el"])
        own = fam.dib(recipe.release, t.arch, t.hypervisor, recipe, recipe.mirror())
        assert inv.argv[:3] == ["disk-image-create", "-a", fam.dib_arch[t.arch]]
        assert inv.elements[: len(own.elements)] == own.elements and "imagectl-config" in inv.elements
        assert all(inv.env[k] == v for k, v in own.env.items())
        if recipe.release.fs_type != "ext4":
            assert inv.env["FS_TYPE"] == recipe.release.fs_type


class Tiny(Family):
    """A family of the tests' own, in debian's name space (the schema's enums come from the registry when
    imagectl starts); its one release builds hvm only."""

    name = "debian"
    title = "Tiny Debian"
    releases: ClassVar = {"12": Release("debian", "12", ("x86_64",), "http://tiny.invalid", "", codename="tiny")}
    dib_arch: ClassVar = {"x86_64": "x86-64"}

    def interface_file(self, iface: str, net: object) -> tuple[str, bytes]:
        return f"/etc/tiny/{iface}", b"dhcp\n"

    def dib(self, release: Release, arch: str, hypervisor: str, recipe: object, mirror: str) -> DibPlan:
        return DibPlan(["tiny-base"], {"TINY_MIRROR": mirror}, ["tiny-kernel"], argv=["-x"])


def test_a_new_family_is_one_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What adding a family takes: a Family subclass registered in FAMILIES (the schema's enums are built from
    the registry when imagectl starts; here the family borrows debian's name space to pass them)."""

    monkeypatch.setitem(FAMILIES, "debian", Tiny())
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text("name: tiny\nos: {family: debian, release: 12}\narchitectures: [x86_64]\n")
    recipe = load_recipe(recipe_file)
    inv = plan_dib(BuildTarget(recipe, "x86_64", "hvm"), tmp_path, tmp_path, [tmp_path])
    assert inv.argv[:3] == ["disk-image-create", "-a", "x86-64"] and "-x" in inv.argv
    assert inv.argv[inv.argv.index("-p") + 1] == "tiny-kernel"
    assert inv.elements[0] == "tiny-base" and inv.env["TINY_MIRROR"] == "http://tiny.invalid"
    assert inv.env["DIB_RELEASE"] == "tiny"


def test_a_hypervisor_a_release_does_not_support_is_refused_at_its_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shipped release builds both; Tiny's builds hvm only."""

    monkeypatch.setitem(FAMILIES, "debian", Tiny())
    f = tmp_path / "r.yaml"
    f.write_text("name: wn\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nhypervisors: [hvm, xen-pv]\n")
    with pytest.raises(
        RecipeError,
        match=r"r.yaml:4:20: hypervisors\[1\]: xen-pv images are not built for debian 12 \(expected one of hvm\)",
    ):
        load_recipe(f)


def test_a_debian_xen_pv_guest_has_xens_console_last(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("name: wn\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nhypervisors: [hvm, xen-pv]\n")
    hvm, pv = targets(load_recipe(f))
    assert (hvm.hypervisor, pv.hypervisor, pv.basename) == ("hvm", "xen-pv", "wn-xen-x86_64")
    assert "DIB_BOOTLOADER_DEFAULT_CMDLINE" not in plan_dib(hvm, tmp_path, tmp_path, [tmp_path]).env
    cmdline = plan_dib(pv, tmp_path, tmp_path, [tmp_path]).env["DIB_BOOTLOADER_DEFAULT_CMDLINE"]
    assert cmdline.split()[-1] == "console=hvc0"


def test_each_family_writes_its_own_network_configuration() -> None:
    net = {"mode": "static", "address": "10.1.2.3/24", "gateway": "10.1.2.1", "dns": ["10.1.2.2"]}
    path, text = FAMILIES["debian"].interface_file("eth1", net)
    assert path == "/etc/network/interfaces.d/eth1"
    assert text.decode().splitlines() == [
        "auto eth1",
        "iface eth1 inet static",
        "    address 10.1.2.3/24",
        "    gateway 10.1.2.1",
    ]
    path, text = FAMILIES["slc"].interface_file("eth0", {"mode": "dhcp"})
    assert (path, text) == ("/etc/sysconfig/network-scripts/ifcfg-eth0", b"DEVICE=eth0\nONBOOT=yes\nBOOTPROTO=dhcp\n")


def test_every_recipe_format_and_arch_is_one_the_catalogue_accepts() -> None:
    from imagectl.catalogue.model import ARCHES, FORMATS
    from imagectl.catalogue.model import HYPERVISORS as CATALOGUE_HYPERVISORS
    from imagectl.recipe.model import RECIPE_FORMATS

    assert set(RECIPE_FORMATS) <= set(FORMATS)
    assert set(ARCHITECTURES) <= set(ARCHES)
    assert set(HYPERVISORS) <= set(CATALOGUE_HYPERVISORS)


@pytest.mark.parametrize("rel", ["3", "4", "5", "6"])
def test_slc_alone_chooses_the_root_file_system(rel: str, tmp_path: Path) -> None:
    """families/slc.py owns each release's file system and mkfs options; the DIB command carries them, and the
    slc-bootloader element's README says the same."""
    from imagectl.families import slc

    src = tmp_path / "r.yaml"
    src.write_text(f"name: r\nos: {{family: slc, release: {rel}}}\narchitectures: [x86_64]\n")
    [t] = targets(load_recipe(src))
    inv = plan_dib(t, tmp_path, tmp_path / "cfg", [])
    opts = inv.argv[inv.argv.index("--mkfs-options") + 1]
    release = FAMILIES["slc"].releases[rel]
    assert (release.fs_type, release.mkfs_options) == slc._filesystem(rel)
    assert opts == release.mkfs_options
    readme = (REPO / "recipes/elements/slc-bootloader/README.rst").read_text()
    if rel == "6":
        assert release.fs_type == "ext4" and "FS_TYPE" not in inv.env
        features = opts.removeprefix("-O none,").split(",")
        assert opts.startswith("-O none,") and features == list(slc.EXT4_FEATURES_2_6_32)
        assert not set(features) & set(slc.EXT4_FEATURES_TOO_NEW)
        assert {"metadata_csum", "metadata_csum_seed", "64bit", "orphan_file"} <= set(slc.EXT4_FEATURES_TOO_NEW)
        assert "SLC 6\n  ext4" in readme and ",".join(features[:2]) in readme
    else:
        assert (release.fs_type, opts, inv.env["FS_TYPE"]) == ("ext3", "-I 128", "ext3")
        assert "SLC 3 to 5\n  ext3 with 128-byte inodes" in readme
