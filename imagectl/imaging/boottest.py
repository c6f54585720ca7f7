"""Boot an image under qemu and wait for its login prompt: the last check before an image is published.

The guest's serial console goes to a log file that is watched while it grows; the test passes when the marker
(``login:`` by default) appears. The image is opened with ``-snapshot``, so it is never modified.

Acceleration: ``auto`` uses KVM only when /dev/kvm is usable *and* a KVM boot shows signs of life early (a first
console byte within seconds, a kernel soon after the bootloader loaded the initrd). On some hosts KVM is present but
broken for guests (nested virtualisation without the CPU features the guest expects): the guest then spins with an
empty console, or stops right after "Loading initial ramdisk", or qemu reports "KVM internal error". Such a boot is
killed and the image booted again under TCG (software emulation, several times slower), which is said through
``on_progress`` and recorded in :class:`BootResult`. ``kvm`` and ``tcg`` force one.

Every boot is bounded in time and the qemu process group is always killed at the end. On failure
:class:`BootFailedError` (exit code 23) carries a one-line message, the path of the full console log and the last
console lines (``tail``) for the CLI to show.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagectl.errors import (
    BootTestError,
    InvalidInputError,
    LocalIOError,
    ToolError,
    ToolMissingError,
    UnsupportedHostError,
)
from imagectl.runner import Started, run, start

__all__ = ["EMULATORS", "BootFailedError", "BootResult", "KvmProbe", "boot_test", "detect_format", "kvm_problem"]

log = logging.getLogger("imagectl.boottest")

EMULATORS = {"x86_64": "qemu-system-x86_64", "i386": "qemu-system-i386"}
ACCELS = ("auto", "kvm", "tcg")
POLL = 0.1  # s between looks at the console log and the qemu process
TAIL_LINES = 20

# Milestones, in boot order, with the text that shows each on a serial console and the phase told to on_progress.
# "first_output" is any byte at all (the bootloader: GRUB, SYSLINUX, ...).
_KERNEL = re.compile(r"Linux version \d|^\[ *\d+\.\d{6}\] ", re.MULTILINE)
_USERSPACE = re.compile(r"Run /\S*init|Freeing unused kernel|systemd\[1\]|INIT: version|Welcome to (?!GRUB)")
_INITRD = re.compile(r"Loading initial ramdisk")
_PANIC = re.compile(r"Kernel panic - not syncing[^\n]*")
_PHASES = {"first_output": "bootloader", "kernel": "kernel", "userspace": "userspace", "marker": "login prompt"}
_KVM_BROKEN = "KVM internal error"  # qemu's own message when KVM cannot run the guest's code; it then stays paused

# Terminal control sequences (GRUB draws its menu with them, systemd colours its status) and the tail of one that
# a read cut in half, kept for the next read.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()*+][0-9A-Za-z]|[@-Z\\-_])")
_ANSI_CUT = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|[()*+])?\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class KvmProbe:
    """How long a KVM boot may stay silent before ``auto`` gives up on KVM and boots again under TCG.

    A healthy KVM guest shows its bootloader within a second or two and its kernel a second after the initrd is
    loaded, so these limits only cost time on hosts where KVM is broken. They assume the bootloader and kernel
    write to the serial console (diskimage-builder images do: console=ttyS0).
    """

    first_output: float = 15.0  # s from qemu start to the first console byte
    kernel_after_initrd: float = 60.0  # s from "Loading initial ramdisk" to the first kernel line
    kernel: float = 120.0  # s from qemu start to the first kernel line, whatever the bootloader printed


@dataclass(frozen=True)
class BootResult:
    """What a passing boot test measured."""

    accel: str  # "kvm" or "tcg": the accelerator of the boot that reached the marker
    fell_back: bool  # auto tried KVM first, saw it hang or fail, and booted again under TCG
    seconds: float  # qemu start -> marker, in the boot that passed
    log_path: Path  # serial console of that boot (kept)
    milestones: Mapping[str, float]  # first_output, loading_initrd, kernel, userspace, marker -> s after qemu start
    qemu_log_path: Path  # qemu's command lines and own messages (warnings, errors), all attempts
    image_format: str  # as given to qemu: qcow2, raw, vmdk, vpc, ...
    note: str = ""  # why KVM was not used, or why it was abandoned; empty when KVM was used or tcg was asked for
    kvm_seconds: float = 0.0  # time spent on an abandoned KVM boot
    total_seconds: float = 0.0  # the whole call


class BootFailedError(BootTestError):
    """The guest did not show the marker in time (or qemu stopped first); exit code 23.

    ``tail`` holds the last console lines, cleaned of terminal control codes, for the CLI to print under the
    one-line message; ``log_path`` is the full console log, which is kept.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        tail: Sequence[str] = (),
        log_path: Path | None = None,
        accel: str = "",
        milestones: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.tail = tuple(tail)
        self.log_path = log_path
        self.accel = accel
        self.milestones = dict(milestones or {})


def boot_test(
    image: Path,
    *,
    arch: str,
    marker: str = "login:",
    timeout: float = 600,
    accel: str = "auto",
    log_path: Path | None = None,
    memory_mib: int = 1024,
    on_progress: Callable[[str], None] | None = None,
    image_format: str | None = None,
    virtio: bool = True,
    probe: KvmProbe | None = None,
    cdrom: Path | None = None,
    direct: tuple[Path, Path | None, str] | None = None,
) -> BootResult:
    """Boot ``image`` (an ``arch`` guest) under qemu until ``marker`` appears on its serial console.

    ``timeout`` (s) bounds the boot that counts; an abandoned KVM probe adds at most ``probe.kernel`` s before it.
    ``log_path`` receives the console (default: a new directory under $TMPDIR; kept either way); qemu's own
    messages go beside it as ``<stem>.qemu.log`` and an abandoned KVM boot's console as ``<stem>.kvm.log``.
    ``image_format`` skips detection; ``virtio=False`` gives the guest an IDE disk and an e1000 NIC, for kernels
    older than virtio (2.6.25). ``on_progress`` receives the phases 'bootloader', 'kernel', 'userspace',
    'login prompt' and a sentence when KVM is not used or abandoned. ``probe`` (default :class:`KvmProbe`) sets
    how soon ``auto`` gives up on a silent KVM boot. ``cdrom`` is attached read-only as a CD-ROM (a node's
    context disk, made by ``imagectl context``). ``direct`` (kernel, initrd, command line) boots that kernel
    instead of the disk's boot loader, with ``console=ttyS0`` added (a xen-pv image: :mod:`pvboot`).

    Raises BootFailedError (exit 23) when the marker is not seen in time or qemu stops first, InvalidInputError
    for an unknown accel or arch or an image qemu cannot boot (a tar archive), UnsupportedHostError for ia64 (no
    emulator exists) or a forced KVM that this host cannot use, ToolMissingError when qemu is not installed and
    LocalIOError when the image cannot be read.
    """
    begin = time.monotonic()
    emulator = _emulator(arch)
    if accel not in ACCELS:
        raise InvalidInputError(f"unknown accelerator {accel!r}", hint="use one of: " + ", ".join(ACCELS))
    if not timeout > 0 or memory_mib < 16:
        raise InvalidInputError(
            f"boot test needs a positive timeout and some memory, not {timeout} s, {memory_mib} MiB"
        )
    if not image.is_file() or not os.access(image, os.R_OK):
        raise LocalIOError(f"{image}: no such file, or not readable")
    image = image.resolve()  # absolute: qemu must not read "x:y" in a relative name as a protocol prefix
    if image_format is not None and not re.fullmatch(r"[a-z0-9]+", image_format):
        raise InvalidInputError(f"not a qemu image format: {image_format!r}")  # it goes into qemu's -drive options
    fmt = image_format or detect_format(image)
    if cdrom is not None:
        if not cdrom.is_file() or not os.access(cdrom, os.R_OK):
            raise LocalIOError(f"{cdrom}: no such file, or not readable")
        cdrom = cdrom.resolve()
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="imagectl-boot-")) / f"{image.name}.console.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    qemu_log, kvm_log = _sibling(log_path, "qemu"), _sibling(log_path, "kvm")
    qemu_log.write_bytes(b"")
    kvm_log.unlink(missing_ok=True)
    say = on_progress or (lambda _text: None)
    ctx = _Ctx(image, fmt, marker, log_path, qemu_log, begin)

    note = ""
    use_kvm = accel == "kvm"
    if accel != "tcg":
        problem = kvm_problem(arch)
        if problem is not None and accel == "kvm":
            raise UnsupportedHostError(f"cannot use KVM here: {problem}", hint="use --accel tcg (or auto)")
        if problem is not None:
            note = f"KVM not used: {problem}"
            log.info("%s", note)
            say(note)
        use_kvm = problem is None

    def argv(acc: str) -> list[str]:
        return _qemu_argv(emulator, acc, image, fmt, log_path, memory_mib, virtio, cdrom) + _direct(direct)

    kvm_seconds = 0.0
    if use_kvm:
        watch = _Watch(log_path, qemu_log, marker, say, (probe or KvmProbe()) if accel == "auto" else None)
        outcome = watch.boot(argv("kvm"), emulator, timeout)
        if not outcome.abandoned:
            return _finish(ctx, outcome, "kvm", fell_back=False, note=note, kvm_seconds=0.0)
        kvm_seconds = outcome.seconds
        note = f"KVM abandoned after {outcome.seconds:.0f} s: {outcome.reason}"
        log.warning("%s; booting again under TCG", note)
        say(f"{note}; falling back to TCG (software emulation, slower)")
        if log_path.exists():
            log_path.replace(kvm_log)
    watch = _Watch(log_path, qemu_log, marker, say, None)
    outcome = watch.boot(argv("tcg"), emulator, timeout)
    return _finish(ctx, outcome, "tcg", fell_back=use_kvm, note=note, kvm_seconds=kvm_seconds)


def detect_format(image: Path) -> str:
    """The image's format as qemu names it (qcow2, raw, vmdk, vpc, vhdx, ...).

    Asks ``qemu-img info`` when it is installed, else reads the magic bytes. Raises InvalidInputError for a tar
    archive (the ``tar`` output format is a root filesystem, not a disk) or a file qemu-img cannot read.
    """
    if _is_tar(image):
        raise InvalidInputError(f"{image}: a tar archive is a root filesystem, not a bootable disk image")
    try:
        res = run(["qemu-img", "info", "--output=json", os.fspath(image.resolve())], timeout=60)
    except ToolMissingError:
        return _format_from_magic(image)
    except ToolError as e:
        raise InvalidInputError(f"{image}: qemu-img cannot read it: {e.message}") from None
    text = res.output
    try:
        info, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
        fmt = info["format"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError(f"{image}: unexpected qemu-img info output: {text.strip()[:200]!r}") from None
    if not isinstance(fmt, str) or not re.fullmatch(r"[a-z0-9]+", fmt):
        raise InvalidInputError(f"{image}: qemu-img reports an odd format {fmt!r}")
    return fmt


def kvm_problem(arch: str) -> str | None:
    """Why KVM cannot run an ``arch`` guest here, or None if /dev/kvm answers (which does not prove it works)."""
    host = platform.machine().lower()
    if not (host in ("x86_64", "amd64") or (host in ("i386", "i686") and arch == "i386")):
        return f"a {host} host cannot run {arch} guests under KVM"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "/dev/kvm does not exist (no virtualisation support, or the kvm module is not loaded)"
    except PermissionError:
        return "no permission to open /dev/kvm (add the user to group kvm)"
    except OSError as e:
        return f"cannot open /dev/kvm: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
    except OSError as e:
        return f"/dev/kvm does not answer: {e.strerror}"
    finally:
        os.close(fd)
    return None if version == 12 else f"/dev/kvm has KVM API version {version}, not 12"


# -- one boot ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    """What every attempt of one boot_test call shares."""

    image: Path
    fmt: str
    marker: str
    log_path: Path
    qemu_log: Path
    begin: float


@dataclass
class _Outcome:
    passed: bool
    abandoned: bool  # a KVM probe gave up: boot again under TCG
    reason: str  # why it failed or was abandoned
    seconds: float  # qemu start -> marker, or -> the end of the attempt
    milestones: dict[str, float]
    tail: list[str] = field(default_factory=list)


class _Watch:
    """Runs one qemu boot and watches its console log until the marker, a failure, a hang or the deadline."""

    def __init__(
        self, console: Path, qemu_log: Path, marker: str, say: Callable[[str], None], probe: KvmProbe | None
    ) -> None:
        self.console = _Console(console, marker)
        self.qemu_log = qemu_log
        self.say = say
        self.probe = probe
        self.marker = marker
        self._qemu_from = 0

    def boot(self, argv: list[str], emulator: str, timeout: float) -> _Outcome:
        self.console.path.unlink(missing_ok=True)
        self._qemu_from = self.qemu_log.stat().st_size  # earlier attempts' qemu messages are not this one's
        try:
            qemu = start(argv, log_file=self.qemu_log, what=emulator)
        except ToolMissingError as e:
            raise ToolMissingError(e.message, hint="install qemu (Debian: apt-get install qemu-system-x86)") from None
        with qemu:
            return self._watch(qemu, timeout)

    def _watch(self, qemu: Started, timeout: float) -> _Outcome:
        told: set[str] = set()
        while True:
            rc = qemu.poll()  # before reading, so all a guest wrote before qemu exited is read below
            now = time.monotonic() - qemu.started
            ms = self.console.read(now)
            for event, phase in _PHASES.items():
                if event in ms and event not in told:
                    told.add(event)
                    self.say(phase)
            if "marker" in ms:
                return self._outcome(True, False, "", ms["marker"])
            qemu_says = _last_lines(self.qemu_log, 40, self._qemu_from)
            broken = next((line for line in qemu_says if _KVM_BROKEN in line), None)
            if rc is not None:
                why = f"qemu exited with code {rc} before {self.marker!r} appeared"
                last = _qemu_message(qemu_says)
                reason = f"{why}: {last}" if last else why
                return self._outcome(False, self._probing(ms), reason, now)
            if broken is not None:  # qemu stays paused after this: waiting longer cannot help
                return self._outcome(False, self.probe is not None, broken.strip().rstrip("."), now)
            panic = self.console.panic
            if panic:
                return self._outcome(False, False, panic, now)
            hang = self._hang(ms, now)
            if hang:
                return self._outcome(False, True, hang, now)
            if now >= timeout:
                return self._outcome(False, False, f"{self.marker!r} not seen within {timeout:g} s", now)
            time.sleep(POLL)

    def _probing(self, ms: Mapping[str, float]) -> bool:
        """True while a KVM probe runs and the kernel has not shown up yet: a failure now means 'try TCG'."""
        return self.probe is not None and not ({"kernel", "userspace", "marker"} & ms.keys())

    def _hang(self, ms: Mapping[str, float], now: float) -> str:
        """Why this KVM boot looks hung ('' if it does not, or if no probe runs)."""
        p = self.probe
        if p is None or not self._probing(ms):
            return ""
        if "first_output" not in ms and now >= p.first_output:
            return f"no console output in {p.first_output:g} s"
        if "loading_initrd" in ms and now - ms["loading_initrd"] >= p.kernel_after_initrd:
            return f"no kernel output {p.kernel_after_initrd:g} s after 'Loading initial ramdisk'"
        if now >= p.kernel:
            return f"no kernel output in {p.kernel:g} s"
        return ""

    def _outcome(self, passed: bool, abandoned: bool, reason: str, seconds: float) -> _Outcome:
        return _Outcome(passed, abandoned, reason, seconds, dict(self.console.milestones), self.console.tail())


class _Console:
    """A serial console log that qemu is writing: read as it grows, cleaned, scanned for milestones."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path = path
        self.marker = marker
        self.milestones: dict[str, float] = {}
        self.panic = ""
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cut = ""  # an escape sequence split by the last read
        self._recent = ""  # the last 64 KiB of cleaned text: enough for the tail, bounded for chatty guests
        self._overlap = max(256, 2 * len(marker))  # text kept across reads so a pattern cut in two is still found

    def read(self, now: float) -> Mapping[str, float]:
        """Read what was added since the last call; note milestones first seen now (at ``now`` s)."""
        try:
            with self.path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:
                    self._offset = 0  # truncated: a new qemu reopened it
                f.seek(self._offset)
                while data := f.read(1 << 20):  # in pieces, so a chatty guest never needs much memory
                    self._offset += len(data)
                    self._scan(data, now)
        except FileNotFoundError:
            pass
        return self.milestones

    def _scan(self, data: bytes, now: float) -> None:
        self.milestones.setdefault("first_output", now)
        text = self._cut + self._decoder.decode(data)
        cut = _ANSI_CUT.search(text)
        self._cut = text[cut.start() :] if cut else ""
        text = _clean(text[: len(text) - len(self._cut)])
        window = self._recent[-self._overlap :] + text
        self._recent = (self._recent + text)[-65536:]
        for event, pattern in (("loading_initrd", _INITRD), ("kernel", _KERNEL), ("userspace", _USERSPACE)):
            if event not in self.milestones and pattern.search(window):
                self.milestones[event] = now
        if "marker" not in self.milestones and self.marker in window:
            self.milestones["marker"] = now
        if not self.panic and (panic := _PANIC.search(window)):
            self.panic = panic.group(0).strip()

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        """The last ``lines`` non-blank console lines, each at most 200 characters."""
        kept = [line.rstrip()[:200] for line in self._recent.split("\n") if line.strip()]
        return kept[-lines:]


# -- helpers -------------------------------------------------------------------------------------------------------


def _finish(ctx: _Ctx, outcome: _Outcome, accel: str, *, fell_back: bool, note: str, kvm_seconds: float) -> BootResult:
    """The result of a passed boot, or BootFailedError for a failed one."""
    if outcome.passed:
        log.info("%s: %r after %.1f s under %s", ctx.image.name, ctx.marker, outcome.seconds, accel)
        return BootResult(
            accel=accel,
            fell_back=fell_back,
            seconds=outcome.seconds,
            log_path=ctx.log_path,
            milestones=outcome.milestones,
            qemu_log_path=ctx.qemu_log,
            image_format=ctx.fmt,
            note=note,
            kvm_seconds=kvm_seconds,
            total_seconds=time.monotonic() - ctx.begin,
        )
    last = outcome.tail[-1] if outcome.tail else ""
    last_text = f"last console line: {last[:120]!r}" if last else "no console output at all"
    fallback = f" after KVM fell back ({note})" if fell_back else ""
    hint = f"full console log: {ctx.log_path}; qemu messages: {ctx.qemu_log}"
    if accel == "kvm":
        hint += "; if KVM is unreliable on this host, try --accel tcg"
    elif not outcome.milestones:
        hint += "; no output at all: does the image send its bootloader and kernel to the serial console (ttyS0)?"
    raise BootFailedError(
        f"boot test of {ctx.image.name} failed under {accel}{fallback}: {outcome.reason} "
        f"({_stage(outcome.milestones)}); {last_text}",
        hint,
        tail=outcome.tail,
        log_path=ctx.log_path,
        accel=accel,
        milestones=outcome.milestones,
    )


def _emulator(arch: str) -> str:
    if arch == "ia64":
        raise UnsupportedHostError(
            "cannot boot-test ia64 images: QEMU has no ia64 (Itanium) emulator",
            hint="boot-test ia64 images on an Itanium host, or skip the boot test for ia64",
        )
    if arch not in EMULATORS:
        raise InvalidInputError(f"unknown architecture {arch!r}", hint="use one of: " + ", ".join(EMULATORS))
    return EMULATORS[arch]


def _qemu_argv(
    emulator: str,
    accel: str,
    image: Path,
    fmt: str,
    console: Path,
    memory_mib: int,
    virtio: bool,
    cdrom: Path | None = None,
) -> list[str]:
    """The qemu command line: no display, no monitor, console to a file, the image read-only via -snapshot."""
    disk = "virtio" if virtio else "ide"
    nic = "virtio-net-pci" if virtio else "e1000"
    extra = ["-drive", f"file={_opt(os.fspath(cdrom))},media=cdrom,readonly=on,format=raw"] if cdrom else []
    return [
        emulator,
        "-accel",
        accel,
        "-m",
        str(memory_mib),
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",  # the legacy -serial syntax takes the rest verbatim: no option escaping needed
        "-snapshot",  # writes go to a temporary overlay; the image is never modified
        "-drive",
        f"file={_opt(os.fspath(image))},if={disk},format={fmt}",
        "-nic",
        f"user,model={nic}",  # a DHCP answer, so the guest's network setup does not wait for a timeout
        *extra,
    ]


def _direct(direct: tuple[Path, Path | None, str] | None) -> list[str]:
    """qemu's direct kernel boot; the console added last, so the kernel's and getty's console is the serial port
    the boot test watches, whatever console (Xen's hvc0) the image's own command line names."""
    if direct is None:
        return []
    kernel, initrd, args = direct
    return [
        "-kernel",
        os.fspath(kernel),
        *(["-initrd", os.fspath(initrd)] if initrd is not None else []),
        "-append",
        f"{args} console=ttyS0,115200".strip(),
    ]


def _opt(value: str) -> str:
    """Escape a value inside a qemu option list (a comma is written as two)."""
    return value.replace(",", ",,")


def _sibling(log_path: Path, tag: str) -> Path:
    return log_path.with_name(f"{log_path.stem}.{tag}{log_path.suffix or '.log'}")


def _clean(text: str) -> str:
    """Console text without terminal control sequences; carriage returns become line breaks."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def _stage(ms: Mapping[str, float]) -> str:
    """How far the boot got, for the failure message."""
    if "userspace" in ms:
        return f"userspace started at {ms['userspace']:.0f} s"
    if "kernel" in ms:
        return f"kernel started at {ms['kernel']:.0f} s"
    if "loading_initrd" in ms:
        return f"stuck after 'Loading initial ramdisk' at {ms['loading_initrd']:.0f} s"
    if "first_output" in ms:
        return f"bootloader output at {ms['first_output']:.0f} s, no kernel"
    return "no console output"


def _last_lines(path: Path, n: int, start: int = 0) -> list[str]:
    """The last ``n`` lines of a log, looking no further back than byte ``start`` or 8 KiB."""
    try:
        with path.open("rb") as f:
            f.seek(max(start, os.fstat(f.fileno()).st_size - 8192))
            return f.read().decode("utf-8", "replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def _qemu_message(lines: Sequence[str]) -> str:
    """qemu's last own message (an error naming the cause), skipping our '+ cmd' lines."""
    said = [line.strip() for line in lines if line.strip() and not line.startswith("+ ")]
    return said[-1][:200] if said else ""


def _is_tar(image: Path) -> bool:
    if image.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar.bz2")):
        return True
    with image.open("rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"


def _format_from_magic(image: Path) -> str:
    with image.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"QFI\xfb"):
        return "qcow" if head[4:8] == b"\x00\x00\x00\x01" else "qcow2"
    if head.startswith((b"KDMV", b"# Disk DescriptorFile")):
        return "vmdk"
    if head.startswith(b"conectix"):
        return "vpc"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    return "raw"
