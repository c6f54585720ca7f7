"""Unpacking seed packages cannot escape the target, and only packages signed by a pinned key are unpacked.

Hostile packages are written byte by byte (tests/hostile_yum.py): each must be refused with its exact one-line
message and exit code 11, leave a sentinel outside the target untouched and leave the target as it was. Tests
that need rpm, rpmsign, createrepo_c or gpg carry the ``slc`` marker.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from imagectl.imaging.plan import plan_dib, targets
from imagectl.imaging.slc import bootstrap
from imagectl.imaging.slc import seed as seed_mod
from imagectl.imaging.slc.extract import UnsafeArchiveError
from imagectl.imaging.slc.repo import YumRepository
from imagectl.imaging.slc.rpmfile import RpmFormatError, write_payload
from imagectl.imaging.slc.rpmsig import PinnedKeys, SignatureError
from imagectl.imaging.slc.seed import unpack
from imagectl.recipe.model import load_recipe
from imagectl.recipe.schema import RecipeError
from tests.hostile_yum import (
    DIR,
    LNK,
    MTIME,
    REG,
    Decl,
    GpgKey,
    Member,
    OldDsaKey,
    change,
    declare,
    make_repo,
    need_tools,
)
from tests.hostile_yum import write_rpm as _write_rpm
from tests.httpserver import TestHTTPServer


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Scene:
    """A target root and, beside it, a directory with a sentinel the hostile packages aim at."""

    tmp: Path
    target: Path
    outside: Path

    @property
    def sentinel(self) -> Path:
        return self.outside / "passwd"

    def rpm(self, name: str, members: list[Member], declared: list[Decl] | None = None, **kw: object) -> Path:
        pkgs = self.tmp / "pkgs"
        pkgs.mkdir(exist_ok=True)
        return _write_rpm(pkgs, name, members, declared=declared, **kw)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (symlinks not followed): type and mode, size, content or link target, mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            body: object = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, body, st.st_mtime_ns, st.st_ino)
    return out


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    root = tmp_path / "scene"
    target, outside = root / "target", root / "outside"
    target.mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:sentinel\n")
    return Scene(root, target, outside)


# --------------------------------------------------------------------------------------------------------------
# hostile packages: (id, members and header given the sentinel directory, refused member, reason)

Case = Callable[[str], tuple[list[Member], list[Decl] | None]]


def _nul(out: str) -> tuple[list[Member], list[Decl] | None]:
    # cpio (C) reads "./lnk\0/x" as "./lnk": a symlink out, through which "./lnk/passwd" is then written.
    members = [Member(b"./lnk\0/x", LNK, out.encode()), Member("./lnk/passwd", REG, b"owned\n")]
    return members, [Decl("/lnk", LNK, len(out), link=out), Decl("/lnk/passwd", REG, 6, _md5(b"owned\n"))]


def _chain(target: str) -> Case:
    def case(out: str) -> tuple[list[Member], list[Decl] | None]:
        link = target or out
        return [Member("./a", LNK, b"b"), Member("./b", LNK, link.encode()), Member("./a/passwd", REG, b"x\n")], None

    return case


def _hardlink_group(*members: Member) -> Case:
    return lambda out: (list(members), None)


def _with(members: list[Member], path: str, **changes: object) -> Case:
    return lambda out: (members, change(declare(members), path, **changes))


_EVIL = Member("./usr/bin/evil", stat.S_IFREG | 0o4755, b"#!/bin/sh\n")
_CRON = [Member("./etc/cron.d/ok", REG, b"ok\n"), Member("./etc/cron.d/evil", REG, b"* * * * * root sh\n")]
_PASSWD = [Member("./etc/passwd", REG, b"root:x:0:0::/root:/bin/bash\n")]

HOSTILE: list[tuple[str, Case, str, str]] = [
    ("nul-in-name", _nul, "./lnk\\x00/x", "its name contains a NUL byte"),
    ("chain-to-etc", _chain("/etc"), "./a/passwd", "its path goes through the symlink /b -> /etc: imagectl follows "
     "only relative symlinks inside the target"),
    ("chain-to-sentinel", _chain(""), "./a/passwd", "its path goes through the symlink /b -> OUT: imagectl follows "
     "only relative symlinks inside the target"),
    ("link-to-dotdot", lambda out: ([Member("./x", LNK, b".."), Member("./x/escape", REG, b"x")], None), "./x/escape",
     "a symlink on its path climbs above the target root"),
    ("relative-link-out", lambda out: ([Member("./d", DIR), Member("./d/up", LNK, b"../../outside"),
     Member("./d/up/passwd", REG, b"x")], None), "./d/up/passwd", "a symlink on its path climbs above the target root"),
    ("link-loop", lambda out: ([Member("./a", LNK, b"b"), Member("./b", LNK, b"a"), Member("./a/x", REG, b"x")], None),
     "./a/x", "more than 40 symlinks on its path"),
    ("dotdot-name", lambda out: ([Member("../escape", REG, b"x")], None), "../escape", "it has a '..' component"),
    ("dotdot-inside", lambda out: ([Member("./usr/../../escape", REG, b"x")], None), "./usr/../../escape",
     "it has a '..' component"),
    ("usr-dotdot", lambda out: ([Member("./usr/..", DIR)], None), "./usr/..", "it has a '..' component"),
    ("absolute-name", lambda out: ([Member("/etc/passwd", REG, b"x")], None), "/etc/passwd", "it is an absolute path"),
    ("hardlink-through-link-out", _hardlink_group(Member("./x", LNK, b"OUT"), Member("./x/shadow", REG, nlink=2, ino=7),
     Member("./f", REG, b"owned\n", nlink=2, ino=7)), "./x/shadow", "its path goes through the symlink /x -> OUT: "
     "imagectl follows only relative symlinks inside the target"),
    ("hardlink-to-unseen", _hardlink_group(Member("./f", REG, b"data\n", nlink=2, ino=7),
     Member("./g", REG, nlink=2, ino=7)), "./f",
     "it is a hard link that carries data but is not the last of its group"),
    ("hardlink-never-carried", lambda out: ([Member("./g", REG, nlink=2, ino=9)],
     [Decl("/g", REG, 7, _md5(b"secret\n"))]), "./g",
     "no member of its hard-link group carries the 7 bytes the header declares"),
    ("hardlink-too-many", _hardlink_group(*(Member(f"./h{i}", REG, b"" if i < 2 else b"x", nlink=2, ino=5)
     for i in range(3))), "./h2", "its hard-link group has 3 members but a link count of 2"),
    ("block-device", lambda out: ([Member("./dev/sda", stat.S_IFBLK | 0o660, rdev=(8, 0))], None), "./dev/sda",
     "it is a block device node"),
    ("char-device", lambda out: ([Member("./dev/mem", stat.S_IFCHR | 0o640, rdev=(1, 1))], None), "./dev/mem",
     "it is a character device node"),
    ("fifo", lambda out: ([Member("./dev/initctl", stat.S_IFIFO | 0o600)], None), "./dev/initctl", "it is a FIFO"),
    ("undeclared-setuid", _with([_EVIL], "/usr/bin/evil", mode=REG | 0o111), "./usr/bin/evil",
     "its mode 4755 sets setuid/setgid/sticky bits the header does not declare (header: 0755)"),
    ("undeclared-setgid-dir", _with([Member("./var/mail", stat.S_IFDIR | 0o2775)], "/var/mail", mode=DIR),
     "./var/mail", "its mode 2775 sets setuid/setgid/sticky bits the header does not declare (header: 0755)"),
    ("not-in-header", _with(_CRON, "/etc/cron.d/evil"), "./etc/cron.d/evil",
     "it is not in the package header's file list"),
    ("ghost-with-data", _with(_CRON, "/etc/cron.d/evil", flags=64), "./etc/cron.d/evil",
     "the header declares it %ghost (never in the payload)"),
    ("type-differs", lambda out: ([Member("./etc/passwd", LNK, b"OUT/passwd")],
     [Decl("/etc/passwd", REG, 4, _md5(b"root"))]), "./etc/passwd",
     "it is a symlink in the archive but a regular file in the header"),
    ("content-differs", _with(_PASSWD, "/etc/passwd", digest=_md5(b"root:x:0:0::/root:/bin/sh\n")), "./etc/passwd",
     "its content does not match the header's md5 digest"),
    ("size-differs", _with(_PASSWD, "/etc/passwd", size=3), "./etc/passwd", "its size 28 differs from the header's 3"),
    ("link-differs", _with([Member("./etc/init.d", LNK, b"/etc")], "/etc/init.d", link="rc.d/init.d", size=11),
     "./etc/init.d", "its symlink target '/etc' differs from the header's 'rc.d/init.d'"),
    ("duplicate", lambda out: ([Member("./etc/x", REG, b"a"), Member("./etc/x", REG, b"a")], None), "./etc/x",
     "it appears twice in the archive"),
]  # fmt: skip


def _resolve_out(members: list[Member], out: str) -> list[Member]:
    """Put the sentinel directory's path where a case wrote OUT."""
    fixed = []
    for m in members:
        data = m.data.replace(b"OUT", out.encode()) if stat.S_ISLNK(m.mode) else m.data
        fixed.append(Member(m.name, m.mode, data, m.nlink, m.ino, m.uid, m.gid, m.rdev))
    return fixed


@pytest.mark.parametrize(("case", "member", "reason"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_package_is_refused_and_nothing_changes(scene: Scene, case: Case, member: str, reason: str) -> None:
    out = str(scene.outside)
    members, declared = case(out)
    members = _resolve_out(members, out)
    if declared is None:
        declared = declare(members)
    link = {d.path: d.link.replace("OUT", out) for d in declared}  # header link targets aimed at the sentinel
    declared = [replace(d, link=link[d.path], size=len(link[d.path])) if "OUT" in d.link else d for d in declared]
    rpm = scene.rpm("evil", members, declared)
    (scene.target / "etc").mkdir()  # a tree the package lands in: it must come out unchanged
    (scene.target / "etc/hosts").write_text("127.0.0.1 localhost\n")
    before, outside_before = snapshot(scene.target), snapshot(scene.outside)
    host_passwd = Path("/etc/passwd").read_bytes()
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([rpm], scene.target)
    assert str(e.value) == f"evil-1.0-1.x86_64.rpm: refusing archive member '{member}': {reason.replace('OUT', out)}"
    assert e.value.exit_code == 11
    assert snapshot(scene.outside) == outside_before and scene.sentinel.read_text() == "root:x:0:0:sentinel\n"
    assert snapshot(scene.target) == before  # nothing of the refused package stays
    assert sorted(p.name for p in scene.tmp.iterdir()) == ["outside", "pkgs", "target"]  # no ../escape
    assert Path("/etc/passwd").read_bytes() == host_passwd


def test_nul_name_regression(scene: Scene) -> None:
    """The issue's case: with the old check-in-Python-then-``cpio -idmu`` unpacking, ``./lnk\\0/x`` passed the check,
    cpio created ``./lnk`` (a symlink to the sentinel directory) and wrote ``./lnk/passwd`` through it, as root."""
    members, declared = _nul(str(scene.outside))
    rpm = scene.rpm("bash", members, declared, version="4.1.2", release="15.el6")
    with pytest.raises(UnsafeArchiveError, match=r"^bash-4\.1\.2-15\.el6\.x86_64\.rpm: refusing archive member "):
        unpack([rpm], scene.target)
    assert scene.sentinel.read_text() == "root:x:0:0:sentinel\n"
    assert not (scene.target / "lnk").exists() and not (scene.target / "lnk").is_symlink()


def test_symlinks_already_in_the_target(scene: Scene) -> None:
    t = scene.target
    (t / "usr/lib64").mkdir(parents=True)
    (t / "lib64").symlink_to("usr/lib64")  # relative: followed inside the target, as rpm would
    (t / "lib").symlink_to(scene.outside)  # absolute: never followed
    ok = scene.rpm("glibc", [Member("./lib64/libc.so.6", REG | 0o111, b"libc\n")])
    unpack([ok], t)
    assert (t / "usr/lib64/libc.so.6").read_bytes() == b"libc\n" and os.readlink(t / "lib64") == "usr/lib64"
    evil = scene.rpm("evil", [Member("./lib/libevil.so", REG, b"x")])
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([evil], t)
    assert str(e.value) == (
        f"evil-1.0-1.x86_64.rpm: refusing archive member './lib/libevil.so': its path goes through the symlink "
        f"/lib -> {scene.outside}: imagectl follows only relative symlinks inside the target"
    )
    assert sorted(p.name for p in scene.outside.iterdir()) == ["passwd"]


def test_the_last_component_is_never_followed(scene: Scene) -> None:
    t = scene.target
    (t / "etc").mkdir()
    (t / "etc/passwd").symlink_to(scene.sentinel)  # a file member replaces the link, never writes through it
    (t / "etc/shadow").mkdir()  # an empty directory is replaced, as cpio -u would
    (t / "etc/init.d").symlink_to(scene.outside)  # a symlink member replaces a symlink
    members = [
        Member("./etc/passwd", REG, b"root:x:0:0::/root:/bin/bash\n"),
        Member("./etc/shadow", stat.S_IFREG | 0o600, b"root:*:14000::::::\n"),
        Member("./etc/init.d", LNK, b"rc.d/init.d"),
    ]
    unpack([scene.rpm("setup", members)], t)
    assert scene.sentinel.read_text() == "root:x:0:0:sentinel\n"
    assert not (t / "etc/passwd").is_symlink() and (t / "etc/passwd").read_bytes().startswith(b"root:x:0:0::")
    assert stat.S_IMODE((t / "etc/shadow").stat().st_mode) == 0o600
    assert os.readlink(t / "etc/init.d") == "rc.d/init.d"
    (t / "etc/full").mkdir()
    (t / "etc/full/keep").write_text("k")
    with pytest.raises(UnsafeArchiveError, match=r"'./etc/full': it would replace the non-empty directory /etc/full"):
        unpack([scene.rpm("clobber", [Member("./etc/full", REG, b"x")])], t)
    assert (t / "etc/full/keep").read_text() == "k"


def test_a_directory_member_keeps_an_existing_symlink_to_a_directory(scene: Scene) -> None:
    """SLC's initscripts install into /etc/init.d, a symlink to rc.d/init.d that an earlier package made."""
    t = scene.target
    (t / "etc/rc.d/init.d").mkdir(parents=True)
    (t / "etc/init.d").symlink_to("rc.d/init.d")
    members = [Member("./etc/init.d", DIR), Member("./etc/init.d/network", REG | 0o111, b"#!/bin/sh\n")]
    unpack([scene.rpm("initscripts", members)], t)
    assert os.readlink(t / "etc/init.d") == "rc.d/init.d"
    assert (t / "etc/rc.d/init.d/network").read_bytes() == b"#!/bin/sh\n"


def test_an_honest_package_lands_as_rpm_would(scene: Scene) -> None:
    """Directories (one read-only, still filled), a relative directory symlink gone through, a declared setuid
    binary, a hard-link group, owners and mtimes; the rpm 3 (OLDFILENAMES) header layout as well."""
    members = [
        Member("./", stat.S_IFDIR | 0o555),  # the filesystem package owns "/", read-only
        Member("./etc", DIR),
        Member("./etc/rc.d", DIR),
        Member("./etc/rc.d/init.d", DIR),
        Member("./etc/init.d", LNK, b"rc.d/init.d"),
        Member("./etc/init.d/functions", REG, b"# functions\n"),
        Member("./usr/bin/passwd", stat.S_IFREG | 0o4755, b"ELF passwd\n", uid=1000),
        Member("./usr/bin/write", stat.S_IFREG | 0o2755, b"ELF write\n", uid=5, gid=5),
        Member("./usr/bin/gunzip", REG | 0o111, b"", nlink=3, ino=42),
        Member("./usr/bin/zcat", REG | 0o111, b"", nlink=3, ino=42),
        Member("./usr/bin/gzip", REG | 0o111, b"ELF gzip\n", nlink=3, ino=42),
        Member("./var/empty/sshd", stat.S_IFDIR | 0o555),
        Member("./var/empty/sshd/etc", DIR),
    ]
    declared = change(declare(members), "/usr/bin/write", user="root", group="tty")
    for old in (False, True):
        t = scene.tmp / f"t{old}"
        unpack([scene.rpm("honest", members, declared, old_filenames=old)], t)
        assert (t / "etc/rc.d/init.d/functions").read_bytes() == b"# functions\n"
        assert os.readlink(t / "etc/init.d") == "rc.d/init.d"
        st = (t / "usr/bin/passwd").stat()
        assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime == MTIME
        inodes = {(t / f"usr/bin/{n}").stat().st_ino for n in ("gzip", "gunzip", "zcat")}
        assert len(inodes) == 1 and (t / "usr/bin/zcat").read_bytes() == b"ELF gzip\n"
        assert (t / "usr/bin/gzip").stat().st_nlink == 3
        assert stat.S_IMODE((t / "var/empty/sshd").stat().st_mode) == 0o555 and (t / "var/empty/sshd/etc").is_dir()
        assert (t / "var/empty/sshd").stat().st_mtime == MTIME
        assert os.lstat(t / "etc/init.d").st_mtime == MTIME
        assert stat.S_IMODE(t.stat().st_mode) == 0o755  # the target root's own metadata is the caller's
        if os.geteuid() == 0:
            assert st.st_uid == 0  # the header says root, whatever the cpio header says
            w = (t / "usr/bin/write").stat()
            assert (w.st_uid, w.st_gid) == (0, 5) and stat.S_IMODE(w.st_mode) == 0o2755  # chown, then chmod


def test_a_payload_larger_than_its_header_declares_is_refused(scene: Scene) -> None:
    members = [Member("./big", REG, b"\0" * (8 << 20))]
    rpm = scene.rpm("bomb", members, [Decl("/big", REG, 0, _md5(b""))])
    with pytest.raises(RpmFormatError, match=r"^bomb-1\.0-1\.x86_64\.rpm: the payload decompresses to more than "):
        unpack([rpm], scene.target)
    assert list(scene.target.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# the writer is honest; signatures (rpm, rpmsign, gpg)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GpgKey]]:
    """The pinned key (RSA), another key, and an old-style DSA-1024 key; their gpg-agents stopped afterwards."""
    need_tools("gpg", "gpgv", "rpmsign", "gpgconf")
    home = tmp_path_factory.mktemp("gpg")
    made = {
        "pinned": GpgKey.generate(home / "pinned", "imagectl test <pinned@example.invalid>"),
        "other": GpgKey.generate(home / "other", "someone else <other@example.invalid>"),
        "dsa": GpgKey.generate(home / "dsa", "SLC era <dsa@example.invalid>", algo="dsa1024"),
    }
    yield made
    for k in made.values():
        k.close()


@pytest.mark.slc
def test_writer_is_what_rpm_reads(scene: Scene) -> None:
    need_tools("rpm", "rpm2cpio")
    members = [Member("./etc", DIR), Member("./etc/x", REG, b"x\n"), Member("./etc/l", LNK, b"x")]
    rpm = scene.rpm("honest", members)
    listing = subprocess.run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEMODES:octal}\\n]", rpm], capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert listing.stdout.splitlines() == ["/etc 40755", "/etc/x 100644", "/etc/l 120777"]
    check = subprocess.run(["rpm", "-K", "--nosignature", rpm], capture_output=True, text=True)
    assert check.returncode == 0 and "digests OK" in check.stdout, check.stdout + check.stderr
    buf = io.BytesIO()
    write_payload(rpm, buf)
    assert buf.getvalue() == subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout


def _pinned(tmp_path: Path, *key: GpgKey | Path) -> PinnedKeys:
    home = tmp_path / "home"
    home.mkdir()
    return PinnedKeys([k if isinstance(k, Path) else k.public for k in key], home)


@pytest.mark.slc
def test_pinned_keys_accept_rsa_and_old_dsa_sha1_signatures(scene: Scene, keys: dict[str, GpgKey]) -> None:
    members = [Member("./etc", DIR), Member("./etc/x", REG, b"x\n")]
    rsa = scene.rpm("rsa", members)
    keys["pinned"].sign(rsa)
    dsa = scene.rpm("dsa", members)
    keys["dsa"].sign(dsa, digest="sha1")  # as SLC's packages were signed: DSA-1024 over SHA-1
    qf = "%{DSAHEADER:pgpsig}|%{SIGGPG:pgpsig}"
    sig = subprocess.run(["rpm", "-qp", "--qf", qf, dsa], capture_output=True, text=True).stdout
    assert sig.startswith("DSA/SHA1, ") and "|DSA/SHA1, " in sig  # header, and header+payload, as rpm 4.4 made
    pinned = _pinned(scene.tmp, keys["pinned"], keys["dsa"])
    assert pinned.verify(rsa, "rsa").fingerprint == pinned.fingerprints[0]
    verified = pinned.verify(dsa, "dsa")
    assert verified.covers_payload and verified.fingerprint == pinned.fingerprints[1]


@pytest.mark.slc
def test_pinned_keys_refuse_unsigned_foreign_and_altered_packages(scene: Scene, keys: dict[str, GpgKey]) -> None:
    members = [Member("./etc", DIR), Member("./etc/x", REG, b"x" * 4000)]
    pinned = _pinned(scene.tmp, keys["pinned"])
    (scene.tmp / "o").mkdir()
    other_id = _pinned(scene.tmp / "o", keys["other"]).describe()
    unsigned = scene.rpm("unsigned", members)
    foreign = scene.rpm("foreign", members)
    keys["other"].sign(foreign)
    good = scene.rpm("good", members)
    keys["pinned"].sign(good)
    data = good.read_bytes()
    payload_altered = scene.tmp / "payload.rpm"
    payload_altered.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:-90]) + data[-90:])
    summary = data.index(b"imagectl hostile test package")
    header_altered = scene.tmp / "header.rpm"
    header_altered.write_bytes(data[:summary] + b"I" + data[summary + 1 :])
    cases = [
        (unsigned, "it is not signed (no OpenPGP signature in its signature header)"),
        (foreign, f"its RSA header signature is by key {other_id}, which is not pinned"),
        (payload_altered, "the PGP header+payload signature is BAD (the package was altered after signing)"),
        (header_altered, "the RSA header signature is BAD (the package was altered after signing)"),
    ]
    for rpm, reason in cases:
        with pytest.raises(SignatureError) as e:
            pinned.verify(rpm, "pkg-1.0-1.x86_64")
        assert (
            str(e.value) == f"pkg-1.0-1.x86_64: no valid signature by the pinned key(s) {pinned.describe()}: {reason}"
        )
        assert e.value.exit_code == 11
    assert pinned.verify(good, "good").covers_payload


@pytest.mark.slc
def test_pinned_keys_accept_v3_dsa_sha1_signatures_as_slc_packages_carry(scene: Scene) -> None:
    """What SLC 3-6 packages carry: version 3 DSA-1024/SHA-1 signature packets over the header (DSAHEADER) and
    over header and payload (GPG), by a key whose own self-signature is SHA-1. rpm itself reads them as such."""
    need_tools("rpm", "gpg", "gpgv")
    old = OldDsaKey()
    members = [Member("./bin", DIR), Member("./bin/bash", REG | 0o111, b"ELF bash\n")]
    rpm = scene.rpm("bash", members, version="3.2", release="25.el5")
    old.sign(rpm)
    lines = subprocess.run(["rpm", "-Kv", rpm], capture_output=True, text=True).stdout.splitlines()
    keyid = old.keyid.hex()[-8:]
    assert f"    Header V3 DSA/SHA1 Signature, key ID {keyid}: NOKEY" in lines  # rpm has no key: it only reads them
    assert f"    V3 DSA/SHA1 Signature, key ID {keyid}: NOKEY" in lines
    assert "    Header SHA1 digest: OK" in lines and "    MD5 digest: OK" in lines
    pinned = _pinned(scene.tmp, old.public(scene.tmp / "RPM-GPG-KEY-cern"))  # a binary key file works too
    assert pinned.describe() == old.keyid.hex().upper()
    verified = pinned.verify(rpm, "bash-3.2-25.el5.x86_64")
    assert verified.covers_payload and verified.fingerprint.endswith(old.keyid.hex().upper())
    data = rpm.read_bytes()
    altered = scene.tmp / "altered.rpm"
    altered.write_bytes(data[:-30] + bytes([data[-30] ^ 1]) + data[-29:])
    with pytest.raises(SignatureError, match=r": the GPG header\+payload signature is BAD \(the package was altered"):
        pinned.verify(altered, "bash-3.2-25.el5.x86_64")


@pytest.mark.slc
def test_a_revoked_key_counts_for_nothing(scene: Scene, keys: dict[str, GpgKey]) -> None:
    rpm = scene.rpm("bash", [Member("./bin", DIR)])
    keys["other"].sign(rpm)
    home = scene.tmp / "home"
    home.mkdir()
    pinned = PinnedKeys([keys["other"].revoked_public()], home)
    with pytest.raises(SignatureError) as e:
        pinned.verify(rpm, "bash-1.0-1.x86_64")
    assert str(e.value).endswith(": the key that made its RSA header signature is revoked")


@pytest.mark.slc
def test_bad_key_files_are_refused(tmp_path: Path, keys: dict[str, GpgKey]) -> None:
    text = tmp_path / "not-a-key"
    text.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n")
    for key, message in [
        (text, f"GPG key file {text}: no OpenPGP public key gpg can import from it"),
        (tmp_path / "missing", f"cannot read GPG key file {tmp_path / 'missing'}: No such file or directory"),
        (tmp_path, f"GPG key file {tmp_path} is not a regular file"),
    ]:
        home = tmp_path / f"home-{key.name}"
        home.mkdir()
        with pytest.raises(Exception) as e:
            PinnedKeys([key], home)
        assert str(e.value) == message and e.value.exit_code == 7  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------------------
# through the bootstrap: a hostile mirror, no key, the https probe


def _boot(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = bootstrap.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slc
def test_hostile_mirror_with_a_signed_evil_package(
    scene: Scene, keys: dict[str, GpgKey], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A package signed by the pinned key (a signing host gone bad) still cannot leave the target."""
    need_tools("createrepo_c")
    members, declared = _chain("")(str(scene.outside))
    evil = scene.rpm("sl-release", members, declared, version="6.10", release="1.el6")
    keys["pinned"].sign(evil)
    make_repo(scene.tmp / "mirror", [evil])
    monkeypatch.setitem(seed_mod.SEEDS, "6", ("sl-release",))
    with TestHTTPServer(scene.tmp / "mirror") as srv:
        code, out, err = _boot(
            capsys, "--mirror", srv.url, "--release", "6", "--arch", "x86_64", "--target", scene.target,
            "--cache", scene.tmp / "cache", "--gpg-key", keys["pinned"].public,
        )  # fmt: skip
    assert code == 11 and out == ""
    assert err.splitlines()[-1] == (
        "imagectl: error: sl-release-6.10-1.el6.x86_64.rpm: refusing archive member './a/passwd': its path goes "
        f"through the symlink /b -> {scene.outside}: imagectl follows only relative symlinks inside the target"
    )
    assert scene.sentinel.read_text() == "root:x:0:0:sentinel\n" and list(scene.target.iterdir()) == []


@pytest.mark.http
def test_no_pinned_key_no_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TestHTTPServer(tmp_path) as srv:
        code, out, err = _boot(
            capsys, "--mirror", srv.url, "--release", "6", "--arch", "x86_64", "--target", tmp_path / "t"
        )
    assert code == 7 and out == ""
    assert err.splitlines() == [
        "imagectl: error: no GPG key pinned for SLC 6: imagectl unpacks only packages signed by a key you chose",
        "hint: add `gpg_keys: [keys/RPM-GPG-KEY-...]` (the release's public key file, beside the recipe) to the "
        "recipe, or pass --gpg-key FILE",
    ]
    assert srv.served.requests == []  # refused before any download


class _FakeResponse:
    def __init__(self, url: str, body: bytes | None) -> None:
        self.url, self.body = url, body
        self.status_code = 200 if body is not None else 404
        self.raw = io.BytesIO(body or b"")  # what the reader streams with read1

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def iter_content(self, n: int) -> Iterator[bytes]:
        yield self.body or b""


class _FakeSession(requests.Session):
    """Serves ``files`` (URL -> bytes); https only, or refusing TLS altogether."""

    def __init__(self, files: dict[str, bytes], tls: bool = True) -> None:
        super().__init__()
        self.files, self.tls, self.urls = files, tls, []

    def get(self, url: str | bytes, **kw: object) -> _FakeResponse:  # type: ignore[override]
        self.urls.append(str(url))
        if str(url).startswith("https://") and not self.tls:
            raise requests.exceptions.SSLError("wrong version number")
        return _FakeResponse(str(url), self.files.get(str(url)))


def _tiny_repo() -> dict[str, bytes]:
    import gzip

    primary = gzip.compress(
        b'<?xml version="1.0"?><metadata xmlns="http://linux.duke.edu/metadata/common" packages="1"><package '
        b'type="rpm"><name>bash</name><arch>x86_64</arch><version epoch="0" ver="4.1.2" rel="15.el6"/><checksum '
        b'type="sha256">' + hashlib.sha256(b"rpm").hexdigest().encode() + b'</checksum><size package="3"/>'
        b'<location href="Packages/bash.rpm"/></package></metadata>'
    )
    repomd = (
        b'<repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="primary"><location href="repodata/p.xml.gz"/>'
        b'<checksum type="sha256">' + hashlib.sha256(primary).hexdigest().encode() + b"</checksum></data></repomd>"
    )
    base = "https://mirror.example/slc6X/x86_64/yum/os/"
    return {
        base + "repodata/repomd.xml": repomd,
        base + "repodata/p.xml.gz": primary,
        base + "Packages/bash.rpm": b"rpm",
    }


def test_an_http_mirror_that_offers_https_is_read_over_https(tmp_path: Path) -> None:
    session = _FakeSession(_tiny_repo())
    repo = YumRepository("http://mirror.example/slc6X/x86_64/yum/os", tmp_path, session=session)
    line = repo.prefer_https(session=session)
    assert line == "reading https://mirror.example/slc6X/x86_64/yum/os (https: the mirror offers it)"
    (bash,) = repo.packages()
    assert repo.download(bash).read_bytes() == b"rpm"
    assert all(u.startswith("https://") for u in session.urls) and len(session.urls) == 4  # probe, repomd, ...


def test_an_http_mirror_without_tls_is_read_over_http_said_once(tmp_path: Path) -> None:
    files = {u.replace("https://", "http://"): b for u, b in _tiny_repo().items()}
    session = _FakeSession(files, tls=False)
    repo = YumRepository("http://mirror.example/slc6X/x86_64/yum/os", tmp_path, session=session)
    line = repo.prefer_https(session=session)
    assert (
        line == "https://mirror.example/slc6X/x86_64/yum/os does not answer over https (SSLError); reading it over http"
    )
    assert [p.name for p in repo.packages()] == ["bash"]
    assert repo.url.startswith("http://") and session.urls[0].startswith("https://")
    assert all(u.startswith("http://") for u in session.urls[1:])
    https_only = YumRepository("https://mirror.example/x", tmp_path, session=session)
    assert https_only.prefer_https(session=session) == "reading https://mirror.example/x" and len(session.urls) == 3


def test_old_releases_chroot_reads_http() -> None:
    url = "https://linuxsoft.cern.ch/cern/slc5X/x86_64/yum/os"
    assert bootstrap.chroot_url(url, "5") == "http://linuxsoft.cern.ch/cern/slc5X/x86_64/yum/os"
    assert bootstrap.chroot_url(url, "6") == url
    assert bootstrap.chroot_url("http://m/os", "4") == "http://m/os"


# --------------------------------------------------------------------------------------------------------------
# the recipe's gpg_keys


def _recipe(d: Path, keys: str, family: str = "slc", release: str = "6") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    r = d / "r.yaml"
    r.write_text(f"name: wn\nos: {{family: {family}, release: {release}}}\narchitectures: [x86_64]\ngpg_keys:\n{keys}")
    return r


def test_recipe_gpg_keys_must_stay_inside_the_recipe_directory(tmp_path: Path) -> None:
    (tmp_path / "outside.asc").write_text("key")
    (tmp_path / "recipes/keys").mkdir(parents=True)
    (tmp_path / "recipes/keys/ok.asc").write_text("key")
    (tmp_path / "recipes/keys/sneaky.asc").symlink_to(tmp_path / "outside.asc")
    r = _recipe(tmp_path / "recipes", "  - keys/ok.asc\n  - ../outside.asc\n  - keys/sneaky.asc\n  - keys/none.asc\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(r)
    root = (tmp_path / "recipes").resolve()
    assert e.value.problems == [
        f"{r}:6:5: gpg_keys[1]: '../outside.asc' leads outside the recipe's directory {root}",
        f"{r}:7:5: gpg_keys[2]: 'keys/sneaky.asc' leads outside the recipe's directory {root}",
        f"{r}:8:5: gpg_keys[3]: no such file 'keys/none.asc'",
    ]
    with pytest.raises(RecipeError, match=r":5:5: gpg_keys\[0\]: expected a key file path relative to the recipe"):
        load_recipe(_recipe(tmp_path / "abs", "  - /etc/pki/rpm-gpg/RPM-GPG-KEY\n"))
    with pytest.raises(RecipeError, match=r":5:3: gpg_keys: only slc builds verify package signatures with them"):
        load_recipe(_recipe(tmp_path / "deb", "  - r.yaml\n", family="debian", release="12"))


def test_plan_passes_the_absolute_key_paths(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    for k in ("a.asc", "b.asc"):
        (tmp_path / "keys" / k).write_text("key")
    recipe = load_recipe(_recipe(tmp_path, "  - keys/a.asc\n  - keys/b.asc\n"))
    assert recipe.data["gpg_keys"] == ["keys/a.asc", "keys/b.asc"]  # relative: the recipe digest is portable
    inv = plan_dib(targets(recipe)[0], tmp_path / "out", tmp_path / "cfg", [])
    root = tmp_path.resolve()
    assert inv.env["IMAGECTL_SLC_GPG_KEYS"] == f"{root}/keys/a.asc:{root}/keys/b.asc"
