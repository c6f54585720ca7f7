"""The boot test: a fake qemu for the logic (fast, offline), one real qemu boot of a tiny image (marked boot, slow).

The fake qemu is a Python script put first on PATH as qemu-system-x86_64 / qemu-system-i386. It reads a plan
(plan.json beside it) keyed by the -accel it was given, writes the plan's console output to the -serial file:PATH
with the plan's delays, writes the plan's qemu messages to stderr, then exits or sleeps (a hung guest), and records
its argv and pid (and, if asked, the pid of a child it starts) so the tests can check what ran and what was left.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagectl.errors import InvalidInputError, LocalIOError, ToolError, ToolMissingError, UnsupportedHostError
from imagectl.imaging import boottest
from imagectl.imaging.boottest import BootFailedError, KvmProbe, boot_test, detect_format
from imagectl.runner import run
from tests.conftest import require_tools, unavailable
from tests.hostile_yum import Member, newc

FAKE_QEMU = """\
import json, os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1]
accel = opt("-accel")
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"argv0": os.path.basename(sys.argv[0]), "args": args, "pid": os.getpid()}) + "\\n")
with open(os.path.join(here, "plan.json")) as f:
    plan = json.load(f)[accel]
if plan.get("child"):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", code])  # ignores SIGTERM: only the group SIGKILL ends it
    with open(os.path.join(here, "pids"), "a") as f:
        f.write(f"{child.pid}\\n")
with open(os.path.join(here, "pids"), "a") as f:
    f.write(f"{os.getpid()}\\n")
serial = open(opt("-serial")[len("file:"):], "wb", buffering=0)
for line in plan.get("stderr", []):
    sys.stderr.write(line + "\\n")
    sys.stderr.flush()
for delay, text in plan.get("output", []):
    time.sleep(delay)
    serial.write(text.encode())
if "exit" in plan:
    sys.exit(plan["exit"])
time.sleep(300)  # a hung guest: only the boot test's kill ends this
"""

# What a Debian 12 image prints, much faster than the real ~85 s.
GOOD: list[tuple[float, str]] = [
    (0.05, "\x1b[2J\x1b[1;1HGNU GRUB  version 2.06\r\n"),
    (0.05, "Loading Linux 6.1.0-56-amd64 ...\r\nLoading initial ramdisk ...\r\n"),
    (0.1, "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n"),
    (0.1, "[    1.234567] Run /init as init process\r\n"),
    (0.1, "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mgetty@tty1.service\x1b[0m\r\n"),
    (0.05, "\r\nDebian GNU/Linux 12 debian ttyS0\r\n\r\ndebian log"),
    (0.2, "in: "),  # the prompt arrives in two writes: found across reads
]
FAST = KvmProbe(first_output=1.0, kernel_after_initrd=1.0, kernel=5.0)


@dataclass
class Fake:
    bin: Path
    image: Path
    log: Path

    def plan(self, **per_accel: dict[str, Any]) -> None:
        (self.bin / "plan.json").write_text(json.dumps(per_accel))

    def calls(self) -> list[dict[str, Any]]:
        path = self.bin / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def accels(self) -> list[str]:
        return [c["args"][c["args"].index("-accel") + 1] for c in self.calls()]

    def pids(self) -> list[int]:
        path = self.bin / "pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """A fake qemu first on PATH, a raw image to boot, KVM reported usable; checks nothing is left running."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("qemu-system-x86_64", "qemu-system-i386"):
        script = bindir / name
        script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(boottest, "kvm_problem", lambda arch: None)
    monkeypatch.setattr(boottest, "POLL", 0.02)
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    f = Fake(bindir, image, tmp_path / "logs" / "boot.log")
    yield f
    leftover = [pid for pid in f.pids() if _alive(pid)]
    for pid in leftover:  # clean up before failing, so one bad test does not leave processes behind
        os.kill(pid, 9)
    assert not leftover, f"processes left running: {leftover}"


def _alive(pid: int, wait: float = 3.0) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent to reap it counts as gone)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def boot(fake: Fake, progress: list[str] | None = None, **kw: Any) -> boottest.BootResult:
    kw.setdefault("arch", "x86_64")
    kw.setdefault("timeout", 10)
    kw.setdefault("probe", FAST)
    kw.setdefault("log_path", fake.log)
    return boot_test(fake.image, on_progress=None if progress is None else progress.append, **kw)


def test_marker_found(fake: Fake) -> None:
    fake.plan(tcg={"output": GOOD}, kvm={"output": GOOD})
    progress: list[str] = []
    res = boot(fake, progress, accel="tcg")
    assert (res.accel, res.fell_back, res.note, res.image_format) == ("tcg", False, "", "raw")
    assert list(res.milestones) == ["first_output", "loading_initrd", "kernel", "userspace", "marker"]
    ms = res.milestones
    assert ms["first_output"] <= ms["loading_initrd"] <= ms["kernel"] <= ms["userspace"] <= ms["marker"]
    assert res.seconds == ms["marker"] < 60  # the fake prints at once; 60 s: generous on a loaded machine
    assert progress == ["bootloader", "kernel", "userspace", "login prompt"]
    assert res.log_path == fake.log and "debian login: " in fake.log.read_text()
    assert res.qemu_log_path.read_text().startswith("+ qemu-system-x86_64 -accel tcg")
    [call] = fake.calls()
    args = call["args"]
    assert call["argv0"] == "qemu-system-x86_64"
    assert "-snapshot" in args  # the image is never written
    assert args[args.index("-serial") + 1] == f"file:{fake.log}"
    assert args[args.index("-drive") + 1] == f"file={fake.image},if=virtio,format=raw"
    assert args[args.index("-m") + 1] == "1024"


def test_custom_marker_and_guest_that_powers_off_right_after_it(fake: Fake) -> None:
    fake.plan(tcg={"output": [(0.1, "Linux version 2.6.18\nIMAGECTL-OK\n")], "exit": 0})
    res = boot(fake, accel="tcg", marker="IMAGECTL-OK")
    assert res.accel == "tcg" and "marker" in res.milestones


def test_timeout_raises_with_tail_and_keeps_the_log(fake: Fake) -> None:
    lines = [(0.0, "Loading initial ramdisk ...\r\n[    0.000000] Linux version 6.1\r\n")]
    lines += [(0.0, f"[    {i}.000000] \x1b[1mline {i}\x1b[0m\r\n") for i in range(1, 41)]
    fake.plan(tcg={"output": lines})
    start = time.monotonic()
    with pytest.raises(BootFailedError) as info:
        boot(fake, accel="tcg", timeout=1.5)
    assert time.monotonic() - start < 60  # bounded: the deadline plus the kill (60 s: generous on a loaded machine)
    e = info.value
    assert e.exit_code == 23
    assert "'login:' not seen within 1.5 s" in e.message and "under tcg" in e.message
    assert "kernel started at 0 s" in e.message
    assert "last console line: '[ 40.000000] line 40'" in e.message  # one line: spaces collapse
    assert "\n" not in e.message
    assert e.hint is not None and str(fake.log) in e.hint
    assert len(e.tail) == 20 and e.tail[-1] == "[    40.000000] line 40" and e.tail[0] == "[    21.000000] line 21"
    assert all("\x1b" not in line for line in e.tail)
    assert e.log_path == fake.log and "line 1\x1b[0m" in fake.log.read_text()  # the whole raw log is kept


def test_no_output_at_all_says_so(fake: Fake) -> None:
    fake.plan(tcg={})
    with pytest.raises(BootFailedError) as info:
        boot(fake, accel="tcg", timeout=0.5)
    assert "no console output" in info.value.message and info.value.tail == ()
    assert info.value.hint is not None and "serial console" in info.value.hint


def test_kvm_silent_falls_back_to_tcg(fake: Fake) -> None:
    fake.plan(
        kvm={"output": [], "stderr": ["qemu: warning: host doesn't support requested feature"]}, tcg={"output": GOOD}
    )
    progress: list[str] = []
    res = boot(fake, progress)
    assert fake.accels() == ["kvm", "tcg"]
    assert (res.accel, res.fell_back) == ("tcg", True)
    assert "no console output in 1 s" in res.note
    assert 1.0 <= res.kvm_seconds < 60  # at least the 1 s probe deadline; the upper bound only says it ended
    assert progress[0].startswith("KVM abandoned after 1 s: no console output") and "falling back to TCG" in progress[0]
    assert progress[1:] == ["bootloader", "kernel", "userspace", "login prompt"]
    assert fake.log.with_name("boot.kvm.log").exists()  # the abandoned boot's console is kept beside
    assert "debian login" in fake.log.read_text()


def test_kvm_hang_after_loading_initial_ramdisk_is_detected(fake: Fake) -> None:
    grub = [(0.05, "GNU GRUB\r\nLoading Linux 6.1.0 ...\r\nLoading initial ramdisk ...\r\n")]
    fake.plan(kvm={"output": grub}, tcg={"output": GOOD})
    res = boot(fake, probe=KvmProbe(first_output=1.0, kernel_after_initrd=0.5, kernel=300.0))
    assert (res.accel, res.fell_back) == ("tcg", True)
    assert "no kernel output 0.5 s after 'Loading initial ramdisk'" in res.note
    assert res.kvm_seconds < 120  # caught by the initrd deadline, long before the 300 s one


def test_kvm_bootloader_only_is_bounded_by_the_kernel_deadline(fake: Fake) -> None:
    fake.plan(kvm={"output": [(0.05, "SYSLINUX 6.04\r\n")]}, tcg={"output": GOOD})
    res = boot(fake, probe=KvmProbe(first_output=1.0, kernel_after_initrd=1.0, kernel=1.5))
    assert res.fell_back and "no kernel output in 1.5 s" in res.note


def test_kvm_internal_error_falls_back_at_once(fake: Fake) -> None:
    fake.plan(kvm={"stderr": ["KVM internal error. Suberror: 1", "emulation failure"]}, tcg={"output": GOOD})
    res = boot(fake, probe=KvmProbe(first_output=300.0, kernel_after_initrd=300.0, kernel=300.0))
    assert res.fell_back and "KVM internal error" in res.note
    assert res.kvm_seconds < 120  # at once, not at a 300 s deadline (120 s: generous on a loaded machine)


def test_kvm_qemu_crash_falls_back(fake: Fake) -> None:
    fake.plan(
        kvm={"stderr": ["qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0"], "exit": 1}, tcg={"output": GOOD}
    )
    res = boot(fake)
    assert res.fell_back and "qemu exited with code 1" in res.note and "failed to set MSR" in res.note


def test_kvm_that_works_is_kept(fake: Fake) -> None:
    fake.plan(kvm={"output": GOOD}, tcg={"output": []})
    res = boot(fake)
    assert (res.accel, res.fell_back, res.note) == ("kvm", False, "")
    assert fake.accels() == ["kvm"]
    assert not fake.log.with_name("boot.kvm.log").exists()


def test_kvm_failing_after_the_kernel_started_does_not_fall_back(fake: Fake) -> None:
    """Once the kernel runs, KVM works: a later hang is the image's fault, and TCG would not fix it."""
    fake.plan(kvm={"output": GOOD[:3]}, tcg={"output": GOOD})
    with pytest.raises(BootFailedError) as info:
        boot(fake, timeout=1.5)
    assert fake.accels() == ["kvm"]
    assert info.value.accel == "kvm" and "under kvm" in info.value.message
    assert info.value.hint is not None and "--accel tcg" in info.value.hint


def test_tcg_failure_after_fallback_names_both(fake: Fake) -> None:
    fake.plan(kvm={}, tcg={"output": GOOD[:2]})
    with pytest.raises(BootFailedError) as info:
        boot(fake, timeout=1.0)
    assert "under tcg after KVM fell back (KVM abandoned after 1 s: no console output in 1 s)" in info.value.message
    assert "stuck after 'Loading initial ramdisk'" in info.value.message


def test_no_usable_kvm_goes_straight_to_tcg(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boottest, "kvm_problem", lambda arch: "/dev/kvm does not exist")
    fake.plan(kvm={"output": GOOD}, tcg={"output": GOOD})
    progress: list[str] = []
    res = boot(fake, progress)
    assert fake.accels() == ["tcg"]
    assert (res.accel, res.fell_back, res.note) == ("tcg", False, "KVM not used: /dev/kvm does not exist")
    assert progress[0] == "KVM not used: /dev/kvm does not exist"


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_forced_accel_is_the_only_one_tried(fake: Fake, accel: str) -> None:
    fake.plan(kvm={"output": []}, tcg={"output": []})  # both hang: a forced accel must not fall back
    with pytest.raises(BootFailedError) as info:
        boot(fake, accel=accel, timeout=1.5, probe=KvmProbe(0.5, 0.5, 0.5))
    assert fake.accels() == [accel]
    assert f"under {accel}:" in info.value.message and "not seen within 1.5 s" in info.value.message


def test_forced_kvm_internal_error_fails_fast_without_fallback(fake: Fake) -> None:
    fake.plan(kvm={"stderr": ["KVM internal error. Suberror: 1"]}, tcg={"output": GOOD})
    start = time.monotonic()
    with pytest.raises(BootFailedError, match="under kvm: KVM internal error"):
        boot(fake, accel="kvm", timeout=300)
    assert time.monotonic() - start < 120 and fake.accels() == [
        "kvm"
    ]  # generous on a loaded machine: what matters is that it ends long before the alternative


def test_forced_kvm_without_kvm_is_a_host_error(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boottest, "kvm_problem", lambda arch: "/dev/kvm does not exist")
    fake.plan()
    with pytest.raises(UnsupportedHostError, match="cannot use KVM here: /dev/kvm does not exist") as info:
        boot(fake, accel="kvm")
    assert info.value.exit_code == 22 and fake.calls() == []


def test_qemu_exiting_early_names_its_message(fake: Fake) -> None:
    fake.plan(tcg={"stderr": ["qemu-system-x86_64: -drive file=x: Could not open 'x': Permission denied"], "exit": 1})
    start = time.monotonic()
    with pytest.raises(BootFailedError) as info:
        boot(fake, accel="tcg", timeout=300)
    assert (
        time.monotonic() - start < 120
    )  # generous on a loaded machine: what matters is that it ends long before the alternative
    msg = info.value.message
    assert "qemu exited with code 1 before 'login:' appeared" in msg and "Could not open 'x'" in msg


def test_kernel_panic_fails_fast(fake: Fake) -> None:
    panic = [*GOOD[:3], (0.05, "[    2.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n")]
    fake.plan(tcg={"output": panic})
    start = time.monotonic()
    with pytest.raises(BootFailedError, match="Kernel panic - not syncing: VFS: Unable to mount root fs"):
        boot(fake, accel="tcg", timeout=300)
    assert (
        time.monotonic() - start < 120
    )  # generous on a loaded machine: what matters is that it ends long before the alternative


def test_process_group_is_killed_on_every_outcome(fake: Fake) -> None:
    """qemu and anything it started are gone after a pass, a timeout and a fallback (the fixture checks too)."""
    fake.plan(kvm={"output": [], "child": True}, tcg={"output": GOOD, "child": True})
    boot(fake)
    fake.plan(tcg={"output": [], "child": True})
    with pytest.raises(BootFailedError):
        boot(fake, accel="tcg", timeout=0.5)
    assert len(fake.pids()) == 6  # three fake qemus, each with a child
    assert not [pid for pid in fake.pids() if _alive(pid)]


def test_interrupted_boot_still_kills_qemu(fake: Fake) -> None:
    fake.plan(tcg={"output": GOOD[:4], "child": True})

    def interrupt(phase: str) -> None:
        if phase == "kernel":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        boot_test(fake.image, arch="x86_64", accel="tcg", log_path=fake.log, on_progress=interrupt)
    assert not [pid for pid in fake.pids() if _alive(pid)]


def test_qemu_dies_with_a_killed_imagectl(fake: Fake) -> None:
    """kill -9 of the process running the boot test (no finally runs) still ends qemu: PR_SET_PDEATHSIG."""
    fake.plan(tcg={"output": GOOD[:2]})
    code = (
        "import sys; from pathlib import Path; from imagectl.imaging.boottest import boot_test; "
        "boot_test(Path(sys.argv[1]), arch='x86_64', accel='tcg', timeout=60, log_path=Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(fake.image), str(fake.log)], env=env)
    try:
        deadline = time.monotonic() + 20
        while not fake.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        [qemu] = fake.pids()
        assert _alive(qemu, wait=0)
    finally:
        proc.kill()
        proc.wait()
    assert not _alive(qemu)


def test_i386_uses_qemu_system_i386(fake: Fake) -> None:
    fake.plan(tcg={"output": GOOD})
    boot(fake, arch="i386", accel="tcg", memory_mib=512, virtio=False)
    [call] = fake.calls()
    args = call["args"]
    assert call["argv0"] == "qemu-system-i386" and args[args.index("-m") + 1] == "512"
    assert args[args.index("-drive") + 1].endswith(",if=ide,format=raw") and "user,model=e1000" in args


def test_ia64_has_no_emulator(fake: Fake) -> None:
    with pytest.raises(UnsupportedHostError, match="QEMU has no ia64") as info:
        boot(fake, arch="ia64")
    assert info.value.exit_code == 22


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "sparc"}, "unknown architecture"),
        ({"accel": "hvf"}, "unknown accel"),
        ({"image_format": "raw,file.locking=off"}, "not a qemu image format"),
        ({"timeout": 0}, "positive timeout"),
    ],
)
def test_bad_arguments(fake: Fake, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        boot(fake, **kw)


def test_missing_image(fake: Fake, tmp_path: Path) -> None:
    with pytest.raises(LocalIOError, match="no such file"):
        boot_test(tmp_path / "nope.qcow2", arch="x86_64")


def test_missing_qemu(fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissingError, match="qemu-system-x86_64 not found") as info:
        boot(fake, accel="tcg")
    assert info.value.exit_code == 21 and info.value.hint is not None and "qemu-system-x86" in info.value.hint


def test_commas_in_the_image_path_are_escaped(fake: Fake, tmp_path: Path) -> None:
    image = tmp_path / "a,b.raw"
    image.write_bytes(bytes(4096))
    fake.plan(tcg={"output": GOOD})
    boot_test(image, arch="x86_64", accel="tcg", log_path=fake.log, timeout=10, image_format="raw")
    args = fake.calls()[0]["args"]
    assert args[args.index("-drive") + 1] == f"file={tmp_path}/a,,b.raw,if=virtio,format=raw"


def test_default_log_lives_in_a_kept_temp_dir(fake: Fake) -> None:
    fake.plan(tcg={"output": GOOD})
    res = boot_test(fake.image, arch="x86_64", accel="tcg", timeout=10)
    try:
        assert res.log_path.name == "disk.raw.console.log" and res.log_path.exists()
        assert res.qemu_log_path == res.log_path.with_name("disk.raw.console.qemu.log")
    finally:
        shutil.rmtree(res.log_path.parent)


# -- format detection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
        (b"QFI\xfb\x00\x00\x00\x01", "qcow"),
        (b"KDMV\x01\x00\x00\x00", "vmdk"),
        (b"# Disk DescriptorFile\n", "vmdk"),
        (b"conectix", "vpc"),
        (b"vhdxfile", "vhdx"),
        (b"\xeb\x63\x90", "raw"),
    ],
)
def test_format_from_magic(tmp_path: Path, head: bytes, fmt: str) -> None:
    image = tmp_path / "img"
    image.write_bytes(head + bytes(4096))
    assert boottest._format_from_magic(image) == fmt


def test_format_without_qemu_img_uses_magic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    image = tmp_path / "img.qcow2"
    image.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(4096))
    assert detect_format(image) == "qcow2"


def test_tar_is_not_bootable(tmp_path: Path) -> None:
    named = tmp_path / "root.tar.gz"
    named.write_bytes(bytes(1024))
    ustar = tmp_path / "root.img"
    ustar.write_bytes(bytes(257) + b"ustar\x0000" + bytes(1024))
    for image in (named, ustar):
        with pytest.raises(InvalidInputError, match="tar archive"):
            detect_format(image)


def test_format_from_qemu_img(tmp_path: Path) -> None:
    require_tools("qemu-img", install="qemu-utils")
    image = tmp_path / "disk.img"  # the name says nothing: the bytes decide
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"])
    assert detect_format(image) == "qcow2"
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(64))  # a qcow2 v3 header with nothing valid in it
    with pytest.raises(InvalidInputError, match="qemu-img cannot read it"):
        detect_format(bad)


# -- one real boot ---------------------------------------------------------------------------------------------------

REAL_TOOLS = ("qemu-system-x86_64", "qemu-img", "apt-get", "dpkg-deb", "mkfs.fat", "syslinux", "mcopy")
SYSLINUX_CFG = "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd\n"


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build a bootable qcow2 without root: Debian's cloud kernel and a busybox initramfs on a SYSLINUX FAT disk.

    The kernel and busybox come from Debian's archive (apt-get download, ~28 MB); the disk is a FAT filesystem
    with SYSLINUX in its boot sector (installed through mtools, so no loop device or mount). The guest's /init
    prints the given text and powers off.
    """
    missing = [tool for tool in REAL_TOOLS if shutil.which(tool) is None]
    if missing or not Path("/usr/lib/syslinux/modules/bios/ldlinux.c32").exists():
        unavailable(
            f"needs {', '.join(missing) or 'syslinux-common'} (apt-get install syslinux syslinux-common mtools)"
        )
    work = tmp_path_factory.mktemp("tiny")
    debs = work / "debs"
    debs.mkdir()
    try:
        depends = run(["apt-cache", "depends", "--important", "linux-image-cloud-amd64"]).output
        kernel_pkg = next(w for w in depends.split() if w.startswith("linux-image-") and w[12].isdigit())
        run(["apt-get", "download", "-q", kernel_pkg, "busybox-static"], cwd=debs, timeout=300)
    except (ToolError, StopIteration) as e:  # no package lists (apt-get update) or no Debian archive: not our bug
        unavailable(f"cannot download Debian's cloud kernel and busybox-static: {e}")
    for deb in debs.glob("*.deb"):
        run(["dpkg-deb", "-x", str(deb), str(work / "root")])
    [vmlinuz] = (work / "root" / "boot").glob("vmlinuz-*")
    busybox = (work / "root" / "bin" / "busybox").read_bytes()

    def make(say: str) -> Path:
        init = f"#!/bin/busybox sh\necho '{say}'\n/bin/busybox poweroff -f\n".encode()
        initrd = work / "initrd"
        initrd.write_bytes(  # an initramfs: the kernel reads the same "newc" cpio format rpm payloads use
            newc(
                [
                    Member("bin", 0o40755),
                    Member("dev", 0o40755),
                    Member("dev/console", 0o20600, rdev=(5, 1)),
                    Member("bin/busybox", 0o100755, busybox),
                    Member("init", 0o100755, init),
                ]
            )
        )
        cfg = work / "syslinux.cfg"
        cfg.write_text(SYSLINUX_CFG + "  APPEND console=ttyS0\n")
        disk = work / "disk.fat"
        disk.unlink(missing_ok=True)
        run(["mkfs.fat", "-C", str(disk), "32768"])
        run(["syslinux", "--install", str(disk)])
        for src, name in ((vmlinuz, "vmlinuz"), (initrd, "initrd"), (cfg, "syslinux.cfg")):
            run(["mcopy", "-i", str(disk), str(src), f"::{name}"])
        image = work / f"{say}.qcow2"
        run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(image)])
        return image

    return make


@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.network  # Debian's kernel and busybox, from the Debian archive
def test_real_qemu_boots_a_tiny_image(tiny_image: Callable[[str], Path], tmp_path: Path) -> None:
    """auto: KVM where it works, else (as on hosts where KVM guests hang) a detected hang and a TCG boot."""
    image = tiny_image("imagectl-boot-ok")
    before = image.read_bytes()
    progress: list[str] = []
    res = boot_test(
        image,
        arch="x86_64",
        marker="imagectl-boot-ok",
        timeout=120,
        log_path=tmp_path / "c.log",
        memory_mib=256,
        on_progress=progress.append,
    )
    assert res.image_format == "qcow2"
    assert {"first_output", "kernel", "userspace", "marker"} <= res.milestones.keys()
    assert progress[-4:] == ["bootloader", "kernel", "userspace", "login prompt"]
    assert "Linux version" in res.log_path.read_text()
    assert res.fell_back == (res.accel == "tcg" and boottest.kvm_problem("x86_64") is None)
    assert image.read_bytes() == before  # -snapshot: the image is untouched
    print(f"real boot: {res}")


@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.network
def test_real_qemu_guest_without_the_marker_fails(tiny_image: Callable[[str], Path], tmp_path: Path) -> None:
    """A guest that powers off without the marker: qemu exits, and the failure names the last console line."""
    image = tiny_image("no prompt here")
    with pytest.raises(BootFailedError) as info:
        boot_test(image, arch="x86_64", accel="tcg", timeout=120, log_path=tmp_path / "c.log", memory_mib=256)
    assert "qemu exited with code 0 before 'login:' appeared" in info.value.message
    assert "no prompt here" in "\n".join(info.value.tail)
