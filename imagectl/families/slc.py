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


def _release(rel: str) -> Release:
    old = rel in ("3", "4", "5")
    return Release(
        "slc",
        rel,
        _ARCHES,
        f"https://linuxsoft.cern.ch/cern/{_TREES[rel]}",
        "{arch}/yum/os",
        # their kernels and legacy GRUB predate ext4; GRUB 0.97 (slc-bootloader's menu.lst) and the 2.4 kernel of
        # SLC 3 read only 128-byte ext2/3 inodes, where mke2fs makes 256-byte ones by default
        fs_type="ext3" if old else "ext4",
        mkfs_options="-I 128" if old else "",
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
            # of its mkfs_root node (`mkfs -t ext3 -I 128 ...`).
            argv = ["--mkfs-options", release.mkfs_options, *argv]
        elements = ["slc-bootstrap", "slc-bootloader", "block-device-efi" if arch == "ia64" else "block-device-mbr"]
        return DibPlan(elements, env, [], argv=argv)
