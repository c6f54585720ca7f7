"""Build planning without building: DIB command and environment for every recipe target, host dispatch,
build keys, progress parsing, host compatibility detection and the generated in-image configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError, UnsupportedHostError
from imagectl.families import FAMILIES
from imagectl.imaging import hostcompat
from imagectl.imaging.builder import _Progress, build_key, elements_paths
from imagectl.imaging.configscript import script_text
from imagectl.imaging.plan import check_host, plan_dib, targets
from imagectl.recipe.model import load_recipe
from tests.conftest import REPO, require_tools, shipped_recipes

RECIPES = [p for p in shipped_recipes() if not load_recipe(p).data.get("abstract")]
COMBOS = [(p, t.arch, t.hypervisor) for p in RECIPES for t in targets(load_recipe(p))]


def compile_target(path: Path, arch: str, hv: str, tmp: Path):
    recipe = load_recipe(path)
    [target] = [t for t in targets(recipe) if (t.arch, t.hypervisor) == (arch, hv)]
    return plan_dib(target, tmp / "out", tmp / "cfg", elements_paths(recipe))


@pytest.mark.parametrize(("path", "arch", "hv"), COMBOS, ids=[f"{p.stem}-{a}-{h}" for p, a, h in COMBOS])
def test_dib_invocation_for_every_recipe_target(path, arch, hv, tmp_path, monkeypatch):
    for k in ("IMAGECTL_MIRROR_SLC4", "IMAGECTL_MIRROR_SLC6", "IMAGECTL_MIRROR_DEBIAN12"):
        monkeypatch.delenv(k, raising=False)
    inv = compile_target(path, arch, hv, tmp_path)
    recipe = load_recipe(path)
    argv, env = inv.argv, inv.env
    assert argv[0] == "disk-image-create"
    assert argv[argv.index("-o") + 1] == str(tmp_path / "out" / inv.target.basename)
    converted_here = set(recipe.data["formats"]) <= {"qcow2", "raw"}  # DIB makes the raw disk, imagectl the rest
    assert inv.raw_only is converted_here and inv.formats == recipe.data["formats"]
    assert argv[argv.index("-t") + 1] == ("raw" if converted_here else ",".join(recipe.data["formats"]))
    assert argv[argv.index("--image-size") + 1] == recipe.data["disk_size"].rstrip("G")
    assert argv[-len(inv.elements) :] == inv.elements and "imagectl-config" in inv.elements
    assert env["IMAGECTL_CONFIG_DIR"] == str(tmp_path / "cfg")
    assert str(REPO / "recipes" / "elements") in env["ELEMENTS_PATH"].split(":")
    assert inv.target.image_name == recipe.name + ("-xen" if hv == "xen-pv" else "")
    if recipe.release.family == "debian":
        assert argv[argv.index("-a") + 1] == {"x86_64": "amd64", "i386": "i386"}[arch]
        assert inv.elements[:3] == ["debian-minimal", "vm", "block-device-mbr"]
        assert env["DIB_RELEASE"] == "bookworm"
        assert env["DIB_DISTRIBUTION_MIRROR"] == "http://deb.debian.org/debian"
        assert env["DIB_DEBIAN_SECURITY_MIRROR"] == "http://deb.debian.org/debian-security/"
        pkgs = argv[argv.index("-p") + 1].split(",")
        assert "openssh-server" in pkgs
        assert ("linux-image-686" in pkgs) == (arch == "i386")
        own_notes = [n for n in inv.notes if not n.startswith("DIB's raw disk converted")]
        assert ("DIB_APT_SOURCES_CONF" in env) == (arch == "i386") == bool(own_notes)
        assert "--mkfs-options" not in argv and "FS_TYPE" not in env  # DIB's defaults (ext4)
    else:
        rel = recipe.release.release
        assert argv[argv.index("-a") + 1] == arch
        assert "-p" not in argv  # packages go to our bootstrap's yum, not DIB's package-installs
        assert not {"vm", "bootloader", "grub2", "yum-minimal", "centos-minimal"} & set(inv.elements)
        assert inv.elements[:2] == ["slc-bootstrap", "slc-bootloader"]
        assert inv.elements[2] == ("block-device-efi" if arch == "ia64" else "block-device-mbr")
        assert env["IMAGECTL_SLC_RELEASE"] == rel and env["IMAGECTL_SLC_ARCH"] == arch
        assert env["IMAGECTL_SLC_MIRROR"] == f"https://linuxsoft.cern.ch/cern/slc{'30' if rel == '3' else rel}X"
        keys = [str((recipe.path.parent / k).resolve()) for k in recipe.data.get("gpg_keys", [])]
        assert env["IMAGECTL_SLC_GPG_KEYS"] == ":".join(keys)  # the element passes each as --gpg-key
        assert env["IMAGECTL_HYPERVISOR"] == hv
        assert "-n" in argv  # no DIB base element in an SLC chroot
        assert env.get("FS_TYPE") == ("ext3" if rel in ("3", "4", "5") else None)
        if rel in ("3", "4", "5"):
            assert argv[argv.index("--mkfs-options") + 1] == "-I 128"
        else:
            assert argv[argv.index("--mkfs-options") + 1] == SLC6_MKFS
        assert set(recipe.data["packages"]) <= set(env["IMAGECTL_PACKAGES"].split())


@pytest.mark.parametrize("release", ["3", "4", "5", "6"])
def test_legacy_grub_releases_get_ext3_with_128_byte_inodes(release, tmp_path):
    """SLC 3-5 boot with GRUB 0.97 (and SLC 3 runs Linux 2.4): the root file system is ext3 with 128-byte inodes,
    passed as DIB's FS_TYPE and --mkfs-options (which DIB's block-device layer hands to `mkfs -t ext3 -I 128`).
    SLC 6 (RHEL 6's ext4-patched GRUB 0.97, Linux 2.6.32) gets ext4 with exactly the features of its time."""
    src = tmp_path / "r.yaml"
    src.write_text(f"name: r\nos: {{family: slc, release: {release}}}\narchitectures: [x86_64]\n")
    [target] = targets(load_recipe(src))
    inv = plan_dib(target, tmp_path / "out", tmp_path / "cfg", [])
    size = inv.argv.index("--image-size")
    if release == "6":
        assert "FS_TYPE" not in inv.env  # DIB's default, ext4
        assert inv.argv[size + 2 : size + 5] == ["--mkfs-options", SLC6_MKFS, "-n"]
    else:
        assert inv.env["FS_TYPE"] == "ext3"
        assert inv.argv[size + 2 : size + 5] == ["--mkfs-options", "-I 128", "-n"]


# What RHEL 6's own mkfs.ext4 made: the host's /etc/mke2fs.conf defaults are cleared first (none), so no newer
# feature (metadata_csum, 64bit, orphan_file, ...) reaches a kernel that would mount it read-only or not at all.
SLC6_MKFS = (
    "-O none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,"
    "huge_file,uninit_bg,dir_nlink,extra_isize"
)
REFUSED_BY_SLC6 = {"metadata_csum", "metadata_csum_seed", "64bit", "orphan_file", "orphan_present", "quota",
                   "project", "encrypt", "casefold", "verity", "inline_data", "large_dir", "ea_inode"}  # fmt: skip


def test_slc6_ext4_has_only_features_its_kernel_knows(tmp_path):
    """A real mkfs.ext4 (the host's e2fsprogs and /etc/mke2fs.conf, with the options DIB itself adds for ext4)
    given the SLC 6 plan's --mkfs-options makes a file system none of whose features is newer than 2.6.32."""
    require_tools("mkfs.ext4", "dumpe2fs", install="e2fsprogs")
    src = tmp_path / "r.yaml"
    src.write_text("name: r\nos: {family: slc, release: 6}\narchitectures: [x86_64]\n")
    [target] = targets(load_recipe(src))
    inv = plan_dib(target, tmp_path / "out", tmp_path / "cfg", [])
    opts = inv.argv[inv.argv.index("--mkfs-options") + 1]
    image = tmp_path / "root.img"
    with image.open("wb") as f:
        f.truncate(64 << 20)
    # DIB: MKFS_OPTS="-i 4096 -J size=64 $MKFS_OPTS", then `mkfs -t ext4 OPTS -L LABEL -U UUID -q DEVICE`
    mkfs = ["mkfs.ext4", "-F", "-i", "4096", "-J", "size=4", *opts.split(), "-L", "cloudimg-rootfs", "-q"]
    p = subprocess.run([*mkfs, str(image)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    [line] = [x for x in p.stdout.splitlines() if x.startswith("Filesystem features:")]
    features = set(line.split(":", 1)[1].split())
    assert not features & REFUSED_BY_SLC6, features
    assert {"has_journal", "extent", "uninit_bg", "dir_index"} <= features  # ext4 as RHEL 6 made it
    assert features <= set(FAMILIES["slc"].releases["6"].mkfs_options.removeprefix("-O none,").split(","))
    # the host's defaults would have given at least one refused feature (this e2fsprogs has metadata_csum)
    p = subprocess.run(["mkfs.ext4", "-F", "-q", str(image)], capture_output=True, text=True)
    p = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True)
    [line] = [x for x in p.stdout.splitlines() if x.startswith("Filesystem features:")]
    assert set(line.split(":", 1)[1].split()) & REFUSED_BY_SLC6


def test_mirror_override_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGECTL_MIRROR_SLC6", "http://mirror.site.example/slc6X/")
    inv = compile_target(REPO / "recipes/slc/slc6-worker.yaml", "x86_64", "hvm", tmp_path)
    assert inv.env["IMAGECTL_SLC_MIRROR"] == "http://mirror.site.example/slc6X"


def test_host_dispatch():
    check_host(["x86_64", "i386"], host="x86_64")
    with pytest.raises(UnsupportedHostError) as exc:
        check_host(["x86_64", "ia64"], host="x86_64")
    assert "Itanium (ia64, VT-i) build host" in str(exc.value) and exc.value.exit_code == 22
    assert exc.value.hint == "build only the others here with --arch x86_64"
    with pytest.raises(UnsupportedHostError, match="x86_64 build host"):
        check_host(["x86_64"], host="ia64")
    check_host(["ia64"], host="ia64")
    with pytest.raises(InvalidInputError, match="does not build i386"):
        targets(load_recipe(REPO / "recipes/slc/slc6-worker.yaml"), ["i386"])


def test_build_key_changes_when_and_only_when_an_input_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGECTL_MIRROR_DEBIAN12", raising=False)
    src = tmp_path / "r.yaml"
    base_text = "name: k\nos: {family: debian, release: 12}\narchitectures: [x86_64, i386]\npackages: [a]\n"
    src.write_text(base_text)

    def key(
        text: str | None = None,
        *,
        arch: str = "x86_64",
        out: str = "o1",
        dib: str = "3.43.0",
        elements: str = "e1",
        formats: list[str] | None = None,
        epoch: int | None = None,
    ) -> str:
        if text is not None:
            src.write_text(text)
        recipe = load_recipe(src)
        [t] = [t for t in targets(recipe) if t.arch == arch]
        inv = plan_dib(t, tmp_path / out, tmp_path / f"cfg-{out}", elements_paths(recipe), formats, epoch)
        return build_key(inv, recipe, dib, elements)

    k0 = key(base_text)
    assert key(base_text) == k0  # deterministic
    assert key(out="elsewhere") == k0  # where the output goes does not matter
    assert key("# comment\n" + base_text) == k0  # nor how the recipe is spelled
    changed = {
        "package": key(base_text.replace("[a]", "[a, b]")),
        "arch": key(base_text, arch="i386"),
        "format": key(base_text, formats=["raw"]),
        "dib": key(base_text, dib="3.44.0"),
        "elements": key(base_text, elements="e2"),
        "disk": key(base_text + "disk_size: 3G\n"),
        "reproducible": key(base_text, epoch=1795897038),
        "epoch": key(base_text, epoch=1795897039),
    }
    monkeypatch.setenv("IMAGECTL_MIRROR_DEBIAN12", "http://mirror.example/debian")
    changed["mirror"] = key(base_text)
    assert all(k != k0 for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_a_reproducible_build_asks_dib_for_raw_with_source_date_epoch(tmp_path):
    recipe = load_recipe(REPO / "recipes/demo/debian12-demo.yaml")
    [t] = targets(recipe, ["x86_64"], ["hvm"])
    inv = plan_dib(t, tmp_path / "o", tmp_path / "c", [], ["qcow2"], 1795897038)
    assert inv.argv[inv.argv.index("-t") + 1] == "raw"  # imagectl normalizes it, then converts
    assert inv.formats == ["qcow2"] and inv.env["SOURCE_DATE_EPOCH"] == "1795897038"
    assert any(n.startswith("reproducible: SOURCE_DATE_EPOCH=1795897038") for n in inv.notes)
    plain = plan_dib(t, tmp_path / "o", tmp_path / "c", [], ["qcow2"])
    assert plain.argv[plain.argv.index("-t") + 1] == "raw" and "SOURCE_DATE_EPOCH" not in plain.env
    assert plain.raw_only and any("compressed on every core (qemu-img convert -W)" in n for n in plain.notes)
    other = plan_dib(t, tmp_path / "o", tmp_path / "c", [], ["qcow2", "vhd"])  # a format only DIB makes
    assert other.argv[other.argv.index("-t") + 1] == "qcow2,vhd" and not other.raw_only


def test_progress_names_phase_script_and_element():
    seen: list[str] = []
    p = _Progress("demo-x86_64", seen.append)
    assert p.where().startswith("start-up")
    p.line(
        "2026-11-25 15:10:27.615 | Copying hooks /x/diskimage_builder/elements/package-installs/install.d/"
        "01-package-installs"
    )
    p.line("2026-11-25 15:10:28.239 | dib-run-parts Running /tmp/dib_build.X/hooks/root.d/08-debootstrap")
    assert p.where() == "root.d/08-debootstrap"
    p.line("2026-11-25 15:12:00.000 | dib-run-parts Running /tmp/in_target.d/install.d/01-package-installs")
    assert p.where() == "install.d/01-package-installs (element package-installs)"
    assert seen[-1].startswith("demo-x86_64: install.d/01-package-installs (element package-installs) [")


def test_device_mapper_detection(tmp_path):
    misc = tmp_path / "misc"
    misc.write_text(" 58 memory_bandwidth\n236 device-mapper\n")
    assert hostcompat.has_device_mapper(misc, tmp_path / "nosys")
    misc.write_text(" 58 memory_bandwidth\n 59 network_throughput\n")
    assert not hostcompat.has_device_mapper(misc, tmp_path / "nosys")
    shims = hostcompat.prepare_shims(tmp_path)
    assert (shims / "sudo").stat().st_mode & 0o111
    assert (shims.parent / "libexec" / "kpartx").stat().st_mode & 0o111
    for script in ("bin/sudo", "libexec/kpartx", "libexec/dmsetup", "lib.sh"):
        subprocess.run(["bash", "-n", str(shims.parent / script)], check=True)


def test_config_script(tmp_path):
    src = tmp_path / "r.yaml"
    (tmp_path / "motd.txt").write_bytes(b"it's 100% \\ok\n")
    src.write_text(
        "name: wn\nos: {family: slc, release: 4}\narchitectures: [x86_64]\n"
        "users: [{name: ops, sudo: true, groups: [wheel], ssh_keys: ['ssh-ed25519 AAAAC3Nz ops@site']}]\n"
        "files: [{path: /etc/motd, source: motd.txt, mode: '0600'}]\n"
        "network: {mode: static, address: 10.1.2.3/24, gateway: 10.1.2.1, dns: [10.1.2.2], hostname: wn01,"
        " hosts: {lsfmaster: 10.1.2.10}}\n"
    )
    text = script_text(load_recipe(src))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert "useradd -m -s /bin/bash ops" in text and "groupadd wheel" in text
    assert "/etc/sudoers.d/ops" in text and ">> /etc/sudoers" in text  # SLC4 has no sudoers.d
    # Replay the file-writing part into a scratch root to check the bytes and modes it produces.
    root = tmp_path / "root"
    replay = text.replace(" /etc/", f" {root}/etc/").replace(" /home/", f" {root}/home/")
    lines = [ln for ln in replay.splitlines() if ln.startswith(("mkdir -p", "printf", "chmod", "if [ -d"))]
    (root / "etc/sysconfig/network-scripts").mkdir(parents=True)  # an SLC image
    subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines)], check=True)
    ifcfg = (root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text().splitlines()
    assert ifcfg == [
        "DEVICE=eth0",
        "ONBOOT=yes",
        "BOOTPROTO=static",
        "IPADDR=10.1.2.3",
        "PREFIX=24",
        "GATEWAY=10.1.2.1",
        "DNS1=10.1.2.2",
    ]
    assert not (root / "etc/network").exists()
    assert (root / "etc/motd").read_bytes() == b"it's 100% \\ok\n"
    assert (root / "etc/motd").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/hostname").read_text() == "wn01\n"
    auth = root / "home/ops/.ssh/authorized_keys"
    assert auth.read_text() == "ssh-ed25519 AAAAC3Nz ops@site\n"
    assert auth.stat().st_mode & 0o777 == 0o600


def test_elements_digest_covers_used_elements_only(tmp_path):
    import shutil

    from imagectl.imaging.builder import elements_digest

    els = tmp_path / "elements"
    shutil.copytree(REPO / "recipes" / "elements", els)
    (els / "site-extra").mkdir()
    (els / "site-extra" / "element-deps").write_text("site-dep\n")
    (els / "site-dep" / "install.d").mkdir(parents=True)
    (els / "site-dep" / "install.d" / "10-x").write_text("#!/bin/bash\ntrue\n")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "name: d\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nelements: [site-extra]\n"
    )
    [t] = targets(load_recipe(recipe_file))
    inv = plan_dib(t, tmp_path / "o", tmp_path / "c", [els])
    d0 = elements_digest(inv, [els])
    (els / "slc-bootstrap" / "README.rst").write_text("edited\n")  # not used by a Debian build
    assert elements_digest(inv, [els]) == d0
    (els / "site-dep" / "install.d" / "10-x").write_text("#!/bin/bash\nfalse\n")  # a dependency of one we use
    d1 = elements_digest(inv, [els])
    assert d1 != d0
    (els / "imagectl-config" / "README.rst").write_text("edited\n")
    assert elements_digest(inv, [els]) not in (d0, d1)


def test_cache_hit_verifies_and_drops_damaged_entries(tmp_path):
    import hashlib
    import json

    from imagectl.imaging.builder import _cache_hit

    cache, out = tmp_path / "cache" / "KEY", tmp_path / "out"
    cache.mkdir(parents=True)
    out.mkdir()
    data = b"qcow2 bytes" * 1000
    (cache / "x-x86_64.qcow2").write_bytes(data)
    record = {"images": [{"file": "x-x86_64.qcow2", "sha256": hashlib.sha256(data).hexdigest()}]}
    (cache / "build.json").write_text(json.dumps(record))
    img, rec, memo = out / "x-x86_64.qcow2", out / "x-x86_64.build.json", tmp_path / "memo"
    assert _cache_hit(cache, [img], rec, memo)
    assert img.read_bytes() == data and json.loads(rec.read_text()) == record
    assert len(list(memo.iterdir())) == 2  # the copy's digests, for S3's parts and a directory's whole file
    (cache / "x-x86_64.qcow2").write_bytes(data[:-1] + b"!")  # e.g. someone booted the hard-linked output
    img.unlink()
    assert not _cache_hit(cache, [img], rec, memo)
    assert not cache.exists() and not img.exists() and len(list(memo.iterdir())) == 2  # nothing filed for it
    assert list(out.glob(".*.tmp")) == []
