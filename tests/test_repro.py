"""imagectl.imaging.repro: two synthetic DIB-like disks of the same tree, made differently, normalize to the same bytes.

No DIB: each disk is an MBR (sfdisk) with one ext4 partition made by ``mke2fs -d`` from a copy of one small tree,
the two copies created in different orders, with different mtimes (of the files written "at build time"),
atimes and ctimes, fs UUIDs, hash seeds and disk ids, and with the build-host noise DIB leaves (host paths in the
manifests, ldconfig's aux-cache, a random iSCSI name, the build day in /etc/shadow, the fs UUID in grub.cfg).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError, ToolError
from imagectl.imaging import repro
from imagectl.imaging.builder import image_identity
from imagectl.imaging.repro import Ids, derive_ids, normalize
from tests.conftest import require_tools, unavailable

pytestmark = [pytest.mark.root]

EPOCH = 1_700_000_000  # 2023-11-14
OLD = EPOCH - 86400 * 30  # "package" files: older than the epoch, kept as they are
MIB = 1024 * 1024
DISK = 48 * MIB
IDS = derive_ids("test-build-key", EPOCH)


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (loop devices, mount)")
    require_tools("sfdisk", "losetup", "mke2fs", "debugfs", "e2fsck", "dumpe2fs", "mount", install="e2fsprogs")


# What the tree holds: path -> content (bytes), a symlink target ("->x"), or None for a directory.
FILES: dict[str, bytes | str | None] = {
    "etc": None,
    "etc/hostname": b"demo\n",
    "etc/shadow": b"root:*:{day}:0:99999:7:::\nuser:!:{day}:0:99999:7:::\n",
    "etc/iscsi": None,
    "etc/iscsi/initiatorname.iscsi": b"## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:{rand}\n",
    "etc/dib-manifests": None,
    "etc/dib-manifests/dib_arguments": b"-x -o /tmp/host-{rand}/out/demo-x86_64 -t raw vm\n",
    "etc/dib-manifests/dib_environment": b'declare -x DIB_IMAGE_CACHE="/var/cache/x/work/demo-x86_64.{pid}"\n',
    "boot": None,
    "boot/grub": None,
    "boot/grub/grub.cfg": b"search --no-floppy --fs-uuid --set=root {uuid}\nlinux /vmlinuz root=LABEL=r\n",
    "usr": None,
    "usr/bin": None,
    "usr/bin/tool": b"#!/bin/sh\necho tool\n" * 300,
    "usr/bin/tool-link": "->tool",
    "usr/share": None,
    "usr/share/doc": None,
    "usr/share/doc/README": b"package documentation\n" * 50,
    "var": None,
    "var/cache": None,
    "var/cache/ldconfig": None,
    "var/cache/ldconfig/aux-cache": b"{rand}",
}
OLD_FILES = {"usr/bin/tool", "usr/share/doc/README", "etc/hostname"}  # mtimes below the epoch
DELETED = {"var/cache/ldconfig/aux-cache"}
EDITED = {
    "etc/shadow",
    "etc/iscsi/initiatorname.iscsi",
    "boot/grub/grub.cfg",
    "etc/dib-manifests/dib_arguments",
    "etc/dib-manifests/dib_environment",
}


def make_tree(root: Path, *, seed: int, fs_uuid: str, reverse: bool) -> None:
    """The tree, created in forward or reverse order; "build-time" entries get mtimes after the epoch."""
    root.mkdir()
    day = 19700 + seed  # the build day in /etc/shadow: differs between the builds
    dirs = [p for p, c in FILES.items() if c is None]
    others = [p for p, c in FILES.items() if c is not None]
    for p in sorted(dirs, reverse=reverse):
        (root / p).mkdir(parents=True, exist_ok=True)
    for p in sorted(others, reverse=reverse):
        c = FILES[p]
        if isinstance(c, str):
            (root / p).symlink_to(c[2:])
        else:
            assert c is not None
            text = c.replace(b"{day}", str(day).encode()).replace(b"{uuid}", fs_uuid.encode())
            (root / p).write_bytes(
                text.replace(b"{rand}", os.urandom(8).hex().encode()).replace(b"{pid}", b"%d" % seed)
            )
        time.sleep(0.01)  # distinct ctimes
    hard = root / "usr/bin/tool-hard"
    os.link(root / "usr/bin/tool", hard)
    os.chmod(root / "usr/bin/tool", 0o755)
    os.chmod(root / "etc/shadow", 0o640)
    # mtimes: package files old (the same in both), the rest at "build time" (differs); atimes differ too
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*dirnames, *filenames, ""]:
            path = Path(dirpath, name) if name else Path(dirpath)
            rel = path.relative_to(root).as_posix()
            mtime = OLD if rel in OLD_FILES else EPOCH + 3600 * (seed + 1) + len(rel)
            os.utime(path, (EPOCH + 777 * seed + len(rel), mtime), follow_symlinks=False)


def make_disk(disk: Path, tree: Path, *, fs_uuid: str, hash_seed: str, label_id: int) -> None:
    with disk.open("wb") as f:
        f.truncate(DISK)
    table = f"label: dos\nlabel-id: 0x{label_id:08x}\nstart=2048, type=83, bootable\n"
    subprocess.run(["sfdisk", "-q", disk], input=table, text=True, check=True, timeout=60)
    # some "GRUB" bytes in the gap, the same in both
    with disk.open("r+b") as f:
        f.seek(512)
        f.write(b"core.img" * 64)
    blocks = (DISK - MIB) // 4096
    subprocess.run(
        [
            *("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "cloudimg-rootfs", "-U", fs_uuid),
            *("-E", f"hash_seed={hash_seed},offset={MIB}", "-d", tree, disk, str(blocks)),
        ],
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("repro")
    specs = {
        "a": ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", 0x7877CA5F, False),
        "b": ("33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444", 0xD9DB4F9B, True),
    }
    paths: dict[str, Path] = {}
    for seed, (name, (fs_uuid, hash_seed, label_id, reverse)) in enumerate(specs.items()):
        make_tree(d / f"tree-{name}", seed=seed, fs_uuid=fs_uuid, reverse=reverse)
        make_disk(d / f"{name}.raw", d / f"tree-{name}", fs_uuid=fs_uuid, hash_seed=hash_seed, label_id=label_id)
        t = time.monotonic()
        normalize(d / f"{name}.raw", d / f"{name}.norm.raw", epoch=EPOCH, ids=IDS)
        print(f"normalize {name}: {time.monotonic() - t:.1f} s")
        paths[name] = d / f"{name}.norm.raw"
        paths[f"tree-{name}"] = d / f"tree-{name}"
        paths[f"in-{name}"] = d / f"{name}.raw"
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def mounted_ro(disk: Path, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", f"ro,noload,loop,offset={MIB}", disk, where], check=True, timeout=60)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True, timeout=60)


def test_two_different_builds_normalize_to_the_same_bytes(built: dict[str, Path]) -> None:
    assert sha256(built["in-a"]) != sha256(built["in-b"])
    assert sha256(built["a"]) == sha256(built["b"])
    data = built["a"].read_bytes()
    assert data[440:444] == IDS.disk_id.to_bytes(4, "little")  # MBR disk id from the build key
    assert data[512:1024] == b"core.img" * 64  # the gap (GRUB's core.img) kept
    assert built["a"].stat().st_size == DISK


def test_normalized_fs_is_clean_with_the_derived_ids(built: dict[str, Path]) -> None:
    fs = f"{built['a']}?offset={MIB}"
    subprocess.run(["e2fsck", "-fn", fs], check=True, capture_output=True, timeout=120)
    sb = subprocess.run(["dumpe2fs", "-h", fs], check=True, capture_output=True, text=True, timeout=60).stdout
    assert f"Filesystem UUID:          {IDS.fs_uuid}" in sb
    assert f"Directory Hash Seed:      {IDS.hash_seed}" in sb
    assert "cloudimg-rootfs" in sb
    assert "Lifetime writes" not in sb  # 0: what mke2fs wrote depends on the source's layout


def test_tree_is_kept_and_only_the_noise_changed(built: dict[str, Path], tmp_path: Path) -> None:
    src = built["tree-a"]
    with mounted_ro(built["a"], tmp_path / "mnt") as mnt:
        for rel, kind in FILES.items():
            if rel in DELETED:
                assert not os.path.lexists(mnt / rel), rel
                continue
            s, n = os.lstat(src / rel), os.lstat(mnt / rel)
            assert (stat.S_IFMT(n.st_mode), stat.S_IMODE(n.st_mode)) == (
                stat.S_IFMT(s.st_mode),
                stat.S_IMODE(s.st_mode),
            )
            assert n.st_mtime == min(s.st_mtime, EPOCH), rel  # clamped, older kept
            assert n.st_ctime == EPOCH and n.st_atime == EPOCH, rel  # pinned
            if isinstance(kind, str):
                assert os.readlink(mnt / rel) == kind[2:]
            elif kind is not None and rel not in EDITED:
                assert (mnt / rel).read_bytes() == (src / rel).read_bytes(), rel
        assert os.lstat(mnt / "usr/bin/tool").st_ino == os.lstat(mnt / "usr/bin/tool-hard").st_ino  # hard link
        assert (mnt / "lost+found").is_dir()
        day = EPOCH // 86400
        assert (mnt / "etc/shadow").read_text().split("\n")[0] == f"root:*:{day}:0:99999:7:::"
        assert "GenerateName=yes" in (mnt / "etc/iscsi/initiatorname.iscsi").read_text()
        assert (mnt / "etc/dib-manifests/dib_arguments").read_text() == "-x -o demo-x86_64 -t raw vm\n"
        assert (mnt / "etc/dib-manifests/dib_environment").read_text() == 'declare -x DIB_IMAGE_CACHE="demo-x86_64"\n'
        assert f"--set=root {IDS.fs_uuid}\n" in (mnt / "boot/grub/grub.cfg").read_text()


def test_derive_ids_is_a_function_of_key_and_epoch() -> None:
    assert derive_ids("k", 1) == derive_ids("k", 1)
    assert derive_ids("k", 1) != derive_ids("k", 2) != derive_ids("j", 2)
    assert isinstance(derive_ids("k", 1), Ids)


def test_repack_initrd_is_deterministic_and_clamps() -> None:
    def member(name: bytes, body: bytes, ino: int, mtime: int) -> bytes:
        fields = [ino, 0o100644, 0, 0, 1, mtime, len(body), 8, 1, 0, 0, len(name) + 1, 0]
        rec = b"070701" + b"".join(b"%08X" % v for v in fields) + name + b"\0"
        rec += b"\0" * (-len(rec) % 4) + body
        return rec + b"\0" * (-len(rec) % 4)

    def initrd(ino: int, mtime: int, iqn: bytes) -> bytes:
        cpio = member(b"etc/initiatorname.iscsi", iqn, ino, mtime) + member(b"TRAILER!!!", b"", 0, 0)
        return gzip.compress(cpio, mtime=mtime)

    fixed = {"etc/initiatorname.iscsi": b"GenerateName=yes\n"}
    a = repro.repack_initrd(initrd(41, EPOCH + 5, b"InitiatorName=a\n"), EPOCH, fixed, "a")
    b = repro.repack_initrd(initrd(97, EPOCH + 9, b"InitiatorName=b\n"), EPOCH, fixed, "b")
    assert a == b and b"GenerateName=yes" in gzip.decompress(a)
    # zstd, Debian's compressor once zstd is installed (imagectl-initramfs installs it): the same cpio repacks
    # to the same gzip'd bytes, decompressed by the host's zstd
    cpio = gzip.decompress(initrd(41, EPOCH + 5, b"InitiatorName=a\n"))
    zstd = subprocess.run(["zstd", "-q", "-c", "-1"], input=cpio, capture_output=True, check=True, timeout=60).stdout
    assert zstd[:4] == repro.ZSTD_MAGIC and repro.repack_initrd(zstd, EPOCH, fixed, "z") == a
    with pytest.raises(InvalidInputError, match="bad zstd data"):
        repro.repack_initrd(zstd[:-8], EPOCH, fixed, "/boot/initrd.img-truncated")
    with pytest.raises(InvalidInputError, match="not a single gzip'd or zstd'd cpio"):
        repro.repack_initrd(b"\xfd7zXZ\x00 an xz initramfs", EPOCH, {}, "/boot/initrd.img-x")


def test_repack_initrd_refuses_a_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The initramfs comes from packages: one that unpacks past the cap is refused, whichever the compressor,
    without holding more than the cap in memory (the zstd child is stopped, not read to its end)."""
    monkeypatch.setattr(repro, "MAX_INITRD_CPIO", 64 << 10)
    bomb = b"\0" * (8 << 20)
    zstd = subprocess.run(["zstd", "-q", "-c", "-1"], input=bomb, capture_output=True, check=True, timeout=60).stdout
    for data in (gzip.compress(bomb), zstd):
        assert len(data) < 64 << 10
        with pytest.raises(InvalidInputError, match="unpacks to more than 65,536 bytes"):
            repro.repack_initrd(data, EPOCH, {}, "/boot/initrd.img-bomb")


def test_a_zstd_that_hangs_is_stopped_in_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The zstd child is bounded in time as in size: one that writes nothing and never exits (a stand-in on
    PATH) is killed when the limit passes, with one line saying so, instead of hanging the build."""
    fake = tmp_path / "bin" / "zstd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(repro, "_SLOW", 0.5)
    with pytest.raises(ToolError, match=r"zstd took more than 0\.5 s to unpack it"):
        repro.repack_initrd(repro.ZSTD_MAGIC + b"\0" * 64, EPOCH, {}, "/boot/initrd.img-hang")


def loops_of(path: Path) -> str:
    return subprocess.run(["losetup", "-j", path], capture_output=True, text=True, check=True, timeout=30).stdout


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


def assert_nothing_left(disk: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []  # no temp, no work dir
    assert loops_of(disk) == ""
    assert mounts_under(out.parent) == []


def test_not_a_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    disk, out = tmp_path / "junk.raw", tmp_path / "out.raw"
    disk.write_bytes(os.urandom(4096) + b"\0" * (MIB - 4096))
    with pytest.raises(InvalidInputError) as e:
        normalize(disk, out, epoch=EPOCH, ids=IDS)
    assert str(e.value) == f"{disk}: not a raw disk with an MBR partition table"
    assert_nothing_left(disk, out)


def test_a_partition_without_ext4_is_refused_and_its_loop_released(tmp_path: Path) -> None:
    disk, out = tmp_path / "noext4.raw", tmp_path / "out.raw"
    with disk.open("wb") as f:
        f.truncate(8 * MIB)
    subprocess.run(["sfdisk", "-q", disk], input="label: dos\nstart=2048, type=83\n", text=True, check=True)
    with pytest.raises(InvalidInputError) as e:
        normalize(disk, out, epoch=EPOCH, ids=IDS)
    assert str(e.value) == f"{disk}: its partition holds no ext4 file system"
    assert "\n" not in str(e.value)
    assert_nothing_left(disk, out)


def test_a_failure_while_mounted_releases_mounts_and_loops(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ToolError("mke2fs failed with exit code 1")

    monkeypatch.setattr(repro, "_mke2fs", broken)
    out = tmp_path / "out.raw"
    with pytest.raises(ToolError, match=r"^mke2fs failed with exit code 1$"):
        normalize(built["in-a"], out, epoch=EPOCH, ids=IDS)
    assert_nothing_left(built["in-a"], out)


# -- imagectl build --reproducible / --check-reproducible, with a stand-in disk-image-create ----------------------

FAKE_DIB = r"""#!/usr/bin/env python3
import json, os, shutil, sys
args = sys.argv[1:]
out = args[args.index("-o") + 1]
here = os.path.dirname(os.path.abspath(__file__))
calls = os.path.join(here, "calls.jsonl")
n = len(open(calls).read().splitlines()) if os.path.exists(calls) else 0
with open(calls, "a") as f:
    f.write(json.dumps({"argv": args, "sde": os.environ.get("SOURCE_DATE_EPOCH")}) + "\n")
os.makedirs(out + ".d/dib-manifests", exist_ok=True)
shutil.copyfile(os.path.join(here, "disk-%d.raw" % n), out + ".raw")  # a differently made disk on each run
manifest = os.path.join(here, "manifest-%d.json" % n)  # the package list of run n, if the test gives one
if os.path.exists(manifest):
    shutil.copyfile(manifest, out + ".d/dib-manifests/dib-manifest-dpkg-debian12-demo")
print("Build completed successfully", flush=True)
"""


X86_HVM = ("--arch", "x86_64", "--hypervisor", "hvm")  # the demo's one image these tests build
CHECK = (*X86_HVM, "--check-reproducible", "--source-date-epoch", str(EPOCH))


def other_disk(disk: Path, tree: Path, changes: dict[str, bytes]) -> None:
    """A stand-in DIB disk at ``disk`` of another tree: the test tree with ``changes`` (path -> bytes), made with
    other ids, as a build whose inputs moved would make it."""
    make_tree(tree, seed=2, fs_uuid="55555555-5555-4555-8555-555555555555", reverse=False)
    for rel, data in changes.items():
        (tree / rel).write_bytes(data)
    make_disk(
        disk,
        tree,
        fs_uuid="55555555-5555-4555-8555-555555555555",
        hash_seed="66666666-6666-4666-8666-666666666666",
        label_id=0x12345678,
    )


@pytest.fixture
def fake_repro_dib(built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "disk-image-create").write_text(FAKE_DIB)
    (bindir / "disk-image-create").chmod(0o755)
    (bindir / "disk-0.raw").write_bytes(built["in-a"].read_bytes())
    (bindir / "disk-1.raw").write_bytes(built["in-b"].read_bytes())
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("IMAGECTL_CACHE_DIR", str(tmp_path / "cache"))
    return bindir


def test_build_reproducible_normalizes_converts_and_records(fake_repro_dib: Path, cli, tmp_path: Path) -> None:
    from tests.test_build_fake import DEMO

    out = tmp_path / "out"
    args = ("build", DEMO, *X86_HVM, "-o", out, "--format", "qcow2", "--format", "raw")
    r = cli(*args, "--reproducible", "--source-date-epoch", str(EPOCH))
    assert r.code == 0, r.err
    [call] = [json.loads(x) for x in (fake_repro_dib / "calls.jsonl").read_text().splitlines()]
    assert call["argv"][call["argv"].index("-t") + 1] == "raw" and call["sde"] == str(EPOCH)
    record = json.loads((out / "debian12-demo-x86_64.build.json").read_text())
    assert record["source_date_epoch"] == EPOCH and record["reproducible"] is True
    raw, qcow2 = out / "debian12-demo-x86_64.raw", out / "debian12-demo-x86_64.qcow2"
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"
    [convert] = [
        ln for ln in (out / "debian12-demo-x86_64.log").read_text().splitlines() if ln.startswith("+ qemu-img")
    ]
    assert convert.startswith("+ qemu-img convert -c -f raw -O qcow2 ") and " -W " not in convert  # in order
    ids = derive_ids(image_identity(record["recipe"]["digest"], "x86_64", "hvm"), EPOCH)
    assert raw.read_bytes()[440:444] == ids.disk_id.to_bytes(4, "little")
    assert {i["file"]: i["sha256"] for i in record["images"]} == {raw.name: sha256(raw), qcow2.name: sha256(qcow2)}
    assert [p.name for p in out.iterdir() if p.name.startswith(".debian12")] == []  # no temp file left
    # a format qemu-img's bytes were not checked for is refused before any work
    r = cli("build", DEMO, *X86_HVM, "-o", out, "--format", "vmdk", "--reproducible")
    assert (r.code, r.err.splitlines()[0]) == (
        3,
        "imagectl: error: --reproducible makes qcow2 and raw images, not vmdk",
    )


def test_check_reproducible_builds_twice_and_passes(fake_repro_dib: Path, cli, tmp_path: Path) -> None:
    from tests.test_build_fake import DEMO

    out = tmp_path / "out"
    r = cli("build", DEMO, *CHECK, "-o", out)
    assert r.code == 0, r.err
    assert len((fake_repro_dib / "calls.jsonl").read_text().splitlines()) == 2  # the second bypassed the cache
    a, b = out / "debian12-demo-x86_64.qcow2", out / "check-reproducible" / "debian12-demo-x86_64.qcow2"
    assert sha256(a) == sha256(b)
    assert r.out.splitlines()[-1] == f"reproducible: {a} (sha256 {sha256(a)}): the same bytes from a second build ({b})"


def test_check_reproducible_names_the_differing_files(
    fake_repro_dib: Path,
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_build_fake import DEMO

    # the second "build" has one more file and one changed: what imagectl does not pin
    other_disk(fake_repro_dib / "disk-1.raw", tmp_path / "tree-c", {
        "etc/hostname": b"other\n",
        "etc/random-seed": os.urandom(16),
        ".hidden": b"x",  # a dot file is named as itself
    })  # fmt: skip
    monkeypatch.setattr("shutil.which", _which_without_diffoscope)
    out = tmp_path / "out"
    r = cli("build", DEMO, *CHECK, "-o", out)
    assert r.code == 25, r.err
    first = r.err.splitlines()[0]
    assert first.startswith("imagectl: error: two builds of debian12-demo differ: ")
    assert "differing files: /.hidden, /etc/hostname, /etc/random-seed" in first
    report = out / "check-reproducible" / "debian12-demo-x86_64.qcow2.differences.txt"
    assert report.read_text() == "/.hidden\n/etc/hostname\n/etc/random-seed\n"
    assert loops_of(out / "check-reproducible" / "debian12-demo-x86_64.qcow2") == ""
    assert mounts_under(out) == []


_real_which = shutil.which


def _which_without_diffoscope(cmd: str, *args: object, **kwargs: object) -> str | None:
    return None if cmd == "diffoscope" else _real_which(cmd, *args, **kwargs)  # type: ignore[arg-type]


def test_default_epoch_is_the_environment_s_else_the_recipe_s_last_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagectl.imaging.builder import default_epoch
    from imagectl.recipe.model import load_recipe
    from tests.test_build_fake import DEMO

    recipe = load_recipe(DEMO)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1795897038")
    assert default_epoch(recipe) == 1795897038
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InvalidInputError, match=r"^SOURCE_DATE_EPOCH='yesterday' is not a whole number of seconds$"):
        default_epoch(recipe)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    git = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "--", DEMO], capture_output=True, text=True, cwd=DEMO.parent
    )
    if git.returncode == 0 and git.stdout.strip():
        assert default_epoch(recipe) == int(git.stdout)


def test_a_recipe_outside_git_gets_its_format_mistake_first_then_the_missing_epoch(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argument mistake is named before anything is looked up: --reproducible with a format whose bytes do not
    repeat is refused as such even where the recipe has no default epoch (a copy outside any git checkout, as a
    recipe installed with a wheel is); with that fixed, the missing epoch is named, with how to give one."""
    from tests.test_build_fake import DEMO

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    recipe = tmp_path / "debian12-demo.yaml"
    shutil.copyfile(DEMO, recipe)
    out = tmp_path / "out"
    r = cli("build", recipe, *X86_HVM, "-o", out, "--format", "vmdk", "--reproducible")
    assert (r.code, r.err.splitlines()) == (
        3,
        [
            "imagectl: error: --reproducible makes qcow2 and raw images, not vmdk",
            "hint: choose them with --format qcow2 --format raw",
        ],
    )
    r = cli("build", recipe, *X86_HVM, "-o", out, "--reproducible")
    assert (r.code, r.err.splitlines()) == (
        3,
        [
            f"imagectl: error: no SOURCE_DATE_EPOCH for {recipe}: it is not in a git checkout",
            "hint: give one with --source-date-epoch N (seconds since 1970), or export SOURCE_DATE_EPOCH",
        ],
    )
    assert not out.exists()


def test_without_overlayfs_a_copy_gives_the_same_bytes(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = repro._mounted

    def no_overlay(source: str, target: Path, options: str, fstype: str | None = None):  # type: ignore[no-untyped-def]
        if fstype == "overlay":
            raise ToolError("mount failed with exit code 32: unknown filesystem type 'overlay'")
        return real(source, target, options, fstype)

    monkeypatch.setattr(repro, "_mounted", no_overlay)
    out = tmp_path / "copied.raw"
    normalize(built["in-b"], out, epoch=EPOCH, ids=IDS)
    assert sha256(out) == sha256(built["a"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work dir or temp file left
    assert loops_of(built["in-b"]) == "" and mounts_under(tmp_path) == []
