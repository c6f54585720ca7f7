"""Xen paravirtualised images without a Xen host: read the image's boot configuration with Xen's own ``pygrub``
and boot the kernel and initrd it extracts under qemu (direct kernel boot).

A xen-pv guest has no boot loader of its own: the host's ``pygrub`` (Debian ``xen-utils-4.17``) opens the disk,
reads ``/boot/grub/grub.cfg`` (or legacy GRUB's ``menu.lst``), and hands Xen the default entry's kernel, initrd
and command line. So what the boot test of a xen-pv image has to show is that pygrub finds an entry, and that
what it extracts boots the image to its login prompt. The one thing not exercised is the kernel's paravirtual
entry point under Xen itself; qemu enters the same kernel through its ordinary x86 boot protocol.

Everything pygrub prints comes from the image, so it is read as hostile: bounded in size and time, the kernel
and initrd paths must be files pygrub wrote into our private output directory, and the command line (which goes
to qemu as one argument, never through a shell) is capped and must be printable text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imagectl.errors import InvalidInputError, ToolError, ToolMissingError, UnsupportedHostError
from imagectl.imaging.boottest import BootFailedError

__all__ = ["DirectBoot", "find_pygrub", "pygrub_extract"]

PYGRUB_TIMEOUT = 120.0  # s: pygrub reads a few files from the image; a minute is already a hang
CONVERT_TIMEOUT = 600.0  # s: qemu-img convert of a compressed qcow2 to a sparse raw file
OUTPUT_MAX = 64 * 1024  # bytes of pygrub's stdout we read
ARGS_MAX = 4096  # bytes of kernel command line (Linux's COMMAND_LINE_SIZE on x86 is 2048; generous)
INSTALL_HINT = "install Xen's pygrub: apt-get install --no-install-recommends xen-utils-4.17 (no Xen host needed)"


@dataclass(frozen=True)
class DirectBoot:
    """What qemu boots instead of the disk's boot loader: the kernel, initrd and command line pygrub chose."""

    kernel: Path
    initrd: Path | None
    args: str
    pygrub: str  # the pygrub that read them, for the record


def find_pygrub() -> str:
    """Xen's pygrub: ``IMAGECTL_PYGRUB``, else ``pygrub`` on PATH, else Debian's ``/usr/lib/xen-*/bin/pygrub``."""
    explicit = os.environ.get("IMAGECTL_PYGRUB")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ToolMissingError(f"IMAGECTL_PYGRUB={explicit} is not an executable file", hint=INSTALL_HINT)
        return explicit
    debian = sorted(Path("/usr/lib").glob("xen-*/bin/pygrub"), reverse=True)  # the newest Xen first
    found = shutil.which("pygrub") or (os.fspath(debian[0]) if debian else None)
    if found is None:
        raise ToolMissingError("cannot boot-test a xen-pv image: Xen's pygrub is not installed", hint=INSTALL_HINT)
    return found


def pygrub_extract(image: Path, fmt: str, work: Path, *, pygrub: str | None = None) -> DirectBoot:
    """The kernel, initrd and command line ``pygrub`` takes from ``image`` (format ``fmt``), written under
    ``work`` (a private directory the caller removes). A qcow2 or other non-raw image is first converted to a
    sparse raw file there, since pygrub reads raw disks only.

    Raises BootFailedError (exit 23) when pygrub finds no bootable entry, UnsupportedHostError (22) for a kernel
    that boots only under Xen (SLC 4 and 5's kernel-xen; Debian's and SLC 6's kernels boot either way),
    ToolMissingError when pygrub or qemu-img is missing, ToolError when qemu-img fails.
    """
    tool = pygrub or find_pygrub()
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = image
    if fmt != "raw":
        raw = work / "disk.raw"
        _convert(image, fmt, raw)
    out_dir = work / "pygrub"
    out_dir.mkdir(mode=0o700)
    argv = [tool, "--quiet", "--output-format=simple0", f"--output-directory={out_dir}", os.fspath(raw)]
    done = _bounded(argv, PYGRUB_TIMEOUT, work / "pygrub.log")
    if done is None:
        raise BootFailedError(f"pygrub did not finish reading {image.name} in {PYGRUB_TIMEOUT:g} s")
    code, out, err = done
    if code != 0 or not out:
        raise BootFailedError(f"pygrub found nothing to boot in {image.name}: {err or f'exit {code}'}")
    return _parse(out, out_dir, image.name, tool)


def _convert(image: Path, fmt: str, raw: Path) -> None:
    if shutil.which("qemu-img") is None:
        raise ToolMissingError("qemu-img is not installed", hint="apt-get install qemu-utils")
    argv = ["qemu-img", "convert", "-f", fmt, "-O", "raw", os.fspath(image), os.fspath(raw)]
    done = _bounded(argv, CONVERT_TIMEOUT, raw.with_suffix(".log"))
    if done is None:
        raise ToolError(f"qemu-img convert of {image.name} took longer than {CONVERT_TIMEOUT:g} s")
    if done[0] != 0:
        raise ToolError(f"qemu-img convert {image.name} to raw failed: {done[2]}", returncode=done[0])


def _bounded(argv: list[str], timeout: float, log: Path) -> tuple[int, bytes, str] | None:
    """Run ``argv`` for at most ``timeout`` s, its output into files beside ``log`` (what the image makes pygrub
    print can be any size): exit code, the first OUTPUT_MAX bytes of stdout, the last line of stderr; None on
    timeout."""
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        try:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return None
    with out_path.open("rb") as f:
        head = f.read(OUTPUT_MAX)
    with err_path.open("rb") as f:
        f.seek(max(0, err_path.stat().st_size - OUTPUT_MAX))
        tail = _last_line(f.read())
    return code, head, tail


def _parse(out: bytes, out_dir: Path, name: str, tool: str) -> DirectBoot:
    """pygrub's ``simple0`` output: ``kernel PATH``, ``ramdisk PATH``, ``args TEXT``, each ended by a NUL."""
    fields: dict[str, str] = {}
    for item in out.split(b"\0"):
        key, _, value = item.decode("utf-8", "replace").strip("\n").partition(" ")
        if key in ("kernel", "ramdisk", "args") and key not in fields:
            fields[key] = value
    if "kernel" not in fields:
        raise BootFailedError(f"pygrub named no kernel for {name}")
    kernel = _ours(fields["kernel"], out_dir, "kernel", name)
    with kernel.open("rb") as f:
        header = f.read(0x206)
    if header[0x202:0x206] != b"HdrS":  # no x86 boot protocol: a Xen-only kernel (SLC 4/5's kernel-xen)
        raise UnsupportedHostError(
            f"{name}: the kernel pygrub chose boots only under Xen (a paravirtual-only kernel, without the x86 "
            "boot protocol qemu starts)",
            hint="boot-test this image on a Xen host",
        )
    initrd = _ours(fields["ramdisk"], out_dir, "initrd", name) if fields.get("ramdisk") else None
    args = fields.get("args", "").strip()
    if len(args.encode()) > ARGS_MAX or not args.isprintable():
        raise InvalidInputError(
            f"{name}: the kernel command line pygrub read is not printable text of at most {ARGS_MAX} bytes; refused"
        )
    return DirectBoot(kernel, initrd, args, tool)


def _ours(path: str, out_dir: Path, what: str, name: str) -> Path:
    """``path`` only if it is a regular file pygrub wrote directly into ``out_dir`` (not a link, not elsewhere)."""
    p = Path(path)
    if p.parent != out_dir or p.is_symlink() or not p.is_file():
        raise InvalidInputError(f"{name}: pygrub's {what} {path!r} is not a file in its output directory; refused")
    return p


def _last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""
