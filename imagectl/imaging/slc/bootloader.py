"""Boot loader configuration for SLC images, in the era's own formats (DIB's grub2 element does not apply).

- ``hvm`` (x86): legacy GRUB 0.97 reads ``/boot/grub/menu.lst`` (``grub.conf`` is a symlink to it, and
  ``/etc/grub.conf`` one to that, as grubby and new-kernel-pkg expect); the serial console comes first.
- ``xen-pv``: no boot loader in the image; the host's pygrub reads the same ``menu.lst`` and boots the Xen guest
  kernel (``kernel-xen`` on SLC 5, ``kernel-xenU`` on SLC 4, the ordinary pvops kernel on SLC 6).
- ``ia64``: elilo reads ``/boot/efi/EFI/redhat/elilo.conf`` (``/etc/elilo.conf`` links to it); kernels and initrds
  live next to it on the EFI system partition.

The text is generated here so that it is unit-testable; the ``slc-bootloader`` element calls
``python3 -m imagectl.imaging.slc.bootloader`` outside the chroot (the target has only its own python 2).
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagectl.errors import ImagectlError, InvalidInputError, LocalIOError, NotFoundError, report
from imagectl.families import FAMILIES
from imagectl.fsio import atomic_write
from imagectl.imaging.slc.evr import rpmvercmp

__all__ = [
    "Kernel",
    "default_console",
    "elilo_conf",
    "find_kernels",
    "kernel_package",
    "main",
    "menu_lst",
    "packages",
    "write_config",
]

HYPERVISORS = ("hvm", "xen-pv")
RELEASES = tuple(FAMILIES["slc"].releases)  # the SLC releases imagectl builds
EFI_DIR = "boot/efi/EFI/redhat"  # where RHEL-family ia64 kernels, initrds and elilo.conf live


@dataclass(frozen=True)
class Kernel:
    """One installed kernel: its version (``2.6.18-398.el5xen``) and file names relative to the boot directory."""

    version: str
    image: str  # vmlinuz-VERSION
    initrd: str | None  # initramfs-VERSION.img (SLC 6) or initrd-VERSION.img (SLC 3-5); None if not built


def kernel_package(release: str, hypervisor: str, arch: str) -> str:
    """The kernel package an image needs. Raises InvalidInputError for combinations SLC never shipped."""
    if hypervisor == "xen-pv":
        if arch == "ia64":
            raise InvalidInputError("xen-pv images are x86 only (SLC had no ia64 Xen guest kernel)")
        if release == "3":
            raise InvalidInputError("SLC 3 has no Xen guest kernel; build it for hvm")
        return {"4": "kernel-xenU", "5": "kernel-xen"}.get(release, "kernel")
    return "kernel"


def packages(release: str, hypervisor: str, arch: str) -> tuple[str, ...]:
    """Packages the image needs to boot: its kernel and, unless pygrub boots it from outside, a boot loader."""
    kernel = kernel_package(release, hypervisor, arch)
    if arch == "ia64":
        return ("elilo", kernel)
    if hypervisor == "xen-pv":
        return (kernel,)
    return ("grub", kernel)


def default_console(release: str, hypervisor: str) -> str:
    """The kernel's console= for a guest: the Xen console of the era's guest kernel, else the first serial port."""
    if hypervisor == "xen-pv":
        return "hvc0" if release == "6" else "xvc0"
    return "ttyS0,115200"


def find_kernels(boot: Path) -> list[Kernel]:
    """Kernels in ``boot`` (``vmlinuz-*``), newest first in rpm's version order, each with its initrd if present."""
    found = []
    for image in boot.glob("vmlinuz-*"):
        if image.is_symlink() and not image.exists():
            continue
        version = image.name[len("vmlinuz-") :]
        initrd = next(
            (n for n in (f"initramfs-{version}.img", f"initrd-{version}.img") if (boot / n).exists()),
            None,
        )
        found.append(Kernel(version, image.name, initrd))
    return sorted(found, key=functools.cmp_to_key(_newer), reverse=True)


def _newer(a: Kernel, b: Kernel) -> int:
    return rpmvercmp(a.version, b.version)


def _cmdline(root: str, console: str, serial_first: bool, extra: str) -> str:
    consoles = f"console=tty0 console={console}" if serial_first else f"console={console}"
    return " ".join(p for p in (f"ro root={root}", consoles, extra) if p)


def menu_lst(
    kernels: Sequence[Kernel],
    *,
    root: str,
    hypervisor: str,
    console: str,
    title: str,
    boot_prefix: str = "/boot",
    grub_root: str = "(hd0,0)",
    timeout: int = 5,
    extra_args: str = "",
) -> str:
    """The text of a legacy GRUB ``menu.lst``: one entry per kernel, newest (the default) first.

    ``root`` is the kernel's root= (``LABEL=...``, ``/dev/...``); ``boot_prefix`` is where the kernels are as
    GRUB sees the partition ``grub_root`` (``/boot`` when /boot is not a partition of its own). For ``hvm`` the
    menu and kernel talk on the serial console too; for ``xen-pv`` the file is for pygrub, which ignores
    ``serial``/``terminal`` lines, so none are written. Raises NotFoundError if ``kernels`` is empty.
    """
    if not kernels:
        raise NotFoundError("no kernel (vmlinuz-*) in the image's /boot; install one before the boot loader")
    _check_args(root, console, extra_args, title)
    lines = [
        "# Written by imagectl (slc-bootloader): legacy GRUB reads it on hvm, pygrub on xen-pv.",
        "default=0",
        f"timeout={timeout}",
    ]
    serial = hypervisor == "hvm" and console.startswith("ttyS")
    if serial:
        unit, _, speed = console[len("ttyS") :].partition(",")
        lines += [f"serial --unit={unit} --speed={speed or 9600}", f"terminal --timeout={timeout} serial console"]
    else:
        lines.append("hiddenmenu")
    prefix = boot_prefix.rstrip("/")
    for k in kernels:
        lines += [
            f"title {title} ({k.version})",
            f"\troot {grub_root}",
            f"\tkernel {prefix}/{k.image} {_cmdline(root, console, serial, extra_args)}",
        ]
        if k.initrd:
            lines.append(f"\tinitrd {prefix}/{k.initrd}")
    return "\n".join(lines) + "\n"


def elilo_conf(kernels: Sequence[Kernel], *, root: str, console: str, timeout: int = 5, extra_args: str = "") -> str:
    """The text of an ``elilo.conf`` for ia64: one image per kernel, the newest the default.

    Paths are relative to elilo.conf's own directory on the EFI system partition, where the kernel package puts
    them. Raises NotFoundError if ``kernels`` is empty.
    """
    if not kernels:
        raise NotFoundError(f"no kernel (vmlinuz-*) in the image's /{EFI_DIR}; install one before the boot loader")
    _check_args(root, console, extra_args, "")
    lines = [
        "# Written by imagectl (slc-bootloader).",
        "prompt",
        f"timeout={timeout * 10}",  # elilo counts tenths of a second
        f"default={kernels[0].version}",
        "relocatable",
    ]
    for k in kernels:
        lines += ["", f"image={k.image}", f"\tlabel={k.version}"]
        if k.initrd:
            lines.append(f"\tinitrd={k.initrd}")
        args = " ".join(a for a in (f"root={root}", f"console={console}", extra_args) if a)
        lines += ["\tread-only", f'\tappend="{args}"']
    return "\n".join(lines) + "\n"


_ARG = re.compile(r"[A-Za-z0-9=,._:/@+-]*\Z")


def _check_args(root: str, console: str, extra: str, title: str) -> None:
    """Refuse values that would break the file's syntax (newlines, quotes) rather than write a broken config."""
    for what, value in (("root", root), ("console", console)):
        if not value or not _ARG.match(value):
            raise InvalidInputError(f"boot loader {what} {value!r} has characters a kernel command line cannot carry")
    if any(c in extra + title for c in '\n\r"'):
        raise InvalidInputError("boot loader title and kernel arguments must be one line without double quotes")


def _write(path: Path, text: str) -> None:
    atomic_write(path, text.encode(), mode=0o600)  # grub.conf may carry a password one day; RHEL ships it 0600


def _symlink(link: Path, to: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(to)


def write_config(
    target: Path,
    *,
    release: str,
    hypervisor: str,
    arch: str,
    root: str,
    console: str | None = None,
    extra_args: str = "",
) -> list[Path]:
    """Write the boot loader configuration for the image tree at ``target``; return the files written.

    Raises NotFoundError if no kernel is installed, InvalidInputError for an unsupported combination or unsafe
    values, LocalIOError if the files cannot be written.
    """
    kernel_package(release, hypervisor, arch)  # validates the combination
    console = console or default_console(release, hypervisor)
    try:
        if arch == "ia64":
            efi = target / EFI_DIR
            conf = efi / "elilo.conf"
            _write(conf, elilo_conf(find_kernels(efi), root=root, console=console, extra_args=extra_args))
            _symlink(target / "etc/elilo.conf", f"../{EFI_DIR}/elilo.conf")
            return [conf]
        menu = target / "boot/grub/menu.lst"
        title = f"Scientific Linux CERN {release}"
        text = menu_lst(
            find_kernels(target / "boot"),
            root=root,
            hypervisor=hypervisor,
            console=console,
            title=title,
            extra_args=extra_args,
        )
        _write(menu, text)
        _symlink(target / "boot/grub/grub.conf", "menu.lst")
        _symlink(target / "etc/grub.conf", "../boot/grub/grub.conf")
        return [menu]
    except OSError as e:
        raise LocalIOError(f"cannot write the boot loader configuration under {target}: {e.strerror}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m imagectl.imaging.slc.bootloader", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("packages", "print the packages to install"), ("config", "write the configuration")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--release", required=True, choices=RELEASES)
        s.add_argument("--arch", required=True)
        s.add_argument("--hypervisor", required=True, choices=HYPERVISORS)
        if name == "config":
            s.add_argument("--target", required=True, type=Path, help="the image tree (DIB's $TARGET_ROOT)")
            s.add_argument("--root", default="LABEL=cloudimg-rootfs", help="the kernel's root= (default: %(default)s)")
            s.add_argument("--console", help="the kernel's console= (default: the guest's serial or Xen console)")
            s.add_argument("--extra-args", default="", help="more kernel arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``packages``: print the boot packages, one a line; ``config``: write the configuration files. Exit 0, or
    the error's exit code after one ``imagectl: error:`` line."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "packages":
            print("\n".join(packages(args.release, args.hypervisor, args.arch)))
            return 0
        for path in write_config(
            args.target,
            release=args.release,
            hypervisor=args.hypervisor,
            arch=args.arch,
            root=args.root,
            console=args.console,
            extra_args=args.extra_args,
        ):
            print(f"wrote {path}")
        return 0
    except ImagectlError as e:
        return report(e)


if __name__ == "__main__":
    raise SystemExit(main())
