"""A Debian mirror that publishes a new state while a build runs, or between a build and its rebuild.

Debian's security suite publishes any hour; a CI run that built the demo and rebuilt it twenty minutes later met
one (the rebuild stopped with exit 25, "the mirror is not in the state of the original build"). Two things
answer it. During a build, the package-cache proxy answers apt's and debootstrap's requests for a suite's
InRelease and Packages.xz with the bytes imagectl verified when the build began, so what is installed is the state
the record names. And the package cache keeps those signed indexes under their SHA-256, so a pinned rebuild (and
``build --check-reproducible``'s second build) takes each suite's recorded InRelease from there, verified against
the archive keyring again, instead of asking a mirror that moved. The mirror and its key are the test's own
(tests/test_build_cache.py); the real builds that use all this are in tests/test_build_integration.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

from imagectl.errors import DownloadError
from imagectl.imaging.aptproxy import DebianPackageCache
from imagectl.imaging.debindex import IndexError_, MirrorMovedError, check_pinned
from imagectl.imaging.pkgcache import PackageCache
from tests.test_build_cache import DEB, OTHER, Mirror, _cache, _fetch, _prepare, mirror, signing_key  # noqa: F401

pytestmark = pytest.mark.http

INDEX = "main/binary-amd64/Packages.xz"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dists(m: Mirror) -> Path:
    return m.root / "debian" / "dists" / "bookworm"


def _state(m: Mirror) -> tuple[bytes, bytes]:
    """The mirror's InRelease and Packages.xz bytes now."""
    return (_dists(m) / "InRelease").read_bytes(), (_dists(m) / INDEX).read_bytes()


def _asked(m: Mirror, suffix: str) -> int:
    return sum(p.endswith(suffix) for _m, p, _r in m.srv.served.requests)  # type: ignore[attr-defined]


def _move(m: Mirror) -> None:
    """The mirror publishes a new state: tiny gets new bytes (a security update), under a new signed index."""
    m.publish({DEB: b"a patched tiny\n" * 90, OTHER: m.debs[OTHER]})


def _pinned(tmp_path: Path, m: Mirror, record: dict, *, releases: bool = True) -> DebianPackageCache:
    """A rebuild's package cache (same cache directory as ``_cache``'s), pinned to ``record``'s mirror state."""
    base = record["base"]
    env = {
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": m.url,  # type: ignore[attr-defined]
        "DIB_APT_SOURCES_CONF": f"default:deb {m.url} bookworm main",  # type: ignore[attr-defined]
    }
    pc = DebianPackageCache(
        tmp_path / "cache",
        tmp_path / "cache" / "work" / "again",
        env,
        "amd64",
        "3.43.0",
        pinned=base["package_indexes"],
        pinned_releases=base["mirror_state"] if releases else None,
    )
    pc.keyring = m.keyring(tmp_path / "archive.gpg")
    return pc


def test_apt_gets_the_indexes_imagectl_verified_though_the_mirror_moved_mid_build(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    release, packages = _state(mirror)
    pc = _cache(tmp_path, mirror)
    with pc.serving() as env:
        assert _prepare(env).status_code == 200
        asked = _asked(mirror, "/InRelease")
        _move(mirror)  # between imagectl's check and apt's update
        proxy, url = env["http_proxy"], mirror.url  # type: ignore[attr-defined]
        got = _fetch(proxy, f"{url}/dists/bookworm/InRelease")
        assert (got.status_code, got.content) == (200, release)
        by_hash = f"{url}/dists/bookworm/main/binary-amd64/by-hash/SHA256/{_sha(packages)}"
        for where in (f"{url}/dists/bookworm/{INDEX}", by_hash):  # debootstrap asks the first, apt the second
            got = _fetch(proxy, where)
            assert (got.status_code, got.content) == (200, packages)
        head = requests.Session()
        head.trust_env = False
        got = head.head(f"{url}/dists/bookworm/InRelease", proxies={"http": proxy}, timeout=30)
        assert (got.status_code, got.headers["Content-Length"]) == (200, str(len(release)))
        # the package of the state apt was given comes from the mirror while it still has those bytes (OTHER)
        assert _fetch(proxy, f"{url}/{OTHER}").content == mirror.debs[OTHER]
        # a file no index names goes to the mirror as before
        assert _fetch(proxy, f"{url}/dists/bookworm/Release").status_code == 200
    assert _asked(mirror, "/InRelease") == asked  # the mirror's new InRelease never reached apt
    assert _asked(mirror, "/Packages.xz") == 1  # prepare()'s one download
    record = pc.finish(True)
    assert record is not None
    assert record["indexes_served"] == 4 and record["passed_through"] == 1 and record["releases_from_cache"] == []
    assert record["base"]["mirror_state"] == {f"{mirror.url} bookworm": _sha(release)}  # type: ignore[attr-defined]
    assert record["base"]["package_indexes"] == {f"{mirror.url} bookworm {INDEX}": _sha(packages)}  # type: ignore[attr-defined]
    held = PackageCache(tmp_path / "cache", "debian")
    assert held.read(_sha(release), 1 << 20) == release and held.read(_sha(packages), 1 << 20) == packages


def test_a_pinned_rebuild_takes_the_recorded_inrelease_from_the_cache_when_the_mirror_moved(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    release, packages = _state(mirror)
    old_tiny = mirror.debs[DEB]
    first = _cache(tmp_path, mirror)
    with first.serving() as env:
        assert _prepare(env).status_code == 200
        assert _fetch(env["http_proxy"], f"{mirror.url}/{DEB}").content == old_tiny  # type: ignore[attr-defined]
    record = first.finish(True)
    assert record is not None
    _move(mirror)
    # without the recorded InRelease, the rebuild meets the mirror as it is now and stops (exit 25)
    with _pinned(tmp_path, mirror, record, releases=False).serving() as env:
        got = _prepare(env)
    assert got.status_code == 500 and "not in the state of the original build" in got.text
    asked = _asked(mirror, "/InRelease")
    again = _pinned(tmp_path, mirror, record)
    with again.serving() as env:
        got = _prepare(env)
        assert got.status_code == 200, got.text
        proxy, url = env["http_proxy"], mirror.url  # type: ignore[attr-defined]
        assert _fetch(proxy, f"{url}/dists/bookworm/InRelease").content == release
        assert _fetch(proxy, f"{url}/dists/bookworm/{INDEX}").content == packages
        assert _fetch(proxy, f"{url}/{DEB}").content == old_tiny  # the original's bytes, from the package cache
    assert _asked(mirror, "/InRelease") == asked  # the mirror was not asked
    rebuilt = again.finish(True)
    assert rebuilt is not None
    assert rebuilt["releases_from_cache"] == [f"{mirror.url} bookworm"]  # type: ignore[attr-defined]
    assert rebuilt["base"]["mirror_state"] == record["base"]["mirror_state"]
    assert rebuilt["base"]["key"] == record["base"]["key"]  # the same state: the same base system
    assert (rebuilt["hits"], rebuilt["downloaded"]) == (1, 0)


def test_check_pinned_reads_the_held_inrelease_without_the_mirror(
    tmp_path: Path,
    mirror: Mirror,  # noqa: F811
) -> None:
    """The check before a rebuild: a suite whose recorded InRelease the cache holds is checked on it, and an
    unreachable host is never asked; a damaged, linked or untrusted copy is not used."""
    release, packages = _state(mirror)
    store = PackageCache(tmp_path / "cache", "debian")
    store.put(release)
    gone = "http://deb.example.invalid/debian"  # never resolvable: any request to it fails
    pinned, releases = {f"{gone} bookworm {INDEX}": _sha(packages)}, {f"{gone} bookworm": _sha(release)}
    keyring = mirror.keyring(tmp_path / "archive.gpg")
    with requests.Session() as s:
        s.trust_env = False
        assert check_pinned(s, pinned, None, keyring=keyring, store=store, pinned_releases=releases) == (1, 1)
        with pytest.raises(IndexError_, match=r"InRelease \(imagectl's package cache\): no valid signature"):
            check_pinned(s, pinned, None, keyring=tmp_path / "none.gpg", store=store, pinned_releases=releases)
        with pytest.raises(MirrorMovedError):  # the held copy signs another index than the record's
            check_pinned(
                s, {f"{gone} bookworm {INDEX}": "ab" * 32}, None, keyring=keyring, store=store, pinned_releases=releases
            )
        held = store.path(_sha(release))
        os.chmod(held, 0o644)
        held.write_bytes(release.replace(b"Test", b"Tost", 1))  # damaged in the cache
        with pytest.raises(DownloadError, match=r"deb\.example\.invalid"):  # not used: the (gone) mirror is asked
            check_pinned(s, pinned, None, keyring=keyring, store=store, pinned_releases=releases)
    assert not held.exists()  # and the damaged copy was removed


def test_the_cache_reads_a_held_index_without_following_links_or_reading_past_a_bound(tmp_path: Path) -> None:
    store = PackageCache(tmp_path / "cache", "debian")
    data = b"Origin: Test\n" * 100
    store.put(data)
    store.put(data)  # kept once
    digest = _sha(data)
    assert store.read(digest, len(data)) == data
    assert store.read(digest, len(data) - 1) is None  # larger than the caller's bound: not read whole
    assert store.read("0" * 64, 1 << 20) is None
    outside = tmp_path / "outside"
    outside.write_bytes(data)
    path = store.path(digest)
    path.unlink()
    path.symlink_to(outside)
    assert store.read(digest, 1 << 20) is None  # a link is not followed, even to the right bytes
    path.unlink()
    os.mkfifo(path)
    assert store.read(digest, 1 << 20) is None  # a FIFO is not waited on
    path.unlink()
    assert sorted(p.name for p in store.objects.iterdir()) == []
