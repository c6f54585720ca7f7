"""Host compatibility for diskimage-builder on kernels without device-mapper.

DIB maps partitions with ``sudo kpartx`` (and ``dmsetup``), which need the kernel's device-mapper; some build
hosts (containers, minimal VMs) lack it, while ``partx -a`` on the loop device gives working ``/dev/loopNpM``
devices. When — and only when — device-mapper is missing, the build's PATH starts with a ``sudo`` wrapper that
passes everything to the real sudo except ``kpartx``/``dmsetup``, which it points at shims built on ``partx``
that create the ``/dev/mapper/loopNpM`` names DIB expects. A wrapper is needed because sudo's ``secure_path``
ignores the caller's PATH; nothing under /etc is changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imagectl.resources import hostcompat_dir

__all__ = ["has_device_mapper", "prepare_shims"]


def has_device_mapper(
    proc_misc: Path = Path("/proc/misc"), sysfs: Path = Path("/sys/class/misc/device-mapper")
) -> bool:
    """Whether the *kernel* has device-mapper. /dev/mapper/control is no evidence: grub-probe creates it anyway."""
    try:
        if any(line.split()[-1:] == ["device-mapper"] for line in proc_misc.read_text().splitlines()):
            return True
    except OSError:
        pass
    return sysfs.exists()


def prepare_shims(workdir: Path) -> Path:
    """Copy the shims into ``workdir`` with execute bits (package data may lose them); return the bin dir."""
    dest = workdir / "hostcompat"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(hostcompat_dir(), dest)
    for f in dest.rglob("*"):
        if f.is_file():
            f.chmod(0o755)
    return dest / "bin"
