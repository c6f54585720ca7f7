"""The partx-based kpartx shim, run for real on loop devices (root).

DIB maps an image's partitions with ``kpartx -a`` and unmaps them with ``kpartx -d``; on kernels without
device-mapper (this project's machines) imagectl points DIB at a shim that does the same with ``partx`` and links
``/dev/mapper/loopNpM`` to the partition nodes. Two builds at once share ``/dev/mapper``: the shim once removed the
directory when its own last link went, and a concurrent build's ``ln`` failed between its ``mkdir`` and its link
(two CI builds side by side). These tests map real loop devices, one at a time and two at once.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagectl.resources import hostcompat_dir
from tests.conftest import require_tools, unavailable

pytestmark = [pytest.mark.root]

KPARTX = hostcompat_dir() / "libexec" / "kpartx"


def _kpartx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(KPARTX), *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[Callable[[str], tuple[str, str]]]:
    """Make loop devices over small disk images with two partitions each; detach them afterwards."""
    if os.geteuid() != 0:
        unavailable("loop devices need root")
    require_tools("losetup", "sfdisk", "partx", install="util-linux fdisk")
    loops: list[str] = []

    def make(name: str) -> tuple[str, str]:
        disk = tmp_path / f"{name}.img"
        with disk.open("wb") as f:
            f.truncate(8 << 20)
        subprocess.run(
            ["sfdisk", "-q", str(disk)], input="label: dos\n,3MiB,L\n,,L\n", text=True, check=True, timeout=30
        )
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(disk)], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        loops.append(loop)
        return loop, os.path.basename(loop)

    yield make
    for loop in loops:
        _kpartx("-d", loop)
        subprocess.run(["losetup", "-d", loop], check=False, timeout=30)


def _links(base: str) -> list[str]:
    if not os.path.isdir("/dev/mapper"):
        return []
    return sorted(p for p in os.listdir("/dev/mapper") if p.startswith(base + "p"))


def test_add_links_each_partition_list_shows_them_and_delete_removes_only_its_own(loop_disk):
    loop, base = loop_disk("one")
    add = _kpartx("-av", loop)
    assert add.returncode == 0, add.stderr
    assert _links(base) == [f"{base}p1", f"{base}p2"]
    for p in (1, 2):
        node = Path("/dev/mapper") / f"{base}p{p}"
        assert node.resolve().is_block_device() or node.is_block_device()
        assert Path(f"/sys/class/block/{base}p{p}").exists()
    # -v prints what it mapped, in kpartx's words, with the partition's size and start in sectors
    assert f"add map {base}p1 " in add.stdout and " linear " in add.stdout
    sizes = [int(Path(f"/sys/class/block/{base}p{p}/size").read_text()) for p in (1, 2)]
    assert sizes[0] == 3 * 2048  # 3 MiB of 512-byte sectors
    listed = _kpartx("-l", loop)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [f"{base}p1", f"{base}p2"]

    other, other_base = loop_disk("two")
    assert _kpartx("-a", other).returncode == 0
    gone = _kpartx("-d", loop)
    assert gone.returncode == 0, gone.stderr
    assert _links(base) == [] and not Path(f"/sys/class/block/{base}p1").exists()
    assert _links(other_base) == [f"{other_base}p1", f"{other_base}p2"]  # the other disk's maps are untouched
    assert _kpartx("-d", other).returncode == 0
    assert os.path.isdir("/dev/mapper")  # kept when empty: removing it raced a concurrent add


def test_two_disks_mapped_and_unmapped_at_once_never_fail(loop_disk):
    """The race CI met: 25 rounds of add/check/delete on two loop devices in parallel threads. Before the fix
    one thread's ``rmdir /dev/mapper`` fell between the other's ``mkdir -p`` and ``ln`` now and then."""
    disks = [loop_disk("a"), loop_disk("b")]
    failures: list[str] = []
    start = threading.Barrier(len(disks))

    def churn(loop: str, base: str) -> None:
        start.wait(timeout=30)
        for i in range(25):
            add = _kpartx("-a", loop)
            if add.returncode != 0 or _links(base) != [f"{base}p1", f"{base}p2"]:
                failures.append(f"{base} round {i}: add rc {add.returncode} {add.stderr.strip()!r}; {_links(base)}")
                return
            rm = _kpartx("-d", loop)
            if rm.returncode != 0 or _links(base):
                failures.append(f"{base} round {i}: delete rc {rm.returncode} {rm.stderr.strip()!r}")
                return

    threads = [threading.Thread(target=churn, args=d) for d in disks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a kpartx round hung"
    assert failures == []
