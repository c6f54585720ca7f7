"""``imagectl rebuild`` of a Debian image, pinned to the mirror state its build record names.

The record of a Debian build holds the SHA-256 of each Packages index its suites' signed InRelease files name
(``package_cache.base.package_indexes``). A rebuild checks every suite before it builds and holds the build's
package cache to those indexes; ``--mirror MIRROR
SNAPSHOT`` fetches MIRROR's bytes from SNAPSHOT (a snapshot of it) while the build, and so the image, still names
MIRROR; a pinned InRelease is accepted past its Valid-Until, in imagectl and (through the element) in apt. The
mirror and its signing key are the test's own (tests/test_build_cache.py); the original mirror's host does not
exist, so every byte that arrives came from the snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.errors import NotReproducibleError
from imagectl.imaging import debindex
from imagectl.imaging.aptproxy import DebianPackageCache
from imagectl.imaging.debindex import IndexError_, MirrorMovedError, check_pinned, fetch_url
from imagectl.imaging.pkgcache import PackageCache
from imagectl.resources import elements_dir
from tests.conftest import REPO, Catalogue, CliResult, require_tools
from tests.test_build_cache import DEB, Mirror, _deb_requests, _fetch, _prepare, mirror, signing_key  # noqa: F401
from tests.test_build_fake import DEMO
from tests.test_repro import X86_HVM, built, fake_repro_dib  # noqa: F401  (fixtures)
from tests.test_schema import assert_valid, validator

pytestmark = [pytest.mark.http]

ORIGINAL = "http://deb.example.invalid/debian"  # what the build and the image name; never reachable
EXPIRED = "Valid-Until: Mon, 01 Jan 2024 00:00:00 UTC\n"


INDEX = "main/binary-amd64/Packages.xz"


def _index_sha(m: Mirror) -> str:
    """The SHA-256 of the mirror's one Packages index, as its InRelease signs it."""
    return hashlib.sha256((m.root / "debian/dists/bookworm" / INDEX).read_bytes()).hexdigest()


def _pin(mirror_url: str, m: Mirror, sha: str | None = None) -> dict[str, str]:
    """A record's package_indexes for ``mirror_url``'s bookworm: ``m``'s index, or ``sha``."""
    return {f"{mirror_url} bookworm {INDEX}": sha or _index_sha(m)}


def _pinned_cache(tmp_path: Path, m: Mirror, pinned: dict[str, str] | None) -> DebianPackageCache:
    env = {
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": ORIGINAL,
        "DIB_APT_SOURCES_CONF": f"default:deb {ORIGINAL} bookworm main",
    }
    pc = DebianPackageCache(
        tmp_path / "cache",
        tmp_path / "cache" / "work" / "w",
        env,
        "amd64",
        "3.43.0",
        fetch_from={ORIGINAL: m.url},  # type: ignore[attr-defined]
        pinned=pinned,
    )
    pc.keyring = m.keyring(tmp_path / "archive.gpg")
    return pc


def test_fetch_url_maps_only_what_lies_under_the_mirror() -> None:
    snap = {"http://m/debian": "http://snap/archive/debian/20261128T000000Z/"}
    assert fetch_url("http://m/debian/dists/bookworm/InRelease", snap) == (
        "http://snap/archive/debian/20261128T000000Z/dists/bookworm/InRelease"
    )
    assert fetch_url("http://m/debian", snap) == "http://snap/archive/debian/20261128T000000Z"
    assert fetch_url("http://m/debian-security/dists/x", snap) == "http://m/debian-security/dists/x"  # not a prefix
    assert fetch_url("http://m/debian/pool/a.deb", None) == "http://m/debian/pool/a.deb"


def test_a_pinned_build_fetches_from_the_snapshot_and_accepts_its_expired_release(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    mirror.publish(dict(mirror.debs), fields=EXPIRED)  # as a snapshot's -updates suite is, days later
    pc = _pinned_cache(tmp_path, mirror, _pin(ORIGINAL, mirror))
    with pc.serving() as env:
        assert env["IMAGECTL_PKGCACHE_PINNED"] == "1"  # the element lets apt accept the same InRelease
        got = _prepare(env)
        assert got.status_code == 200, got.text
        r = _fetch(env["http_proxy"], f"{ORIGINAL}/{DEB}")  # apt asks for the original mirror's file
        assert r.status_code == 200 and r.content == mirror.debs[DEB]
    assert _deb_requests(mirror) == [f"/debian/{DEB}"]  # it came from the snapshot
    assert pc.index is not None and f"{ORIGINAL}/{DEB}" in pc.index.files  # indexed under the name the build uses
    record = pc.finish(True)
    assert record is not None
    assert record["base"]["package_indexes"] == _pin(ORIGINAL, mirror)  # the record of the rebuild: the same state


def test_an_expired_release_is_still_refused_when_not_pinned(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    mirror.publish(dict(mirror.debs), fields=EXPIRED)
    with _pinned_cache(tmp_path, mirror, None).serving() as env:
        got = _prepare(env)
        assert "IMAGECTL_PKGCACHE_PINNED" not in env
    assert got.status_code == 500
    assert got.text == (
        "imagectl: error: the mirror's Release file expired on Mon, 01 Jan 2024 00:00:00 UTC (a stale or frozen "
        "mirror)\n"
    )


def test_a_pinned_build_refuses_a_suite_in_another_state(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    recorded = _index_sha(mirror)
    mirror.publish(dict(mirror.debs), fields="X-Resigned: later\n")  # a new InRelease signing the same index
    with _pinned_cache(tmp_path, mirror, _pin(ORIGINAL, mirror, recorded)).serving() as env:
        assert _prepare(env).status_code == 200  # the same state: what decides the packages did not change
    mirror.publish({**mirror.debs, DEB: b"a newer tiny\n"})  # the mirror moved on
    with _pinned_cache(tmp_path, mirror, _pin(ORIGINAL, mirror, recorded)).serving() as env:
        got = _prepare(env)
    assert got.status_code == 500
    assert got.text == (
        f"imagectl: error: the mirror is not in the state of the original build: {ORIGINAL} bookworm {INDEX} "
        f"(sha256 {_index_sha(mirror)[:12]}, the record's {recorded[:12]})\n"
    )


def test_check_pinned_names_every_suite_that_moved_and_skips_hidden_urls(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    import requests

    keyring = mirror.keyring(tmp_path / "archive.gpg")
    url = mirror.url  # type: ignore[attr-defined]
    with requests.Session() as s:
        s.trust_env = False
        pinned = {**_pin(url, mirror), **_pin("http://<hidden>@m/debian", mirror, "0" * 64)}
        assert check_pinned(s, pinned, None, keyring=keyring) == (1, 0)
        assert check_pinned(s, _pin(ORIGINAL, mirror), {ORIGINAL: url}, keyring=keyring) == (1, 0)
        with pytest.raises(MirrorMovedError) as e:
            check_pinned(s, _pin(url, mirror, "ab" * 32), None, keyring=keyring)
        with pytest.raises(IndexError_, match="no valid signature"):  # the InRelease is verified, not just read
            check_pinned(s, _pin(url, mirror), None, keyring=tmp_path / "empty.gpg")
    assert isinstance(e.value, NotReproducibleError) and e.value.exit_code == 25
    want = f"{url} bookworm {INDEX} (sha256 {_index_sha(mirror)[:12]}, the record's abababababab)"
    assert str(e.value) == f"the mirror is not in the state of the original build: {want}"


# -- the command --------------------------------------------------------------------------------------------------


@pytest.fixture
def trusted(mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mirror:  # noqa: F811
    """The test mirror's key as the archive keyring imagectl checks InRelease files with."""
    monkeypatch.setattr(debindex, "DEFAULT_KEYRING", mirror.keyring(tmp_path / "archive.gpg"))
    return mirror


def _record_with_state(cli: Callable[..., CliResult], tmp_path: Path, state: dict[str, str]) -> Path:
    """A reproducible stand-in build's record, given the mirror state a real Debian build records."""
    out = tmp_path / "out"
    r = cli("build", DEMO, *X86_HVM, "-o", out, "--reproducible", "--source-date-epoch", "1700000000")
    assert r.code == 0, r.err
    record = out / "debian12-demo-x86_64.build.json"
    doc = json.loads(record.read_text())
    doc["package_cache"] = {"base": {"package_indexes": state}}
    assert_valid("build-record", doc)  # what the schema says of it, for other tools
    record.write_text(json.dumps(doc))
    return record


def _calls(bindir: Path) -> int:
    return len((bindir / "calls.jsonl").read_text().splitlines())


def test_rebuild_refuses_a_moved_mirror_before_building(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    trusted: Mirror,
) -> None:
    url = trusted.url  # type: ignore[attr-defined]
    record = _record_with_state(cli, tmp_path, _pin(url, trusted, "cd" * 32))
    r = cli("rebuild", record, "-o", tmp_path / "again")
    assert (r.code, r.out) == (25, "")
    assert r.err.splitlines() == [
        f"imagectl: error: the mirror is not in the state of the original build: {url} bookworm {INDEX} (sha256 "
        f"{_index_sha(trusted)[:12]}, the record's cdcdcdcdcdcd)",
        "hint: rebuild from a snapshot of the mirror as it was: imagectl rebuild … --mirror MIRROR SNAPSHOT "
        "(or --anyway, to build and list the packages that moved)",
    ]
    assert _calls(fake_repro_dib) == 1  # not built
    r = cli("rebuild", record, "-o", tmp_path / "again", "--mirror", "http://elsewhere/debian", url)
    assert (r.code, r.err.splitlines()[0]) == (
        3,
        f"imagectl: error: --mirror http://elsewhere/debian: not a mirror {record} was built from (it used {url})",
    )
    r = cli("rebuild", record, "-o", tmp_path / "again", "--mirror", url, "ftp://snapshot/debian")
    assert (r.code, r.err.splitlines()[0]) == (
        3,
        f"imagectl: error: --mirror {url} ftp://snapshot/debian: the snapshot must be an http(s) URL",
    )
    assert _calls(fake_repro_dib) == 1
    # --anyway builds against the mirror as it is (here the stand-in DIB gives the same bytes)
    r = cli("rebuild", record, "-o", tmp_path / "again", "--anyway")
    assert r.code == 0, r.err
    assert _calls(fake_repro_dib) == 2


def test_rebuild_through_a_snapshot_in_the_recorded_state_builds(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    trusted: Mirror,
) -> None:
    url = trusted.url  # type: ignore[attr-defined]
    record = _record_with_state(cli, tmp_path, _pin(ORIGINAL, trusted))
    r = cli("rebuild", record, "-o", tmp_path / "again", "--mirror", ORIGINAL, url)
    assert r.code == 0, r.err
    assert r.out.startswith(f"rebuilt {record}: ") and ", identical to the recorded " in r.out
    assert [p for _m, p, _r in trusted.srv.served.requests] == ["/debian/dists/bookworm/InRelease"]  # type: ignore[attr-defined]
    record_b = _record_with_state(cli, tmp_path / "b", _pin("http://deb.example.invalid/other", trusted))
    r = cli("rebuild", record_b, "-o", tmp_path / "again", "--mirror", ORIGINAL, url)
    assert r.code == 3 and "not a mirror" in r.err


def test_mirror_needs_a_recorded_mirror_state(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    assert cli("build", DEMO, *X86_HVM, "-o", out, "--reproducible", "--source-date-epoch", "1700000000").code == 0
    record = out / "debian12-demo-x86_64.build.json"
    r = cli("rebuild", record, "-o", tmp_path / "again", "--mirror", ORIGINAL, "http://snapshot/debian")
    assert (r.code, r.err.splitlines()[0]) == (
        3,
        f"imagectl: error: {record}: --mirror stands in for a Debian mirror behind imagectl's package cache, and "
        "its build record names no mirror state",
    )
    for bad in ({"x": "y"}, {f"{ORIGINAL} bookworm {INDEX}": "not a digest"}, {}, ["a list"]):
        doc = json.loads(record.read_text())
        doc["package_cache"] = {"base": {"package_indexes": bad}}
        assert not validator("build-record").is_valid(doc)  # the schema refuses it too
        record.write_text(json.dumps(doc))
        r = cli("rebuild", record, "-o", tmp_path / "again")
        assert (r.code, r.err) == (
            3,
            f"imagectl: error: {record}: its build record's package_cache.base.package_indexes is malformed\n",
        )
    assert _calls(fake_repro_dib) == 1  # nothing built


def test_build_pin_mirror_installs_from_a_records_state_held_in_the_package_cache(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    trusted: Mirror,
) -> None:
    """``build --pin-mirror RECORD``: a build (of the recipe, or of one extending it) installs from the mirror state
    an earlier build recorded. The state is checked before building, on the package cache's copy of each recorded
    InRelease when it holds one (the mirror is then not asked), else on the mirror's: exit 25 when neither has it."""
    url = trusted.url  # type: ignore[attr-defined]
    release = (trusted.root / "debian/dists/bookworm/InRelease").read_bytes()
    for n in (2, 3):  # the stand-in DIB's disk for its Nth call
        (fake_repro_dib / f"disk-{n}.raw").write_bytes((fake_repro_dib / "disk-0.raw").read_bytes())
    record = _record_with_state(cli, tmp_path, _pin(url, trusted))
    doc = json.loads(record.read_text())
    doc["package_cache"]["base"]["mirror_state"] = {f"{url} bookworm": hashlib.sha256(release).hexdigest()}
    assert_valid("build-record", doc)
    record.write_text(json.dumps(doc))
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "b1", "--pin-mirror", record)  # the mirror still has it
    assert r.code == 0, r.err
    assert f"--pin-mirror {record}: 1 suite in the recorded state\n" in r.err
    recorded = _index_sha(trusted)
    trusted.publish({**trusted.debs, DEB: b"a newer tiny\n"})  # the mirror moved on
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "b2", "--pin-mirror", record)
    assert (r.code, r.err.splitlines()[0]) == (
        25,
        f"imagectl: error: the mirror is not in the state of the original build: {url} bookworm {INDEX} (sha256 "
        f"{_index_sha(trusted)[:12]}, the record's {recorded[:12]})",
    )
    assert _calls(fake_repro_dib) == 2  # the record's build and b1: b2 did not start
    PackageCache(tmp_path / "cache", "debian").put(release)  # the cache holds the recorded InRelease
    asked = len(trusted.srv.served.requests)  # type: ignore[attr-defined]
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "b3", "--pin-mirror", record, "--rebuild")
    assert r.code == 0, r.err
    assert "1 suite in the recorded state (1 from imagectl's package cache, as the original build signed them)" in r.err
    assert len(trusted.srv.served.requests) == asked  # type: ignore[attr-defined]
    assert _calls(fake_repro_dib) == 3
    # what --pin-mirror refuses
    plain = tmp_path / "plain"
    assert cli("build", DEMO, *X86_HVM, "-o", plain).code == 0
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "b4", "--pin-mirror", plain / "debian12-demo-x86_64.build.json")
    assert (r.code, r.err) == (
        3,
        f"imagectl: error: --pin-mirror {plain / 'debian12-demo-x86_64.build.json'}: its build record names no Debian "
        "mirror state (an SLC build, or one made without imagectl's package cache)\n",
    )
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "b4", "--pin-mirror", tmp_path / "nothing.build.json")
    assert r.code == 14 and r.err.startswith("imagectl: error: ") and len(r.err.splitlines()) <= 2
    slc = REPO / "recipes" / "slc" / "slc6-worker.yaml"
    r = cli("build", slc, "--arch", "x86_64", "-o", tmp_path / "b5", "--pin-mirror", record)
    assert (r.code, r.err) == (
        3,
        f"imagectl: error: --pin-mirror: {slc} builds slc, and only Debian builds record a mirror state\n",
    )
    assert _calls(fake_repro_dib) == 3  # nothing built (plain is the build cache's copy of the record's build)


def test_build_pin_mirror_takes_a_published_images_signed_record(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    trusted: Mirror,
    catalogue: Catalogue,
) -> None:
    """``build --pin-mirror NAME:VERSION`` (or ``NAME@CHANNEL``): the mirror state of a released image, read from
    its signed build record in the catalogue (verified as a pull verifies), so a variant of a release needs no
    record file at hand. Refused before building: an image the catalogue lacks (exit 4), a mirror that moved (25)."""
    url = trusted.url  # type: ignore[attr-defined]
    for n in (1, 2):  # the stand-in DIB's disk for its Nth call
        (fake_repro_dib / f"disk-{n}.raw").write_bytes((fake_repro_dib / "disk-0.raw").read_bytes())
    record = _record_with_state(cli, tmp_path, _pin(url, trusted))
    r = cli("publish", "--from-build", record.parent, *catalogue.args(), "--version", "1.0", "--channel", "stable")
    assert r.code == 0, r.err
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root)
    for n, ref in enumerate(("debian12-demo:1.0", "debian12-demo@stable")):
        r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / f"p{n}", "--pin-mirror", ref, *where, "--rebuild")
        assert r.code == 0, r.err
        assert f"--pin-mirror {ref}: 1 suite in the recorded state\n" in r.err
    assert _calls(fake_repro_dib) == 3
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "x", "--pin-mirror", "debian12-demo:9.9", *where)
    assert r.code == 4 and r.err.startswith("imagectl: error: ") and "9.9" in r.err, r.err
    recorded = _index_sha(trusted)
    trusted.publish({**trusted.debs, DEB: b"a newer tiny\n"})  # the mirror moved on
    r = cli("build", DEMO, *X86_HVM, "-o", tmp_path / "y", "--pin-mirror", "debian12-demo@stable", *where)
    assert (r.code, r.err.splitlines()[0]) == (
        25,
        f"imagectl: error: the mirror is not in the state of the original build: {url} bookworm {INDEX} (sha256 "
        f"{_index_sha(trusted)[:12]}, the record's {recorded[:12]})",
    )
    assert _calls(fake_repro_dib) == 3  # neither refused build started


def test_pin_mirror_takes_a_record_for_each_arch_built(
    fake_repro_dib: Path,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    trusted: Mirror,
    catalogue: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Packages index is per arch, so a build of two arches pinned to one arch's record would meet the other's
    index as a "moved mirror": refused before building instead, naming the arch no record pins (a record file:
    exit 3; a published image without that arch: exit 4). The records of several arches are merged, and refused
    when they name one suite in two states."""
    from imagectl import rebuild
    from imagectl.errors import InvalidInputError
    from imagectl.records import load_file

    url = trusted.url  # type: ignore[attr-defined]
    x86 = _record_with_state(cli, tmp_path, _pin(url, trusted))
    both = ("--arch", "x86_64", "--arch", "i386", "--hypervisor", "hvm")
    r = cli("build", DEMO, *both, "-o", tmp_path / "m", "--pin-mirror", x86)
    assert (r.code, r.err.splitlines()[0]) == (
        3,
        f"imagectl: error: --pin-mirror {x86}: its build record pins the mirror state of x86_64, and this build "
        "makes i386 too (Debian's package indexes are per arch)",
    )
    assert "build only --arch x86_64" in r.err
    r = cli("publish", "--from-build", x86.parent, *catalogue.args(), "--version", "1.0")
    assert r.code == 0, r.err
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root)
    r = cli("build", DEMO, *both, "-o", tmp_path / "n", "--pin-mirror", "debian12-demo:1.0", *where)
    assert r.code == 4 and r.err.startswith("imagectl: error: ") and "i386" in r.err, r.err
    assert _calls(fake_repro_dib) == 1  # the record's build only

    i386_key = f"{url} bookworm main/binary-i386/Packages.xz"
    suite = f"{url} bookworm"

    def record(arch: str, indexes: dict[str, str], inrelease: str) -> Path:
        doc = json.loads(x86.read_text())
        doc["target"]["arch"] = arch
        doc["package_cache"]["base"] = {"package_indexes": indexes, "mirror_state": {suite: inrelease}}
        assert_valid("build-record", doc)
        path = tmp_path / f"{arch}-{inrelease[:2]}.build.json"
        path.write_text(json.dumps(doc))
        return path

    checked: list[tuple[dict[str, str], dict[str, str] | None]] = []
    monkeypatch.setattr(rebuild, "_check_state", lambda state, rel, _f, _c: checked.append((state, rel)) or "ok")
    a, b = record("x86_64", _pin(url, trusted), "cd" * 32), record("i386", {i386_key: "ab" * 32}, "cd" * 32)
    state, releases, _ = rebuild.pinned_mirror([load_file(a), load_file(b)], "R", ["x86_64", "i386"], tmp_path)
    assert state == {**_pin(url, trusted), i386_key: "ab" * 32} and releases == {suite: "cd" * 32}
    assert checked == [(state, releases)]
    other = record("i386", {i386_key: "ab" * 32}, "ef" * 32)
    with pytest.raises(InvalidInputError, match=f"were built from different states of {suite}$"):
        rebuild.pinned_mirror([load_file(a), load_file(other)], "R", ["x86_64", "i386"], tmp_path)


# -- the element: apt in the chroot accepts the pinned InRelease for the build only -------------------------------


@pytest.mark.root
def test_the_element_lets_apt_accept_pinned_releases_for_the_build_only(tmp_path: Path) -> None:
    require_tools("sudo")
    element = elements_dir() / "imagectl-package-cache"
    target = tmp_path / "root"
    (target / "etc/apt/apt.conf.d").mkdir(parents=True)
    conf = target / "etc/apt/apt.conf.d/60imagectl-pinned-mirror"

    def run(script: str, **env: str) -> str:
        p = subprocess.run(
            ["bash", str(element / script)],
            env={**os.environ, "TARGET_ROOT": str(target), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return p.stdout

    assert run("root.d/50-imagectl-package-cache-pinned") == "" and not conf.exists()  # an ordinary build
    out = run("root.d/50-imagectl-package-cache-pinned", IMAGECTL_PKGCACHE_PINNED="1")
    assert conf.read_text() == 'Acquire::Check-Valid-Until "false";\n'
    assert out.startswith("imagectl-package-cache: pinned to the original build's mirror state (Valid-Until not ")
    run("cleanup.d/50-imagectl-package-cache-pinned")
    assert not conf.exists() and os.listdir(target / "etc/apt/apt.conf.d") == []
    saved = (element / "root.d/76-imagectl-package-cache").read_text()
    assert "--exclude=./etc/apt/apt.conf.d/60imagectl-pinned-mirror" in saved  # never in a cached base system
