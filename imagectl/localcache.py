"""What imagectl keeps under the ``cache_dir`` setting, and removing what was not used lately: ``imagectl cache
show`` and ``imagectl cache prune``.

Why: every build and pull on a host adds to the cache and nothing else ever removes it. A CI host that builds
nightly keeps every build's images (``builds/``) and every package version it ever downloaded; a deployer keeps
every image version it pulled (``images``). The entries that may go, one per directory entry named by a SHA-256::

    images     blobs/sha256/HEX              a pulled image, verified (HEX.part: an interrupted pull; .HEX.lock)
    builds     builds/KEY/                   a finished build: its images (hard links of the build's output), record
    packages   packages/FAMILY/sha256/HEX    a package file or a signed index the package cache verified
    base       base/FAMILY/KEY/              a bootstrapped base system (one per release, arch and mirror state)
    slc        slc/packages/ALGO/DIGEST/     an SLC seed package the bootstrap verified (by its yum index)
               slc/repodata/ALGO/DIGEST      a repository's primary index
               slc/headers/NAME-E-V-R.ARCH/  a package of a yum 2.0 (headers/) repository, with its .hdr

What stays, whatever the options: ``tuf/`` (the metadata this host trusts, its protection against rollback),
``publisher/``, ``file-digests/`` and ``export/`` (small), ``initramfs/`` (bounded by itself: a few entries per kernel)
and ``work/`` (the working directories of running builds, ``work/NAME.PID``; that of a build whose process is gone
is a leftover, removed once a day old unless something is mounted below it).

**Last use.** Whatever serves an entry marks it used by setting its access time to now (:func:`mark_used`): a
pull that finds its image cached, a build-cache hit, the package cache, the base cache. The modification time is
left alone (a pulled image may be the very inode of the user's file). An entry's last use is the later of the two
times, so a new entry counts as used when it was made, and a read that the kernel marks itself (``relatime``) only
makes it younger.

**Removal is safe beside running builds and pulls.** An entry used in the last :data:`IN_USE_S` seconds is never
removed, even to reach ``--max-size``. A pulled image is removed under its own lock (the one pull takes), and only
when nobody holds it; package files and base systems under their family's lock, their last use read again under
it; SLC downloads only when no SLC bootstrap holds their cache (:func:`pkgcache.download_cache_lock`: a bootstrap
reads its files until it has unpacked them). A directory entry is renamed away first (atomic), then deleted, so a
build never finds half of one. Nothing
is followed through a symlink, and only names of the shape imagectl writes are touched: anything else found in
the cache is left where it is.

Bytes freed count only files no other name links (a build's images are hard links of its output until that
output is deleted; a pulled image may be the user's file), so ``freed`` is what the disk gets back now.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.catalogue.cachedir import IMAGES_DIR, image_lock_name
from imagectl.errors import InvalidInputError, LocalIOError
from imagectl.imaging.pkgcache import BaseCache, PackageCache, download_cache_lock, locked

__all__ = [
    "AREAS",
    "IN_USE_S",
    "LEFTOVER_S",
    "CacheEntry",
    "PruneReport",
    "area_totals",
    "kept_sizes",
    "parse_size",
    "prune",
    "scan",
]

IN_USE_S = 3600  # an entry used this recently is never removed: a build or a pull may be using it
AREAS = ("images", "builds", "packages", "base", "slc")
KEPT = ("tuf", "publisher", "file-digests", "export", "initramfs", "work")  # shown, never removed
LEFTOVER_S = 86400  # a temp file or directory this old is what a killed build, pull or prune left
_HEX64 = re.compile(r"[0-9a-f]{64}")
# what a killed writer leaves: AtomicFile's temp (.HEX.RANDOM.part), a build's or base's staging directory
# (.KEY.tmp, .KEY.PID.tmp), this module's own (.NAME.prune-PID.tmp)
_LEFTOVER = re.compile(r"\.[0-9a-f]{64}(?:\.[0-9a-f]{8}\.part|\.\d{1,10}\.tmp|\.prune-\d{1,10}\.tmp|\.tmp)")
_FAMILY = re.compile(r"[a-z][a-z0-9-]{0,31}")
SLC_ALGOS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")  # the digests a yum index names (slc/repo.py)
_DIGEST = re.compile(r"[0-9a-f]{32,128}")
_NEVRA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~^%-]{0,250}")  # slc/headers/: NAME-EPOCH-VERSION-RELEASE.ARCH
_SLC_LEFTOVER = re.compile(r"\.[0-9a-f]{32,128}\.[0-9a-f]{8}\.part")  # an index download killed midway
_WORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.([0-9]{1,10})")  # work/NAME.PID: a build's working directory
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str, flag: str = "--max-size") -> int:
    """``20G``, ``500M``, ``1.5T``, ``4096`` (bytes; binary units, ``GiB``/``GB`` alike) as a number of bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise InvalidInputError(f"{flag} takes a size such as 20G, 500M or 1.5T, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class CacheEntry:
    """One removable entry: ``area``, its path relative to the cache, last use (epoch seconds), its bytes and the
    bytes its removal frees now (files no other name links)."""

    area: str
    rel: str
    last_used: float
    size: int
    freed: int
    leftover: bool = False  # a temp file or directory a killed writer left (removed once LEFTOVER_S old)

    def as_json(self) -> dict[str, Any]:
        return {
            "leftover": self.leftover,
            "area": self.area,
            "path": self.rel,
            "last_used": round(self.last_used),
            "bytes": self.size,
            "bytes_freed": self.freed,
        }


@dataclass
class PruneReport:
    removed: list[CacheEntry] = field(default_factory=list)
    kept_in_use: list[CacheEntry] = field(default_factory=list)  # chosen, but used lately or held by a pull
    remaining_bytes: int = 0  # of the prunable areas, after pruning

    @property
    def freed(self) -> int:
        return sum(e.freed for e in self.removed)

    def as_json(self) -> dict[str, Any]:
        return {
            "removed": [e.as_json() for e in self.removed],
            "kept_in_use": [e.as_json() for e in self.kept_in_use],
            "bytes_freed": self.freed,
            "remaining_bytes": self.remaining_bytes,
        }


def _last_used(st: os.stat_result) -> float:
    return max(st.st_atime, st.st_mtime)


def _file_sizes(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_size if st.st_nlink == 1 else 0


def _tree_sizes(path: Path, skip: frozenset[str] = frozenset()) -> tuple[int, int]:
    """Bytes of the regular files below ``path`` (symlinks not followed, nor mount points: only the files of
    ``path``'s own filesystem, nor the directories ``skip`` names), and of those no other name links."""
    size = freed = 0
    try:
        dev = os.lstat(path).st_dev
    except OSError:
        return 0, 0
    for top, dirs, files in os.walk(path, followlinks=False):  # symlinked directories are not entered
        dirs[:] = [d for d in dirs if (sub := os.path.join(top, d)) not in skip and _same_device(sub, dev)]
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    a, b = _file_sizes(st)
                    size, freed = size + a, freed + b
    return size, freed


def _same_device(path: str, dev: int) -> bool:
    try:
        return os.lstat(path).st_dev == dev
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (perhaps another one, reusing the number: then its build counts as alive)."""
    if pid <= 0:
        return True  # not a process number: never judged dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def _mounted_below(path: Path) -> bool:
    """Whether anything is mounted at or below ``path`` (a killed build's bind mounts): such a tree is never
    removed (a removal would reach into what is mounted). Unknown (no /proc): assumed so."""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return True
    top = os.path.realpath(path)
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == top or point.startswith(top.rstrip("/") + "/"):
                return True
    return False


def _checked(cache: Path, rel: str) -> Path | None:
    """``cache/rel`` if it is a directory whose every component below ``cache`` (and ``cache`` itself) is a real
    directory of this user that others cannot write to, None if it is missing. Entries are removed by path: a
    directory another user could replace with a symlink would send the removal elsewhere, so such a cache is
    refused (LocalIOError), as the client cache is."""
    path = cache
    for part in ["", *rel.split("/")]:
        path = path / part if part else path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LocalIOError.from_os("check", path, e) from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o002:
            why = (
                "not a directory (a symlink is not followed)"
                if not stat.S_ISDIR(st.st_mode)
                else "not yours"
                if st.st_uid != os.geteuid()
                else "writable by others"
            )
            raise LocalIOError(f"refusing to prune the cache: {path} is {why}", hint="fix its owner and mode")
    return path


def _scandir(path: Path | None) -> list[os.DirEntry[str]]:
    if path is None:
        return []
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []  # something imagectl did not put there: left alone
    except OSError as e:
        raise LocalIOError.from_os("read", path, e) from None


def _families(cache: Path, area: str) -> Iterator[str]:
    for e in _scandir(_checked(cache, area)):
        if _FAMILY.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
            yield e.name


def _leftover(area: str, rel: str, e: os.DirEntry[str]) -> CacheEntry | None:
    with contextlib.suppress(OSError):
        st = e.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            return CacheEntry(area, rel, st.st_mtime, *_file_sizes(st), leftover=True)
        if stat.S_ISDIR(st.st_mode):
            return CacheEntry(area, rel, st.st_mtime, *_tree_sizes(Path(e.path)), leftover=True)
    return None


def scan(cache: Path) -> list[CacheEntry]:
    """Every removable entry of the cache at ``cache`` (a missing cache has none), and the leftovers of killed
    writers beside them."""
    out: list[CacheEntry] = []
    for e in _scandir(_checked(cache, IMAGES_DIR)):
        if _HEX64.fullmatch(e.name.removesuffix(".part")):
            with contextlib.suppress(OSError):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    out.append(CacheEntry("images", f"{IMAGES_DIR}/{e.name}", _last_used(st), *_file_sizes(st)))

    def below(path: Path) -> str:  # the package and base caches name their own directories
        return path.relative_to(cache).as_posix()

    dirs: list[tuple[str, str, str | None]] = [("builds", "builds", "build.json")]
    dirs += [("packages", below(PackageCache(cache, f).objects), None) for f in _families(cache, "packages")]
    dirs += [("base", below(BaseCache(cache, f).root), "base.tar.gz") for f in _families(cache, "base")]
    for area, rel, marker in dirs:
        for e in _scandir(_checked(cache, rel)):
            if _LEFTOVER.fullmatch(e.name):
                if (left := _leftover(area, f"{rel}/{e.name}", e)) is not None:
                    out.append(left)
                continue
            if not _HEX64.fullmatch(e.name):
                continue  # not a name imagectl writes: left alone
            with contextlib.suppress(OSError):
                if marker is None:  # a file entry
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        out.append(CacheEntry(area, f"{rel}/{e.name}", _last_used(st), *_file_sizes(st)))
                elif e.is_dir(follow_symlinks=False):
                    st = os.lstat(Path(e.path) / marker)
                    sizes = _tree_sizes(Path(e.path))
                    out.append(CacheEntry(area, f"{rel}/{e.name}", _last_used(st), *sizes))
    return out + _scan_slc(cache) + _scan_work(cache)


def _scan_work(cache: Path) -> list[CacheEntry]:
    """The working directories of builds whose process is gone (killed: a live build removes its own), as
    leftovers of the builds area; none with anything mounted below it."""
    out: list[CacheEntry] = []
    for e in _scandir(_checked(cache, "work")):
        m = _WORK.fullmatch(e.name)
        if m is None or not e.is_dir(follow_symlinks=False) or _alive(int(m.group(1))):
            continue
        if not _mounted_below(Path(e.path)) and (left := _leftover("builds", f"work/{e.name}", e)) is not None:
            out.append(left)
    return out


def _scan_slc(cache: Path) -> list[CacheEntry]:
    """The SLC bootstrap's downloads (imagectl/imaging/slc/repo.py and headers.py name them): a package directory
    per digest, a primary index file per digest, a directory per package of a headers/ repository."""
    out: list[CacheEntry] = []
    places = [(f"slc/packages/{a}", _DIGEST, True) for a in SLC_ALGOS]
    places += [(f"slc/repodata/{a}", _DIGEST, False) for a in SLC_ALGOS]
    places.append(("slc/headers", _NEVRA, True))
    for rel, name, is_dir in places:
        for e in _scandir(_checked(cache, rel)):
            if not is_dir and _SLC_LEFTOVER.fullmatch(e.name):
                if (left := _leftover("slc", f"{rel}/{e.name}", e)) is not None:
                    out.append(left)
                continue
            if not name.fullmatch(e.name) or e.name.endswith((".tmp", ".part")):
                continue
            with contextlib.suppress(OSError):
                st = e.stat(follow_symlinks=False)
                if is_dir and stat.S_ISDIR(st.st_mode):
                    used = _dir_last_used(Path(e.path))
                    out.append(CacheEntry("slc", f"{rel}/{e.name}", used, *_tree_sizes(Path(e.path))))
                elif not is_dir and stat.S_ISREG(st.st_mode):
                    out.append(CacheEntry("slc", f"{rel}/{e.name}", _last_used(st), *_file_sizes(st)))
    return out


def _dir_last_used(path: Path) -> float:
    """The last use of a directory entry whose files are used together (an SLC package and what is kept beside
    it): the latest of theirs, or the directory's own for an empty one."""
    times = []
    for e in os.scandir(path):
        with contextlib.suppress(OSError):
            st = e.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                times.append(_last_used(st))
    return max(times) if times else os.lstat(path).st_mtime


def area_totals(entries: list[CacheEntry]) -> dict[str, dict[str, Any]]:
    """Per area: its entries (leftovers apart), their bytes, the bytes removing them would free, and the last use
    of the least recently used (None for an empty area)."""
    out = {}
    for area in AREAS:
        mine = [e for e in entries if e.area == area and not e.leftover]
        out[area] = {
            "entries": len(mine),
            "bytes": sum(e.size for e in mine),
            "bytes_freed_if_removed": sum(e.freed for e in mine),
            "least_recently_used": round(min(e.last_used for e in mine)) if mine else None,
        }
    return out


def kept_sizes(cache: Path, entries: Sequence[CacheEntry] = ()) -> dict[str, int]:
    """Bytes of each part of the cache that prune never removes (only those present), not counting the leftovers
    among ``entries`` found there (work/: the directories of killed builds), whose trees are not walked again."""
    leftovers = frozenset(os.path.join(cache, e.rel) for e in entries if e.leftover)
    return {name: _tree_sizes(cache / name, leftovers)[0] for name in KEPT if (cache / name).is_dir()}


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """An exclusive flock on ``path`` (never through a symlink) if nobody holds it: whether it was taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _unused(path: Path, since: float) -> bool:
    """Whether ``path`` (a file) is still there, a regular file, and unused since ``since``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and _last_used(st) < since


def _remove_tree(path: Path) -> None:
    """Rename the directory entry ``path`` away (atomic: nobody finds half of it), then delete it."""
    away = path.with_name(f".{path.name}.prune-{os.getpid()}.tmp")
    os.rename(path, away)
    shutil.rmtree(away, ignore_errors=True)  # rmtree does not follow symlinks


def _remove(cache: Path, e: CacheEntry, since: float) -> bool:
    """Remove ``e`` if it is still unused since ``since``, under the lock its users take; whether it was."""
    path = cache / e.rel
    if e.leftover:
        st = os.lstat(path)
        if st.st_mtime >= since:
            return False
        work = _WORK.fullmatch(path.name) if e.rel.startswith("work/") else None
        if work is not None and (_alive(int(work.group(1))) or _mounted_below(path)):
            return False  # its build is alive after all (a reused number), or something got mounted there
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(path)
        else:
            os.unlink(path)
        return True
    if e.area == "images":
        sha = path.name.removesuffix(".part")
        lock = path.with_name(image_lock_name(sha))
        with _try_lock(lock) as held:
            if not held or not _unused(path, since):
                return False  # a pull holds it, or it was used since the scan
            os.unlink(path)
            if not path.with_name(sha).exists() and not path.with_name(f"{sha}.part").exists():
                os.unlink(lock)  # pull locks again if the lock file it holds is no longer this name
        return True
    if e.area == "slc":
        with _try_lock(download_cache_lock(cache / "slc")) as free:
            if not free:
                return False  # an SLC bootstrap is reading the cache
            if stat.S_ISDIR(os.lstat(path).st_mode):
                if _dir_last_used(path) >= since:
                    return False
                _remove_tree(path)
            elif not _unused(path, since):
                return False
            else:
                os.unlink(path)
        return True
    family = e.rel.split("/")[1]
    if e.area == "packages":
        with locked(PackageCache(cache, family).lock):
            if not _unused(path, since):
                return False
            os.unlink(path)
        return True
    marker = path / ("build.json" if e.area == "builds" else "base.tar.gz")
    # builds have no lock: the rename is atomic
    with locked(BaseCache(cache, family).lock) if e.area == "base" else contextlib.nullcontext():
        if not _unused(marker, since):
            return False
        _remove_tree(path)
    return True


def prune(
    cache: Path,
    *,
    unused_for: float | None,
    max_size: int | None = None,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
) -> PruneReport:
    """Remove the entries not used for ``unused_for`` seconds, then, while the prunable areas hold more than
    ``max_size`` bytes, the least recently used others; never one used in the last :data:`IN_USE_S` seconds. The
    leftovers of killed writers go once :data:`LEFTOVER_S` old, whatever the options."""
    t = now()
    found = sorted(scan(cache), key=lambda e: e.last_used)
    entries = [e for e in found if not e.leftover]
    total = sum(e.size for e in entries)
    chosen: list[tuple[CacheEntry, float]] = [(e, t - LEFTOVER_S) for e in found if e.leftover]
    for e in entries:
        if (unused_for is not None and e.last_used < t - unused_for) or (max_size is not None and total > max_size):
            chosen.append((e, t - IN_USE_S))
            total -= e.size
    report = PruneReport()
    for e, before in chosen:
        if e.last_used >= before:
            if not e.leftover:  # a young leftover may be a live writer's temp: not worth a line
                report.kept_in_use.append(e)
            continue
        if dry_run:
            report.removed.append(e)
            continue
        try:
            done = _remove(cache, e, min(before, e.last_used + 1))
        except FileNotFoundError:
            continue  # removed meanwhile (another prune, a build replacing its entry)
        except OSError as err:
            raise LocalIOError.from_os("remove", cache / e.rel, err) from None
        (report.removed if done else report.kept_in_use).append(e)
    gone = {e.rel for e in report.removed}
    report.remaining_bytes = sum(e.size for e in entries if e.rel not in gone)
    return report
