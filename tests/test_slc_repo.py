"""SLC bootstrap, stage 1: yum metadata, seed resolution, verified downloads, unpacking; and boot loader text.

Tests marked ``slc`` build a small yum repository with Debian's rpmbuild and createrepo_c, its packages signed
with a throwaway key by rpmsign (apt-get install rpm createrepo-c gpg gpgv), and serve it on 127.0.0.1; without
those tools they fail under CI=true or IMAGECTL_REQUIRE_ALL=1 and skip elsewhere. What unpacking refuses, and the
signature checks one by one, are in test_slc_unpack.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagectl.errors import ImagectlError, InvalidInputError, NotFoundError
from imagectl.imaging.slc import bootloader, bootstrap
from imagectl.imaging.slc import seed as seed_mod
from imagectl.imaging.slc.evr import EVR, compare_evr, rpmvercmp
from imagectl.imaging.slc.repo import (
    Package,
    RepoMetadataError,
    UnknownPackageError,
    YumRepository,
    parse_primary,
    parse_repomd,
    resolve,
)
from imagectl.imaging.slc.rpmfile import write_payload
from imagectl.imaging.slc.rpmsig import PinnedKeys
from imagectl.imaging.slc.seed import unpack
from tests.conftest import require_tools, unavailable
from tests.hostile_yum import GpgKey, need_tools
from tests.httpserver import Fault, TestHTTPServer

# --------------------------------------------------------------------------------------------------------------
# A tiny SLC 6 lookalike repository


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    release: str
    arch: str
    files: dict[str, str] = field(default_factory=dict)  # path -> content (letters, digits, spaces only)
    links: dict[str, str] = field(default_factory=dict)  # path -> symlink target
    dirs: tuple[str, ...] = ()
    epoch: int = 0
    payload: str = "w9.gzdio"  # gzip, as SLC 3-5; xz for SLC 6

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


PKGS = [
    Pkg(
        "filesystem",
        "2.4.30",
        "3.el6",
        "x86_64",
        {"/etc/imagectl-test": "filesystem"},
        {"/etc/init.d": "rc.d/init.d"},
        ("/etc/rc.d/init.d",),
    ),
    Pkg(
        "sl-release",
        "6.10",
        "1.el6",
        "x86_64",
        {"/etc/redhat-release": "SLC 6", "/etc/pki/rpm-gpg/RPM-GPG-KEY-sl": "key"},
    ),
    Pkg("bash", "4.1.2", "15.el6", "x86_64", {"/bin/bash": "bash x86_64 15"}),
    Pkg("bash", "4.1.2", "9.el6", "x86_64", {"/bin/bash": "bash x86_64 9"}),
    Pkg("bash", "4.1.2", "48.el6", "i686", {"/bin/bash": "bash i686 48"}),
    Pkg("glibc", "2.12", "1.10.el6", "x86_64", {"/lib64/libc.so.6": "glibc 1.10"}),
    Pkg("glibc", "2.12", "1.9.el6", "x86_64", {"/lib64/libc.so.6": "glibc 1.9"}),
    Pkg("python", "2.6.5", "1.el6", "x86_64", {"/usr/bin/python": "python epoch 1"}, epoch=1),
    Pkg("python", "2.6.6", "66.el6", "x86_64", {"/usr/bin/python": "python epoch 0"}),
    Pkg("yum", "3.2.29", "40.el6", "noarch", {"/usr/bin/yum": "yum"}, payload="w2.xzdio"),
    Pkg("tzdata", "2018e", "3.el6", "noarch", {"/usr/share/zoneinfo/UTC": "utc"}),
]
SEED = ("filesystem", "sl-release", "bash", "glibc", "python", "yum")


def _spec(p: Pkg) -> str:
    install = ["mkdir -p %{buildroot}"]
    for d in p.dirs:
        install.append(f"mkdir -p %{{buildroot}}{d}")
    for path, content in p.files.items():
        install.append(f"mkdir -p %{{buildroot}}{os.path.dirname(path)}")
        install.append(f"echo '{content}' > %{{buildroot}}{path}")
    for path, target in p.links.items():
        install.append(f"mkdir -p %{{buildroot}}{os.path.dirname(path)}")
        install.append(f"ln -s {target} %{{buildroot}}{path}")
    lines = [
        f"Name: {p.name}",
        f"Version: {p.version}",
        f"Release: {p.release}",
        "Summary: imagectl test package",
        "License: MIT",
        *([f"Epoch: {p.epoch}"] if p.epoch else []),
        *(["BuildArch: noarch"] if p.arch == "noarch" else []),
        "%description",
        "test",
        "%install",
        *install,
        "%files",
        *[f"%dir {d}" for d in p.dirs],
        *p.files,
        *p.links,
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GpgKey, GpgKey]]:
    """The release's key (what the tests pin) and someone else's; their gpg-agents are stopped afterwards."""
    need_tools("gpg", "gpgv", "gpgconf", "rpmsign")
    home = tmp_path_factory.mktemp("gpg")
    release = GpgKey.generate(home / "release", "SLC test release <release@example.invalid>")
    other = GpgKey.generate(home / "other", "someone else <other@example.invalid>")
    yield release, other
    release.close()
    other.close()


@pytest.fixture(scope="module")
def key(signing_keys: tuple[GpgKey, GpgKey]) -> Path:
    """The pinned public key file (``--gpg-key``)."""
    return signing_keys[0].public


@pytest.fixture(scope="module")
def built_rpms(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[GpgKey, GpgKey]) -> Path:
    """Every package of PKGS, built once per module with rpmbuild and signed with the release's key."""
    need_tools("rpmbuild", "createrepo_c", "rpmsign")
    top = tmp_path_factory.mktemp("rpmbuild")
    out = top / "out"
    out.mkdir()
    for p in PKGS:
        spec = top / f"{p.name}-{p.release}-{p.arch}.spec"
        spec.write_text(_spec(p))
        argv = ["rpmbuild", "-bb", "--quiet", "--target", p.arch, "--define", f"_topdir {top}"]
        argv += ["--define", "_build_id_links none", "--define", f"_binary_payload {p.payload}"]
        argv += [
            "--define",
            f"_rpmdir {out}",
            "--define",
            "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        ]
        r = subprocess.run([*argv, str(spec)], capture_output=True, text=True, env={**os.environ, "HOME": str(top)})
        assert r.returncode == 0, r.stderr
    built = sorted(f.name for f in out.iterdir())
    assert built == sorted(p.filename for p in PKGS), built
    signing_keys[0].sign(*sorted(out.iterdir()))
    return out


@dataclass
class Mirror:
    root: Path  # the release mirror's directory (what --mirror names)
    repo: Path  # root/x86_64/yum/os
    srv: TestHTTPServer

    @property
    def url(self) -> str:
        return self.srv.url.rstrip("/")

    @property
    def repo_url(self) -> str:
        return self.url + "/x86_64/yum/os"

    def rpm(self, filename: str) -> Path:
        return self.repo / "Packages" / filename


@pytest.fixture
def make_mirror(built_rpms: Path, tmp_path: Path) -> Iterator[Callable[..., Mirror]]:
    """A served copy of the repository; ``make_mirror(compress=..., checksum=...)`` picks createrepo_c options,
    ``replace={FILENAME: BYTES}`` serves other bytes for a package, with metadata that matches them (a hostile
    mirror, or a mirror fed a bad package)."""
    with ExitStack() as stack:
        count = iter(range(100))

        def make(
            compress: str = "gz", checksum: str = "sha256", arch: str = "x86_64", replace: Mapping[str, bytes] = {}
        ) -> Mirror:
            root = tmp_path / f"mirror{next(count)}"
            repo = root / arch / "yum" / "os"
            (repo / "Packages").mkdir(parents=True)
            for f in built_rpms.iterdir():
                shutil.copy(f, repo / "Packages" / f.name)
            for name, data in replace.items():
                (repo / "Packages" / name).write_bytes(data)
            argv = ["createrepo_c", "--no-database", "--checksum", checksum, "--general-compress-type", compress]
            r = subprocess.run([*argv, str(repo)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            srv = stack.enter_context(TestHTTPServer(root))
            return Mirror(root, repo, srv)

        yield make


@pytest.fixture
def mirror(make_mirror: Callable[..., Mirror]) -> Mirror:
    return make_mirror()


@pytest.fixture
def small_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(seed_mod.SEEDS, "6", SEED)


def _bootstrap(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = bootstrap.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _files(d: Path) -> list[Path]:
    """The files under ``d``; in a download cache, what it keeps (not the lock bootstraps hold: download_cache_lock)."""
    return sorted(p for p in d.rglob("*") if p.is_file() and p != d / ".lock") if d.exists() else []


# --------------------------------------------------------------------------------------------------------------
# rpm version order (offline)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "2.0", -1),
        ("2.0.1", "2.0", 1),
        ("2.0.1a", "2.0.1", 1),
        ("5.5p1", "5.5p2", -1),
        ("5.5p10", "5.5p1", 1),
        ("10xyz", "10.1xyz", -1),
        ("xyz10", "xyz10.1", -1),
        ("1.10", "1.9", 1),  # numbers, not strings
        ("1.010", "1.10", 0),  # leading zeros do not count
        ("1b.fc17", "1.fc17", -1),
        ("6.0.rc1", "6.0", 1),
        ("1.0~rc1", "1.0", -1),  # tilde sorts before the end
        ("1.0^git1", "1.0", 1),  # caret after the end
        ("1.0^git1", "1.01", -1),
        ("a", "1", -1),  # letters are older than numbers
        ("1.el6", "1.el6_4", -1),
    ],
)
def test_rpmvercmp(a: str, b: str, want: int) -> None:
    assert rpmvercmp(a, b) == want
    assert rpmvercmp(b, a) == -want


def test_epoch_beats_version() -> None:
    assert compare_evr(EVR(1, "2.6.5", "1.el6"), EVR(0, "2.6.6", "66.el6")) == 1
    assert EVR(0, "2.12", "1.10.el6") > EVR(0, "2.12", "1.9.el6")
    assert str(EVR(1, "2.6.5", "1.el6")) == "1:2.6.5-1.el6"


def _pkg(name: str, arch: str, evr: EVR) -> Package:
    return Package(name, arch, evr, f"Packages/{name}.{arch}.rpm", "sha256", "0" * 64, 1)


def test_resolve_prefers_arch_then_newest() -> None:
    pkgs = [
        _pkg("bash", "x86_64", EVR(0, "4.1.2", "9")),
        _pkg("bash", "x86_64", EVR(0, "4.1.2", "15")),
        _pkg("bash", "i686", EVR(0, "4.1.2", "48")),
        _pkg("tzdata", "noarch", EVR(0, "2018e", "3")),
        _pkg("glibc", "i686", EVR(0, "2.12", "1")),
        _pkg("glibc", "i386", EVR(0, "2.12", "1")),
        _pkg("kernel", "i586", EVR(0, "2.6.9", "1")),
        _pkg("kernel", "i686", EVR(0, "2.6.9", "1")),
    ]
    got = resolve(pkgs, ["bash", "tzdata"], "x86_64")
    assert [(p.name, p.arch, p.evr.release) for p in got] == [("bash", "x86_64", "15"), ("tzdata", "noarch", "3")]
    # i386 image: exact arch first, then noarch, then i686, i586 ...
    got = resolve(pkgs, ["glibc", "bash", "kernel"], "i386")
    assert [(p.name, p.arch) for p in got] == [("glibc", "i386"), ("bash", "i686"), ("kernel", "i686")]
    # an x86_64 image never takes multilib i686 packages
    with pytest.raises(UnknownPackageError, match=r"glibc \(only for other architectures\)"):
        resolve(pkgs, ["glibc"], "x86_64")


def test_resolve_unknown_names_lists_close_ones() -> None:
    pkgs = [_pkg("bash", "x86_64", EVR(0, "1", "1")), _pkg("dash", "x86_64", EVR(0, "1", "1"))]
    with pytest.raises(UnknownPackageError) as e:
        resolve(pkgs, ["bsah", "zzzzzz", "bash"], "x86_64", where="http://m/os")
    msg = str(e.value)
    assert msg.startswith("not in http://m/os for x86_64: bsah (close: bash")
    assert "zzzzzz" in msg and "\n" not in msg
    assert e.value.exit_code == 4


# --------------------------------------------------------------------------------------------------------------
# metadata parsing (offline)


REPOMD = b"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo">
  <data type="primary">
    <location href="repodata/primary.xml.gz"/>
    <checksum type="sha">0123456789abcdef0123456789abcdef01234567</checksum>
    <timestamp>1199145600</timestamp>
  </data>
</repomd>
"""

PRIMARY = b"""<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>bash</name><arch>i386</arch>
  <version epoch="0" ver="3.0" rel="19.3"/>
  <checksum type="sha" pkgid="YES">89abcdef0123456789abcdef0123456789abcdef</checksum>
  <size package="1234" installed="5678" archive="6000"/>
  <location href="SL/bash-3.0-19.3.i386.rpm"/>
  <format>
    <rpm:provides><rpm:entry name="bash"/><rpm:entry name="/bin/sh"/></rpm:provides>
    <rpm:requires><rpm:entry name="libtermcap.so.2"/></rpm:requires>
  </format>
</package>
</metadata>
"""


def test_parse_old_repomd_without_sizes() -> None:
    """SLC 3/4-era createrepo: sha1 spelt "sha", no <size>."""
    md = parse_repomd(REPOMD)
    assert md["primary"].checksum_type == "sha" and md["primary"].size is None
    assert md["primary"].href == "repodata/primary.xml.gz"


@pytest.mark.parametrize("compress", ["plain", "gz", "bz2", "xz"])
def test_parse_primary_any_compression(compress: str) -> None:
    import bz2
    import gzip
    import lzma

    data = {"plain": PRIMARY, "gz": gzip.compress(PRIMARY), "bz2": bz2.compress(PRIMARY), "xz": lzma.compress(PRIMARY)}
    (p,) = parse_primary(io.BytesIO(data[compress]))
    assert (p.name, p.arch, str(p.evr), p.size, p.checksum_type) == ("bash", "i386", "3.0-19.3", 1234, "sha")
    assert p.href == "SL/bash-3.0-19.3.i386.rpm" and p.filename == "bash-3.0-19.3.i386.rpm"
    assert p.provides == ("bash", "/bin/sh") and p.requires == ("libtermcap.so.2",)


@pytest.mark.parametrize(
    "href", ["../../etc/passwd", "/etc/passwd", "http://evil.example/x.rpm", "Packages/../../x.rpm"]
)
def test_primary_refuses_locations_outside_the_repository(href: str) -> None:
    bad = PRIMARY.replace(b"SL/bash-3.0-19.3.i386.rpm", href.encode())
    with pytest.raises(RepoMetadataError, match="outside the repository"):
        list(parse_primary(io.BytesIO(bad)))


def test_not_repomd() -> None:
    with pytest.raises(RepoMetadataError, match="not a repomd document"):
        parse_repomd(b"<html><body>It works!</body></html>")
    with pytest.raises(RepoMetadataError, match="not valid XML"):
        parse_repomd(b"\x1f\x8bnot xml")


# --------------------------------------------------------------------------------------------------------------
# against a real repository built with rpmbuild + createrepo_c


@pytest.mark.slc
def test_repository_metadata_matches_the_files(mirror: Mirror) -> None:
    repo = YumRepository(mirror.repo_url, mirror.root / "unused-cache")
    md = repo.repomd()
    assert md["primary"].checksum_type == "sha256" and md["primary"].href.endswith("primary.xml.gz")
    pkgs = {(p.name, p.arch, p.evr.release): p for p in repo.packages()}
    assert len(pkgs) == len(PKGS)
    bash = pkgs[("bash", "x86_64", "15.el6")]
    data = mirror.rpm(bash.filename).read_bytes()
    assert bash.size == len(data) and bash.checksum == hashlib.sha256(data).hexdigest()
    assert bash.href == f"Packages/{bash.filename}" and bash.url == f"{mirror.repo_url}/Packages/{bash.filename}"
    assert pkgs[("python", "x86_64", "1.el6")].evr == EVR(1, "2.6.5", "1.el6")
    got = resolve(pkgs.values(), ["bash", "glibc", "python", "yum"], "x86_64")
    assert [p.nevra for p in got] == [
        "bash-4.1.2-15.el6.x86_64",
        "glibc-2.12-1.10.el6.x86_64",
        "python-1:2.6.5-1.el6.x86_64",
        "yum-3.2.29-40.el6.noarch",
    ]


@pytest.mark.slc
@pytest.mark.parametrize(("compress", "checksum"), [("bz2", "sha"), ("xz", "md5"), ("gz", "sha512")])
def test_old_and_new_repository_formats(
    make_mirror: Callable[..., Mirror], tmp_path: Path, compress: str, checksum: str
) -> None:
    mirror = make_mirror(compress=compress, checksum=checksum)
    repo = YumRepository(mirror.repo_url, tmp_path / "cache")
    assert repo.repomd()["primary"].href.endswith(f"primary.xml.{compress}")
    (yum,) = resolve(repo.packages(), ["yum"], "x86_64")
    assert yum.checksum_type == checksum
    path = repo.download(yum)
    assert path.read_bytes() == mirror.rpm(yum.filename).read_bytes()


@pytest.mark.slc
def test_payload_matches_rpm2cpio(built_rpms: Path) -> None:
    require_tools("rpm2cpio", install="rpm2cpio")
    for name in ("bash-4.1.2-15.el6.x86_64.rpm", "yum-3.2.29-40.el6.noarch.rpm"):  # gzip and xz payloads
        rpm = built_rpms / name
        buf = io.BytesIO()
        write_payload(rpm, buf)
        assert buf.getvalue() == subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout


@pytest.mark.slc
def test_unpack_keeps_modes_and_links(built_rpms: Path, tmp_path: Path) -> None:
    target = tmp_path / "root"
    unpack([built_rpms / "filesystem-2.4.30-3.el6.x86_64.rpm", built_rpms / "yum-3.2.29-40.el6.noarch.rpm"], target)
    assert (target / "etc/imagectl-test").read_text() == "filesystem\n"
    assert os.readlink(target / "etc/init.d") == "rc.d/init.d"
    assert (target / "usr/bin/yum").read_text() == "yum\n"


@pytest.mark.slc
def test_bootstrap_fetches_verifies_and_unpacks(
    mirror: Mirror, tmp_path: Path, small_seed: None, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(
        capsys,
        "--gpg-key",
        key,
        *("--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--target", target, "--cache", cache),
        *("--repo", f"updates={mirror.url}/x86_64/yum/updates", "--install", "openssh-server ntpdate"),
        *("--hypervisor", "hvm"),
    )
    # the extra repository does not exist: the seed is resolved across all of them, so this fails cleanly
    assert code == 13 and "HTTP 404" in err and "updates/repodata/repomd.xml" in err, err
    code, out, err = _bootstrap(
        capsys,
        "--gpg-key",
        key,
        *("--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--target", target, "--cache", cache),
        *("--repo", f"mirror2={mirror.url}/x86_64/yum/os", "--install", "openssh-server ntpdate"),
        *("--hypervisor", "hvm"),
    )
    assert code == 0, err
    assert (target / "bin/bash").read_text() == "bash x86_64 15\n"  # x86_64 beats i686, -15 beats -9
    assert (target / "lib64/libc.so.6").read_text() == "glibc 1.10\n"  # 1.10 is newer than 1.9
    assert (target / "usr/bin/python").read_text() == "python epoch 1\n"  # the epoch wins
    assert (target / "usr/bin/yum").read_text() == "yum\n"
    assert not (target / "usr/share/zoneinfo").exists()  # not in the seed
    repo_file = (target / "etc/yum.repos.d/imagectl.repo").read_text()
    assert f"[imagectl-os]\nname=imagectl: os\nbaseurl={mirror.repo_url}\nenabled=1\ngpgcheck=1\n" in repo_file
    # stage 2's yum checks with the pinned key (installed as RPM-GPG-KEY-imagectl-1) and the one the seed ships
    keys = "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-imagectl-1 file:///etc/pki/rpm-gpg/RPM-GPG-KEY-sl"
    assert keys in repo_file and "[imagectl-mirror2]" in repo_file
    assert (target / "etc/pki/rpm-gpg/RPM-GPG-KEY-imagectl-1").read_bytes() == key.read_bytes()
    seeds = sorted(p.name for p in (target / bootstrap.SEED_DIR).iterdir())
    assert len(seeds) == len(SEED) and "bash-4.1.2-15.el6.x86_64.rpm" in seeds
    lines = out.splitlines()
    chroot = f"chroot {target}"
    assert lines[0] == f"{chroot} /bin/rpm --initdb"
    assert lines[1] == f"{chroot} /bin/rpm --import /etc/pki/rpm-gpg/RPM-GPG-KEY-imagectl-1"
    assert lines[2] == f"{chroot} /bin/rpm --import /etc/pki/rpm-gpg/RPM-GPG-KEY-sl"
    assert lines[3].startswith(f"{chroot} /bin/rpm -K /var/cache/imagectl-seed/")
    assert lines[4].startswith(f"{chroot} /bin/rpm -i --justdb --nodeps --noscripts --notriggers /var/cache/")
    assert lines[5] == f"{chroot} /sbin/ldconfig"
    assert lines[6] == (
        f"{chroot} /usr/bin/yum -y '--disablerepo=*' '--enablerepo=imagectl-*' install "
        "pygpgme rootfiles passwd openssh-server ntpdate grub kernel"
    )
    assert lines[7] == f"{chroot} /bin/rm -rf /var/cache/imagectl-seed"
    assert "fetching 6 seed packages" in err
    # the test mirror speaks only http: tried once over https, then read over http, said once per repository
    probe = f"{mirror.repo_url.replace('http:', 'https:')} does not answer over https (SSLError); reading it over http"
    assert err.count(probe) == 2 and f"slc-bootstrap: os repository: {probe}" in err


@pytest.mark.slc
def test_second_run_downloads_nothing(
    mirror: Mirror, tmp_path: Path, small_seed: None, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    args = ("--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--cache", tmp_path / "cache")
    args += ("--gpg-key", key)
    assert _bootstrap(capsys, *args, "--target", tmp_path / "t1")[0] == 0
    assert mirror.srv.served.bytes_for(".rpm") > 0
    mirror.srv.clear()
    code, _, err = _bootstrap(capsys, *args, "--target", tmp_path / "t2")
    assert code == 0, err
    assert [path for _m, path, _r in mirror.srv.served.requests] == ["/x86_64/yum/os/repodata/repomd.xml"]
    assert mirror.srv.served.bytes_for(".rpm") == 0 and mirror.srv.served.bytes_for("primary.xml.gz") == 0
    assert (tmp_path / "t2/bin/bash").read_text() == "bash x86_64 15\n"


@pytest.mark.slc
def test_cache_prune_takes_old_slc_downloads_and_waits_for_no_bootstrap(
    mirror: Mirror,
    tmp_path: Path,
    small_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real bootstrap into CACHE/slc: while it downloads and unpacks, the cache's lock is held, so a prune
    (clock 40 days ahead: everything chosen) removes nothing; a second run's cache hits mark the packages used;
    the downloads are an area of ``cache show`` and, unused for 30 days, ``cache prune`` removes every one of them,
    and the next bootstrap downloads them again."""
    from imagectl import localcache

    cache = tmp_path / "cache"
    args = ("--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--cache", cache / "slc")
    args += ("--gpg-key", key)
    during: list[localcache.PruneReport] = []
    real_unpack = bootstrap.unpack

    def unpack_and_prune(files: list[Path], target: Path) -> None:
        during.append(localcache.prune(cache, unused_for=30 * 86400, now=lambda: time.time() + 40 * 86400))
        real_unpack(files, target)

    monkeypatch.setattr(bootstrap, "unpack", unpack_and_prune)
    code, _, err = _bootstrap(capsys, *args, "--target", tmp_path / "t1")
    assert code == 0, err
    [report] = during
    assert report.removed == [] and {e.area for e in report.kept_in_use} == {"slc"}
    assert len(report.kept_in_use) == len(SEED) + 1  # the seed's packages and the primary index
    monkeypatch.setattr(bootstrap, "unpack", real_unpack)

    rpms = sorted((cache / "slc" / "packages").rglob("*.rpm"))
    assert len(rpms) == len(SEED)
    old = time.time() - 40 * 86400
    for f in rpms:
        os.utime(f, (old, old))
    assert _bootstrap(capsys, *args, "--target", tmp_path / "t2")[0] == 0
    assert all(time.time() - f.stat().st_atime < 600 and f.stat().st_mtime == old for f in rpms)  # marked used
    areas = localcache.area_totals(localcache.scan(cache))
    assert areas["slc"]["entries"] == len(SEED) + 1 and areas["slc"]["bytes"] > 0

    for top, _dirs, names in os.walk(cache / "slc"):
        for name in names:
            os.utime(os.path.join(top, name), (old, old))
    report = localcache.prune(cache, unused_for=30 * 86400)
    assert len(report.removed) == len(SEED) + 1 and report.remaining_bytes == 0
    assert list((cache / "slc" / "packages").rglob("*.rpm")) == []
    mirror.srv.clear()
    assert _bootstrap(capsys, *args, "--target", tmp_path / "t3")[0] == 0
    assert mirror.srv.served.bytes_for(".rpm") > 0  # fetched again


@pytest.mark.slc
def test_corrupted_cache_entry_is_fetched_again(mirror: Mirror, tmp_path: Path) -> None:
    repo = YumRepository(mirror.repo_url, tmp_path / "cache")
    (bash,) = resolve(repo.packages(), ["bash"], "x86_64")
    path = repo.download(bash)
    path.write_bytes(b"\0" * bash.size)  # same size, other bytes
    mirror.srv.clear()
    assert repo.download(bash).read_bytes() == mirror.rpm(bash.filename).read_bytes()
    assert mirror.srv.served.bytes_for(bash.filename) == bash.size


@pytest.mark.slc
@pytest.mark.parametrize("extra", [0, 1000], ids=["same-size", "longer"])
def test_tampered_package_is_refused_and_nothing_kept(
    mirror: Mirror, tmp_path: Path, small_seed: None, capsys: pytest.CaptureFixture[str], extra: int, key: Path
) -> None:
    name = "bash-4.1.2-15.el6.x86_64.rpm"
    real = mirror.rpm(name).read_bytes()
    evil = real[:100] + b"X" + real[101:] + b"Y" * extra
    mirror.srv.add_fault(Fault(name, body=evil))
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(
        capsys, "--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--target", target, "--cache", cache,
        "--gpg-key", key,
    )  # fmt: skip
    assert code == 11, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("imagectl: error:")]
    assert "bash-4.1.2-15.el6.x86_64" in line
    if extra:
        assert f"sent more than the declared {len(real)} bytes" in line
    else:
        assert hashlib.sha256(real).hexdigest() in line and hashlib.sha256(evil).hexdigest() in line
    assert not [p for p in _files(cache) if "bash" in p.name]  # neither the file nor a .part
    assert not target.exists() or not (target / "bin/bash").exists()
    assert out == ""


@pytest.mark.slc
@pytest.mark.parametrize("kind", ["unsigned", "other-key", "payload-altered", "header-altered"])
def test_seed_package_without_a_valid_pinned_signature_is_refused_before_anything_is_unpacked(
    make_mirror: Callable[..., Mirror],
    built_rpms: Path,
    signing_keys: tuple[GpgKey, GpgKey],
    tmp_path: Path,
    small_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
    kind: str,
) -> None:
    """The mirror serves a bash that is unsigned, signed by someone else, or altered after signing, with metadata
    that matches it (so the checksum passes): refused by name, its cached download removed, and nothing of the
    seed unpacked (filesystem and sl-release, fetched and verified before it, are not unpacked either)."""
    name = "bash-4.1.2-15.el6.x86_64.rpm"
    bad = tmp_path / name
    shutil.copy(built_rpms / name, bad)
    data = bad.read_bytes()
    other_home, pinned_home = tmp_path / "other-home", tmp_path / "pinned-home"
    other_home.mkdir()
    pinned_home.mkdir()
    other_id = PinnedKeys([signing_keys[1].public], other_home).describe()
    reasons = {
        "unsigned": "it is not signed (no OpenPGP signature in its signature header)",
        "other-key": f"its RSA header signature is by key {other_id}, which is not pinned",
        "payload-altered": "its payload does not match the digest its signed header declares (altered)",
        "header-altered": "the RSA header signature is BAD (the package was altered after signing)",
    }
    if kind == "unsigned":
        subprocess.run(["rpmsign", "--delsign", str(bad)], check=True, capture_output=True)
    elif kind == "other-key":
        signing_keys[1].sign(bad)
    elif kind == "payload-altered":
        bad.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    else:
        at = data.index(b"imagectl test package")
        bad.write_bytes(data[:at] + b"I" + data[at + 1 :])
    mirror = make_mirror(replace={name: bad.read_bytes()})
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(
        capsys, "--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--target", target, "--cache", cache,
        "--gpg-key", key,
    )  # fmt: skip
    ids = PinnedKeys([key], pinned_home).describe()
    assert code == 11 and out == ""
    assert err.splitlines()[-1] == (
        f"imagectl: error: bash-4.1.2-15.el6.x86_64: no valid signature by the pinned key(s) {ids}: {reasons[kind]}"
    )
    assert not target.exists()
    assert not [p for p in _files(cache) if "bash" in p.name]  # the refused download is not kept
    assert [p for p in _files(cache) if "sl-release" in p.name]  # verified ones are (the next run skips them)


@pytest.mark.slc
def test_tampered_primary_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    size = len(next(mirror.repo.glob("repodata/*primary.xml.gz")).read_bytes())
    mirror.srv.add_fault(Fault("primary.xml.gz", body=b"\x1f\x8b" + b"\0" * (size - 2)))
    with pytest.raises(Exception, match="checksum mismatch") as e:
        YumRepository(mirror.repo_url, tmp_path / "cache").packages()
    assert e.value.exit_code == 11  # type: ignore[attr-defined]
    assert _files(tmp_path / "cache") == []


@pytest.mark.slc
def test_unknown_seed_name(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    monkeypatch.setitem(seed_mod.SEEDS, "6", ("bash", "glibc-comon", "yumm"))
    code, _, err = _bootstrap(
        capsys,
        "--mirror",
        mirror.url,
        "--release",
        "6",
        "--arch",
        "x86_64",
        "--target",
        tmp_path / "t",
        "--gpg-key",
        key,
    )
    assert code == 4
    assert f"not in {mirror.repo_url} for x86_64: glibc-comon (close: glibc); yumm (close: yum)" in err
    assert mirror.srv.served.bytes_for(".rpm") == 0  # refused before any package download


@pytest.mark.slc
def test_release_3_writes_yum_conf(
    make_mirror: Callable[..., Mirror],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: Path,
) -> None:
    monkeypatch.setitem(seed_mod.SEEDS, "3", ("bash", "yum"))  # the test repository has no i386 filesystem etc.
    mirror = make_mirror(arch="i386")
    target = tmp_path / "t"
    (target / "etc").mkdir(parents=True)
    (target / "etc/yum.conf").write_text("[main]\ncachedir=/var/cache/yum\n")
    code, out, err = _bootstrap(
        capsys, "--mirror", mirror.url, "--release", "3", "--arch", "i386", "--target", target, "--gpg-key", key
    )
    assert code == 0, err
    conf = (target / "etc/yum.conf").read_text()
    assert conf.startswith("[main]\ncachedir=/var/cache/yum\n\n# >>> imagectl\n")
    assert f"baseurl={mirror.url}/i386/yum/os\n" in conf
    assert not (target / "etc/yum.repos.d").exists()
    assert (target / "bin/bash").read_text() == "bash i686 48\n"  # no i386 build: i686 is the next best
    assert out.splitlines()[0] == f"setarch i686 chroot {target} /bin/rpm --initdb"
    assert "--disablerepo" not in out  # yum 2.0 has no such option


@pytest.mark.slc
def test_stage2_needs_the_targets_rpm(
    mirror: Mirror, tmp_path: Path, small_seed: None, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    code, _, err = _bootstrap(
        capsys, "--mirror", mirror.url, "--release", "6", "--arch", "x86_64", "--target", tmp_path / "t", "--stage2",
        "--gpg-key", key,
    )  # fmt: skip
    assert code == 3 and "has no /bin/rpm" in err


@pytest.mark.http
@pytest.mark.slc
def test_mirror_without_repository_is_a_download_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    with TestHTTPServer(tmp_path) as srv:
        code, out, err = _bootstrap(
            capsys, "--mirror", srv.url + "nothere", "--release", "6", "--arch", "x86_64", "--target", tmp_path / "t",
            "--gpg-key", key,
        )  # fmt: skip
    assert code == 13 and out == ""
    assert f"imagectl: error: HTTP 404 from {srv.url}nothere/x86_64/yum/os/repodata/repomd.xml" in err
    assert "hint: no yum repository there; an SLC mirror is the release directory" in err


@pytest.mark.slc
def test_unreachable_mirror_is_a_download_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    mirror = f"http://127.0.0.1:{port}/slc6X"
    code, _, err = _bootstrap(
        capsys, "--gpg-key", key, "--mirror", mirror, "--release", "6", "--arch", "x86_64", "--target", tmp_path
    )
    assert code == 13 and f"cannot reach http://127.0.0.1:{port}/slc6X/x86_64/yum/os/repodata/repomd.xml" in err


def test_bad_release_arch_and_repo_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _bootstrap(capsys, "--release", "6", "--arch", "ppc", "--target", tmp_path, "--mirror", "http://x")
    assert code == 3 and "SLC 6 has no ppc release (expected one of i386, x86_64, ia64)" in err
    code, _, err = _bootstrap(
        capsys, "--release", "6", "--arch", "x86_64", "--target", tmp_path, "--mirror", "http://x", "--repo", "a b=c"
    )
    assert code == 3 and "repository name 'a b'" in err


def test_stage2_commands_for_each_era(tmp_path: Path) -> None:
    b = bootstrap.Bootstrap(tmp_path, "5", "i386", {"os": "http://m"}, [], ["/var/cache/imagectl-seed/a.rpm"])
    cmds = bootstrap.stage2_commands(b)
    assert all(c[:4] == ["setarch", "i686", "chroot", str(tmp_path)] for c in cmds)
    assert [c[4:6] for c in cmds] == [
        ["/bin/rpm", "--initdb"],
        ["/bin/rpm", "-i"],
        ["/sbin/ldconfig"],
        ["/bin/rm", "-rf"],
    ]


# --------------------------------------------------------------------------------------------------------------
# boot loader configuration (offline)

K6 = [
    bootloader.Kernel("2.6.32-754.el6.x86_64", "vmlinuz-2.6.32-754.el6.x86_64", "initramfs-2.6.32-754.el6.x86_64.img")
]


def test_menu_lst_hvm() -> None:
    text = bootloader.menu_lst(
        K6, root="LABEL=cloudimg-rootfs", hypervisor="hvm", console="ttyS0,115200", title="Scientific Linux CERN 6"
    )
    assert text == (
        "# Written by imagectl (slc-bootloader): legacy GRUB reads it on hvm, pygrub on xen-pv.\n"
        "default=0\n"
        "timeout=5\n"
        "serial --unit=0 --speed=115200\n"
        "terminal --timeout=5 serial console\n"
        "title Scientific Linux CERN 6 (2.6.32-754.el6.x86_64)\n"
        "\troot (hd0,0)\n"
        "\tkernel /boot/vmlinuz-2.6.32-754.el6.x86_64 ro root=LABEL=cloudimg-rootfs console=tty0 console=ttyS0,115200\n"
        "\tinitrd /boot/initramfs-2.6.32-754.el6.x86_64.img\n"
    )


def test_menu_lst_xen_pv_for_pygrub() -> None:
    kernels = [bootloader.Kernel("2.6.18-398.el5xen", "vmlinuz-2.6.18-398.el5xen", "initrd-2.6.18-398.el5xen.img")]
    text = bootloader.menu_lst(
        kernels, root="LABEL=/", hypervisor="xen-pv", console=bootloader.default_console("5", "xen-pv"), title="SLC 5"
    )
    assert "serial" not in text and "terminal" not in text and "hiddenmenu\n" in text
    assert "\tkernel /boot/vmlinuz-2.6.18-398.el5xen ro root=LABEL=/ console=xvc0\n" in text
    assert "\tinitrd /boot/initrd-2.6.18-398.el5xen.img\n" in text
    assert bootloader.kernel_package("5", "xen-pv", "x86_64") == "kernel-xen"
    assert bootloader.kernel_package("4", "xen-pv", "i386") == "kernel-xenU"
    assert bootloader.packages("6", "xen-pv", "x86_64") == ("kernel",)
    assert bootloader.default_console("6", "xen-pv") == "hvc0"
    with pytest.raises(InvalidInputError, match="SLC 3 has no Xen guest kernel"):
        bootloader.kernel_package("3", "xen-pv", "i386")


def test_elilo_conf_ia64() -> None:
    kernels = [
        bootloader.Kernel("2.6.18-398.el5", "vmlinuz-2.6.18-398.el5", "initrd-2.6.18-398.el5.img"),
        bootloader.Kernel("2.6.18-8.el5", "vmlinuz-2.6.18-8.el5", None),
    ]
    text = bootloader.elilo_conf(kernels, root="LABEL=cloudimg-rootfs", console="ttyS0,115200")
    assert text == (
        "# Written by imagectl (slc-bootloader).\n"
        "prompt\n"
        "timeout=50\n"
        "default=2.6.18-398.el5\n"
        "relocatable\n"
        "\n"
        "image=vmlinuz-2.6.18-398.el5\n"
        "\tlabel=2.6.18-398.el5\n"
        "\tinitrd=initrd-2.6.18-398.el5.img\n"
        "\tread-only\n"
        '\tappend="root=LABEL=cloudimg-rootfs console=ttyS0,115200"\n'
        "\n"
        "image=vmlinuz-2.6.18-8.el5\n"
        "\tlabel=2.6.18-8.el5\n"
        "\tread-only\n"
        '\tappend="root=LABEL=cloudimg-rootfs console=ttyS0,115200"\n'
    )
    assert bootloader.packages("5", "hvm", "ia64") == ("elilo", "kernel")


def test_write_config_finds_kernels_newest_first(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for v in ("2.6.32-71.el6.x86_64", "2.6.32-754.el6.x86_64"):
        (boot / f"vmlinuz-{v}").write_text("k")
        (boot / f"initramfs-{v}.img").write_text("i")
    (written,) = bootloader.write_config(
        tmp_path, release="6", hypervisor="hvm", arch="x86_64", root="LABEL=cloudimg-rootfs"
    )
    text = written.read_text()
    assert written == tmp_path / "boot/grub/menu.lst"
    assert text.index("754.el6") < text.index("71.el6")  # rpm order: 754 > 71
    assert os.readlink(tmp_path / "boot/grub/grub.conf") == "menu.lst"
    assert (tmp_path / "etc/grub.conf").read_text() == text  # through both links
    efi = tmp_path / "ia64" / bootloader.EFI_DIR
    efi.mkdir(parents=True)
    (efi / "vmlinuz-2.6.18-398.el5").write_text("k")
    (conf,) = bootloader.write_config(tmp_path / "ia64", release="5", hypervisor="hvm", arch="ia64", root="LABEL=/")
    assert conf == efi / "elilo.conf" and (tmp_path / "ia64/etc/elilo.conf").read_text() == conf.read_text()


def test_write_config_refuses_missing_kernel_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no kernel"):
        bootloader.write_config(tmp_path, release="6", hypervisor="hvm", arch="x86_64", root="LABEL=x")
    with pytest.raises(InvalidInputError, match="root"):
        bootloader.menu_lst(K6, root="LABEL=x\ninitrd /evil", hypervisor="hvm", console="ttyS0", title="t")


def test_bootloader_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bootloader.main(["packages", "--release", "5", "--arch", "x86_64", "--hypervisor", "xen-pv"]) == 0
    assert capsys.readouterr().out == "kernel-xen\n"
    args = ["config", "--release", "6", "--arch", "x86_64", "--hypervisor", "hvm", "--target", str(tmp_path)]
    assert bootloader.main(args) == 4
    assert "imagectl: error: no kernel" in capsys.readouterr().err


@pytest.mark.root
def test_stage2_runs_in_a_prepared_chroot_and_always_unmounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        unavailable("stage 2 creates device nodes: root only (CI runs as root)")
    target = tmp_path / "t"
    (target / "bin").mkdir(parents=True)
    (target / "etc").mkdir()
    shutil.copyfile("/bin/true", target / "bin/rpm")  # an x86_64 program, as a real seed's rpm is
    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def fake_run(cmd: list[str | Path], *, env: dict[str, str] | None = None, **_kw: object) -> None:
        calls.append(([str(c) for c in cmd], env))
        assert (target / "etc/resolv.conf").exists() or not Path("/etc/resolv.conf").is_file()
        if "yum" in " ".join(str(c) for c in cmd):
            raise ImagectlError("yum failed")

    monkeypatch.setattr(bootstrap, "run", fake_run)
    seed = ["/var/cache/imagectl-seed/a.rpm"]
    b = bootstrap.Bootstrap(target, "6", "x86_64", {"os": "http://m"}, [], seed, install=["openssh-server"])
    with pytest.raises(ImagectlError, match="yum failed"):
        bootstrap.stage2(b)
    argvs = [c for c, _env in calls]
    assert argvs[0] == ["mount", "-t", "proc", "proc", str(target / "proc")]
    assert argvs[1] == ["chroot", str(target), "/bin/rpm", "--initdb"]
    assert argvs[-1] == ["umount", str(target / "proc")]  # even though yum failed
    assert all(env == {"LC_ALL": "C", "HOME": "/root"} for c, env in calls if c[0] == "chroot")
    assert stat.S_ISCHR((target / "dev/null").stat().st_mode)
    assert not (target / "etc/resolv.conf").exists()  # lent for the duration only


@pytest.mark.parametrize(
    ("content", "what"),
    [(b"#!/bin/sh\necho fake rpm\n", "not an ELF program"), (None, "an ELF program for machine")],
)
def test_stage2_says_what_a_real_mirror_provides(tmp_path: Path, content: bytes | None, what: str) -> None:
    """A mirror whose seed carries no real binaries (this suite's fixture repositories) gets as far as stage 1;
    stage 2 then stops with why, instead of "Exec format error" from chroot."""
    target = tmp_path / "t"
    (target / "bin").mkdir(parents=True)
    if content is None:
        shutil.copyfile("/bin/true", target / "bin/rpm")  # x86_64: wrong for an ia64 image
        arch = "ia64"
    else:
        (target / "bin/rpm").write_bytes(content)
        arch = "x86_64"
    with pytest.raises(InvalidInputError) as e:
        bootstrap.check_runnable(target, arch)
    assert f"the seed's /bin/rpm is {what}" in e.value.message
    assert "stage 1 done" in e.value.message and "which a real SLC mirror provides" in e.value.message
    shutil.copyfile("/bin/true", target / "bin/rpm")
    bootstrap.check_runnable(target, "x86_64")  # a real program of the right machine passes
