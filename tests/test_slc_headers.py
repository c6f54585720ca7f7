"""SLC 3's yum 2.0 repositories (``headers/header.info`` and ``headers/*.hdr``): parsing, the choice bound to the
package by its header, and stage 1 of an SLC 3 bootstrap against such a mirror.

Tests marked ``slc`` serve a yum 2.0 repository of test_slc_repo.py's rpmbuild packages (signed with a throwaway
key by rpmsign) on 127.0.0.1; header.info and the .hdr files are written here, in the two forms a mirror may
hold: the .rpm's main header as it is (with its magic), and what yum-arch wrote with rpm 4.2's ``hdr.unload(1)``
(:func:`yum_arch_hdr`: a ``headerCopy`` without region tag, the signature header's tags merged in). Offline tests
use tests/hostile_yum.py's byte-level writer.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from imagectl.imaging.slc import bootstrap, headers
from imagectl.imaging.slc import repo as repo_mod
from imagectl.imaging.slc import seed as seed_mod
from imagectl.imaging.slc.evr import EVR
from imagectl.imaging.slc.headers import HeaderMismatchError, HeadersRepository, header_difference, parse_header_info
from imagectl.imaging.slc.repo import RepoMetadataError, resolve
from imagectl.imaging.slc.rpmfile import read_layout
from tests import test_slc_repo
from tests.hostile_yum import REG, Member, write_rpm
from tests.httpserver import TestHTTPServer
from tests.test_slc_unpack import _FakeSession

# The signed rpmbuild packages of test_slc_repo.py (module-scoped fixtures, built once for this module too).
signing_keys = test_slc_repo.signing_keys
built_rpms = test_slc_repo.built_rpms
key = test_slc_repo.key
SEED = test_slc_repo.SEED
BASH = "bash-4.1.2-15.el6.x86_64"
BASH_HDR = "bash-0-4.1.2-15.el6.x86_64.hdr"
CHOSEN = {  # the seed's packages for x86_64, newest first and best arch, with their .hdr names
    "filesystem-2.4.30-3.el6.x86_64.rpm": "filesystem-0-2.4.30-3.el6.x86_64.hdr",
    "sl-release-6.10-1.el6.x86_64.rpm": "sl-release-0-6.10-1.el6.x86_64.hdr",
    f"{BASH}.rpm": BASH_HDR,
    "glibc-2.12-1.10.el6.x86_64.rpm": "glibc-0-2.12-1.10.el6.x86_64.hdr",
    "python-2.6.5-1.el6.x86_64.rpm": "python-1-2.6.5-1.el6.x86_64.hdr",  # epoch 1 beats 2.6.6
    "yum-3.2.29-40.el6.noarch.rpm": "yum-0-3.2.29-40.el6.noarch.hdr",
}

# --------------------------------------------------------------------------------------------------------------
# .hdr files in both forms


def main_header(rpm: Path) -> bytes:
    """The .rpm's main header as it is in the file: from its magic to the payload."""
    with rpm.open("rb") as f:
        layout = read_layout(f, rpm.name)
        f.seek(layout.header.start)
        return f.read(layout.payload_start - layout.header.start)


def _raw_entries(body: bytes) -> dict[int, tuple[int, int, bytes]]:
    """tag -> (type, count, data bytes) of a header structure without magic (written here, not imported, so the
    test does not check the reader with itself)."""
    count, _size = struct.unpack(">II", body[:8])
    data = body[8 + 16 * count :]
    out = {}
    for i in range(count):
        tag, typ, off, n = struct.unpack(">IIII", body[8 + 16 * i : 24 + 16 * i])
        if typ in (6, 8, 9):  # STRING, STRING_ARRAY, I18NSTRING
            end = off
            for _ in range(1 if typ == 6 else n):
                end = data.index(b"\0", end) + 1
        else:
            end = off + n * {1: 1, 2: 1, 3: 2, 4: 4, 5: 8}.get(typ, 1)
        out[tag] = (typ, n, data[off:end])
    return out


# rpm's headerMergeLegacySigs: signature tag -> the header tag it lands under
_MERGED = {1000: 257, 1001: 258, 1002: 259, 1003: 260, 1004: 261, 1005: 262, 1006: 263, 1007: 1046}


def yum_arch_hdr(rpm: Path) -> bytes:
    """What yum 2.0's yum-arch wrote for ``rpm`` (rpm 4.2: ``rpmReadPackageFile`` merges the signature header's
    tags into the header, ``hdr.unload(1)`` is ``headerCopy``, then ``headerUnload``): every entry but the region
    tag, plus the merged signature tags, sorted by tag, data laid out anew and aligned, no magic.

    Checked once by hand against rpm's own (Debian's python3-rpm 4.18, not needed here): for an rpmbuild package
    signed by rpmsign, ``rpm.hdr(ts.hdrFromFdno(fd)).unload()`` (the same headerCopy) is these bytes exactly.
    """
    raw = rpm.read_bytes()
    with rpm.open("rb") as f:
        layout = read_layout(f, rpm.name)
    entries = _raw_entries(raw[layout.header.start + 8 : layout.payload_start])
    sig = _raw_entries(raw[layout.signature.start + 8 : layout.signature.end])
    for tag, (typ, n, data) in sig.items():
        merged = _MERGED.get(tag, tag if 256 <= tag < 1000 else None)
        if merged is not None and merged not in entries and typ not in (8, 9) and (typ not in (1, 2, 3, 4) or n == 1):
            entries[merged] = (typ, n, data)
    index, data = [], bytearray()
    for tag, (typ, n, blob) in sorted(entries.items()):
        if tag in (61, 62, 63):
            continue
        data += b"\0" * (-len(data) % {3: 2, 4: 4, 5: 8}.get(typ, 1))
        index.append(struct.pack(">IIII", tag, typ, len(data), n))
        data += blob
    return struct.pack(">II", len(index), len(data)) + b"".join(index) + bytes(data)


def _nevra(rpm: Path) -> tuple[str, int, str, str, str]:
    with rpm.open("rb") as f:
        h = read_layout(f, rpm.name).header
    epoch = h.ints(1003)
    return (
        h.string(1000) or "",
        epoch[0] if epoch else 0,
        h.string(1001) or "",
        h.string(1002) or "",
        h.string(1022) or "",
    )


class Yum2Mirror(test_slc_repo.Mirror):
    """test_slc_repo's mirror, serving headers/ (yum 2.0) instead of repodata/."""

    def hdr(self, name: str) -> Path:
        return self.repo / "headers" / name

    def requests(self) -> list[str]:
        return [path for _m, path, _r in self.srv.served.requests]


def write_yum2(repo: Path, rpms: list[Path], form: str = "rpm") -> None:
    """A yum 2.0 repository of ``rpms`` in ``repo``: RPMS/*.rpm, headers/header.info and one gzipped .hdr per
    package, holding the main header as in the .rpm (``form="rpm"``) or as yum-arch wrote it (``"yum-arch"``)."""
    (repo / "RPMS").mkdir(parents=True)
    (repo / "headers").mkdir()
    lines = []
    for f in rpms:
        shutil.copy(f, repo / "RPMS" / f.name)
        name, epoch, version, release, arch = _nevra(f)
        lines.append(f"{epoch}:{name}-{version}-{release}.{arch}=RPMS/{f.name}\n")
        body = main_header(f) if form == "rpm" else yum_arch_hdr(f)
        hdr = repo / "headers" / f"{name}-{epoch}-{version}-{release}.{arch}.hdr"
        hdr.write_bytes(gzip.compress(body, mtime=0))
    (repo / "headers" / "header.info").write_text("".join(lines))


@pytest.fixture
def make_yum2(built_rpms: Path, tmp_path: Path) -> Iterator[Callable[..., Yum2Mirror]]:
    """A served yum 2.0 repository of the signed test packages; ``make_yum2(form=..., replace={FILE: BYTES})``
    serves other bytes for a package (its .hdr made from them: a mirror fed another package)."""
    with ExitStack() as stack:
        count = iter(range(100))

        def make(form: str = "rpm", replace: dict[str, bytes] | None = None) -> Yum2Mirror:
            root = tmp_path / f"yum2-{next(count)}"
            src = tmp_path / f"rpms-{next(count)}"
            shutil.copytree(built_rpms, src)
            for name, data in (replace or {}).items():
                (src / name).write_bytes(data)
            repo = root / "x86_64" / "yum" / "os"
            write_yum2(repo, sorted(src.iterdir()), form)
            srv = stack.enter_context(TestHTTPServer(root))
            return Yum2Mirror(root, repo, srv)

        yield make


@pytest.fixture
def slc3_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(seed_mod.SEEDS, "3", SEED)


def _bootstrap(
    capsys: pytest.CaptureFixture[str], mirror: str, target: Path, cache: Path, key: Path, release: str = "3"
) -> tuple[int, str, str]:
    capsys.readouterr()
    argv = ["--mirror", mirror, "--release", release, "--arch", "x86_64", "--target", str(target)]
    code = bootstrap.main([*argv, "--cache", str(cache), "--gpg-key", str(key)])
    out, err = capsys.readouterr()
    return code, out, err


def _files(d: Path) -> list[Path]:
    """The files under ``d``; in a download cache, what it keeps (not the lock bootstraps hold: download_cache_lock)."""
    return sorted(p for p in d.rglob("*") if p.is_file() and p != d / ".lock") if d.exists() else []


def _error(err: str) -> str:
    (line,) = [ln for ln in err.splitlines() if ln.startswith("imagectl: error:")]
    return line


# --------------------------------------------------------------------------------------------------------------
# header.info (offline)


def test_header_info_lines_split_as_yum_2_0_does() -> None:
    info = (
        b"0:bash-2.05b-29.0.3.i386=RPMS/bash-2.05b-29.0.3.i386.rpm\n"
        b"1:xorg-x11-libs-4.3.0-42.EL.i386=RPMS/xorg-x11-libs-4.3.0-42.EL.i386.rpm\r\n"
        b"\n"
        b"0:openssl-1.0.1e-58.el6_10.x86_64=Packages/o/openssl-1.0.1e-58.el6_10.x86_64.rpm\n"
        b"0:libstdc++-3.2.3-54.i386=RPMS/libstdc++-3.2.3-54.i386.rpm"  # no newline at the end
    )
    got = [(p.name, p.evr, p.arch, p.href, p.size, p.checksum) for p in parse_header_info(info)]
    assert got == [
        ("bash", EVR(0, "2.05b", "29.0.3"), "i386", "RPMS/bash-2.05b-29.0.3.i386.rpm", None, ""),
        ("xorg-x11-libs", EVR(1, "4.3.0", "42.EL"), "i386", "RPMS/xorg-x11-libs-4.3.0-42.EL.i386.rpm", None, ""),
        (
            "openssl",
            EVR(0, "1.0.1e", "58.el6_10"),
            "x86_64",
            "Packages/o/openssl-1.0.1e-58.el6_10.x86_64.rpm",
            None,
            "",
        ),
        ("libstdc++", EVR(0, "3.2.3", "54"), "i386", "RPMS/libstdc++-3.2.3-54.i386.rpm", None, ""),
    ]
    (xorg,) = [p for p in parse_header_info(info) if p.name == "xorg-x11-libs"]
    assert (
        headers.hdr_name(xorg) == "xorg-x11-libs-1-4.3.0-42.EL.i386.hdr"
        and xorg.nevra == "xorg-x11-libs-1:4.3.0-42.EL.i386"
    )


@pytest.mark.parametrize(
    "line",
    [
        b"bash-2.05b-29.i386=RPMS/bash-2.05b-29.i386.rpm",  # no epoch
        b"x:bash-2.05b-29.i386=RPMS/bash-2.05b-29.i386.rpm",  # epoch not a number
        b"0:bash.i386=RPMS/bash.i386.rpm",  # no version or release
        b"0:bash-29.i386=RPMS/bash-29.i386.rpm",  # no release
        b"0:bash-2.05b-29=RPMS/bash-2.05b-29.rpm",  # no arch
        b"0:bash-2.05b-29.i386",  # no location
        b"0:bash-2.05b-29.i386=RPMS/a.rpm=RPMS/b.rpm",
        b"0:ba sh-2.05b-29.i386=RPMS/bash-2.05b-29.i386.rpm",
        b"0:bash-2.05b-29.i386=RPMS/bash-2.05b-29.i386.hdr",  # not an .rpm
        "0:bäsh-2.05b-29.i386=RPMS/bash.rpm".encode(),
    ],
)
def test_malformed_header_info_line_names_its_number(line: bytes) -> None:
    info = b"0:bash-2.05b-29.i386=RPMS/bash-2.05b-29.i386.rpm\n\n" + line + b"\n"
    with pytest.raises(RepoMetadataError) as e:
        parse_header_info(info, "http://m/os/headers/header.info")
    assert e.value.message.startswith("http://m/os/headers/header.info line 3: ") and e.value.exit_code == 3


@pytest.mark.parametrize(
    "href", ["../../etc/passwd.rpm", "/etc/x.rpm", "http://evil.example/x.rpm", "RPMS/../../x.rpm", "file:///x.rpm"]
)
def test_header_info_locations_outside_the_repository_are_refused(href: str) -> None:
    with pytest.raises(RepoMetadataError, match=r"header\.info line 1: refusing location .* outside the repository"):
        parse_header_info(f"0:bash-2.05b-29.i386={href}\n".encode())


# --------------------------------------------------------------------------------------------------------------
# the .hdr against the .rpm (offline: tests/hostile_yum.py's rpm writer)


def test_header_difference_accepts_both_forms_and_names_what_differs(tmp_path: Path) -> None:
    rpm = write_rpm(tmp_path, "bash", [Member("./bin/bash", REG, b"bash\n")], version="2.05b", release="29")
    main, legacy = main_header(rpm), yum_arch_hdr(rpm)
    assert header_difference(main, main) is None  # with its magic
    assert header_difference(main[8:], main) is None  # without
    assert legacy != main[8:] and header_difference(legacy, main) is None  # yum-arch's copy: same content
    assert 1000 in _raw_entries(main[8:]) and 257 in _raw_entries(legacy) and 63 not in _raw_entries(legacy)
    summary = legacy.index(b"imagectl hostile test package")
    altered = legacy[:summary] + b"I" + legacy[summary + 1 :]
    assert header_difference(altered, main) == "tag 1004 (SUMMARY) differs"
    other = write_rpm(tmp_path, "bash", [Member("./bin/bash", REG, b"bash 2\n")], version="2.05b", release="30")
    assert header_difference(yum_arch_hdr(other), main) == "tag 1002 (RELEASE) differs"
    with pytest.raises(HeaderMismatchError, match="not an rpm header"):
        header_difference(legacy[:-1], main)


@pytest.mark.parametrize(
    ("release", "tls", "want_line", "want_urls"),
    [
        (
            "3",
            True,
            "reading https://m/slc30X/x86_64/yum/os (https: the mirror offers it); read through headers/header.info",
            ["https:headers/header.info", "https:headers/header.info", "https:headers/{hdr}", "https:RPMS/{rpm}"],
        ),
        (
            "6",
            True,
            "reading https://m/slc30X/x86_64/yum/os (https: the mirror offers it); read through headers/header.info; "
            "no repodata/repomd.xml there",
            [
                *("https:repodata/repomd.xml", "http:repodata/repomd.xml", "https:headers/header.info"),
                *("https:headers/header.info", "https:headers/{hdr}", "https:RPMS/{rpm}"),
            ],
        ),
        (
            "6",
            False,
            "https://m/slc30X/x86_64/yum/os does not answer over https (SSLError); reading it over http; read through "
            "headers/header.info; no repodata/repomd.xml there",
            [  # https refused once: not asked again for headers/
                *("https:repodata/repomd.xml", "http:repodata/repomd.xml", "http:headers/header.info"),
                *("http:headers/{hdr}", "http:RPMS/{rpm}"),
            ],
        ),
    ],
    ids=["slc3-https", "slc6-https-headers-only", "slc6-no-tls"],
)
def test_open_repository_picks_the_format_and_probes_https_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    release: str,
    tls: bool,
    want_line: str,
    want_urls: list[str],
) -> None:
    rpm = write_rpm(tmp_path, "bash", [Member("./bin/bash", REG, b"bash\n")], version="2.05b", release="29")
    base = "https://m/slc30X/x86_64/yum/os/" if tls else "http://m/slc30X/x86_64/yum/os/"
    files = {
        base + "headers/header.info": f"0:bash-2.05b-29.x86_64=RPMS/{rpm.name}\n".encode(),
        base + "headers/bash-0-2.05b-29.x86_64.hdr": gzip.compress(yum_arch_hdr(rpm)),
        base + f"RPMS/{rpm.name}": rpm.read_bytes(),
    }
    session = _FakeSession(files, tls=tls)
    monkeypatch.setattr(repo_mod, "make_session", lambda **_kw: session)  # the https probe's session too
    reader, line = bootstrap.open_repository(
        "http://m/slc30X/x86_64/yum/os", release, tmp_path / "cache", session=session
    )
    assert line == want_line and isinstance(reader, HeadersRepository)
    (bash,) = reader.packages()
    assert reader.download(bash).read_bytes() == rpm.read_bytes()
    short = [u.replace("//m/slc30X/x86_64/yum/os/", "") for u in session.urls]
    assert short == [u.format(hdr="bash-0-2.05b-29.x86_64.hdr", rpm=rpm.name) for u in want_urls]


# --------------------------------------------------------------------------------------------------------------
# stage 1 of an SLC 3 bootstrap against a served yum 2.0 repository


@pytest.mark.slc
@pytest.mark.parametrize("form", ["rpm", "yum-arch"])
def test_slc3_bootstrap_reads_headers_verifies_and_unpacks(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
    form: str,
) -> None:
    mirror = make_yum2(form=form)
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(capsys, mirror.url, target, cache, key)
    assert code == 0, err
    assert (target / "bin/bash").read_text() == "bash x86_64 15\n"  # x86_64 beats i686, -15 beats -9
    assert (target / "lib64/libc.so.6").read_text() == "glibc 1.10\n"  # 1.10 is newer than 1.9
    assert (target / "usr/bin/python").read_text() == "python epoch 1\n"  # the epoch wins
    assert (target / "usr/bin/yum").read_text() == "yum\n" and not (target / "usr/share/zoneinfo").exists()
    probe = f"{mirror.repo_url.replace('http:', 'https:')} does not answer over https (SSLError); reading it over http"
    assert f"slc-bootstrap: os repository: {probe}; read through headers/header.info\n" in err
    assert "fetching 6 seed packages (each at most 512 MiB) for SLC 3 x86_64" in err
    base = "/x86_64/yum/os/"
    assert mirror.requests()[0] == base + "headers/header.info"  # headers/ first for SLC 3: no repodata/ asked
    want = [base + "RPMS/" + f for f in CHOSEN] + [base + "headers/" + h for h in CHOSEN.values()]
    assert sorted(mirror.requests()[1:]) == sorted(want)  # each chosen package's .hdr and .rpm, nothing else
    conf = (target / "etc/yum.conf").read_text()  # yum 2.0 reads /etc/yum.conf only
    assert f"[imagectl-os]\nname=imagectl: os\nbaseurl={mirror.repo_url}\nenabled=1\ngpgcheck=1\n" in conf
    assert not (target / "etc/yum.repos.d").exists()
    assert sorted(p.name for p in (target / bootstrap.SEED_DIR).iterdir()) == sorted(CHOSEN)
    assert out.splitlines()[0] == f"chroot {target} /bin/rpm --initdb"
    # the cache holds each verified pair: the .hdr (gunzipped) beside its .rpm, and the .rpm's sha256
    sums = [f"{f}.sha256" for f in CHOSEN]
    assert sorted(p.name for p in _files(cache / "headers")) == sorted([*CHOSEN, *CHOSEN.values(), *sums])


@pytest.mark.slc
def test_second_run_downloads_only_header_info(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
) -> None:
    mirror = make_yum2()
    cache = tmp_path / "cache"
    assert _bootstrap(capsys, mirror.url, tmp_path / "t1", cache, key)[0] == 0
    assert mirror.srv.served.bytes_for(".rpm") > 0 and mirror.srv.served.bytes_for(".hdr") > 0
    mirror.srv.clear()
    code, _, err = _bootstrap(capsys, mirror.url, tmp_path / "t2", cache, key)
    assert code == 0, err
    assert mirror.requests() == ["/x86_64/yum/os/headers/header.info"]
    assert (tmp_path / "t2/bin/bash").read_text() == "bash x86_64 15\n"
    # a damaged cached pair is dropped and fetched again, never used
    (cached,) = [p for p in _files(cache) if p.name == f"{BASH}.rpm"]
    cached.write_bytes(cached.read_bytes()[:-1] + b"!")
    mirror.srv.clear()
    code, _, err = _bootstrap(capsys, mirror.url, tmp_path / "t3", cache, key)
    assert code == 0, err
    assert sorted(mirror.requests()[1:]) == [f"/x86_64/yum/os/RPMS/{BASH}.rpm", f"/x86_64/yum/os/headers/{BASH_HDR}"]


def _gz_edit(path: Path, old: bytes, new: bytes) -> None:
    body = gzip.decompress(path.read_bytes())
    assert body.count(old) >= 1 and len(old) == len(new)
    path.write_bytes(gzip.compress(body.replace(old, new, 1), mtime=0))


@pytest.mark.slc
@pytest.mark.parametrize(("form", "edit"), [("rpm", "byte"), ("yum-arch", "byte"), ("yum-arch", "version")])
def test_tampered_hdr_is_refused_by_name_and_nothing_kept(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
    form: str,
    edit: str,
) -> None:
    mirror = make_yum2(form=form)
    if edit == "byte":  # one byte of bash's summary
        _gz_edit(mirror.hdr(BASH_HDR), b"imagectl test package", b"Imagectl test package")
    else:  # its version, as if the .hdr were of another build
        _gz_edit(mirror.hdr(BASH_HDR), b"4.1.2\0", b"4.1.3\0")
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(capsys, mirror.url, target, cache, key)
    assert code == 11 and out == "", err
    if edit == "byte":
        assert _error(err) == (
            f"imagectl: error: {BASH}: the header of {mirror.repo_url}/RPMS/{BASH}.rpm is not the one "
            f"headers/{BASH_HDR} holds (tag 1004 (SUMMARY) differs); refused, nothing kept"
        )
    else:
        assert _error(err) == (
            f"imagectl: error: {BASH}: headers/{BASH_HDR} describes bash-4.1.3-15.el6.x86_64, not what header.info "
            "lists; refused"
        )
        assert mirror.srv.served.bytes_for(f"{BASH}.rpm") == 0  # refused before the .rpm was asked for
    assert not [p for p in _files(cache) if p.name.startswith("bash")]  # neither .hdr, .rpm nor a .part
    assert not target.exists()  # nothing of the seed unpacked


@pytest.mark.slc
def test_header_info_pointing_at_another_package_is_refused(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
) -> None:
    """bash -15's line points at the older, validly signed -9: its signature would pass; its header does not."""
    mirror = make_yum2()
    info = mirror.repo / "headers/header.info"
    info.write_text(info.read_text().replace(f"=RPMS/{BASH}.rpm", "=RPMS/bash-4.1.2-9.el6.x86_64.rpm"))
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, out, err = _bootstrap(capsys, mirror.url, target, cache, key)
    assert code == 11 and out == "", err
    assert _error(err) == (
        f"imagectl: error: {BASH}: {mirror.repo_url}/RPMS/bash-4.1.2-9.el6.x86_64.rpm is bash-4.1.2-9.el6.x86_64, not "
        "the package header.info lists; refused, nothing kept"
    )
    assert not [p for p in _files(cache) if p.name.startswith("bash")] and not target.exists()


@pytest.mark.slc
def test_unsigned_package_is_refused_and_its_hdr_discarded(
    make_yum2: Callable[..., Yum2Mirror],
    built_rpms: Path,
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
) -> None:
    """A headers/ repository's .hdr and .rpm may agree and still be unsigned: the pinned keys decide."""
    bad = tmp_path / f"{BASH}.rpm"
    shutil.copy(built_rpms / bad.name, bad)
    subprocess.run(["rpmsign", "--delsign", str(bad)], check=True, capture_output=True)
    mirror = make_yum2(replace={bad.name: bad.read_bytes()})
    target, cache = tmp_path / "target", tmp_path / "cache"
    code, _, err = _bootstrap(capsys, mirror.url, target, cache, key)
    assert code == 11
    assert _error(err).endswith(": it is not signed (no OpenPGP signature in its signature header)")
    assert _error(err).startswith(f"imagectl: error: {BASH}: no valid signature by the pinned key(s) ")
    assert not [p for p in _files(cache) if p.name.startswith("bash")] and not target.exists()
    assert [p for p in _files(cache) if p.name.startswith("sl-release")]  # verified pairs are kept


@pytest.mark.slc
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0:bash-4.1.2-15.el6.x86_64=../../../../etc/passwd.rpm", "line 3: refusing location"),
        ("0:bash-4.1.2-15.el6.x86_64=http://evil.example/bash.rpm", "line 3: refusing location"),
        ("bash-4.1.2-15.el6.x86_64=RPMS/bash.rpm", "line 3: expected EPOCH:NAME-VERSION-RELEASE.ARCH=PATH"),
    ],
)
def test_bad_header_info_line_is_refused_before_any_package(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    slc3_seed: None,
    capsys: pytest.CaptureFixture[str],
    key: Path,
    line: str,
    message: str,
) -> None:
    mirror = make_yum2()
    info = mirror.repo / "headers/header.info"
    lines = info.read_text().splitlines()
    info.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    code, _, err = _bootstrap(capsys, mirror.url, tmp_path / "t", tmp_path / "cache", key)
    assert code == 3
    assert _error(err).startswith(f"imagectl: error: {mirror.repo_url}/headers/header.info {message}")
    assert mirror.requests() == ["/x86_64/yum/os/headers/header.info"]  # nothing else asked for
    assert _files(tmp_path / "cache") == []


@pytest.mark.slc
def test_release_6_mirror_without_repodata_is_read_through_headers(
    make_yum2: Callable[..., Yum2Mirror],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: Path,
) -> None:
    monkeypatch.setitem(seed_mod.SEEDS, "6", SEED)
    mirror = make_yum2()
    code, _, err = _bootstrap(capsys, mirror.url, tmp_path / "t", tmp_path / "cache", key, release="6")
    assert code == 0, err
    assert "; read through headers/header.info; no repodata/repomd.xml there\n" in err
    assert mirror.requests()[:2] == ["/x86_64/yum/os/repodata/repomd.xml", "/x86_64/yum/os/headers/header.info"]


@pytest.mark.slc
def test_mirror_with_neither_index_names_both(
    tmp_path: Path, slc3_seed: None, capsys: pytest.CaptureFixture[str], key: Path
) -> None:
    with TestHTTPServer(tmp_path) as srv:
        code, _, err = _bootstrap(capsys, srv.url + "slc30X", tmp_path / "t", tmp_path / "cache", key)
    repo = f"{srv.url}slc30X/x86_64/yum/os"
    assert code == 13
    assert _error(err) == (
        f"imagectl: error: HTTP 404 from {repo}/headers/header.info, and HTTP 404 from {repo}/repodata/repomd.xml"
    )
    assert "hint: no yum repository there; an SLC mirror is the release directory" in err


@pytest.mark.slc
@pytest.mark.parametrize("cap", ["RPM_MAX", "HDR_MAX"])
def test_downloads_are_capped(
    make_yum2: Callable[..., Yum2Mirror], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    mirror = make_yum2()
    monkeypatch.setattr(headers, cap, 200)
    repo = HeadersRepository(mirror.repo_url, tmp_path / "cache")
    (bash,) = resolve(repo.packages(), ["bash"], "x86_64")
    with pytest.raises(HeaderMismatchError) as e:
        repo.download(bash)
    assert e.value.exit_code == 11 and e.value.message.startswith(f"{BASH}: {mirror.repo_url}/")
    assert ("sent more than 200 bytes" if cap == "RPM_MAX" else "is larger than 200 bytes") in e.value.message
    assert _files(tmp_path / "cache") == []
