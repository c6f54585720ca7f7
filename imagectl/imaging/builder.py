"""``imagectl build``: run diskimage-builder for each (arch, hypervisor) of a recipe, record it, cache it.

Each target is one ``disk-image-create`` run through :func:`imagectl.runner.run`; its output goes to a log file
and feeds a one-line live progress (phase/script and the element it belongs to). A failure is reported as one
line naming the phase, script and element that failed, and the log. Every finished build leaves its image(s)
and a build record; its build key (everything that determines the output) makes an identical rebuild a copy
from the build cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl import __version__, buildrecord
from imagectl.buildrecord import BuildRecord, Dib, ImageFile, Package, RecipeInfo, Target
from imagectl.errors import (
    ImageMismatchError,
    InvalidInputError,
    KeyProblemError,
    LocalIOError,
    NotReproducibleError,
    ToolError,
    ToolMissingError,
    printable,
)
from imagectl.families import family
from imagectl.fsio import AtomicFile, copy_verified, mark_used, read_regular, replacing, sha256_file
from imagectl.imaging import hostcompat, repro
from imagectl.imaging.configscript import write_config
from imagectl.imaging.elements import check_elements, dib_elements_dir, elements_paths
from imagectl.imaging.plan import BuildTarget, DibInvocation, check_host, plan_dib, targets
from imagectl.recipe.model import Recipe
from imagectl.recipe.schema import RecipeError
from imagectl.runner import run, tool_version
from imagectl.store.digest import MEMO_DIR, UPLOAD_PART_SIZE, FileDigest, Hasher, file_digest, remember
from imagectl.urls import redact

__all__ = [
    "BuildOptions",
    "BuildOutput",
    "build_key",
    "build_recipe",
    "check_reproducible",
    "check_reproducible_formats",
    "default_epoch",
    "dib_version",
    "is_cached",
    "python_error",
    "target_key",
]

_HOOK_PATH = re.compile(r"Copying hooks (\S+)/([^/\s]+)/([a-z-]+\.d)/([^/\s]+)\s*$")
_RUNNING = re.compile(r"dib-run-parts Running \S+/([a-z-]+\.d)/([^/\s]+)\s*$")


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    cache_dir: Path
    arches: list[str] | None = None
    formats: list[str] | None = None
    rebuild: bool = False
    progress: Callable[[str], None] = lambda _line: None
    source_date_epoch: int | None = None  # seconds; set: a reproducible build (build --reproducible)
    hypervisors: list[str] | None = None  # only these of the recipe's hypervisors (imagectl rebuild)
    # imagectl rebuild and check-reproducible's second build (Debian): each suite held to the Packages indexes a
    # record names (its package_indexes), each suite's InRelease taken from the package cache when it holds the one
    # the record names (its mirror_state), and mirrors whose bytes come from a stand-in (a snapshot); none is in
    # the build key, none changes what the image names
    mirror_state: dict[str, str] | None = None
    mirror_releases: dict[str, str] | None = None
    fetch_from: dict[str, str] | None = None
    write_cache: bool = True  # False: the build cache is neither read for this build's key's entry nor written


@dataclass(frozen=True)
class BuildOutput:
    target: BuildTarget
    images: list[Path]
    record: Path
    cached: bool
    seconds: float


def dib_version() -> str:
    """The installed diskimage-builder's version (part of every build key); ToolMissingError when it is absent."""
    try:
        return importlib.metadata.version("diskimage-builder")
    except importlib.metadata.PackageNotFoundError:
        raise ToolMissingError("disk-image-create not found", hint="pip install diskimage-builder") from None


def _tree_digest(h: Any, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def elements_digest(inv: DibInvocation, paths: list[Path]) -> str:
    """SHA-256 over the trees of the elements this build uses (named ones and their element-deps, ours first as
    DIB's ELEMENTS_PATH would resolve them): editing an element another recipe uses changes nothing here."""
    search = [*paths, dib_elements_dir()]
    h = hashlib.sha256()
    todo, seen = list(inv.elements), set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        where = next((p / name for p in search if (p / name).is_dir()), None)
        if where is None:
            continue
        h.update(name.encode() + b"\0")
        _tree_digest(h, where)
        deps = where / "element-deps"
        if deps.is_file():
            todo += [d.strip() for d in deps.read_text().splitlines() if d.strip() and not d.startswith("#")]
    return "sha256:" + h.hexdigest()


def build_key(inv: DibInvocation, recipe: Recipe, dib_version: str, elements: str) -> str:
    """Everything that determines the output, hashed: recipe meaning, target, DIB and elements, the command."""
    out_base = str(inv.output_base)
    material = {
        "recipe": recipe.digest(),
        "arch": inv.target.arch,
        "hypervisor": inv.target.hypervisor,
        "formats": inv.formats,
        "dib": dib_version,
        "elements": elements,
        "argv": [a.replace(out_base, "OUT") for a in inv.argv],
        # credentials in a mirror URL do not change the output: a password change is not a rebuild
        "env": {k: redact(v) for k, v in inv.env.items() if k not in ("ELEMENTS_PATH", "IMAGECTL_CONFIG_DIR")},
        "imagectl": __version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def image_identity(recipe_digest: str, arch: str, hypervisor: str) -> str:
    """What a reproducible image's ids (filesystem UUID, hash seed, disk id) are derived from, with its
    SOURCE_DATE_EPOCH: the recipe's meaning and the target, not the build key, which also holds imagectl's version,
    the formats and the mirror URL. So ``imagectl rebuild`` with a later imagectl (or another format list) gives
    the same ids; anything else a new version changes shows in the files, where a diff can name it."""
    material = {"recipe": recipe_digest, "arch": arch, "hypervisor": hypervisor}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def target_key(
    recipe: Recipe,
    target: BuildTarget,
    paths: list[Path],
    dib: str,
    formats: list[str] | None = None,
    *,
    output_dir: Path = Path("/imagectl-out"),
    config_dir: Path = Path("/imagectl-config"),
    epoch: int | None = None,
) -> tuple[DibInvocation, str, str]:
    """The DIB invocation of ``target``, the digest of the elements it uses and its build key.

    The one computation ``imagectl build`` and ``imagectl plan`` share, so a plan's key is the key a build of the
    same target files its cache entry under. The directories do not change the key (the output base is replaced
    by ``OUT``, the config directory is left out): ``plan`` passes placeholders, ``build`` the real ones.
    """
    inv = plan_dib(target, output_dir, config_dir, paths, formats, epoch)
    digest = elements_digest(inv, paths)
    return inv, digest, build_key(inv, recipe, dib, digest)


def is_cached(cache_dir: Path, key: str) -> bool:
    """Whether the build cache under ``cache_dir`` holds a finished build with this key (what a build would reuse,
    if its images still match their record)."""
    return (cache_dir / "builds" / key / "build.json").is_file()


class _Progress:
    """Turns DIB's output into 'phase/script (element)' and remembers where it was for error messages."""

    def __init__(self, label: str, say: Callable[[str], None]) -> None:
        self.label, self.say = label, say
        self.owner: dict[tuple[str, str], str] = {}
        self.current: tuple[str, str] | None = None
        self.start = time.monotonic()

    def line(self, text: str) -> None:
        if m := _HOOK_PATH.search(text):
            self.owner[(m.group(3), m.group(4))] = m.group(2)
        elif m := _RUNNING.search(text):
            self.current = (m.group(1), m.group(2))
            self.say(f"{self.label}: {self.where()} [{time.monotonic() - self.start:.0f}s]")
        elif "Converting image using qemu-img convert" in text:
            self.current = ("convert", "qemu-img")
            self.say(f"{self.label}: converting image [{time.monotonic() - self.start:.0f}s]")

    def where(self) -> str:
        if self.current is None:
            return "start-up (before the first element script)"
        phase, script = self.current
        element = self.owner.get(self.current)
        return f"{phase}/{script}" + (f" (element {element})" if element else "")


_STARTUP_CAUSES = (
    (re.compile(r"Element '([^']+)' not found"), "element {0!r} not found on ELEMENTS_PATH"),
    (re.compile(r"(?:^|\s)([\w.+-]+): (?:command )?not found\s*$"), "{0} is not installed on this host"),
    (re.compile(r"^(?:\S+ \S+ \| )?[\w.]+(?:Exception|Error): ([^\n]{1,160})$"), "{0}"),  # DIB's own Python
    (re.compile(r"(?:Cannot|Could not|Unable to) [^\n]{0,160}"), "{0}"),
    (re.compile(r"ERROR:? ([^\n]{1,160})"), "{0}"),
)


def _log_tail(log_file: Path, size: int = 64 * 1024) -> list[str]:
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def element_error(log_file: Path) -> str | None:
    """The last ``imagectl: error: …`` line one of our elements' helpers wrote to the build log (the SLC bootstrap,
    the boot loader writer): it says why better than an exit code."""
    for line in reversed(_log_tail(log_file)):
        _, found, message = line.partition("imagectl: error: ")
        if found:
            return message.strip()
    return None


def startup_cause(log_file: Path) -> str | None:
    """Why disk-image-create stopped before its first element script, read from the end of its log: a missing
    element, a missing tool, DIB's own error line. None when the log says nothing recognisable."""
    tail = _log_tail(log_file)
    for pattern, template in _STARTUP_CAUSES:
        for line in reversed(tail):
            if line.startswith("+ "):  # our own logged command and environment
                continue
            m = pattern.search(line)
            if m:
                return template.format(*(m.groups() or (m.group(0),))).strip()
    return None


_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\s*$")
_DIB_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \| ")  # DIB's timestamp on each log line
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)(?:: (.*))?$")
# `python3 -m pkg.module` without the package: no traceback, one line naming the exception
_NO_MODULE = re.compile(r"python[0-9.]*: (Error while finding module specification for .*|No module named .*)$")
CAUSE_MAX = 200  # characters of a cause quoted from a log


def _bounded(text: str) -> str:
    text = printable(text)
    return text if len(text) <= CAUSE_MAX else text[: CAUSE_MAX - 1] + "…"


def python_error(log_file: Path) -> str | None:
    """The exception a Python program died of in the current element script (after the log's last
    ``dib-run-parts Running`` line), e.g. ``ModuleNotFoundError: No module named 'imagectl'``: the last line of its
    last traceback, or python's one-line ``-m`` failure. Bounded and printable. None when there is neither."""
    tail = [_DIB_PREFIX.sub("", line) for line in _log_tail(log_file)]
    start = max((i for i, line in enumerate(tail) if "dib-run-parts Running" in line), default=-1)
    tail = tail[start + 1 :]
    found = None
    for i, line in enumerate(tail):
        if _TRACEBACK.search(line):
            # frames are indented; the first line after them that is not says what was raised
            rest = [x for x in tail[i + 1 :] if x.strip()]
            end = next((x for x in rest if not x.startswith(" ")), None)
            if end is not None and (m := _EXCEPTION_LINE.match(end.strip())):
                found = m.group(1) + (f": {m.group(2)}" if m.group(2) else "")
        elif m := _NO_MODULE.search(line):
            found = m.group(1)
    return _bounded(found) if found else None


def _packages(manifest_dir: Path) -> tuple[Package, ...]:
    """The image's package list, from the dpkg/rpm manifest DIB's manifests element copies out of the image."""
    out: list[Package] = []
    for f in sorted(manifest_dir.glob("dib-manifest-dpkg-*")) + sorted(manifest_dir.glob("dib-manifest-rpm-*")):
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        for p in data.get("packages", []):
            name, version, arch = (str(p.get(k) or "") for k in ("package", "version", "arch"))
            out.append(Package(name or str(p.get("name") or ""), version, arch))
    return tuple(out)


def _copy(src: Path, dst: Path) -> None:
    """Atomic copy (temp + rename) so a destination never holds a half-copied file."""
    with AtomicFile(dst) as out, src.open("rb") as fin:
        shutil.copyfileobj(fin, out.file, 1 << 20)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when possible (instant; a cache hit re-verifies the bytes, so a later edit of the output cannot
    leak into another build), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        _copy(src, dst)


def _cache_hit(cache: Path, images: list[Path], record_path: Path, memo_dir: Path) -> bool:
    """Copy a cached build to the output, verifying each image against the cached record's size and SHA-256; the
    digests taken while copying (whole and in upload parts) are filed for publish (:func:`remember`)."""
    try:
        record = json.loads((cache / "build.json").read_text())
        want = {i["file"]: (str(i["sha256"]), i.get("size")) for i in record["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for img in images:
        sha256, size = want.get(img.name, ("", None))
        try:
            with Hasher(UPLOAD_PART_SIZE) as h:
                copy_verified(
                    cache / img.name, img, sha256=sha256, size=size if isinstance(size, int) else None, hasher=h
                )
            remember(img, h.result(), memo_dir)
        except ImageMismatchError:
            shutil.rmtree(cache, ignore_errors=True)  # a damaged entry is dropped, never served
            return False
        except LocalIOError:
            return False
    _copy(cache / "build.json", record_path)
    mark_used(cache / "build.json")  # for imagectl cache prune
    return True


def _host_tools() -> dict[str, str]:
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu-img": tool_version(["qemu-img", "--version"]),
        "mke2fs": tool_version(["mke2fs", "-V"]),  # with qemu-img, what a reproducible image's bytes depend on
        "sudo": tool_version(["sudo", "-V"]),
        "debootstrap": tool_version(["dpkg-query", "-W", "-f=${Version}", "debootstrap"]),
        "rpm": tool_version(["rpm", "--version"]),
    }


def _build_one(inv: DibInvocation, key: str, opts: BuildOptions, recipe: RecipeInfo, dib: Dib) -> BuildOutput:
    t = inv.target
    cache = opts.cache_dir / "builds" / key
    record_path = opts.output / f"{t.basename}.build.json"
    images = [inv.output_base.with_suffix(f".{f}") for f in inv.formats]
    start = time.monotonic()
    if opts.write_cache and not opts.rebuild and (cache / "build.json").is_file():
        if _cache_hit(cache, images, record_path, opts.cache_dir / MEMO_DIR):
            opts.progress(f"{t.basename}: identical build {key[:12]} found in the build cache; reused")
            return BuildOutput(t, images, record_path, True, time.monotonic() - start)
        opts.progress(f"{t.basename}: cached build {key[:12]} no longer matches its record; building again")

    log_file = opts.output / f"{t.basename}.log"
    log_file.unlink(missing_ok=True)
    env = dict(inv.env)
    compat = not hostcompat.has_device_mapper()
    if compat:
        shim_bin = hostcompat.prepare_shims(opts.output / ".imagectl-work" / t.basename)
        env["PATH"] = f"{shim_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    progress = _Progress(t.basename, opts.progress)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # Debian: packages and the base system through imagectl's verified cache (imagectl-package-cache element)
    pkgcache = None
    if "imagectl-package-cache" in inv.elements:
        from imagectl.imaging.aptproxy import DebianPackageCache  # requests and more: not for a cache hit

        work = opts.cache_dir / "work" / f"{t.basename}.{os.getpid()}"
        pkgcache = DebianPackageCache(
            opts.cache_dir,
            work,
            inv.env,
            inv.argv[inv.argv.index("-a") + 1],
            str(dib.version),
            fetch_from=opts.fetch_from,
            pinned=opts.mirror_state,
            pinned_releases=opts.mirror_releases,
        )
    # SLC: the bootstrap's download cache (packages under their repository checksums, each checked again on every
    # use), in imagectl's cache and so shared by every build on this host, as the Debian cache is. Like the
    # proxy's environment, it is not in the build key: where packages are cached does not change what is built.
    if "slc-bootstrap" in inv.elements:
        env["IMAGECTL_SLC_CACHE"] = str(opts.cache_dir / "slc")
    # Debian: a kernel's initramfs reused from an earlier build whose tree was in the same state for it
    # (imaging/initramfs.py); bypassed with the build cache (check-reproducible's second build, imagectl rebuild)
    # and by build --rebuild: made afresh in the image then
    initramfs_report = None
    if "imagectl-initramfs" in inv.elements and opts.write_cache and not opts.rebuild:
        initramfs_report = opts.output / ".imagectl-work" / t.basename / "initramfs.json"
        initramfs_report.parent.mkdir(parents=True, exist_ok=True)
        initramfs_report.unlink(missing_ok=True)
        env["IMAGECTL_INITRAMFS_CACHE"] = str(opts.cache_dir / "initramfs")
        env["IMAGECTL_INITRAMFS_REPORT"] = str(initramfs_report)
        env.setdefault("IMAGECTL_PYTHON", sys.executable)
    cache_record, succeeded = None, False
    try:
        serving: contextlib.AbstractContextManager[dict[str, str]] = (
            pkgcache.serving() if pkgcache else contextlib.nullcontext({})
        )
        with serving as cache_env:
            run(inv.argv, env={**env, **cache_env}, log_file=log_file, on_line=progress.line, what="disk-image-create")
        succeeded = True
    except ToolMissingError:
        raise
    except ToolError as e:
        # ours, else DIB's reason for stopping before the first script, else a Python program's exception
        cause = (
            element_error(log_file)
            or (startup_cause(log_file) if progress.current is None else None)
            or python_error(log_file)
        )
        raise ToolError(
            f"building {t.basename} failed in {progress.where()}"
            + (f": {cause}" if cause else "")
            + f": disk-image-create exit {e.returncode}; log: {log_file}",
            returncode=e.returncode,
            log_file=log_file,
        ) from None
    finally:
        if pkgcache is not None:
            cache_record = pkgcache.finish(succeeded)
            shutil.rmtree(pkgcache.work, ignore_errors=True)
    if opts.source_date_epoch is not None:
        ids = repro.derive_ids(image_identity(recipe.digest or "", t.arch, t.hypervisor), opts.source_date_epoch)
        _make_reproducible(inv, ids, opts.source_date_epoch, log_file, progress)
    elif inv.raw_only:
        _convert(inv, inv.output_base.with_suffix(".raw"), log_file, progress, reproducible=False)
    # Into the cache before hashing: the hard link changes each image's ctime, which names a remembered digest.
    staging = opts.cache_dir / "builds" / f".{key}.tmp"
    if opts.write_cache:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for img in images:
            _link_or_copy(img, staging / img.name)
    digests = _digests(images, opts.cache_dir / MEMO_DIR)
    finished = dt.datetime.now(dt.UTC).replace(microsecond=0)
    record = BuildRecord(
        target=Target(
            name=t.image_name,
            recipe=t.recipe.name,
            arch=t.arch,
            hypervisor=t.hypervisor,
            os=t.recipe.release.family,
            os_version=t.recipe.release.release,
            version=t.recipe.data.get("version"),
        ),
        imagectl=__version__,
        recipe=recipe,
        dib=dataclasses.replace(dib, command=tuple(inv.argv), env=dict(inv.env), elements=tuple(inv.elements)),
        build_key=key,
        host={**_host_tools(), "device_mapper": not compat, "hostcompat_partx_shims": compat},
        notes=tuple(inv.notes),
        started=started.isoformat().replace("+00:00", "Z"),
        finished=finished.isoformat().replace("+00:00", "Z"),
        seconds=int((finished - started).total_seconds()),
        packages=_packages(inv.output_base.with_suffix(".d") / "dib-manifests"),
        images=tuple(
            ImageFile(img.name, img.suffix.lstrip("."), d.size, d.sha256)
            for img, d in zip(images, digests, strict=True)
        ),
        log=log_file.name,
        package_cache=cache_record,  # what came from the package cache, what was downloaded (None: not used)
        initramfs_cache=_initramfs_report(initramfs_report),
        source_date_epoch=opts.source_date_epoch,
        reproducible=True if opts.source_date_epoch is not None else None,
    )
    # The record is published with the image (publish --from-build): no credential may be in it.
    data = record.redacted().to_json()
    record_path.write_text(data)
    if not opts.write_cache:
        shutil.rmtree(opts.output / ".imagectl-work" / t.basename, ignore_errors=True)
        return BuildOutput(t, images, record_path, False, time.monotonic() - start)
    # The cache entry is complete last, and atomically per directory: a half-filled one is never taken for a hit.
    (staging / "build.json").write_text(data)
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(staging, cache)
    shutil.rmtree(opts.output / ".imagectl-work" / t.basename, ignore_errors=True)
    return BuildOutput(t, images, record_path, False, time.monotonic() - start)


def _digests(images: list[Path], memo_dir: Path) -> list[FileDigest]:
    """Each image's SHA-256 and size for its record, with the part digests an S3 upload needs, all in one read;
    filed where publish looks for them (:func:`remember`), so publishing a fresh build does not read it again."""
    out = []
    for img in images:
        before = os.stat(img)
        digest = file_digest(img, part_size=UPLOAD_PART_SIZE)  # never from the memo: the record's own reading
        remember(img, digest, memo_dir, hashed=before)
        out.append(digest)
    return out


def _initramfs_report(path: Path | None) -> dict[str, Any] | None:
    """What the imagectl-initramfs element did with the initramfs cache (None: not used, or no kernel pending)."""
    if path is None:
        return None
    try:
        doc = json.loads(read_regular(path, 1 << 20, what="initramfs report"))
    except (LocalIOError, ValueError):
        return None
    kernels = doc.get("kernels") if isinstance(doc, dict) else None
    return {"kernels": kernels} if isinstance(kernels, list) and kernels else None


# qemu-img's output is the same bytes for the same input, version and options (issue 11): these are fixed
REPRODUCIBLE_FORMATS = ("qcow2", "raw")
_CONVERT = {"qcow2": ["-c", "-f", "raw", "-O", "qcow2"]}  # what DIB itself runs for qcow2
# Out-of-order writes let qemu-img compress clusters on every core (measured: 20 s -> 12 s for a 2 GiB disk on
# 2 cores); where each compressed cluster lands then depends on timing, so a reproducible build never uses it.
_PARALLEL = ["-W", "-m", "8"]


def _stamp(log_file: Path, text: str) -> None:
    """A line in DIB's log format (local time, as DIB's ``date``), so the log shows imagectl's own steps in time."""
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    with log_file.open("a", encoding="utf-8") as f:
        f.write(f"{now} | imagectl: {text}\n")


def _convert(inv: DibInvocation, src: Path, log_file: Path, progress: _Progress, *, reproducible: bool) -> None:
    """Make each of ``inv.formats`` from the raw disk ``src`` (qcow2 under a temp name, then renamed); the raw
    format is ``src`` itself, moved to ``output_base.raw`` (or removed when raw was not asked for)."""
    dib_raw = inv.output_base.with_suffix(".raw")
    for fmt in inv.formats:
        if fmt == "raw":
            continue
        progress.current = ("convert", "qemu-img")
        progress.say(f"{progress.label}: converting to {fmt} [{time.monotonic() - progress.start:.0f}s]")
        _stamp(log_file, f"converting {src.name} to {fmt} with qemu-img convert")
        options = _CONVERT[fmt] + ([] if reproducible else _PARALLEL)
        with replacing(inv.output_base.with_suffix(f".{fmt}")) as temp:
            run(["qemu-img", "convert", *options, src, temp], log_file=log_file, timeout=3600)
        _stamp(log_file, f"converted to {fmt}")
    if "raw" in inv.formats:
        if src != dib_raw:
            os.replace(src, dib_raw)
    else:
        src.unlink(missing_ok=True)


def _make_reproducible(inv: DibInvocation, ids: repro.Ids, epoch: int, log_file: Path, progress: _Progress) -> None:
    """DIB's raw disk -> its normalized form (:func:`repro.normalize` with ``ids``) ->
    each requested format, under temp names; DIB's own raw is replaced (or removed when raw was not asked for)."""
    dib_raw = inv.output_base.with_suffix(".raw")
    norm = inv.output_base.parent / f".{inv.output_base.name}.normalized.raw"
    progress.current = ("normalize", "imagectl")
    progress.say(f"{progress.label}: normalizing for a reproducible image [{time.monotonic() - progress.start:.0f}s]")
    try:
        repro.normalize(dib_raw, norm, epoch=epoch, ids=ids)
        _convert(inv, norm, log_file, progress, reproducible=True)
    finally:
        norm.unlink(missing_ok=True)
        if "raw" not in inv.formats:
            dib_raw.unlink(missing_ok=True)


def check_reproducible_formats(recipe: Recipe, formats: list[str] | None) -> None:
    """Raise InvalidInputError unless every format a reproducible build of ``recipe`` would make (``formats``, else
    the recipe's) is one whose bytes are known to repeat (:data:`REPRODUCIBLE_FORMATS`)."""
    other = [f for f in formats or recipe.data["formats"] if f not in REPRODUCIBLE_FORMATS]
    if other:
        raise InvalidInputError(
            f"--reproducible makes {' and '.join(REPRODUCIBLE_FORMATS)} images, not {other[0]}",
            hint="choose them with --format qcow2 --format raw",
        )


def default_epoch(recipe: Recipe) -> int:
    """SOURCE_DATE_EPOCH for ``build --reproducible`` without ``--source-date-epoch``: the environment's
    SOURCE_DATE_EPOCH, else the time of the last git commit that touched the recipe's files (fixed by the inputs,
    unlike the time of the build). Raises InvalidInputError when there is neither."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if text:
        if not text.isdigit():
            raise InvalidInputError(f"SOURCE_DATE_EPOCH={text!r} is not a whole number of seconds")
        return int(text)
    files = [str(p) for p in recipe.chain] or [str(recipe.path)]
    try:
        res = run(
            ["git", "log", "-1", "--format=%ct", "--", *files],
            cwd=Path(files[0]).parent,
            timeout=30,
            check=False,
        )
    except ToolError:
        res = None
    out = res.output.strip() if res is not None and res.returncode == 0 else ""
    if not out.isdigit():
        raise InvalidInputError(
            f"no SOURCE_DATE_EPOCH for {recipe.path}: it is not in a git checkout",
            hint="give one with --source-date-epoch N (seconds since 1970), or export SOURCE_DATE_EPOCH",
        )
    return int(out)


def build_recipe(recipe: Recipe, opts: BuildOptions) -> list[BuildOutput]:
    """Build every (arch, hypervisor) of ``recipe`` (or the chosen arches) into ``opts.output``.

    Raises UnsupportedHostError before any work for an arch this host cannot build, ToolMissingError when
    disk-image-create, qemu-img or sudo are missing, ToolError naming phase/element/log when a build fails.
    """
    chosen = targets(recipe, opts.arches, opts.hypervisors)
    missing = check_elements(recipe)
    if missing:  # what DIB would only say after start-up, as "Element 'x' not found"
        raise RecipeError(missing)
    check_host(sorted({t.arch for t in chosen}, key=[t.arch for t in chosen].index))
    needs = family(recipe.release.family).build_needs(recipe.release, recipe.data, recipe.pos)
    if needs:  # a valid recipe that cannot build (SLC without gpg_keys): refused before DIB, not inside it
        raise KeyProblemError(needs[0])
    if opts.source_date_epoch is not None:
        check_reproducible_formats(recipe, opts.formats)
    dib = dib_version()
    for tool in ("disk-image-create", "qemu-img", "sudo"):
        if shutil.which(tool) is None:
            raise ToolMissingError(
                f"{tool} not found", hint="run tests/run.sh once, or install diskimage-builder, qemu-utils and sudo"
            )
    try:
        opts.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create {opts.output}: {e.strerror}") from None
    paths = elements_paths(recipe)
    recipe_info = RecipeInfo(
        path=str(recipe.path), digest=recipe.digest(), chain=tuple(str(p) for p in recipe.chain), merged=recipe.data
    )
    outputs = []
    for t in chosen:
        config_dir = opts.output / ".imagectl-work" / t.basename / "config"
        write_config(recipe, config_dir)
        inv, digest, key = target_key(
            recipe,
            t,
            paths,
            dib,
            opts.formats,
            output_dir=opts.output.resolve(),
            config_dir=config_dir.resolve(),
            epoch=opts.source_date_epoch,
        )
        outputs.append(_build_one(inv, key, opts, recipe_info, Dib(version=dib, elements_digest=digest)))
    return outputs


def check_reproducible(recipe: Recipe, opts: BuildOptions) -> list[BuildOutput]:
    """``build --check-reproducible``: build reproducibly (as ``opts`` says, the build cache allowed), then again
    into ``opts.output``/check-reproducible with the build cache bypassed (neither read nor written), and compare
    the SHA-256 of every image. Returns the first build's outputs when all are equal; otherwise raises
    NotReproducibleError naming the differing images and the files that differ in them (diffoscope's report when
    diffoscope is installed, else imagectl's own comparison of the two root file systems), both written to
    ``check-reproducible/NAME.differences.txt``."""
    assert opts.source_date_epoch is not None
    first = build_recipe(recipe, opts)
    again = dataclasses.replace(opts, output=opts.output / "check-reproducible", rebuild=True, write_cache=False)
    if opts.mirror_state is None:  # the second build gets what the first got, whatever the mirror did meanwhile
        indexes, releases = _mirror_states(first)
        if indexes:
            again = dataclasses.replace(again, mirror_state=indexes, mirror_releases=releases)
    second = build_recipe(recipe, again)
    problems = []
    for one, two in zip(first, second, strict=True):
        for a, b in zip(one.images, two.images, strict=True):
            if sha256_file(a) == sha256_file(b):
                continue
            report = again.output / f"{a.name}.differences.txt"
            problems.append(f"{a} and {b} differ ({describe_differences(a, b, report)}; details: {report})")
    if problems:
        raise NotReproducibleError(
            f"two builds of {recipe.name} differ: " + "; ".join(problems),
            hint="the differences are in the files named; issue 11 lists what is pinned",
        )
    return first


def _mirror_states(outputs: list[BuildOutput]) -> tuple[dict[str, str], dict[str, str]]:
    """The Packages indexes and InRelease files (:meth:`BuildRecord.package_indexes`, :meth:`~BuildRecord.
    mirror_releases`) the Debian builds of ``outputs`` used, merged over their targets (records imagectl just
    wrote); empty when none went through the package cache (SLC, a stand-in disk-image-create)."""
    indexes: dict[str, str] = {}
    releases: dict[str, str] = {}
    for out in outputs:
        record = buildrecord.parse(read_regular(out.record, buildrecord.MAX_SIZE, what="build record"), str(out.record))
        indexes.update(record.package_indexes(str(out.record)) or {})
        releases.update(record.mirror_releases() or {})
    return indexes, releases


def describe_differences(a: Path, b: Path, report: Path) -> str:
    """What differs between images ``a`` and ``b`` (of one format), in a few words; the full list goes to ``report``
    (diffoscope's report when it is installed, else imagectl's own comparison of the two root file systems)."""
    if shutil.which("diffoscope"):
        res = run(
            ["diffoscope", "--text", report, a, b], timeout=3600, check=False, log_file=report.with_suffix(".log")
        )
        return f"diffoscope exit {res.returncode}"
    work = report.parent / f".{a.name}.compare"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        paths = repro.differing_paths(a, b, a.suffix.lstrip("."), work)
    except InvalidInputError as e:
        return f"not compared: {e.message}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.write_text("".join(p + "\n" for p in paths))
    if not paths:
        return "the same files, different bytes"
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return "differing files: " + ", ".join(paths[:5]) + more
