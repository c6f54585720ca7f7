"""Bootstrap an SLC root filesystem the way Debian's ``rinse`` does, for the ``slc-bootstrap`` DIB element.

Stage 1 (host side, no rpm needed): read the release's yum repository (over https when the mirror offers it;
``repodata/``, or for SLC 3 and any mirror without it, yum 2.0's ``headers/``), resolve the seed (:data:`SEEDS`)
for the arch, fetch every package through the project's HTTP session, verified against the repository's checksum
(``repodata/``) or its header (``headers/``), check every package's OpenPGP signature against the pinned keys
(``--gpg-key``, from the recipe's ``gpg_keys``; no key, no build), unpack them into the target and write the
chroot's yum configuration.
Stage 2 (inside the chroot, with the *target's* rpm and yum, so the rpm database has the Berkeley-DB format
SLC <= 6 reads): ``rpm --initdb``, check the seed's GPG signatures again with the release's keys (defence in
depth), register the seed (``rpm -i --justdb --nodeps --noscripts``), ``ldconfig``, then ``yum -y install`` the
rest. ``--stage2`` performs stage 2 (as root, through the one subprocess wrapper);
otherwise its commands are printed, one per line, for a person or another tool to run.

Usage: ``python3 -m imagectl.imaging.slc.bootstrap --release 6 --arch x86_64 --target DIR --gpg-key FILE [...]
[--mirror URL] [--repo NAME=URL ...] [--install PKG ...] [--hypervisor hvm|xen-pv] [--cache DIR] [--stage2]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imagectl.errors import DownloadError, ImagectlError, InvalidInputError, KeyProblemError, LocalIOError, report
from imagectl.families import RELEASES
from imagectl.fsio import atomic_write, read_regular
from imagectl.http import make_session, safe_url
from imagectl.imaging.pkgcache import download_cache_lock, locked
from imagectl.imaging.slc.bootloader import packages as boot_packages
from imagectl.imaging.slc.headers import RPM_MAX, HeadersRepository
from imagectl.imaging.slc.repo import (
    NO_REPOSITORY_HINT,
    MissingFileError,
    Package,
    RepositoryReader,
    YumRepository,
    resolve,
)
from imagectl.imaging.slc.rpmsig import PinnedKeys, SignatureError
from imagectl.imaging.slc.seed import AFTER, SEEDS, unpack
from imagectl.runner import run

__all__ = [
    "SEED_DIR",
    "Bootstrap",
    "main",
    "open_repository",
    "repository_url",
    "stage1",
    "stage2",
    "stage2_commands",
    "yum_config",
]

SEED_DIR = "var/cache/imagectl-seed"  # where stage 1 leaves the seed .rpm files inside the target for stage 2
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_X86_32 = ("i386", "i486", "i586", "i686")
# Device nodes rpm, yum and scriptlets open; created (as root) only where the target has none.
_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0), "console": (5, 1)}
# Releases whose yum (python 2.2-2.4 on OpenSSL 0.9.7/0.9.8) cannot speak the TLS a mirror offers today: their
# chroot reads the mirror over http; what it installs is checked by yum against the release's keys (gpgcheck=1).
_NO_MODERN_TLS = ("3", "4", "5")


@dataclass(frozen=True)
class Bootstrap:
    """What stage 1 did, and what stage 2 needs."""

    target: Path
    release: str
    arch: str
    repos: dict[str, str]  # yum repository name -> URL, as written into the chroot's yum configuration
    seed: list[Package]
    seed_files: list[str]  # the seed .rpm files as the chroot sees them (/var/cache/imagectl-seed/...)
    gpg_keys: list[str] = field(default_factory=list)  # the release's keys as the chroot sees them
    install: list[str] = field(default_factory=list)  # what stage 2's yum installs


def repository_url(mirror: str, release: str, arch: str) -> str:
    """The yum repository of ``arch`` under a release mirror (``.../slc6X`` -> ``.../slc6X/x86_64/yum/os``).

    Raises InvalidInputError for a release or arch imagectl does not know.
    """
    rel = RELEASES.get(("slc", release))
    if rel is None:
        known = ", ".join(r for f, r in RELEASES if f == "slc")
        raise InvalidInputError(f"SLC {release} is not supported (expected one of {known})")
    if arch not in rel.arches:
        raise InvalidInputError(f"SLC {release} has no {arch} release (expected one of {', '.join(rel.arches)})")
    return mirror.rstrip("/") + "/" + rel.repo_path.format(arch=arch)


def yum_config(repos: dict[str, str], gpg_keys: Sequence[str]) -> str:
    """The text of a yum repository file: one ``[imagectl-NAME]`` section per repository.

    GPG checking is on when the release ships keys (``gpg_keys``, paths inside the chroot). Raises
    InvalidInputError for a name or URL that would break the file.
    """
    lines = ["# Written by imagectl (slc-bootstrap): the repositories this image was built from."]
    for name, url in repos.items():
        if not _REPO_NAME.match(name):
            raise InvalidInputError(f"repository name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        if any(c.isspace() for c in url) or not re.match(r"(https?|file)://", url):
            raise InvalidInputError(f"repository {name}: {safe_url(url)!r} is not an http(s) or file URL")
        lines += ["", f"[imagectl-{name}]", f"name=imagectl: {name}", f"baseurl={url}", "enabled=1"]
        if gpg_keys:
            lines += ["gpgcheck=1", "gpgkey=" + " ".join(f"file://{k}" for k in gpg_keys)]
        else:
            lines.append("gpgcheck=0")
    return "\n".join(lines) + "\n"


def _write_yum_config(target: Path, release: str, text: str) -> None:
    """yum >= 2.2 reads /etc/yum.repos.d; SLC 3's yum 2.0 only /etc/yum.conf, so there our block is appended
    (replacing an earlier one) after the release's own [main] section."""
    if release != "3":
        atomic_write(target / "etc/yum.repos.d/imagectl.repo", text.encode())
        return
    conf = target / "etc/yum.conf"
    begin, end = "# >>> imagectl", "# <<< imagectl"
    try:
        old = conf.read_text(encoding="utf-8") if conf.exists() else "[main]\n"
    except OSError as e:
        raise LocalIOError(f"cannot read {conf}: {e.strerror}") from None
    old = re.sub(rf"\n?{begin}.*?{end}\n", "", old, flags=re.S)
    atomic_write(conf, f"{old.rstrip()}\n\n{begin}\n{text}{end}\n".encode())


def open_repository(
    url: str,
    release: str,
    cache: Path,
    *,
    session: requests.Session,
    timeout: float = 30.0,
    attempts: int = 3,
) -> tuple[RepositoryReader, str]:
    """A reader for the repository at ``url``, chosen by what the mirror serves: ``repodata/repomd.xml``, else yum
    2.0's ``headers/header.info``; SLC 3, whose mirrors serve headers/, tries that first. Its index is fetched
    (once: the reader's ``packages`` uses it). Returns the reader and one line for the user saying how it is read.

    Raises DownloadError (exit 13) naming both files if the mirror has neither, RepoMetadataError if what it serves
    is not an index.
    """
    kinds: list[type[RepositoryReader]] = [YumRepository, HeadersRepository]
    if release == "3":
        kinds.reverse()
    missing: list[MissingFileError] = []
    probe_https = True
    line = ""
    for kind in kinds:
        reader = kind(url, cache, session=session, timeout=timeout, attempts=attempts)
        if probe_https:
            line = reader.prefer_https()
            # Ask https again for the other file only if it answered this time, with an HTTP error (https taken,
            # or a refused connection, settles it).
            probe_https = not reader.https_refused and reader.url.startswith("http://")
        url = reader.url  # stays on https once the first probe chose it
        try:
            reader.load_index()
        except MissingFileError as e:
            missing.append(e)
            continue
        tried = f"; no {kinds[0].index_path} there" if missing else ""
        return reader, f"{line}; read through {reader.index_path}{tried}"
    raise DownloadError(f"{missing[0].message}, and {missing[1].message}", hint=NO_REPOSITORY_HINT)


def chroot_url(url: str, release: str) -> str:
    """The URL the chroot's own yum is given for a repository: ``url``, except that releases whose yum predates
    TLS 1.2 (SLC 3-5) get the http form of an https URL (stage 1 on the host reads https either way)."""
    parts = urllib.parse.urlsplit(url)
    if release in _NO_MODERN_TLS and parts.scheme == "https":
        return urllib.parse.urlunsplit(("http", *parts[1:]))
    return url


def _fetch_seed(
    repos: dict[str, str],
    release: str,
    arch: str,
    cache: Path,
    gpg_keys: Sequence[Path],
    timeout: float,
    retries: int,
    log_file: Path | None,
    say: Callable[[str], None],
) -> tuple[list[Package], list[Path]]:
    """The seed (resolved across ``repos``) and its package files in ``cache``, downloaded where missing, each
    verified against its repository's index and signed by one of ``gpg_keys`` (a refused one is removed from the
    cache)."""
    with tempfile.TemporaryDirectory(prefix="imagectl-gpg-") as home:
        pinned = PinnedKeys(list(gpg_keys), Path(home), log_file=log_file)
        say(f"packages must be signed by {pinned.describe()} ({', '.join(str(k) for k in gpg_keys)})")
        session = make_session(retries=retries)
        available: list[Package] = []
        readers: dict[str, RepositoryReader] = {}
        for name, url in repos.items():
            reader, line = open_repository(url, release, cache, session=session, timeout=timeout, attempts=retries + 1)
            say(f"{name} repository: {line}")
            readers[reader.url] = reader  # the key Package.repo_url carries
            available += reader.packages()
        where = " and ".join(safe_url(u) for u in repos.values())
        seed = resolve(available, SEEDS[release], arch, where=where)
        sizes = [p.size for p in seed if p.size is not None]
        total = f"{sum(sizes) / 1e6:.1f} MB" if len(sizes) == len(seed) else f"each at most {RPM_MAX >> 20} MiB"
        say(f"fetching {len(seed)} seed packages ({total}) for SLC {release} {arch}")
        files: list[Path] = []
        for p in seed:
            reader = readers[p.repo_url]
            path = reader.download(p)
            try:
                pinned.verify(path, p.nevra)
            except SignatureError:
                reader.discard(path)  # the next run fetches it again rather than trusting a refused file
                raise
            files.append(path)
    return seed, files


def stage1(
    *,
    mirror: str,
    release: str,
    arch: str,
    target: Path,
    cache: Path,
    gpg_keys: Sequence[Path],
    extra_repos: Sequence[tuple[str, str]] = (),
    install: Sequence[str] = (),
    timeout: float = 30.0,
    retries: int = 3,
    log_file: Path | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> Bootstrap:
    """Fetch, verify and unpack the seed of SLC ``release`` for ``arch`` into ``target``; write its yum config.

    Seed packages come from the release's ``os`` repository and the ``extra_repos`` (the best arch, then the
    newest version, wins). Every package must be signed by one of ``gpg_keys`` (public key files); all are
    downloaded and verified before the first is unpacked (a headers/ repository's package also against its .hdr:
    see :mod:`imagectl.imaging.slc.headers`). Raises KeyProblemError (no key given, or a key file gpg cannot read;
    before any download), DownloadError (mirror unreachable, HTTP errors, neither repodata/ nor headers/),
    RepoMetadataError, UnknownPackageError (a seed name the repositories lack, with close names),
    ChecksumMismatchError, HeaderMismatchError and SignatureError (nothing of that package is kept or unpacked),
    UnsafeArchiveError, ToolError/ToolMissingError (gpg, gpgv), LocalIOError.
    """
    repos = {"os": repository_url(mirror, release, arch), **dict(extra_repos)}
    chroot_repos = {name: chroot_url(url, release) for name, url in repos.items()}
    yum_text = yum_config(chroot_repos, ())  # validates names and URLs before any download
    if not gpg_keys:
        raise KeyProblemError(
            f"no GPG key pinned for SLC {release}: imagectl unpacks only packages signed by a key you chose",
            hint="add `gpg_keys: [keys/RPM-GPG-KEY-...]` (the release's public key file, beside the recipe) to the "
            "recipe, or pass --gpg-key FILE",
        )
    # the cache's files are read until they are unpacked: cache prune leaves the cache alone meanwhile
    with locked(download_cache_lock(cache), shared=True):
        seed, files = _fetch_seed(repos, release, arch, cache, gpg_keys, timeout, retries, log_file, say)
        say(f"unpacking {len(files)} packages into {target}")
        unpack(files, target)
    keys_dir = target / "etc/pki/rpm-gpg"
    _install_pinned_keys(gpg_keys, keys_dir, say)
    keys = sorted(f"/etc/pki/rpm-gpg/{k.name}" for k in keys_dir.glob("RPM-GPG-KEY*")) if keys_dir.is_dir() else []
    if not keys:
        say("warning: no armoured GPG key for stage 2's yum; it checks packages by checksum only")
    yum_text = yum_config(chroot_repos, keys)
    _write_yum_config(target, release, yum_text)
    seed_dir = target / SEED_DIR
    try:
        seed_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, seed_dir / f.name)
    except OSError as e:
        raise LocalIOError(f"cannot copy the seed into {seed_dir}: {e.strerror}") from None
    return Bootstrap(
        target=target,
        release=release,
        arch=arch,
        repos=chroot_repos,
        seed=seed,
        seed_files=[f"/{SEED_DIR}/{f.name}" for f in files],
        gpg_keys=keys,
        install=list(dict.fromkeys([*AFTER[release], *install])),
    )


def _install_pinned_keys(gpg_keys: Sequence[Path], keys_dir: Path, say: Callable[[str], None]) -> None:
    """Put the recipe's pinned keys where stage 2's rpm and yum read keys (``RPM-GPG-KEY-imagectl-N``), so that
    what yum installs is checked against the keys the image team chose, not only against those the seed ships.
    rpm imports armoured keys only; a binary key file is left out, with a warning."""
    for n, key in enumerate(gpg_keys, 1):
        data = read_regular(key, 1 << 20, what="GPG key", error=InvalidInputError)
        if not data.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
            say(f"warning: {key} is not an armoured key; stage 2's rpm cannot import it")
            continue
        try:
            keys_dir.mkdir(parents=True, exist_ok=True)
            (keys_dir / f"RPM-GPG-KEY-imagectl-{n}").write_bytes(data)
        except OSError as e:
            raise LocalIOError(f"cannot install the pinned key into {keys_dir}: {e.strerror}") from None


def stage2_commands(b: Bootstrap) -> list[list[str]]:
    """The commands of stage 2, as argument lists run on the host (each enters the chroot itself).

    A 32-bit x86 target runs under ``setarch i686``: yum takes $basearch from uname, which on an x86_64 host
    would say x86_64.
    """
    pre = ["setarch", "i686"] if b.arch in _X86_32 else []
    chroot = [*pre, "chroot", str(b.target)]
    cmds = [[*chroot, "/bin/rpm", "--initdb"]]
    cmds += [[*chroot, "/bin/rpm", "--import", key] for key in b.gpg_keys]
    if b.gpg_keys:
        cmds.append([*chroot, "/bin/rpm", "-K", *b.seed_files])  # fails on a bad or unknown signature
    cmds.append([*chroot, "/bin/rpm", "-i", "--justdb", "--nodeps", "--noscripts", "--notriggers", *b.seed_files])
    cmds.append([*chroot, "/sbin/ldconfig"])
    if b.install:
        only_ours = [] if b.release == "3" else ["--disablerepo=*", "--enablerepo=imagectl-*"]
        cmds.append([*chroot, "/usr/bin/yum", "-y", *only_ours, "install", *b.install])
    cmds.append([*chroot, "/bin/rm", "-rf", f"/{SEED_DIR}"])
    return cmds


@contextlib.contextmanager
def _chroot_ready(target: Path, log_file: Path | None) -> Iterator[None]:
    """/dev nodes, /proc and name resolution for the chroot while stage 2 runs; /proc and a borrowed
    resolv.conf are gone again afterwards (DIB mounts its own later)."""
    dev = target / "dev"
    dev.mkdir(exist_ok=True)
    for name, (major, minor) in _DEV_NODES.items():
        if not (dev / name).exists() and not (dev / name).is_symlink():
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    resolv = target / "etc/resolv.conf"
    borrowed = not resolv.exists() and not resolv.is_symlink() and Path("/etc/resolv.conf").is_file()
    if borrowed:
        shutil.copyfile("/etc/resolv.conf", resolv)
    proc = target / "proc"
    proc.mkdir(exist_ok=True)
    run(["mount", "-t", "proc", "proc", proc], log_file=log_file)
    try:
        yield
    finally:
        run(["umount", proc], log_file=log_file, check=False)  # never hide the error that got us here
        if borrowed:
            resolv.unlink(missing_ok=True)


_ELF_MACHINE = {"x86_64": 62, "i386": 3, "i486": 3, "i586": 3, "i686": 3, "ia64": 50}


def check_runnable(target: Path, arch: str) -> None:
    """Refuse stage 2, saying why, when the seed's ``/bin/rpm`` is not a program this target can run.

    Stage 2 runs the target's own rpm and yum in the chroot. A mirror whose packages carry no real binaries (a
    test fixture, a broken mirror) would otherwise fail there with "Exec format error" and nothing more. Raises
    InvalidInputError naming what a real SLC mirror provides.
    """
    rpm = target / "bin/rpm"
    try:
        real = rpm.resolve()
        if not real.is_relative_to(target.resolve()):  # an absolute link, read as the chroot will
            real = (target / str(rpm.readlink()).lstrip("/")).resolve()
        with real.open("rb") as f:
            head = f.read(20)
    except OSError as e:
        raise InvalidInputError(f"stage 2 cannot read the seed's /bin/rpm in {target}: {e.strerror}") from None
    machine = int.from_bytes(head[18:20], "little" if head[5:6] == b"\x01" else "big") if len(head) == 20 else -1
    if head[:4] != b"\x7fELF" or machine != _ELF_MACHINE.get(arch):
        what = "not an ELF program" if head[:4] != b"\x7fELF" else f"an ELF program for machine {machine}"
        raise InvalidInputError(
            f"stage 1 done (repository read, {arch} seed verified and unpacked), but stage 2 cannot run: the "
            f"seed's /bin/rpm is {what}, not a {arch} program; stage 2 runs the target's own rpm and yum in the "
            "chroot, which a real SLC mirror provides (its rpm, glibc, python and yum packages)",
            hint="point IMAGECTL_MIRROR_SLC<N> (or the recipe's mirror:) at a real SLC mirror of that release",
        )


def stage2(b: Bootstrap, *, log_file: Path | None = None) -> None:
    """Run stage 2 in the chroot (needs root). Raises InvalidInputError if the target has no /bin/rpm or already
    has an rpm database, ToolError naming the step that failed, LocalIOError."""
    if not (b.target / "bin/rpm").exists():
        raise InvalidInputError(f"{b.target} has no /bin/rpm: run stage 1 first (or the seed lacks rpm)")
    if (b.target / "var/lib/rpm/Packages").exists():
        raise InvalidInputError(f"{b.target} already has an rpm database; stage 2 runs once, on a fresh tree")
    if os.geteuid() != 0:
        raise InvalidInputError("stage 2 needs root (chroot, mount, device nodes)", hint="run it under sudo")
    check_runnable(b.target, b.arch)
    try:
        with _chroot_ready(b.target, log_file):
            for cmd in stage2_commands(b):
                # The chroot's own tools know no C.UTF-8 (glibc of that era has no such locale).
                step = cmd[cmd.index("chroot") + 2 :]
                what = " ".join([Path(step[0]).name, *step[1:2], f"(in the {b.target} chroot)"])
                run(cmd, env={"LC_ALL": "C", "HOME": "/root"}, log_file=log_file, what=what)
    except OSError as e:
        raise LocalIOError(f"cannot prepare {b.target} for stage 2: {e.strerror}") from None


def _repo_arg(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {value!r}")
    return name, url


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m imagectl.imaging.slc.bootstrap", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--release", required=True, choices=sorted(SEEDS))
    p.add_argument("--arch", required=True)
    p.add_argument("--target", required=True, type=Path, help="the root to populate (DIB's $TARGET_ROOT)")
    p.add_argument(
        "--gpg-key",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="public key every seed package must be signed by (repeatable; at least one)",
    )
    p.add_argument("--mirror", help="release mirror (default: $IMAGECTL_MIRROR_SLC<N>, else linuxsoft.cern.ch)")
    p.add_argument("--repo", action="append", default=[], type=_repo_arg, metavar="NAME=URL", help="more repos")
    p.add_argument("--install", action="append", default=[], metavar="PKG", help="packages stage 2's yum installs")
    p.add_argument("--hypervisor", choices=("hvm", "xen-pv"), help="also install this guest's kernel and loader")
    p.add_argument("--cache", type=Path, help="download cache (default: <imagectl cache>/slc)")
    p.add_argument("--log", type=Path, help="append the output of external tools to this file")
    p.add_argument("--stage2", action="store_true", help="run stage 2 in the chroot (root) instead of printing it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run stage 1 (and stage 2 with ``--stage2``); exit 0, or an error's exit code after one line."""
    from imagectl.config import load_config  # settings are an entry point's business, not the library's

    args = _parser().parse_args(argv)

    def say(msg: str) -> None:
        print(f"slc-bootstrap: {msg}", file=sys.stderr, flush=True)

    try:
        cfg = load_config()
        rel = RELEASES.get(("slc", args.release))
        mirror = args.mirror or os.environ.get(rel.env if rel else "") or (rel.mirror if rel else "")
        install = [p for item in args.install for p in item.split()]
        if args.hypervisor:
            install += boot_packages(args.release, args.hypervisor, args.arch)
        b = stage1(
            mirror=mirror,
            release=args.release,
            arch=args.arch,
            target=args.target,
            cache=args.cache or cfg.cache_path / "slc",
            gpg_keys=args.gpg_key,
            extra_repos=args.repo,
            install=install,
            timeout=cfg.timeout,
            retries=cfg.retries,
            log_file=args.log,
            say=say,
        )
        if args.stage2:
            say("stage 2: registering the seed and installing the rest with the target's rpm and yum")
            stage2(b, log_file=args.log)
            say("done")
        else:
            for cmd in stage2_commands(b):
                print(shlex.join(cmd))
        return 0
    except ImagectlError as e:
        return report(e)


if __name__ == "__main__":
    raise SystemExit(main())
