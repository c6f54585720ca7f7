"""A kernel's initramfs made by one Debian build, reused by later builds that would make the same one.

Why: with ``MODULES=most`` an initramfs costs ~16 s of a build (issue 10), and a recipe that adds a package
(``extends:`` the demo with ``tree``) makes the very same initramfs again: the kernel, its modules, the hooks and
every file they copy are unchanged. The ``imagectl-initramfs`` element defers every ``update-initramfs`` request
to one at the end of post-install.d; under ``imagectl build`` (``$IMAGECTL_INITRAMFS_CACHE`` set) its
post-install.d/99 only names the kernels that need one, and its post-root.d/99 runs this module outside the
chroot, with the tree still mounted.

What decides reuse is the state of everything ``mkinitramfs`` reads, taken from the tree itself, never a guess
from package names: every entry (path, mode, size, SHA-256 or link target) of :data:`INPUTS` (initramfs-tools'
hooks, scripts and configuration, the kernel's modules and config, firmware, modprobe and udev configuration,
fstab, crypttab, the keyboard set-up, ``ld.so.conf``), and the tree's file at the path of every regular file the
initramfs holds (the binaries and libraries hooks copied, the modules). A cache entry holds the initramfs, its
SHA-256 and that state, made just before it was made; a later build reuses it only when its own tree has the same
state, file for file, and the cached bytes still have their SHA-256. A package that ships a hook, a module or
firmware, changes a library a hook copies, or edits the configuration makes a new initramfs; one that touches
none of it (most packages) does not. Debian's own ``update-initramfs`` decides less carefully: it rebuilds only
when a package's trigger asks.

``imagectl build --check-reproducible``'s second build and ``imagectl rebuild`` bypass the cache (they build
independently), and so does ``build --rebuild``: the element then makes the initramfs in the chroot as without
imagectl.

Files in the tree are reached one component at a time with symlinks resolved inside the tree (``/lib`` ->
``usr/lib`` is the tree's own, never the host's) and opened without following a final symlink; files in the cache
are opened below its root without following any symlink (:class:`imagectl.fsio.Beneath`), each read bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagectl.errors import ImagectlError, InvalidInputError
from imagectl.fsio import Beneath, atomic_write
from imagectl.imaging.repro import MAX_INITRD_CPIO, cpio_entries, cpio_of

__all__ = ["INPUTS", "Cache", "inputs_state", "main", "members", "members_state"]

FORMAT = 1
# What mkinitramfs and the hooks of Debian 12's initramfs-tools, udev, kmod, busybox, klibc, console-setup,
# cryptsetup, lvm2 and mdadm read, beyond the files they copy (those are checked one by one: members_state).
# "{version}" is the kernel's. A path that is not in the tree is recorded as absent (and must stay absent).
INPUTS: tuple[str, ...] = (
    "usr/share/initramfs-tools",
    "etc/initramfs-tools",
    "etc/initramfs/post-update.d",
    "usr/sbin/mkinitramfs",
    "usr/sbin/update-initramfs",
    "lib/modules/{version}",
    "boot/config-{version}",
    "lib/firmware",
    "etc/modprobe.d",
    "lib/modprobe.d",
    "etc/udev",
    "lib/udev",
    "etc/fstab",
    "etc/crypttab",
    "etc/default/keyboard",
    "etc/default/console-setup",
    "etc/console-setup",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d",
    "etc/cryptsetup-initramfs",
    "etc/lvm",
    "etc/mdadm",
)
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]{0,127}")  # a kernel release, as /lib/modules names it
ARCH_RE = re.compile(r"[a-z0-9_]{1,32}")
ENTRY_RE = re.compile(r"[0-9a-f]{64}")
STAGING_RE = re.compile(r"\.[0-9a-f]{64}\.[0-9a-f]{12}\.tmp")  # Cache.store's, renamed to ENTRY when complete
STALE_S = 3600.0  # a staging directory this old belongs to a builder that was killed
KEEP_PER_KERNEL = 3  # entries kept per kernel version (newest used first)
KEEP_KERNELS = 6  # kernel versions kept per architecture
MAX_STATE = 64 << 20  # bytes of an entry's state.json (a real one: ~0.5 MB)
MAX_HOPS = 40  # symlinks followed while resolving one path in the tree, as the kernel's limit
MAKE_TIMEOUT = 1800.0  # seconds for one update-initramfs in the chroot


def _resolve(root: str, rel: str, *, follow: bool) -> str | None:
    """The host path of ``rel`` inside the tree at ``root`` with every symlink on the way resolved inside the
    tree (absolute targets from ``root``, ``..`` never above it); the last component's symlink only if
    ``follow``. None when a component is missing, not a directory, or the links go round."""
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and (todo or follow):
            hops += 1
            if hops > MAX_HOPS:
                return None
            target = str(Path(here).readlink())
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(part)
    return os.path.join(root, *done)


class _Hasher:
    """File tokens of one tree (``f MODE SIZE SHA256``, ``l TARGET``, ``d MODE``, ``o TYPE``, ``-`` absent), each
    regular file hashed once even when reached by two paths."""

    def __init__(self, root: Path) -> None:
        self.root = os.fspath(root)
        self.seen: dict[str, str] = {}

    def token(self, host: str | None) -> str:
        if host is None:
            return "-"
        if host in self.seen:
            return self.seen[host]
        try:
            st = os.lstat(host)
        except OSError:
            return "-"
        if stat.S_ISLNK(st.st_mode):
            tok = f"l {Path(host).readlink()}"
        elif stat.S_ISDIR(st.st_mode):
            tok = f"d {stat.S_IMODE(st.st_mode):o}"
        elif stat.S_ISREG(st.st_mode):
            tok = f"f {stat.S_IMODE(st.st_mode):o} {st.st_size} {self._sha256(host)}"
        else:
            tok = f"o {stat.S_IFMT(st.st_mode):o}"
        self.seen[host] = tok
        return tok

    @staticmethod
    def _sha256(host: str) -> str:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since lstat: not what was listed
                return "changed"
            return hashlib.file_digest(f, "sha256").hexdigest()


def inputs_state(root: Path, version: str, hasher: _Hasher | None = None) -> dict[str, str]:
    """``path -> token`` for every entry of :data:`INPUTS` in the tree at ``root`` (directories walked, their
    symlinks recorded, never followed)."""
    h = hasher or _Hasher(root)
    out: dict[str, str] = {}
    for pattern in INPUTS:
        rel = pattern.format(version=version)
        host = _resolve(h.root, rel, follow=True)
        out[rel] = h.token(host)
        if host is None or not out[rel].startswith("d "):
            continue
        for here, dirs, files in os.walk(host):
            dirs.sort()
            sub = os.path.relpath(here, host)
            for name in sorted(dirs + files):
                path = name if sub == "." else f"{sub}/{name}"
                out[f"{rel}/{path}"] = h.token(os.path.join(here, name))
    return out


def members(initrd: bytes, name: str) -> list[str]:
    """The regular files an initramfs holds, as tree paths (``usr/lib/...``), sorted. Raises InvalidInputError
    when it is not one gzip'd or zstd'd cpio (such an initramfs is not cached)."""
    out = set()
    for _h, f, member, _body in cpio_entries(cpio_of(initrd, name), name):
        text = member.decode("utf-8", "surrogateescape").lstrip("/")
        text = text[2:] if text.startswith("./") else text
        parts = text.split("/")
        if stat.S_ISREG(f[1]) and text and not any(p in ("", ".", "..") for p in parts):
            out.add(text)
    return sorted(out)


def members_state(root: Path, paths: Sequence[str], hasher: _Hasher | None = None) -> dict[str, str]:
    """``path -> token`` of the tree's file at each of ``paths`` (a symlink resolved inside the tree, as the
    hooks' ``copy_file`` does)."""
    h = hasher or _Hasher(root)
    return {p: h.token(_resolve(h.root, p, follow=True)) for p in paths}


class Cache:
    """Initramfs files by (architecture, kernel version), each with the state of the tree it was made from:
    ``ROOT/ARCH/VERSION/ENTRY/{initrd.img,state.json}``, ENTRY the SHA-256 of state.json's state."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, arch: str, version: str) -> str:
        if not ARCH_RE.fullmatch(arch) or not VERSION_RE.fullmatch(version):
            raise InvalidInputError(f"initramfs cache: not an architecture and kernel version: {arch!r} {version!r}")
        return f"{arch}/{version}"

    def _entries(self, arch: str, version: str) -> list[str]:
        """Entries for that kernel, newest first (at most KEEP_PER_KERNEL are kept)."""
        here = self.root / self._dir(arch, version)
        found = []
        with contextlib.suppress(OSError):
            for e in os.scandir(here):
                if ENTRY_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        found.append((e.stat(follow_symlinks=False).st_mtime_ns, e.name))
        return [name for _t, name in sorted(found, reverse=True)]

    def _read_state(self, rel: str) -> dict[str, Any] | None:
        try:
            fd = Beneath(self.root).open_regular(f"{rel}/state.json")
        except (OSError, ImagectlError):
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_STATE + 1)
        try:
            doc = json.loads(data) if len(data) <= MAX_STATE else None
        except ValueError:
            return None
        ok = (
            isinstance(doc, dict)
            and doc.get("format") == FORMAT
            and isinstance(doc.get("inputs"), dict)
            and isinstance(doc.get("members"), dict)
            and isinstance(doc.get("sha256"), str)
            and isinstance(doc.get("mode"), int)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in doc["members"].items())
        )
        return doc if ok else None

    def find(
        self, arch: str, version: str, tree: Path, inputs: dict[str, str], hasher: _Hasher
    ) -> tuple[Path, int] | None:
        """A cached entry made from a tree in the very state of ``tree`` (``inputs`` its :func:`inputs_state`), its
        initramfs copied out of the cache and verified: a temp file under ``tree``'s /boot and the mode
        update-initramfs gave it, or None. The entry found is marked used (the least recently used go first)."""
        base = self._dir(arch, version)
        for entry in self._entries(arch, version):
            doc = self._read_state(f"{base}/{entry}")
            if doc is None or doc["inputs"] != inputs:
                continue
            if members_state(tree, list(doc["members"]), hasher) != doc["members"]:
                continue
            temp = self._copy_out(f"{base}/{entry}/initrd.img", tree, doc["sha256"])
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.utime(self.root / base / entry)
                return temp, doc["mode"] & 0o777
        return None

    def _copy_out(self, rel: str, tree: Path, sha256: str) -> Path | None:
        boot = _boot(tree)
        if boot is None:
            return None
        temp = boot / f".imagectl-initrd.{secrets.token_hex(6)}"
        try:
            fd = Beneath(self.root).open_regular(rel)
        except (OSError, ImagectlError):
            return None
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "rb") as src, open(temp, "xb") as out:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
                    if out.tell() > MAX_INITRD_CPIO:
                        break
        except OSError:
            temp.unlink(missing_ok=True)
            return None
        if h.hexdigest() != sha256:
            temp.unlink(missing_ok=True)
            return None
        return temp

    def store(self, arch: str, version: str, initrd: Path, doc: dict[str, Any]) -> str:
        """File ``initrd`` with its state ``doc``; returns the entry's name. A second builder storing the same
        entry at once keeps the first; older entries beyond the kept numbers are removed."""
        base = self.root / self._dir(arch, version)
        body = json.dumps(doc, sort_keys=True).encode()
        entry = hashlib.sha256(json.dumps([doc["inputs"], doc["members"]], sort_keys=True).encode()).hexdigest()
        for d in (self.root, self.root / arch, base):  # private: an initramfs may hold keys (cryptsetup, dropbear)
            d.mkdir(mode=0o700, exist_ok=True)
        staging = base / f".{entry}.{secrets.token_hex(6)}.tmp"
        staging.mkdir(mode=0o700)
        try:
            shutil.copyfile(initrd, staging / "initrd.img", follow_symlinks=False)
            atomic_write(staging / "state.json", body, mode=0o600)
            try:
                os.rename(staging, base / entry)
            except OSError:  # filed already (by this or another build): keep that one
                os.utime(base / entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune(arch, version)
        return entry

    def _prune(self, arch: str, version: str) -> None:
        here = self.root / self._dir(arch, version)
        for old in self._entries(arch, version)[KEEP_PER_KERNEL:]:
            shutil.rmtree(here / old, ignore_errors=True)
        # what a builder killed while filing left (a live one renames its staging directory within seconds)
        with contextlib.suppress(OSError):
            for e in os.scandir(here):
                if STAGING_RE.fullmatch(e.name) and time.time() - e.stat(follow_symlinks=False).st_mtime > STALE_S:
                    shutil.rmtree(here / e.name, ignore_errors=True)
        kernels = []
        with contextlib.suppress(OSError):
            for e in os.scandir(self.root / arch):
                if VERSION_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                    kernels.append((e.stat(follow_symlinks=False).st_mtime_ns, e.name))
        for _t, old in sorted(kernels, reverse=True)[KEEP_KERNELS:]:
            shutil.rmtree(self.root / arch / old, ignore_errors=True)


def _boot(tree: Path) -> Path | None:
    """The tree's /boot directory on the host (a symlink there resolved inside the tree), or None."""
    host = _resolve(os.fspath(tree), "boot", follow=True)
    return Path(host) if host is not None and stat.S_ISDIR(os.lstat(host).st_mode) else None


def _make_in_chroot(tree: Path, version: str, log: Callable[[str], None]) -> None:
    """The real update-initramfs of the tree, in it (``-u`` when an initramfs is there, as post-install.d/99)."""
    boot = _boot(tree)
    mode = "-u" if boot is not None and os.path.lexists(boot / f"initrd.img-{version}") else "-c"
    env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]
    r = subprocess.run(
        ["chroot", os.fspath(tree), *env, "update-initramfs", mode, "-k", version],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=MAKE_TIMEOUT,
        check=False,
    )
    for line in r.stdout.splitlines():
        log(line)
    if r.returncode != 0:
        raise ImagectlError(f"update-initramfs {mode} -k {version} failed in the image (exit {r.returncode})")


def _post_update(tree: Path, version: str) -> None:
    """What update-initramfs runs after making one: the bootloader hooks in /etc/initramfs/post-update.d."""
    if os.path.isdir(tree / "etc/initramfs/post-update.d"):
        subprocess.run(
            ["chroot", os.fspath(tree), "run-parts", f"--arg={version}", f"--arg=/boot/initrd.img-{version}",
             "/etc/initramfs/post-update.d/"],
            timeout=MAKE_TIMEOUT, check=True,
        )  # fmt: skip


def provide(
    tree: Path,
    arch: str,
    version: str,
    cache: Cache,
    log: Callable[[str], None],
    make: Callable[[Path, str, Callable[[str], None]], None] | None = None,
) -> dict[str, Any]:
    """Put the initramfs of kernel ``version`` in ``tree``'s /boot: from ``cache`` when an entry was made from a
    tree in this state, else made by ``make`` (default: update-initramfs in the tree) and filed. What happened,
    for the build record."""
    if not VERSION_RE.fullmatch(version):
        raise InvalidInputError(f"imagectl-initramfs: not a kernel version: {version!r}")
    start = dt.datetime.now(dt.UTC)
    hasher = _Hasher(tree)
    inputs = inputs_state(tree, version, hasher)
    found = cache.find(arch, version, tree, inputs, hasher)
    if found is not None:
        temp, mode = found
        os.chmod(temp, mode)
        os.replace(temp, temp.with_name(f"initrd.img-{version}"))
        _post_update(tree, version)
        took = (dt.datetime.now(dt.UTC) - start).total_seconds()
        log(f"imagectl-initramfs: /boot/initrd.img-{version} reused from imagectl's initramfs cache ({took:.1f} s)")
        return {"version": version, "reused": True, "seconds": round(took, 1)}
    (make or _make_in_chroot)(tree, version, log)
    result: dict[str, Any] = {"version": version, "reused": False}
    host = _resolve(os.fspath(tree), f"boot/initrd.img-{version}", follow=False)
    try:
        if host is None or not stat.S_ISREG(os.lstat(host).st_mode):
            raise InvalidInputError(f"/boot/initrd.img-{version} is not a regular file after update-initramfs")
        data = Path(host).read_bytes()
        paths = members(data, f"/boot/initrd.img-{version}")
        doc = {
            "format": FORMAT,
            "version": version,
            "arch": arch,
            "made": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "mode": stat.S_IMODE(os.lstat(host).st_mode),
            "inputs": inputs,
            "members": members_state(tree, paths, hasher),
        }
        result["cached_as"] = cache.store(arch, version, Path(host), doc)
    except (ImagectlError, OSError) as e:  # the image has its initramfs; only the cache goes without
        log(f"imagectl-initramfs: /boot/initrd.img-{version} not cached: {e}")
        result["not_cached"] = str(e)[:300]
    result["seconds"] = round((dt.datetime.now(dt.UTC) - start).total_seconds(), 1)
    return result


PENDING = "var/lib/imagectl-initramfs/pending"


def _pending(tree: Path) -> list[str]:
    host = _resolve(os.fspath(tree), PENDING, follow=False)
    if host is None:
        return []
    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        text = f.read(64 << 10).decode("utf-8", "replace")
    versions = [v.strip() for v in text.splitlines() if v.strip()]
    for v in versions:
        if not VERSION_RE.fullmatch(v):
            raise InvalidInputError(f"imagectl-initramfs: {PENDING} names {v[:80]!r}, not a kernel version")
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imagectl.imaging.initramfs TREE CACHE ARCH REPORT`` (the element's post-root.d/99, as root):
    the initramfs of every kernel post-install.d/99 left pending; what happened goes to REPORT (JSON)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m imagectl.imaging.initramfs TREE CACHE ARCH REPORT", file=sys.stderr)
        return 2
    tree, cache, arch, report = Path(args[0]), Cache(Path(args[1])), args[2], Path(args[3])

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        done = [provide(tree, arch, v, cache, say) for v in _pending(tree)]
    except ImagectlError as e:
        print(f"imagectl-initramfs: {e}", file=sys.stderr, flush=True)
        return 1
    state = _resolve(os.fspath(tree), "var/lib/imagectl-initramfs", follow=False)
    if state is not None:
        shutil.rmtree(state, ignore_errors=True)
    made = sum(not d["reused"] for d in done)
    say(f"imagectl-initramfs: {made} initramfs made once, after every package; {len(done) - made} reused")
    atomic_write(report, json.dumps({"kernels": done}, sort_keys=True).encode(), mode=0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main())
