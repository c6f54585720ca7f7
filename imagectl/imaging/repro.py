"""Bit-identical images (issue 11): rebuild DIB's root file system so that the same inputs give the same bytes.

DIB fills the root ext4 through the kernel (``cp -ra``, then finalise.d in the mounted fs): its block layout,
journal, directory sizes and inode times differ on every run, and mkfs.py picks a random fs UUID, mbr.py a
random disk id. :func:`normalize` reads DIB's raw disk (read-only) and writes a new one: the same MBR and gap
(GRUB's core.img, which holds no fs UUID), then the root fs made again with ``mke2fs -d`` from the normalized tree
with DIB's own features and geometry, a fixed UUID and hash seed and ``E2FSPROGS_FAKE_TIME``; then every inode's
ctime and atime are pinned with ``debugfs`` (``mke2fs -d`` copies them from the source tree) and the disk id is
set. What was found to differ, and why each fix is safe, is in issue 11's report.

Needs root (loop devices, mount). Every loop device and mount is released before returning, whatever happens, and
``out`` appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imagectl.errors import InvalidInputError, LocalIOError, ToolError, ToolMissingError
from imagectl.fsio import Beneath, replacing
from imagectl.runner import run

__all__ = ["Ids", "derive_ids", "differing_paths", "normalize"]

# seconds; generous for a loaded 2-core machine and a 2 GiB image, small enough that a hung tool is noticed
_QUICK = 60.0
_SLOW = 1800.0
_NS = uuid.UUID("6f1a7f2e-6c0b-4d5e-9a35-0c3f6a7d2b11")  # imagectl's namespace for derived ids (issue 11)
# superblock state, not features to ask mke2fs for
_STATE_FEATURES = {"needs_recovery", "orphan_present", "recover"}


@dataclass(frozen=True)
class Ids:
    """What DIB picks at random and a reproducible image must fix instead."""

    fs_uuid: str
    hash_seed: str  # ext4 directory hash seed (a UUID)
    disk_id: int  # MBR disk signature, bytes 440-443 (little endian)


def derive_ids(build_key: str, epoch: int) -> Ids:
    """The ids of a reproducible image of ``build_key`` at ``epoch``: the same inputs, the same ids."""
    base = f"imagectl:{build_key}:{epoch}"
    disk_id = int.from_bytes(hashlib.sha256(f"{base}:disk-id".encode()).digest()[:4], "little") or 1
    return Ids(str(uuid.uuid5(_NS, f"{base}:rootfs")), str(uuid.uuid5(_NS, f"{base}:hash-seed")), disk_id)


@dataclass(frozen=True)
class _Part:
    offset: int  # bytes
    size: int  # bytes


def normalize(raw: Path, out: Path, *, epoch: int, ids: Ids, on_note: Callable[[str], None] | None = None) -> None:
    """Write to ``out`` the deterministic form of DIB's raw MBR disk ``raw`` (one ext4 partition).

    Raises InvalidInputError if ``raw`` is not such a disk, ToolError/ToolMissingError if a tool fails or is
    missing (every one is bounded by a timeout), LocalIOError if ``out`` cannot be written. ``out`` is written
    under a temp name and renamed, so a failure leaves nothing there.
    """
    note = on_note or (lambda _msg: None)
    part = _partition(raw)
    try:
        size = raw.stat().st_size
    except OSError as e:
        raise LocalIOError.from_os("read", raw, e) from None
    work = _mkdtemp(out)
    try:
        with _attached(raw, part) as loop:
            sb = _superblock(loop, raw)
            old_uuid = sb.get("Filesystem UUID", "")
            with _mounted(loop, work / "mnt", "ro,noload"), _writable_view(work) as tree:
                _fix_tree(tree, epoch, old_uuid, ids.fs_uuid, note)
                note(f"clamped {_clamp_mtimes(tree, epoch)} mtimes to {epoch}")
                with replacing(out) as temp:
                    _new_disk(raw, Path(temp), part.offset, size)
                    _mke2fs(sb, tree, temp, part, epoch, ids)
                    _pin_inode_times(temp, part.offset, epoch, work)
                    _write_disk_id(Path(temp), ids.disk_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mkdtemp(out: Path) -> Path:
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".repro", dir=out.parent))
        (work / "mnt").mkdir()
    except OSError as e:
        raise LocalIOError.from_os("create a work directory in", out.parent, e) from None
    return work


def _partition(raw: Path) -> _Part:
    if not raw.is_file():
        raise InvalidInputError(f"{raw}: not a raw disk image (not a regular file)")
    res = run(["sfdisk", "--json", raw], timeout=_QUICK, check=False)
    try:
        table = json.loads(res.output)["partitiontable"] if res.returncode == 0 else None
    except (ValueError, KeyError):
        table = None
    if not table or table.get("label") != "dos":
        raise InvalidInputError(f"{raw}: not a raw disk with an MBR partition table")
    parts = table.get("partitions", [])
    if len(parts) != 1:
        raise InvalidInputError(f"{raw}: {len(parts)} partitions; only a disk with one (DIB's default) is handled")
    sector = int(table.get("sectorsize", 512))
    return _Part(int(parts[0]["start"]) * sector, int(parts[0]["size"]) * sector)


@contextlib.contextmanager
def _attached(raw: Path, part: _Part) -> Iterator[str]:
    cmd: list[str | os.PathLike[str]] = ["losetup", "--find", "--show", "--read-only"]
    cmd += ["-o", str(part.offset), "--sizelimit", str(part.size), raw]
    loop = run(cmd, timeout=_QUICK).output.strip()
    try:
        yield loop
    finally:
        run(["losetup", "-d", loop], timeout=_QUICK, check=False)


@contextlib.contextmanager
def _mounted(source: str, target: Path, options: str, fstype: str | None = None) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    cmd: list[str | os.PathLike[str]] = ["mount", *(["-t", fstype] if fstype else []), "-o", options, source]
    run([*cmd, target], timeout=_QUICK * 2)
    try:
        yield target
    finally:
        # a busy mount must not be left behind silently: a lazy unmount detaches it at once
        if run(["umount", target], timeout=_QUICK * 2, check=False).returncode != 0:
            run(["umount", "-l", target], timeout=_QUICK, check=False)


def _superblock(loop: str, raw: Path) -> dict[str, str]:
    res = run(["dumpe2fs", "-h", loop], timeout=_QUICK, check=False, env={"LC_ALL": "C"})
    sb = {}
    for line in res.output.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            sb[k.strip()] = v.strip()
    if (
        res.returncode != 0
        or sb.get("Filesystem magic number") != "0xEF53"
        or "extent" not in sb.get("Filesystem features", "")
    ):
        raise InvalidInputError(f"{raw}: its partition holds no ext4 file system")
    return sb


@contextlib.contextmanager
def _writable_view(work: Path) -> Iterator[Path]:
    """A writable view of the ro mount: an overlay (only what the fixes change is copied up), or a copy."""
    mnt, tree = work / "mnt", work / "tree"
    upper, ovl = work / "upper", work / "ovlwork"
    for d in (tree, upper, ovl):
        d.mkdir()
    st = mnt.stat()
    os.chmod(upper, stat.S_IMODE(st.st_mode))
    os.chown(upper, st.st_uid, st.st_gid)
    opts = f"lowerdir={mnt},upperdir={upper},workdir={ovl},metacopy=on,index=on,redirect_dir=on"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_mounted("overlay", tree, opts, "overlay"))
        except ToolError:
            # no overlayfs here (or not on this fs): copy the tree (xattrs, ACLs, hard links, devices kept)
            for entry in sorted(mnt.iterdir()):
                run(["cp", "-a", "--", entry, tree], timeout=_SLOW)
            os.chmod(tree, stat.S_IMODE(st.st_mode))
            os.chown(tree, st.st_uid, st.st_gid)
        with contextlib.suppress(FileNotFoundError):
            (tree / "lost+found").rmdir()  # mke2fs makes its own
        yield tree


# --------------------------------------------------------------------------------------------------------------
# the tree: everything written at build time that is random or names the build host


def _read(tree: Beneath, rel: str) -> bytes | None:
    try:
        fd = tree.open_regular(rel)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _write(tree: Beneath, rel: str, data: bytes) -> None:
    """Rewrite ``rel`` in place (its mode, owner and xattrs stay), never through a symlink."""
    fd = tree.open(rel, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _edit(tree: Beneath, rel: str, change: Callable[[str], str], note: Callable[[str], None], what: str) -> None:
    data = _read(tree, rel)
    if data is None:
        return
    text = data.decode("utf-8", "surrogateescape")
    new = change(text)
    if new != text:
        _write(tree, rel, new.encode("utf-8", "surrogateescape"))
        note(f"/{rel}: {what}")


def _fix_tree(root: Path, epoch: int, old_uuid: str, new_uuid: str, note: Callable[[str], None]) -> None:
    tree = Beneath(root)
    # ldconfig's cache of (dev, inode, ctime) per library (mkinitramfs calls it "always invalid at boot");
    # munge's random cluster key (imagectl's batch context deletes it at build time already)
    for rel in ("var/cache/ldconfig/aux-cache", "etc/munge/munge.key"):
        with contextlib.suppress(FileNotFoundError):
            tree.lstat(rel)
            tree.unlink(rel)
            note(f"deleted /{rel}")
    # open-iscsi's postinst makes a random IQN; GenerateName=yes has iscsid make one per machine at first start
    _edit(
        tree,
        "etc/iscsi/initiatorname.iscsi",
        lambda s: re.sub(r"(?m)^InitiatorName=.*$", "GenerateName=yes", s),
        note,
        "InitiatorName -> GenerateName=yes",
    )
    iname = _read(tree, "etc/iscsi/initiatorname.iscsi")

    def hostless(s: str) -> str:
        s = re.sub(r"(-o )(/\S*/)([^/\s\"]+)", r"\1\3", s)  # DIB's -o names the host's output directory
        s = re.sub(r"(DIB_IMAGE_CACHE=\")[^\"]*/([^/\"]+?)(\.\d+)?\"", r'\1\2"', s)  # and a PID-named cache
        return re.sub(r"(DIB_PYTHON_EXEC=\")[^\"]*/([^/\"]+)\"", r'\1\2"', s)  # a host venv path

    for rel in ("etc/dib-manifests/dib_arguments", "etc/dib-manifests/dib_environment"):
        _edit(tree, rel, hostless, note, "host paths removed")
    day = epoch // 86400  # /etc/shadow's last change is in days

    def lastchg(s: str) -> str:
        lines = s.split("\n")
        for i, line in enumerate(lines):
            f = line.split(":")
            if len(f) > 2 and f[2].isdigit() and int(f[2]) > day:
                f[2] = str(day)
                lines[i] = ":".join(f)
        return "\n".join(lines)

    for rel in ("etc/shadow", "etc/shadow-"):
        _edit(tree, rel, lastchg, note, f"last change clamped to day {day}")
    if old_uuid and old_uuid != new_uuid:  # grub.cfg finds / by fs UUID
        _edit(tree, "boot/grub/grub.cfg", lambda s: s.replace(old_uuid, new_uuid), note, "fs UUID replaced")
    names: list[str] = []
    with contextlib.suppress(FileNotFoundError), tree.dir("boot") as d:
        names = sorted(os.listdir(d))  # noqa: PTH208 (a descriptor, walked without following symlinks)
    for name in names:
        if name.startswith("initrd.img-") and stat.S_ISREG(tree.lstat(f"boot/{name}").st_mode):
            data = _read(tree, f"boot/{name}")
            assert data is not None
            new = repack_initrd(data, epoch, {"etc/initiatorname.iscsi": iname} if iname else {}, f"/boot/{name}")
            if new != data:
                _write(tree, f"boot/{name}", new)
                note(f"/boot/{name}: repacked")


GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
MAX_INITRD_CPIO = 2 << 30  # an initramfs that unpacks to more than this is refused, not unpacked into memory


def repack_initrd(data: bytes, epoch: int, replace: dict[str, bytes], name: str) -> bytes:
    """A gzip'd newc initramfs made as mkinitramfs makes it with SOURCE_DATE_EPOCH (mtimes clamped, inodes
    renumbered, device 0, ``gzip -n``), with the members in ``replace`` given those bytes. The build's initramfs
    may be gzip'd or zstd'd (Debian's default once zstd is installed; imagectl-initramfs installs it); the
    repacked one is always gzip'd, which every kernel reads and whose bytes imagectl fixes itself.

    Raises InvalidInputError for anything but one compressed cpio (an early microcode cpio in front, another
    compressor): refused, not guessed.
    """
    raw = cpio_of(data, name)
    out: list[bytes] = []
    inos: dict[tuple[int, int, int], int] = {}
    for h, f, member, body in cpio_entries(raw, name):
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, chk = f
        if member == b"TRAILER!!!":
            new = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, namesize, 0]
        else:
            key = (dmaj, dmin, ino)
            inos.setdefault(key, len(inos) + 1)  # cpio --renumber-inodes (hard links keep one number)
            text = member.decode("utf-8", "surrogateescape")
            if text in replace and stat.S_ISREG(mode):
                body = replace[text]
                size = len(body)
            new = [inos[key], mode, uid, gid, nlink, min(mtime, epoch), size, 0, 0, rmaj, rmin, namesize, chk]
        rec = h[:6] + b"".join(b"%08X" % v for v in new) + member + b"\0"
        rec += b"\0" * (-len(rec) % 4) + body
        rec += b"\0" * (-len(rec) % 4)
        out.append(rec)
    blob = b"".join(out)
    blob += b"\0" * (-len(blob) % 512)  # cpio pads its output to 512-byte blocks
    # like mkinitramfs's `gzip -n`: no file name, mtime 0 (the header's OS byte differs; the bytes are as fixed)
    return gzip.compress(blob, compresslevel=6, mtime=0)


def cpio_entries(raw: bytes, name: str) -> Iterator[tuple[bytes, list[int], bytes, bytes]]:
    """Each record of the newc cpio ``raw`` up to and including its trailer: (header, its 13 numbers, member name,
    body). Raises InvalidInputError for a bad header, a record that runs past the end, or data after the trailer
    (a concatenated archive)."""
    off = 0
    while True:
        h = raw[off : off + 110]
        if len(h) < 110 or h[:6] not in (b"070701", b"070702"):
            raise InvalidInputError(f"{name}: bad cpio header at byte {off}")
        try:
            f = [int(h[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise InvalidInputError(f"{name}: bad cpio header at byte {off}") from None
        size, namesize = f[6], f[11]
        member = raw[off + 110 : off + 110 + namesize - 1]
        p = (off + 110 + namesize + 3) & ~3
        if namesize < 1 or p + size > len(raw):
            raise InvalidInputError(f"{name}: cpio record at byte {off} runs past the end of the archive")
        body = raw[p : p + size]
        off = (p + size + 3) & ~3
        yield h, f, member, body
        if member == b"TRAILER!!!":
            break
    if raw[off:].strip(b"\0"):
        raise InvalidInputError(f"{name}: data after the cpio trailer (concatenated archive)")


def cpio_of(data: bytes, name: str) -> bytes:
    """The cpio inside a gzip'd or zstd'd initramfs (zstd through the host's ``zstd``), at most MAX_INITRD_CPIO
    bytes."""
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                raw = g.read(MAX_INITRD_CPIO + 1)
        except (OSError, EOFError) as e:
            raise InvalidInputError(f"{name}: bad gzip data: {e}") from None
    elif data[:4] == ZSTD_MAGIC:
        if shutil.which("zstd") is None:
            raise ToolMissingError("zstd not found", hint="install the package that provides zstd")
        with tempfile.TemporaryFile() as src:
            src.write(data)
            src.seek(0)
            proc = subprocess.Popen(
                ["zstd", "-dc", "--no-progress"], stdin=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            assert proc.stdout is not None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            watchdog = threading.Timer(_SLOW, expire)  # the read below ends at zstd's EOF: bounded in time too
            watchdog.start()
            try:
                raw = proc.stdout.read(MAX_INITRD_CPIO + 1)
                if len(raw) > MAX_INITRD_CPIO:
                    proc.kill()
                _, err = proc.communicate(timeout=_QUICK)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise ToolError(f"{name}: zstd did not exit after writing its output") from None
            finally:
                watchdog.cancel()
            if expired.is_set():
                raise ToolError(f"{name}: zstd took more than {_SLOW:g} s to unpack it")
        if proc.returncode != 0 and len(raw) <= MAX_INITRD_CPIO:
            raise InvalidInputError(f"{name}: bad zstd data: {err.decode(errors='replace').strip()[:200]}")
    else:
        raise InvalidInputError(
            f"{name}: not a single gzip'd or zstd'd cpio (an early microcode cpio in front, another compressor)"
        )
    if len(raw) > MAX_INITRD_CPIO:
        raise InvalidInputError(f"{name}: unpacks to more than {MAX_INITRD_CPIO:,} bytes; not made reproducible")
    return raw


def _clamp_mtimes(root: Path, epoch: int) -> int:
    ns, n = epoch * 10**9, 0
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files, *([""] if dirpath == str(root) else [])]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if st.st_mtime_ns > ns:  # atime (and ctime) are pinned in the new fs by debugfs
                os.utime(p, ns=(st.st_atime_ns, ns), follow_symlinks=False)
                n += 1
    return n


# --------------------------------------------------------------------------------------------------------------
# the new disk


def _new_disk(raw: Path, temp: Path, offset: int, size: int) -> None:
    """``temp`` := a sparse file of ``raw``'s size holding only its MBR and gap (GRUB's core.img)."""
    try:
        with raw.open("rb") as fi, temp.open("r+b") as fo:
            fo.truncate(0)
            fo.write(fi.read(offset))
            fo.truncate(size)
    except OSError as e:
        raise LocalIOError.from_os("write", temp, e) from None


def _size_mib(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kMG])", text)
    if not m:
        raise InvalidInputError(f"unexpected journal size {text!r} from dumpe2fs")
    kib = int(m[1]) * {"k": 1, "M": 1024, "G": 1024 * 1024}[m[2]]
    return max(1, kib // 1024)


def _mke2fs(sb: dict[str, str], tree: Path, temp: str, part: _Part, epoch: int, ids: Ids) -> None:
    feats = [f for f in sb["Filesystem features"].split() if f not in _STATE_FEATURES]
    blocks, resv = int(sb["Block count"]), int(sb["Reserved block count"])
    # mke2fs takes a percentage; the one that gives DIB's reserved block count (mke2fs's own arithmetic)
    pct = next((f"{p / 100:g}" for p in range(5001) if int(p / 100 * blocks / 100.0) == resv), None)
    if pct is None:
        raise InvalidInputError(f"no reserved percentage gives {resv} of {blocks} blocks")
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "none," + ",".join(feats)]
    cmd += ["-b", sb["Block size"], "-I", sb["Inode size"], "-N", sb["Inode count"], "-g", sb["Blocks per group"]]
    if "Flex block group size" in sb:
        cmd += ["-G", sb["Flex block group size"]]
    if "has_journal" in feats and "Total journal size" in sb:
        cmd += ["-J", f"size={_size_mib(sb['Total journal size'])}"]
    label = sb.get("Filesystem volume name", "<none>")
    if label != "<none>":
        cmd += ["-L", label]
    cmd += ["-m", pct, "-U", ids.fs_uuid]
    cmd += ["-E", f"hash_seed={ids.hash_seed},root_owner=0:0,lazy_itable_init=0,offset={part.offset}"]
    cmd += ["-d", str(tree), temp, str(blocks)]
    run(cmd, env=_fake_time(epoch), timeout=_SLOW)


def _fake_time(epoch: int) -> dict[str, str]:
    return {"E2FSPROGS_FAKE_TIME": str(epoch), "LC_ALL": "C"}


def _pin_inode_times(temp: str, offset: int, epoch: int, work: Path) -> None:
    """ctime and atime := ``epoch`` on every used inode (``mke2fs -d`` copies both from the source tree, and its
    own reading of the tree changes the atimes); then ``e2fsck -fn``."""
    fs = f"{temp}?offset={offset}"
    env = _fake_time(epoch)
    dump = run(["dumpe2fs", fs], env=env, timeout=_SLOW).output
    m = re.search(r"Inode count:\s+(\d+)", dump)
    if not m:
        raise ToolError("dumpe2fs printed no inode count for the new file system")
    free: set[int] = set()
    for line in re.findall(r"^  Free inodes: (.*)$", dump, re.MULTILINE):
        for r in filter(None, (x.strip() for x in line.split(","))):
            lo, _, hi = r.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
    used = [i for i in range(1, int(m[1]) + 1) if i not in free and (i == 2 or i >= 11)]
    cmds = work / "debugfs.cmds"
    # '@N' is seconds; a bare number is read as YYYYMMDD... (1795897038 became the year 2340)
    cmds.write_text("".join(f"sif <{i}> ctime @{epoch}\nsif <{i}> atime @{epoch}\n" for i in used))
    res = run(["debugfs", "-w", "-f", cmds, fs], env=env, timeout=_SLOW)
    errs = [x for x in res.output.splitlines() if x.strip() and not x.startswith("debugfs")]
    if errs:
        raise ToolError(f"debugfs could not pin inode times: {errs[0]}")
    # The superblock's lifetime-writes counter grows by what each read-write session wrote, and what mke2fs -d
    # writes depends on how the source files are laid out (DIB's fs, or an already normalized one): zero it, in a
    # session of its own, which counts its bytes only after reading the counter.
    res = run(["debugfs", "-w", "-R", "ssv kbytes_written 0", fs], env=env, timeout=_QUICK)
    errs = [x for x in res.output.splitlines() if x.strip() and not x.startswith("debugfs")]
    if errs:
        raise ToolError(f"debugfs could not reset the lifetime writes: {errs[0]}")
    run(["e2fsck", "-fn", fs], env=env, timeout=_SLOW)


def _write_disk_id(temp: Path, disk_id: int) -> None:
    try:
        with temp.open("r+b") as f:
            f.seek(440)
            f.write(disk_id.to_bytes(4, "little"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise LocalIOError.from_os("write", temp, e) from None


# --------------------------------------------------------------------------------------------------------------
# what differs between two images (build --check-reproducible without diffoscope)


def differing_paths(a: Path, b: Path, fmt: str, work: Path) -> list[str]:
    """The paths in the root file systems of the images ``a`` and ``b`` (of format ``fmt``: raw or qcow2) that
    differ in type, mode, owner, size, content, link target, mtime or xattrs; "(partition table and boot gap)" when
    the bytes before the partition differ. Sorted. Raises InvalidInputError when either is no MBR/ext4 disk."""
    raws = []
    for name, img in (("a", a), ("b", b)):
        if fmt == "raw":
            raws.append(img)
        else:
            raw = work / f"{name}.raw"
            run(["qemu-img", "convert", "-f", fmt, "-O", "raw", img, raw], timeout=_SLOW)
            raws.append(raw)
    parts = [_partition(r) for r in raws]
    out: list[str] = []
    with raws[0].open("rb") as fa, raws[1].open("rb") as fb:
        if parts[0] != parts[1] or fa.read(parts[0].offset) != fb.read(parts[1].offset):
            out.append("(partition table and boot gap)")
    with contextlib.ExitStack() as stack:
        trees = []
        for name, raw, part in zip(("a", "b"), raws, parts, strict=True):
            loop = stack.enter_context(_attached(raw, part))
            _superblock(loop, raw)
            trees.append(_describe(stack.enter_context(_mounted(loop, work / f"mnt-{name}", "ro,noload"))))
    keys = sorted(set(trees[0]) | set(trees[1]))
    out += [k for k in keys if trees[0].get(k) != trees[1].get(k)]
    return out


def _describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: what a difference between two builds can be in."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files, *([""] if dirpath == str(root) else [])]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            what: tuple[object, ...] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                what += (st.st_size, h.hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                what += (Path(path).readlink().as_posix(),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what += (st.st_rdev,)
            with contextlib.suppress(OSError):
                what += tuple(
                    sorted(
                        (x, os.getxattr(path, x, follow_symlinks=False))
                        for x in os.listxattr(path, follow_symlinks=False)
                    )
                )
            rel = os.path.relpath(path, root)
            found["/" if rel == "." else "/" + rel] = what
    return found
