"""Xen paravirtualised images booted without Xen (imagectl/imaging/pvboot.py): what pygrub reads from the image is
booted directly by qemu. Here pygrub and qemu are stand-ins, so every hostile answer can be given; the real pygrub
(Debian xen-utils-4.17) reads the real demo image in tests/test_build_integration.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError, ToolMissingError, UnsupportedHostError
from imagectl.imaging.boottest import BootFailedError, boot_test
from imagectl.imaging.pvboot import ARGS_MAX, pygrub_extract
from tests.conftest import CliResult
from tests.test_boottest import FAST, GOOD, Fake, fake  # noqa: F401  (fake: the stand-in qemu fixture)

# A stand-in pygrub: does what plan.json in its directory says (a --output-format=simple0 answer, files to write
# into --output-directory, links, an exit code), and records its arguments.
FAKE_PYGRUB = """\
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
plan = json.load(open(os.path.join(here, "pygrub.json")))
json.dump(sys.argv[1:], open(os.path.join(here, "pygrub-args.json"), "w"))
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--output-directory="))
for name, data in plan.get("files", {}).items():
    open(os.path.join(out, name), "w").write(data)
for name, target in plan.get("links", {}).items():
    os.symlink(target, os.path.join(out, name))
sys.stderr.write(plan.get("stderr", ""))
sys.stdout.write(plan.get("stdout", "").replace("OUT", out))
sys.exit(plan.get("exit", 0))
"""
DEBIAN_ARGS = "root=LABEL=cloudimg-rootfs ro console=tty0 console=hvc0"
BZIMAGE = "k" * 0x202 + "HdrS"  # where a kernel qemu can start has the x86 boot protocol's signature
GOOD_PLAN = {
    "files": {"boot_kernel.x1": BZIMAGE, "boot_ramdisk.y2": "initrd"},
    "stdout": f"kernel OUT/boot_kernel.x1\0ramdisk OUT/boot_ramdisk.y2\0args {DEBIAN_ARGS}\0",
}


@pytest.fixture
def pygrub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "pygrub-bin"
    d.mkdir()
    script = d / "pygrub"
    script.write_text(f"#!{sys.executable}\n{FAKE_PYGRUB}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("IMAGECTL_PYGRUB", str(script))
    return d


def _plan(d: Path, plan: dict[str, object]) -> None:
    (d / "pygrub.json").write_text(json.dumps(plan))


def _raw(tmp_path: Path) -> Path:
    image = tmp_path / "pv.raw"
    image.write_bytes(bytes(1 << 20))
    return image


def test_pygrub_answer_becomes_a_direct_boot(pygrub: Path, tmp_path: Path) -> None:
    _plan(pygrub, GOOD_PLAN)
    pv = pygrub_extract(_raw(tmp_path), "raw", tmp_path / "work")
    assert pv.kernel == tmp_path / "work" / "pygrub" / "boot_kernel.x1" and pv.kernel.read_text() == BZIMAGE
    assert pv.initrd is not None and pv.initrd.read_text() == "initrd"
    assert pv.args == DEBIAN_ARGS and pv.pygrub == str(pygrub / "pygrub")
    args = json.loads((pygrub / "pygrub-args.json").read_text())
    assert args[:2] == ["--quiet", "--output-format=simple0"] and args[-1] == str(tmp_path / "pv.raw")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (  # a kernel path outside the directory pygrub was given: never handed to qemu
            {"stdout": "kernel /etc/shadow\0args ro\0"},
            "pv.raw: pygrub's kernel '/etc/shadow' is not a file in its output directory; refused",
        ),
        (  # a link in the output directory, pointing out of it
            {"links": {"k": "/etc/shadow"}, "stdout": "kernel OUT/k\0args ro\0"},
            "pv.raw: pygrub's kernel 'OUT/k' is not a file in its output directory; refused",
        ),
        (  # an initrd that pygrub never wrote
            {"files": {"k": BZIMAGE}, "stdout": "kernel OUT/k\0ramdisk OUT/gone\0args ro\0"},
            "pv.raw: pygrub's initrd 'OUT/gone' is not a file in its output directory; refused",
        ),
        (  # a command line with a terminal escape from the image's grub.cfg
            {"files": {"k": BZIMAGE}, "stdout": "kernel OUT/k\0args ro \x1b]0;owned\x07\0"},
            f"pv.raw: the kernel command line pygrub read is not printable text of at most {ARGS_MAX} bytes; refused",
        ),
        (
            {"files": {"k": BZIMAGE}, "stdout": "kernel OUT/k\0args " + "a" * (ARGS_MAX + 1) + "\0"},
            f"pv.raw: the kernel command line pygrub read is not printable text of at most {ARGS_MAX} bytes; refused",
        ),
    ],
    ids=["kernel-elsewhere", "kernel-link", "initrd-missing", "args-escape", "args-too-long"],
)
def test_hostile_pygrub_answers_are_refused(pygrub: Path, tmp_path: Path, plan: dict[str, str], message: str) -> None:
    _plan(pygrub, plan)
    work = tmp_path / "work"
    with pytest.raises(InvalidInputError) as e:
        pygrub_extract(_raw(tmp_path), "raw", work)
    assert str(e.value) == message.replace("OUT", str(work / "pygrub"))


def test_no_bootable_entry_is_a_failed_boot_with_pygrubs_reason(pygrub: Path, tmp_path: Path) -> None:
    _plan(pygrub, {"exit": 1, "stderr": "Traceback ...\nRuntimeError: Unable to find partition containing kernel\n"})
    with pytest.raises(BootFailedError) as e:
        pygrub_extract(_raw(tmp_path), "raw", tmp_path / "work")
    assert (
        str(e.value)
        == "pygrub found nothing to boot in pv.raw: RuntimeError: Unable to find partition containing kernel"
    )
    assert e.value.exit_code == 23
    _plan(pygrub, {"stdout": "args ro\0"})  # exit 0 but no kernel named
    with pytest.raises(BootFailedError, match=r"^pygrub named no kernel for pv.raw$"):
        pygrub_extract(_raw(tmp_path), "raw", tmp_path / "work2")


def test_a_xen_only_kernel_is_not_booted_under_qemu(pygrub: Path, tmp_path: Path) -> None:
    """SLC 4 and 5's kernel-xen has no x86 boot protocol header: qemu cannot start it, so the test says the image
    boots only under Xen (exit 22, which ci/stage.sh reports as no boot test here) instead of failing a boot."""
    _plan(pygrub, {"files": {"k": "\x7fELF" + "x" * 0x300}, "stdout": "kernel OUT/k\0args ro\0"})
    with pytest.raises(UnsupportedHostError) as e:
        pygrub_extract(_raw(tmp_path), "raw", tmp_path / "work")
    assert e.value.exit_code == 22
    assert str(e.value) == (
        "pv.raw: the kernel pygrub chose boots only under Xen (a paravirtual-only kernel, without the x86 boot "
        "protocol qemu starts)"
    )


def test_missing_pygrub_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGECTL_PYGRUB", str(tmp_path / "nope"))
    with pytest.raises(ToolMissingError) as e:
        pygrub_extract(_raw(tmp_path), "raw", tmp_path / "work")
    assert e.value.exit_code == 21 and "xen-utils-4.17" in (e.value.hint or "")


def test_direct_boot_puts_the_serial_console_last(fake: Fake, tmp_path: Path) -> None:  # noqa: F811
    fake.plan(kvm={"output": GOOD})
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    res = boot_test(fake.image, arch="x86_64", log_path=fake.log, probe=FAST, direct=(kernel, initrd, DEBIAN_ARGS))
    assert res.accel == "kvm"
    [call] = fake.calls()
    args = call["args"]
    assert args[args.index("-kernel") + 1] == str(kernel) and args[args.index("-initrd") + 1] == str(initrd)
    assert args[args.index("-append") + 1] == DEBIAN_ARGS + " console=ttyS0,115200"


def test_cli_boots_a_xen_pv_build_through_pygrub(
    pygrub: Path,
    fake: Fake,  # noqa: F811
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    """`imagectl test --record` takes the hypervisor from the build record: a xen-pv image goes through pygrub."""
    from tests.test_buildrecord import BASE

    _plan(pygrub, GOOD_PLAN)
    fake.plan(kvm={"output": GOOD})
    data = fake.image.read_bytes()
    record = {k: v for k, v in BASE.items() if k != "boot_test"}
    record["target"] = {**BASE["target"], "hypervisor": "xen-pv"}
    sha256 = hashlib.sha256(data).hexdigest()
    record["images"] = [{"file": fake.image.name, "format": "raw", "size": len(data), "sha256": sha256}]
    (fake.image.parent / "disk.build.json").write_text(json.dumps(record))
    r = cli("test", fake.image, "--record", "--json", "--timeout", "30")
    assert r.code == 0, r.err
    assert json.loads(r.out)["hypervisor"] == "xen-pv"
    assert "xen-pv: booting what" in r.err and "command line: " + DEBIAN_ARGS in r.err
    assert "-kernel" in fake.calls()[0]["args"]
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("imagectl-pv-*/pygrub/boot_kernel.x1"))
