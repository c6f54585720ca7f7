"""Glance image properties for one image, as the ``openstack image create`` command that uploads it.

The properties are the ones nova reads (its legacy names, which are what Glance users set and Glance's
property-keys documentation lists; nova's ``ImageMetaProps`` maps them to ``hw_architecture``, ``hw_vm_mode``,
``img_hv_type``):

- ``architecture``: nova's name (x86_64, i686, ia64, aarch64, …);
- ``os_distro``/``os_version``: libosinfo-style distro (``scientificlinux`` for SLC, ``debian``) and release
  (nova reads ``os_distro``; ``os_version`` is for Glance's metadata definitions and dashboards), and nova's
  ``os_type`` (``linux``);
- ``vm_mode=hvm`` for fully virtualised images; ``hypervisor_type=xen`` and ``vm_mode=xen`` for Xen PV ones, so
  nova schedules them on Xen hosts only.

The digest: Glance computes ``os_hash_algo``/``os_hash_value`` (sha512 by default) itself from the uploaded bytes
and refuses them as user properties, so they are not set. The signed SHA-256 goes in ``imagectl_sha256`` (with
``imagectl_ref`` and ``imagectl_url``) for provenance; the bytes uploaded are the ones ``imagectl pull`` verified,
which is why the printed command uploads the pulled file (``--file``) instead of letting Glance fetch the URL.
``--min-disk`` is the image's size in GiB rounded up: the virtual size when the build record gives one, else the
file length (exact for raw images, a lower bound for qcow2; Glance records the real virtual size on upload).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

from imagectl.catalogue.model import ImageRecord, target_file_key
from imagectl.errors import InvalidInputError
from imagectl.export.names import glance_arch, os_distro
from imagectl.export.view import public_base

__all__ = ["GLANCE_DISK_FORMATS", "GlanceImage", "glance_image"]

#: imagectl formats Glance has a ``disk_format`` for (tar, tgz and squashfs have none)
GLANCE_DISK_FORMATS = ("qcow2", "raw", "vmdk", "vhd", "vhdx", "vdi", "iso")
GIB = 1 << 30


@dataclass(frozen=True)
class GlanceImage:
    name: str
    file: str
    disk_format: str
    min_disk: int  # GiB
    properties: dict[str, str]
    url: str
    sha256: str
    size: int
    pull: list[str]  # argv of the verified download
    create: list[str]  # argv of `openstack image create`

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "disk_format": self.disk_format,
            "container_format": "bare",
            "min_disk": self.min_disk,
            "properties": self.properties,
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "commands": {"pull": self.pull, "create": self.create},
        }

    def shell(self) -> str:
        """Two shell lines, every word quoted with :func:`shlex.quote` (names and reasons come from a catalogue)."""
        return shlex.join(self.pull) + "\n" + shlex.join(self.create)


def properties(rec: ImageRecord) -> dict[str, str]:
    """The Glance properties of ``rec`` (see the module docstring). Raises InvalidInputError for an arch nova
    has no name for."""
    props = {"architecture": glance_arch(rec.arch)}
    distro = os_distro(rec.os)
    if distro is not None and rec.os_version is not None:
        props["os_distro"] = distro
        props["os_version"] = rec.os_version  # Glance's and libosinfo's; nova itself does not read it
        props["os_type"] = "windows" if distro == "windows" else "linux"
    if rec.hypervisor == "xen-pv":
        props["hypervisor_type"] = "xen"
        props["vm_mode"] = "xen"
    else:
        props["vm_mode"] = "hvm"
    props["imagectl_ref"] = f"{rec.name}:{rec.version}"
    props["imagectl_sha256"] = rec.sha256
    if rec.deprecated:
        props["imagectl_deprecated"] = f"{rec.deprecated.get('at', '?')} {rec.deprecated.get('reason', '')}".strip()
    return props


def min_disk_gib(rec: ImageRecord) -> int:
    virtual = (rec.build_record or {}).get("virtual_size")
    size = virtual if isinstance(virtual, int) and not isinstance(virtual, bool) and virtual > 0 else rec.size
    return max(1, math.ceil(size / GIB))


def glance_image(rec: ImageRecord, catalogue_url: str, root: str | None = None) -> GlanceImage:
    """What to run to put ``rec`` into Glance. ``catalogue_url`` is where deployers reach the catalogue (no
    credentials are kept); ``root`` is the pin to pass to ``imagectl pull``. Raises InvalidInputError for an
    image Glance or nova cannot describe (a format without a Glance disk format, an arch nova does not know)."""
    if rec.format not in GLANCE_DISK_FORMATS:
        raise InvalidInputError(
            f"Glance has no disk format for {rec.format} images ({rec.name}:{rec.version} {rec.arch})",
            hint=f"Glance takes {', '.join(GLANCE_DISK_FORMATS)}",
        )
    base = public_base(catalogue_url)
    props = properties(rec)
    props["imagectl_url"] = base + target_file_key(rec.path, rec.sha256)
    name = f"{rec.name}-{rec.version}-{rec.arch}"
    file = f"{name}.{rec.format}"
    pull = ["imagectl", "pull", f"{rec.name}:{rec.version}", "--arch", rec.arch, "--catalogue", base]
    if root:
        pull += ["--root", root]
    pull += ["-o", file]
    create = ["openstack", "image", "create", "--disk-format", rec.format, "--container-format", "bare"]
    create += ["--min-disk", str(min_disk_gib(rec)), "--file", file]
    for key, value in props.items():
        create += ["--property", f"{key}={value}"]
    create.append(name)
    return GlanceImage(
        name, file, rec.format, min_disk_gib(rec), props, props["imagectl_url"], rec.sha256, rec.size, pull, create
    )
