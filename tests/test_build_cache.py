"""The package cache builds share: verified against the mirror's signed indexes, never trusted by name.

A Debian mirror made by the test (a pool file, a Packages.xz, an InRelease clearsigned with a throwaway key that
plays the archive key) is served on 127.0.0.1; imagectl's package-cache proxy sits between it and a client that
fetches as apt and debootstrap do (``GET http://MIRROR/pool/...`` through ``http_proxy``). The real build that
shows a rebuild downloading only the added package is in tests/test_build_integration.py.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
import requests

from imagectl.imaging.aptproxy import DebianPackageCache
from imagectl.imaging.debindex import IndexError_, parse_release, suites
from imagectl.imaging.pkgcache import BaseCache, PackageCache
from tests.hostile_yum import GpgKey, need_tools
from tests.httpserver import TestHTTPServer

DEB = "pool/main/t/tiny/tiny_1.0_all.deb"
OTHER = "pool/main/o/other/other_3+b1~x_amd64.deb"  # apt asks for other_3%2bb1%7ex_amd64.deb


class Mirror:
    """A signed one-suite Debian mirror under ``root/debian`` (bookworm, main, amd64)."""

    def __init__(self, root: Path, key: GpgKey) -> None:
        self.root, self.key = root, key
        self.debs: dict[str, bytes] = {}

    def publish(self, debs: dict[str, bytes], *, extra_unsigned: str = "", fields: str = "") -> None:
        """Write the pool files and a Packages.xz listing them; sign a new InRelease for it (with ``fields``, lines
        such as ``Valid-Until: …``, added to the Release text)."""
        self.debs = debs
        stanzas = []
        for path, data in debs.items():
            name, version, arch = Path(path).stem.split("_")
            version = f"2:{version}" if name == "other" else version  # an epoch: in the version, not the file name
            (self.root / "debian" / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / "debian" / path).write_bytes(data)
            stanzas.append(
                f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nFilename: {path}\n"
                f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        packages = lzma.compress("\n".join(stanzas).encode())
        dists = self.root / "debian" / "dists" / "bookworm"
        (dists / "main" / "binary-amd64").mkdir(parents=True, exist_ok=True)
        (dists / "main" / "binary-amd64" / "Packages.xz").write_bytes(packages)
        release = (
            f"Origin: Test\nSuite: stable\nCodename: bookworm\nDate: Tue, 01 Dec 2026 10:00:00 UTC\n{fields}SHA256:\n"
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages.xz\n"
        )
        (dists / "Release").write_text(release)
        gpg = ["gpg", "--homedir", str(self.key.home), "--batch", "--yes", "--local-user", self.key.uid]
        subprocess.run([*gpg, "--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release")], check=True)
        if extra_unsigned:
            with (dists / "InRelease").open("a") as f:
                f.write(extra_unsigned)

    def keyring(self, path: Path) -> Path:
        gpg = ["gpg", "--homedir", str(self.key.home), "--batch", "--yes", "--output", str(path), "--export"]
        subprocess.run([*gpg, self.key.uid], check=True)
        return path


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory):
    need_tools("gpg", "gpgv")
    key = GpgKey.generate(tmp_path_factory.mktemp("gnupg") / "home", "Test Archive <archive@example.invalid>")
    yield key
    key.close()


@pytest.fixture
def mirror(tmp_path: Path, signing_key: GpgKey):
    m = Mirror(tmp_path / "mirror", signing_key)
    m.publish({DEB: b"tiny deb bytes\n" * 100, OTHER: os.urandom(3000)})
    with TestHTTPServer(tmp_path / "mirror") as srv:
        m.url = srv.url.rstrip("/") + "/debian"  # type: ignore[attr-defined]
        m.srv = srv  # type: ignore[attr-defined]
        yield m


def _cache(tmp_path: Path, mirror: Mirror, name: str = "work") -> DebianPackageCache:
    env = {
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": mirror.url,  # type: ignore[attr-defined]
        "DIB_APT_SOURCES_CONF": f"default:deb {mirror.url} bookworm main",  # type: ignore[attr-defined]
    }
    pc = DebianPackageCache(tmp_path / "cache", tmp_path / "cache" / "work" / name, env, "amd64", "3.43.0")
    pc.keyring = mirror.keyring(tmp_path / "archive.gpg")
    return pc


def _fetch(proxy: str, url: str) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.get(url, proxies={"http": proxy}, timeout=30)


def _deb_requests(mirror: Mirror) -> list[str]:
    return [p for _m, p, _r in mirror.srv.served.requests if p.endswith(".deb")]  # type: ignore[attr-defined]


def _prepare(env: dict[str, str]) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.get(env["IMAGECTL_PKGCACHE_CONTROL"] + "/prepare", timeout=30)


pytestmark = pytest.mark.http


def test_second_fetch_is_served_from_the_cache(tmp_path: Path, mirror: Mirror) -> None:
    url = f"{mirror.url}/{DEB}"  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror)
    with pc.serving() as env:
        assert _prepare(env).status_code == 200
        first, second = _fetch(env["http_proxy"], url), _fetch(env["http_proxy"], url)
    assert first.content == second.content == mirror.debs[DEB]
    assert _deb_requests(mirror) == ["/debian/" + DEB]  # the mirror was asked once
    record = pc.finish(True)
    assert record is not None
    assert (record["hits"], record["downloaded_packages"]) == (1, ["tiny_1.0_all.deb"])
    assert record["base"]["mirror_state"] == {
        f"{mirror.url} bookworm": hashlib.sha256(  # type: ignore[attr-defined]
            (mirror.root / "debian/dists/bookworm/InRelease").read_bytes()
        ).hexdigest()
    }
    stored = PackageCache(tmp_path / "cache", "debian").path(hashlib.sha256(mirror.debs[DEB]).hexdigest())
    assert stored.read_bytes() == mirror.debs[DEB] and stored.stat().st_mode & 0o777 == 0o444


def test_a_tampered_cached_package_is_not_used_and_is_removed(tmp_path: Path, mirror: Mirror) -> None:
    url = f"{mirror.url}/{DEB}"  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror, "one")
    with pc.serving() as env:
        _prepare(env)
        _fetch(env["http_proxy"], url)
    stored = pc.cache.path(hashlib.sha256(mirror.debs[DEB]).hexdigest())
    os.chmod(stored, 0o644)
    stored.write_bytes(b"evil" + mirror.debs[DEB][4:])  # same size, same name, other bytes
    mirror.srv.clear()  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror, "two")
    with pc.serving() as env:
        _prepare(env)
        got = _fetch(env["http_proxy"], url)
    assert got.content == mirror.debs[DEB]  # the real bytes, from the mirror again
    assert _deb_requests(mirror) == ["/debian/" + DEB]
    record = pc.finish(True)
    assert record is not None and (record["hits"], record["removed_damaged"], record["downloaded"]) == (0, 1, 1)
    assert stored.read_bytes() == mirror.debs[DEB]  # replaced by the verified download


def test_a_package_whose_index_entry_vanished_is_not_served_from_the_cache(tmp_path: Path, mirror: Mirror) -> None:
    url = f"{mirror.url}/{DEB}"  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror, "one")
    with pc.serving() as env:
        _prepare(env)
        _fetch(env["http_proxy"], url)
    mirror.publish({OTHER: mirror.debs[OTHER]})  # a new mirror state without tiny (its pool file still there)
    mirror.srv.clear()  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror, "two")
    with pc.serving() as env:
        _prepare(env)
        _fetch(env["http_proxy"], url)
    assert _deb_requests(mirror) == ["/debian/" + DEB]  # passed through to the mirror, not answered from the cache
    record = pc.finish(True)
    assert record is not None and (record["hits"], record["downloaded"], record["passed_through"]) == (0, 0, 1)


def test_bytes_that_do_not_match_the_signed_index_are_refused_and_not_stored(tmp_path: Path, mirror: Mirror) -> None:
    (mirror.root / "debian" / DEB).write_bytes(b"x" * len(mirror.debs[DEB]))  # the mirror's file changed, unsigned
    pc = _cache(tmp_path, mirror)
    with pc.serving() as env:
        _prepare(env)
        got = _fetch(env["http_proxy"], f"{mirror.url}/{DEB}")  # type: ignore[attr-defined]
    assert got.status_code == 502 and b"do not match its signed index" in got.content
    record = pc.finish(True)
    assert record is not None and record["rejected_packages"] == ["tiny_1.0_all.deb"] and record["downloaded"] == 0
    assert not pc.cache.path(hashlib.sha256(mirror.debs[DEB]).hexdigest()).exists()
    dists = mirror.root / "debian" / "dists" / "bookworm"
    held = [
        hashlib.sha256((dists / f).read_bytes()).hexdigest() for f in ("InRelease", "main/binary-amd64/Packages.xz")
    ]
    # no temp file left either: only the signed indexes prepare() verified and keeps
    assert sorted(p.name for p in pc.cache.objects.iterdir()) == sorted(held)


def test_an_index_not_signed_by_the_archive_key_stops_the_build(tmp_path: Path, mirror: Mirror) -> None:
    other = GpgKey.generate(tmp_path / "other-gnupg", "Mallory <m@example.invalid>")
    try:
        pc = _cache(tmp_path, mirror)
        pc.keyring = Mirror(tmp_path, other).keyring(tmp_path / "other.gpg")
    finally:
        other.close()
    with pc.serving() as env:
        got = _prepare(env)  # what the element's root.d script sees, and prints into the build log
    assert got.status_code == 500
    assert got.text.startswith("imagectl: error: ") and "no valid signature by a key in" in got.text
    assert pc.finish(False) is None  # nothing verified: nothing recorded, nothing served from the cache


def test_only_the_signed_text_of_inrelease_is_read(tmp_path: Path, mirror: Mirror) -> None:
    fake = hashlib.sha256(b"planted").hexdigest()
    mirror.publish(dict(mirror.debs), extra_unsigned=f"SHA256:\n {fake} 7 main/binary-amd64/Packages.xz\n")
    pc = _cache(tmp_path, mirror)
    with pc.serving() as env:
        assert _prepare(env).status_code == 200
    assert pc.index is not None and f"{mirror.url}/{DEB}" in pc.index.files  # type: ignore[attr-defined]


def test_release_past_valid_until_is_refused() -> None:
    with pytest.raises(IndexError_, match="expired"):
        parse_release("Suite: stable\nValid-Until: Mon, 01 Jan 2024 00:00:00 UTC\nSHA256:\n")


def test_suites_follow_the_build_environment() -> None:
    env = {
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": "http://m/debian",
        "DIB_DEBIAN_SECURITY_MIRROR": "http://m/s/",
    }
    assert [(s.mirror, s.suite) for s in suites(env)] == [
        ("http://m/debian", "bookworm"),
        ("http://m/debian", "bookworm-updates"),
        ("http://m/s", "bookworm-security"),
    ]
    i386 = {
        **env,
        "DIB_APT_SOURCES_CONF": "default:deb http://m/debian bookworm main\n"
        "updates:deb http://m/debian bookworm-updates main",
    }
    assert [s.suite for s in suites(i386)] == ["bookworm", "bookworm-updates"]


def _add(args: tuple[str, str, bytes]) -> None:
    cache_dir, sha, data = args
    cache = PackageCache(Path(cache_dir), "debian")
    with cache.adding(sha, len(data)) as (f, h):
        for i in range(0, len(data), 4096):  # slowly, so that writers overlap
            f.write(data[i : i + 4096])
            h.update(data[i : i + 4096])
    cache.get(sha, len(data))


def test_concurrent_builds_do_not_corrupt_the_cache(tmp_path: Path) -> None:
    good = os.urandom(1 << 20)
    sha = hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[12345] ^= 1
    jobs = [(str(tmp_path), sha, good if i % 3 else bytes(bad)) for i in range(12)]  # a third write wrong bytes
    # spawn, not fork: a forked copy of this multi-threaded pytest process can inherit a lock another thread held
    # (and a SIGTERM handler an in-process CLI call left behind): one such pool hung a CI run. Bounded in time.
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map_async(_add, jobs).get(timeout=300)
    cache = PackageCache(tmp_path, "debian")
    assert [p.name for p in cache.objects.iterdir()] == [sha]  # one entry, no temp files
    assert cache.get(sha, len(good)) is not None and cache.path(sha).read_bytes() == good


def test_base_cache_verifies_and_a_new_mirror_state_replaces_the_old(tmp_path: Path) -> None:
    base = BaseCache(tmp_path, "debian")
    meta = {"release": "bookworm", "arch": "amd64", "mirror": "http://m/debian"}
    for key, data in (("k1", b"base one"), ("k2", b"base two")):
        tar = tmp_path / f"{key}.tar.gz"
        tar.write_bytes(data)
        base.store(key, tar, {**meta, "inrelease_sha256": key})
    assert base.find("k1") is None and not (base.root / "k1").exists()  # the older mirror state is gone
    found = base.find("k2")
    assert found is not None and found.read_bytes() == b"base two"
    assert json.loads((base.root / "k2" / "base.json").read_text())["sha256"] == hashlib.sha256(b"base two").hexdigest()
    found.write_bytes(b"base 2wo")  # damaged in place
    assert base.find("k2") is None and not (base.root / "k2").exists()


def test_apt_style_quoted_urls_are_served_from_the_cache(tmp_path: Path, mirror: Mirror) -> None:
    quoted = f"{mirror.url}/{OTHER.replace('+', '%2b').replace('~', '%7e')}"  # type: ignore[attr-defined]
    pc = _cache(tmp_path, mirror)
    with pc.serving() as env:
        _prepare(env)
        assert _fetch(env["http_proxy"], quoted).content == _fetch(env["http_proxy"], quoted).content
    record = pc.finish(True)
    assert record is not None and (record["hits"], record["downloaded_packages"]) == (1, ["other_2%3a3+b1~x_amd64.deb"])


def test_the_proxy_forwards_only_to_the_builds_mirrors(tmp_path: Path, mirror: Mirror) -> None:
    """Any local user can reach the proxy's port while a build runs: it is no way out to other hosts."""
    pc = _cache(tmp_path, mirror)
    assert "127.0.0.1" in pc.hosts and "deb.debian.org" in pc.hosts
    with TestHTTPServer(tmp_path) as other, pc.serving() as env:
        (tmp_path / "secret").write_text("internal only")
        elsewhere = other.url.replace("127.0.0.1", "localhost") + "secret"
        r = _fetch(env["http_proxy"], elsewhere)
        assert r.status_code == 403 and b"not one of this build's mirrors" in r.content
        assert other.served.requests == []
        r = _fetch(env["http_proxy"], "http://169.254.169.254/latest/meta-data/")
        assert r.status_code == 403
        assert _fetch(env["http_proxy"], f"{mirror.url}/{DEB}").content == mirror.debs[DEB]  # type: ignore[attr-defined]
