"""The seed package set of each SLC release, and unpacking seed packages into a target root without rpm.

A seed is what the target's own ``rpm`` and ``yum`` need to *run* inside the chroot (stage 2 then registers the
seed in an rpm database of the target's format and lets yum install everything else). It is not a dependency
closure: declared dependencies that are not needed to run (``pygpgme`` for yum 3, documentation, scriptlet
helpers) are left to stage 2's yum, listed in :data:`AFTER`. Names follow each era's RHEL packaging; a name that
a mirror lacks fails fast with the closest names the mirror has (see :func:`imagectl.build.slc.repo.resolve`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from imagectl.build.slc.rpmfile import cpio_members, write_payload
from imagectl.errors import ImagectlError, LocalIOError
from imagectl.runner import run

__all__ = ["AFTER", "SEEDS", "UnsafeArchiveError", "check_members", "unpack"]

# Shared by every release: the directory tree, the release's identity (/etc/redhat-release, $releasever, the
# GPG keys in /etc/pki/rpm-gpg), the C library and the shell every scriptlet runs under.
_BASE = ("setup", "filesystem", "basesystem", "sl-release", "libgcc", "glibc-common", "glibc", "bash")
# What coreutils and the scriptlets' usual tools (grep, sed, gawk, find, chkconfig, useradd) link against.
_TOOLS: tuple[str, ...] = ("coreutils", "grep", "pcre", "sed", "gawk", "findutils", "info", "chkconfig")
_TOOLS += ("shadow-utils", "libattr", "libacl", "libselinux", "libsepol", "pam", "cracklib", "cracklib-dicts")
_TOOLS += ("libstdc++",)

SEEDS: dict[str, tuple[str, ...]] = {
    # SLC 3 (RHEL 3): rpm 4.2 on db4 and beecrypt; yum 2.0 under python 2.2 reads headers with libxml2-python.
    "3": (
        *_BASE,
        "libtermcap",
        "termcap",
        "ncurses",
        *_TOOLS,
        "mktemp",
        "zlib",
        "bzip2-libs",
        "popt",
        "db4",
        "beecrypt",
        "elfutils-libelf",
        "rpm",
        "rpm-python",
        "readline",
        "gdbm",
        "openssl",
        "krb5-libs",
        "e2fsprogs",
        "expat",
        "python",
        "libxml2",
        "libxml2-python",
        "yum",
    ),
    # SLC 4 (RHEL 4): rpm 4.3 (db4, beecrypt, sqlite); yum 2.4 under python 2.3 needs elementtree, sqlite, urlgrabber.
    "4": (
        *_BASE,
        "libtermcap",
        "termcap",
        "ncurses",
        *_TOOLS,
        "mktemp",
        "zlib",
        "bzip2-libs",
        "popt",
        "db4",
        "beecrypt",
        "elfutils-libelf",
        "sqlite",
        "rpm",
        "rpm-python",
        "readline",
        "gdbm",
        "openssl",
        "krb5-libs",
        "e2fsprogs",
        "expat",
        "python",
        "libxml2",
        "libxml2-python",
        "python-elementtree",
        "python-sqlite",
        "python-urlgrabber",
        "yum",
    ),
    # SLC 5 (RHEL 5): rpm 4.4 (rpm-libs, beecrypt, neon for http, sqlite); yum 3.2 under python 2.4 also needs
    # yum-metadata-parser (C, on glib2/libxml2/sqlite), iniparse, elementtree and m2crypto.
    "5": (
        *_BASE,
        "tzdata",
        "libtermcap",
        "termcap",
        "ncurses",
        *_TOOLS,
        "libcap",
        "audit-libs",
        "mktemp",
        "zlib",
        "bzip2-libs",
        "popt",
        "db4",
        "beecrypt",
        "elfutils-libelf",
        "sqlite",
        "neon",
        "keyutils-libs",
        "e2fsprogs-libs",
        "krb5-libs",
        "openssl",
        "expat",
        "rpm-libs",
        "rpm",
        "rpm-python",
        "readline",
        "gdbm",
        "python",
        "glib2",
        "libxml2",
        "libxml2-python",
        "python-elementtree",
        "python-sqlite",
        "python-iniparse",
        "python-urlgrabber",
        "m2crypto",
        "yum-metadata-parser",
        "yum",
    ),
    # SLC 6 (RHEL 6): rpm 4.8 (rpm-libs on nss, lua, file-libs, xz); yum 3.2.29 under python 2.6 needs
    # python-libs (sqlite3), yum-metadata-parser, iniparse and urlgrabber on pycurl/libcurl.
    "6": (
        *_BASE,
        "tzdata",
        "nss-softokn-freebl",
        "ncurses-base",
        "ncurses-libs",
        *_TOOLS,
        "coreutils-libs",
        "gmp",
        "libcap",
        "audit-libs",
        "zlib",
        "bzip2-libs",
        "xz-libs",
        "popt",
        "db4",
        "elfutils-libelf",
        "sqlite",
        "lua",
        "file-libs",
        "nspr",
        "nss-util",
        "nss-softokn",
        "nss",
        "rpm-libs",
        "rpm",
        "rpm-python",
        "readline",
        "gdbm",
        "openssl",
        "ca-certificates",
        "expat",
        "python-libs",
        "python",
        "glib2",
        "libxml2",
        "keyutils-libs",
        "libcom_err",
        "krb5-libs",
        "cyrus-sasl-lib",
        "openldap",
        "libidn",
        "libssh2",
        "libcurl",
        "python-pycurl",
        "python-urlgrabber",
        "python-iniparse",
        "yum-metadata-parser",
        "yum",
    ),
}

# Installed by stage 2's yum right after the seed is registered: declared dependencies of the seed that are not
# needed to run rpm and yum, and what every SLC system of the era had (root's dotfiles, passwd).
AFTER: dict[str, tuple[str, ...]] = {
    "3": ("rootfiles", "passwd"),
    "4": ("rootfiles", "passwd"),
    "5": ("rootfiles", "passwd"),
    "6": ("pygpgme", "rootfiles", "passwd"),
}


class UnsafeArchiveError(ImagectlError):
    """A package's archive would write outside the target root."""

    exit_code = 11  # the package's bytes are not acceptable, as for a checksum mismatch


def check_members(target: Path, members: Iterable[tuple[str, str | None]], what: str) -> None:
    """Refuse an archive (``(name, symlink target or None)`` pairs, in archive order) that would write outside
    ``target`` when unpacked by cpio.

    Refused: absolute names, ``..`` components, and names whose parent directory leads out of ``target`` through
    a symlink, whether the symlink is already in ``target`` or comes earlier in the same archive. cpio follows such
    links with the *host's* view, so an absolute link (``./x -> /etc``) followed by ``./x/passwd`` would write the
    build host's /etc/passwd. Raises UnsafeArchiveError naming the package and the member.
    """
    root = target.resolve()
    links: dict[str, str] = {}  # archive symlinks seen so far, by normalised relative path
    for name, link in members:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise UnsafeArchiveError(f"{what}: refusing archive member {name!r}: it leaves the target directory")
        parts = [p for p in path.parts if p != "."]
        if not parts:
            continue  # "." itself
        rel = "/".join(parts)
        if _escapes(root, parts[:-1], links):
            raise UnsafeArchiveError(
                f"{what}: refusing archive member {name!r}: its directory is a symlink that leads out of the target"
            )
        if link is None:
            links.pop(rel, None)
        else:
            links[rel] = link


def _escapes(root: Path, parts: list[str], links: dict[str, str]) -> bool:
    """Whether walking ``parts`` from ``root``, following symlinks as the host would, ever leaves ``root``."""
    cur = root
    todo = list(reversed(parts))
    hops = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            cur = cur.parent
        else:
            nxt = cur / comp
            link = links.get(nxt.relative_to(root).as_posix())
            if link is None and nxt.is_symlink():
                link = str(nxt.readlink())
            if link is None:
                cur = nxt
                continue
            hops += 1
            if hops > 40 or link.startswith("/"):  # an absolute link means the host's root: out
                return True
            todo.extend(reversed(PurePosixPath(link).parts))
        if cur != root and root not in cur.parents:
            return True
    return False


def unpack(
    packages: Iterable[Path], target: Path, *, log_file: Path | None = None, tmp_dir: Path | None = None
) -> None:
    """Unpack each .rpm's files into ``target`` (created if missing), as ``rpm2cpio PKG | cpio -idmu`` would.

    Each payload is extracted to a temporary file, its member list checked (:func:`check_members`), then handed to
    ``cpio -idmu --no-absolute-filenames`` through :func:`imagectl.runner.run`. No rpm database is written: that is
    stage 2's job, done by the target's own rpm. Raises UnsafeArchiveError before anything of an unsafe package is
    written, RpmFormatError for a file that is not an rpm, ToolError/ToolMissingError if cpio fails or is missing,
    LocalIOError if the target or temporary directory is unwritable.
    """
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create target {target}: {e.strerror}") from None
    for rpm in packages:
        try:
            with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="imagectl-payload-", suffix=".cpio") as tmp:
                write_payload(rpm, tmp)
                tmp.flush()
                tmp.seek(0)
                members = list(cpio_members(tmp, rpm.name))
                check_members(target, ((m.name, m.link) for m in members), rpm.name)
                run(
                    ["cpio", "-idmu", "--quiet", "--no-absolute-filenames", "-F", tmp.name],
                    cwd=target,
                    log_file=log_file,
                    what=f"cpio (unpacking {rpm.name})",
                )
        except OSError as e:
            raise LocalIOError(f"cannot unpack {rpm.name}: {e.strerror or e}") from None
