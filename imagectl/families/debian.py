"""Debian: built with diskimage-builder's ``debian-minimal`` from a Debian mirror, packages through imagectl's
verified package cache (imagectl/imaging/aptproxy.py)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from imagectl.families.base import DibPlan, Family, Release

if TYPE_CHECKING:
    from imagectl.recipe.model import Recipe


class Debian(Family):
    name = "debian"
    title = "Debian"
    releases = MappingProxyType(
        {
            "12": Release(
                "debian",
                "12",
                ("x86_64", "i386"),
                "http://deb.debian.org/debian",
                "",
                codename="bookworm",
                hypervisors=("hvm", "xen-pv"),
            )
        }
    )
    dib_arch = MappingProxyType({"x86_64": "amd64", "i386": "i386"})

    def interface_file(self, iface: str, net: Mapping[str, Any]) -> tuple[str, bytes]:
        lines = [f"auto {iface}"]
        if net.get("mode") == "static":
            lines += [f"iface {iface} inet static", f"    address {net['address']}"]
            if net.get("gateway"):
                lines.append(f"    gateway {net['gateway']}")
        else:
            lines.append(f"iface {iface} inet dhcp")
        return f"/etc/network/interfaces.d/{iface}", ("\n".join(lines) + "\n").encode()

    def dib(self, release: Release, arch: str, hypervisor: str, recipe: Recipe, mirror: str) -> DibPlan:
        packages = list(recipe.data["packages"])
        env = {
            "DIB_DISTRIBUTION_MIRROR": mirror,
            "DIB_APT_LOCAL_CACHE": "0",  # not DIB's shared apt cache: unverified, and emptied as a build starts
            "DIB_DEBIAN_SECURITY_MIRROR": mirror + "-security/",
        }
        notes = []
        if arch == "i386":
            # debian-minimal maps a kernel package for amd64 and arm64 only; an i386 image needs one named.
            packages.append("linux-image-686")
            # deb.debian.org's bookworm-security i386 index fails apt's size check (seen 2026-11, every try);
            # leave the security suite out for i386 so the build can finish, and say so in the build record.
            env["DIB_APT_SOURCES_CONF"] = (
                f"default:deb {mirror} {release.codename} main\nupdates:deb {mirror} {release.codename}-updates main"
            )
            notes.append("i386: bookworm-security omitted (its i386 index on deb.debian.org fails apt's size check)")
        if hypervisor == "xen-pv":
            # A Xen PV guest: Debian's kernel is also a domU kernel, and the host's pygrub reads the GRUB 2
            # configuration DIB writes; Xen's console is hvc0, named last so it is /dev/console under Xen (which
            # has no ttyS0). The image's own GRUB stays, unused under Xen.
            env["DIB_BOOTLOADER_DEFAULT_CMDLINE"] = "nofb nomodeset gfxpayload=text console=hvc0"
        # imagectl-package-cache: packages and the base system from imagectl's verified cache (see its README);
        # imagectl-initramfs: each kernel's initramfs made once, after every package (DIB's install makes it twice)
        elements = ["debian-minimal", "vm", "block-device-mbr", "imagectl-package-cache", "imagectl-initramfs"]
        return DibPlan(elements, env, packages, notes=notes)
