"""Scientific Linux CERN 3-6: imagectl's own bootstrap (``slc-bootstrap``: verified seed packages, then the
target's own yum) and era bootloader (``slc-bootloader``: GRUB 0.97 menus, elilo on ia64, none for Xen PV),
replacing DIB's yum-minimal and grub2, which cannot install releases this old."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from imagectl.families.base import HYPERVISORS, DibPlan, Family, Release

if TYPE_CHECKING:
    from imagectl.recipe.model import Recipe

_ARCHES = ("i386", "x86_64", "ia64")
# SLC: CERN's rebuild of RHEL; linuxsoft.cern.ch kept one tree per release and arch.
_TREES = {"3": "slc30X", "4": "slc4X", "5": "slc5X", "6": "slc6X"}


# The root file system each release's kernel and boot loader can use, decided here and nowhere else.
# - SLC 3, 4 and 5: ext3 with 128-byte inodes. Their GRUB 0.97 (menu.lst, written by slc-bootloader) reads ext2/3
#   only, SLC 3's Linux 2.4 has no ext4, and mke2fs makes 256-byte inodes by default, which the GRUB of SLC 3 and 4
#   cannot read (SLC 5 gets the same, which its GRUB and 2.6.18 kernel read as well).
# - SLC 6: ext4, as RHEL 6 installs it: its GRUB 0.97 is patched for ext4 (extents, 256-byte inodes), but its
#   2.6.32 kernel and that GRUB know only the features of their time. Today's mke2fs turns on newer ones from the
#   host's /etc/mke2fs.conf (metadata_csum and 64bit in e2fsprogs 1.43+, orphan_file in 1.47, ...); with
#   metadata_csum, a read-only-compatible feature, SLC 6 mounts its root read-only. So the feature set is given
#   whole (`-O none,...`, which clears the host's defaults first): exactly what RHEL 6's own mkfs.ext4 made.
#   Naming them rather than refusing newer ones (`^metadata_csum,...`) also works with any e2fsprogs: mke2fs
#   refuses a `^feature` it does not know.
EXT4_FEATURES_2_6_32 = (
    "has_journal",
    "ext_attr",
    "resize_inode",
    "dir_index",
    "filetype",
    "extent",
    "flex_bg",
    "sparse_super",
    "large_file",
    "huge_file",
    "uninit_bg",
    "dir_nlink",
    "extra_isize",
)
# Newer than SLC 6's kernel and GRUB (never in the set above; the tests check a real mkfs.ext4 leaves them off).
EXT4_FEATURES_TOO_NEW = (
    "metadata_csum",
    "metadata_csum_seed",
    "64bit",
    "orphan_file",
    "orphan_present",
    "quota",
    "project",
    "encrypt",
    "casefold",
    "verity",
    "inline_data",
    "large_dir",
    "ea_inode",
    "sparse_super2",
    "stable_inodes",
    "fast_commit",
    "bigalloc",
    "meta_bg",
    "mmp",
)


def _filesystem(rel: str) -> tuple[str, str]:
    """The root file system type and the mkfs options (``disk-image-create --mkfs-options``) of SLC ``rel``."""
    if rel in ("3", "4", "5"):
        return "ext3", "-I 128"
    return "ext4", "-O none," + ",".join(EXT4_FEATURES_2_6_32)


def _release(rel: str) -> Release:
    fs_type, mkfs_options = _filesystem(rel)
    return Release(
        "slc",
        rel,
        _ARCHES,
        f"https://linuxsoft.cern.ch/cern/{_TREES[rel]}",
        "{arch}/yum/os",
        fs_type=fs_type,
        mkfs_options=mkfs_options,
        bootloader="GRUB 0.97 (menu.lst), elilo on ia64; none for xen-pv (the host boots the domU kernel)",
        hypervisors=HYPERVISORS,
    )


class Slc(Family):
    name = "slc"
    title = "Scientific Linux CERN"
    releases = MappingProxyType({rel: _release(rel) for rel in _TREES})
    dib_arch = MappingProxyType({a: a for a in _ARCHES})
    signs_packages_with_recipe_keys = True

    def interface_file(self, iface: str, net: Mapping[str, Any]) -> tuple[str, bytes]:
        lines = ["DEVICE=" + iface, "ONBOOT=yes"]
        if net.get("mode") == "static":
            ip, prefix = net["address"].split("/")
            lines += ["BOOTPROTO=static", f"IPADDR={ip}", f"PREFIX={prefix}"]
            if net.get("gateway"):
                lines.append(f"GATEWAY={net['gateway']}")
            lines += [f"DNS{i}={dns}" for i, dns in enumerate(net.get("dns", []), 1)]
        else:
            lines.append("BOOTPROTO=dhcp")
        return f"/etc/sysconfig/network-scripts/ifcfg-{iface}", ("\n".join(lines) + "\n").encode()

    def build_needs(self, release: Release, data: Mapping[str, Any], pos: Any) -> list[str]:
        if data.get("gpg_keys"):
            return []
        mirror = str(data.get("mirror") or release.mirror).rstrip("/")
        arch = (data.get("architectures") or ["x86_64"])[0]
        return [
            f"{pos(('os', 'family'))}: gpg_keys: no GPG key pinned for SLC {release.release}, so it cannot be "
            "built (imagectl unpacks only packages signed by a key the recipe pins): get the release's public "
            f"key from its mirror's RPM-GPG-KEYs/RPM-GPG-KEY-cern (e.g. {mirror}/{arch}/RPM-GPG-KEYs/"
            "RPM-GPG-KEY-cern, or /etc/pki/rpm-gpg/ of its sl-release package), check its fingerprint "
            "(gpg --show-keys FILE) against the one CERN publishes, put it beside the recipe and list it: "
            "gpg_keys: [keys/RPM-GPG-KEY-cern]"
        ]

    def dib(self, release: Release, arch: str, hypervisor: str, recipe: Recipe, mirror: str) -> DibPlan:
        r = recipe.data
        env = {
            "IMAGECTL_SLC_MIRROR": mirror,
            "IMAGECTL_SLC_RELEASE": release.release,
            "IMAGECTL_SLC_ARCH": arch,
            "IMAGECTL_HYPERVISOR": hypervisor,
            "IMAGECTL_SLC_REPOS": " ".join(
                f"{repo['name']}={repo['url'].replace('{arch}', arch)}" for repo in r["repositories"]
            ),
            # The pinned package signing keys, absolute and colon-separated (the recipe refuses ':' in them).
            "IMAGECTL_SLC_GPG_KEYS": ":".join(str(self.resolve(recipe, k)) for k in r.get("gpg_keys", [])),
        }
        if release.fs_type != "ext4":
            env["FS_TYPE"] = release.fs_type
        env["IMAGECTL_PACKAGES"] = " ".join(r["packages"])  # slc-bootstrap installs them with the target's yum
        argv = ["-n"]  # no DIB 'base' element: it expects install-packages and dib-init-system in the chroot
        if release.mkfs_options:
            # DIB has no variable for this: --mkfs-options becomes the block-device layer's root-fs-opts, the `opts`
            # of its mkfs_root node (`mkfs -t ext3 -I 128 ...`, `mkfs -t ext4 -i 4096 -J size=64 -O none,... ...`).
            argv = ["--mkfs-options", release.mkfs_options, *argv]
        elements = ["slc-bootstrap", "slc-bootloader", "block-device-efi" if arch == "ia64" else "block-device-mbr"]
        return DibPlan(elements, env, [], argv=argv)
