"""The seed package set of each SLC release, and unpacking seed packages into a target root without rpm.

A seed is what the target's own ``rpm`` and ``yum`` need to *run* inside the chroot (stage 2 then registers the
seed in an rpm database of the target's format and lets yum install everything else). It is not a dependency
closure: declared dependencies that are not needed to run (``pygpgme`` for yum 3, documentation, scriptlet
helpers) are left to stage 2's yum, listed in :data:`AFTER`. Names follow each era's RHEL packaging; a name that
a mirror lacks fails fast with the closest names the mirror has (see :func:`imagectl.imaging.slc.repo.resolve`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from imagectl.errors import LocalIOError
from imagectl.imaging.slc.extract import UnsafeArchiveError, extract_rpm

__all__ = ["AFTER", "SEEDS", "UnsafeArchiveError", "unpack"]

# Shared by every release: the directory tree, the release's identity (/etc/redhat-release, $releasever, the
# GPG keys in /etc/pki/rpm-gpg), the C library and the shell every scriptlet runs under.
_BASE = ("setup", "filesystem", "basesystem", "sl-release", "libgcc", "glibc-common", "glibc", "bash")
# What coreutils and the scriptlets' usual tools (grep, sed, gawk, find, chkconfig, useradd) link against.
_TOOLS: tuple[str, ...] = ("coreutils", "grep", "pcre", "sed", "gawk", "findutils", "info", "chkconfig")
_TOOLS += ("shadow-utils", "libattr", "libacl", "libselinux", "libsepol", "pam", "cracklib", "cracklib-dicts")
_TOOLS += ("libstdc++",)

# SLC 3 and 4 alike: the terminal libraries (5 too); what rpm 4.2/4.3 link against (db4, beecrypt); python 2
# with libxml2, which yum 2.x runs under.
_TERMCAP = ("libtermcap", "termcap", "ncurses")
_RPM4_DB4 = ("mktemp", "zlib", "bzip2-libs", "popt", "db4", "beecrypt", "elfutils-libelf")
_PYTHON2_XML = ("readline", "gdbm", "openssl", "krb5-libs", "e2fsprogs", "expat", "python", "libxml2", "libxml2-python")

SEEDS: dict[str, tuple[str, ...]] = {
    # SLC 3 (RHEL 3): rpm 4.2 on db4 and beecrypt; yum 2.0 under python 2.2 reads headers with libxml2-python.
    "3": (*_BASE, *_TERMCAP, *_TOOLS, *_RPM4_DB4, "rpm", "rpm-python", *_PYTHON2_XML, "yum"),
    # SLC 4 (RHEL 4): rpm 4.3 (db4, beecrypt, sqlite); yum 2.4 under python 2.3 needs elementtree, sqlite, urlgrabber.
    "4": (
        *_BASE,
        *_TERMCAP,
        *_TOOLS,
        *_RPM4_DB4,
        "sqlite",
        "rpm",
        "rpm-python",
        *_PYTHON2_XML,
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
        *_TERMCAP,
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


def unpack(packages: Iterable[Path], target: Path, *, tmp_dir: Path | None = None) -> None:
    """Unpack each .rpm's files into ``target`` (created if missing), as ``rpm2cpio PKG | cpio -idmu`` would, but
    checked against each package's header and written relative to an open descriptor of ``target`` that no
    member can leave (see :mod:`imagectl.imaging.slc.extract` for what is refused and the symlink policy).

    No rpm database is written: that is stage 2's job, done by the target's own rpm. Raises UnsafeArchiveError
    (exit 11) naming the package and the member, before anything of that package is written; RpmFormatError for
    a file that is not an rpm; LocalIOError if the target or temporary directory is unwritable.
    """
    try:
        target.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LocalIOError(f"cannot create target {target}: {e.strerror}") from None
    try:
        for rpm in packages:
            extract_rpm(rpm, root_fd, tmp_dir=tmp_dir)
    finally:
        os.close(root_fd)
