"""The Debian package cache during a build: an HTTP proxy on 127.0.0.1 that debootstrap and apt fetch through.

diskimage-builder supports building through an HTTP proxy (``http_proxy`` goes to debootstrap; its ``dpkg``
element writes ``Acquire::http::Proxy`` into the chroot and removes it before the image is finished), so the cache
needs no bind mount, no device-mapper and no change to the image: every ``GET`` of a pool file the mirror's signed
index lists is answered from :class:`~imagectl.imaging.pkgcache.PackageCache` when a file with exactly that SHA-256
and size is there, else downloaded, checked against the index as it streams and stored. Bytes that do not match
are refused (HTTP 502) and not stored. A suite's ``InRelease``, and each ``Packages.xz`` it signs (plain or
by-hash), is answered with the very bytes imagectl verified when the build began (kept in the package cache
under their SHA-256), so apt and debootstrap install from the state the build record names even when the mirror
publishes a new one mid-build (Debian's security suite does, any hour). Anything else (files no signed index
lists, other indexes) is passed through unchanged and not cached; other hosts are refused.

Why a proxy rather than seeding ``/var/cache/apt/archives``: DIB's
``debian-minimal`` runs ``apt-get clean`` right before its first install, and debootstrap runs before any chroot
hook; a proxy sees every download of both, and counts them.

The base system is cached too: our ``imagectl-package-cache`` element asks the proxy (``GET /TOKEN/prepare``, in
root.d before debootstrap) to fetch and verify the indexes and, when a base tarball for (release, arch, mirror,
every suite's signed InRelease) is cached, to put it where DIB's debootstrap element reuses it; after
debian-minimal's base install (root.d/75) the element saves the base of a build that did not reuse one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imagectl.errors import ImagectlError
from imagectl.http import make_session
from imagectl.imaging.debindex import DEFAULT_KEYRING, DebianIndex, fetch_url, state_key, suites
from imagectl.imaging.pkgcache import BaseCache, PackageCache
from imagectl.runner import tool_version
from imagectl.urls import redact

__all__ = ["CacheStats", "DebianPackageCache"]

_PASS_HEADERS = ("Content-Type", "Content-Length", "Last-Modified", "ETag", "Content-Encoding")
_ASK_HEADERS = ("If-Modified-Since", "If-None-Match", "Cache-Control", "Pragma")


@dataclass
class CacheStats:
    hits: int = 0  # package files served from the cache
    downloaded: list[str] = field(default_factory=list)  # apt names of package files fetched and stored
    rejected: list[str] = field(default_factory=list)  # fetched bytes that did not match the signed index
    indexes: int = 0  # InRelease and Packages.xz requests answered with the verified copies prepare() holds
    passed: int = 0  # other requests (files no signed index lists, indexes not held), not cached


DEFAULT_MIRROR_HOSTS = frozenset({"deb.debian.org", "security.debian.org"})  # debian-minimal's defaults


def mirror_hosts(env: dict[str, str]) -> frozenset[str]:
    """The hosts the proxy forwards to: those of every http(s) URL in the build's environment (the mirror
    settings), and DIB's default Debian mirrors."""
    found = {
        (urllib.parse.urlsplit(url).hostname or "").lower()
        for value in env.values()
        for url in re.findall(r"https?://[^\s\"']+", value)
    }
    return frozenset(found - {""}) | DEFAULT_MIRROR_HOSTS


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the build log has apt's and debootstrap's own lines

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        if self.path == f"/{owner.token}/prepare":
            try:
                self._reply(200, owner.prepare().encode())
            except ImagectlError as e:
                self._reply(500, f"imagectl: error: {e.message}\n".encode())
            return
        if not self.path.startswith("http://"):
            self._reply(400, b"imagectl package cache: proxy requests only\n")
            return
        if (urllib.parse.urlsplit(self.path).hostname or "").lower() not in owner.hosts:
            # Only the build's own mirrors: any local user can reach this port while a build runs, and it must
            # not be a way out to other hosts (or to services only root's network position can reach).
            self._reply(403, b"imagectl package cache: not one of this build's mirrors\n")
            return
        # apt quotes '+', '~' and ':' in the URLs it asks for (debootstrap's wget does not); pool names have no '%'
        url = re.sub(r"(?<!:)//+", "/", urllib.parse.unquote(self.path))
        index = owner.index
        if index is not None and self._verified_index(index, url, head):
            return
        entry = index.lookup(url) if index else None
        if entry is None or head:
            self._forward(head)
            return
        sha256, size, name = entry
        path = owner.cache.get(sha256, size)
        if path is not None:
            with owner.lock:
                owner.stats.hits += 1
        else:
            path = self._download(url, sha256, size, name)
            if path is None:
                return
        with path.open("rb") as f:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.debian.binary-package")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _verified_index(self, index: DebianIndex, url: str, head: bool) -> bool:
        """Answer a request for a suite's InRelease, or for a Packages.xz it signs, with the bytes prepare()
        verified (the package cache keeps each Packages.xz under its SHA-256), so apt and debootstrap see the
        state the build record names even when the mirror publishes a new one mid-build. False when ``url`` is
        not one of those (or the Packages.xz is not held): then it goes to the mirror as before."""
        owner = self.server.owner
        raw, path, size = index.releases_at.get(url), None, 0
        if raw is not None:
            size = len(raw)
        elif (listed := index.lists_at.get(url)) is not None:
            path, size = owner.cache.get(*listed), listed[1]
        if raw is None and path is None:
            return False
        with owner.lock:
            owner.stats.indexes += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if head:
            return True
        if raw is not None:
            self.wfile.write(raw)
        elif path is not None:
            with path.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
        return True

    def _download(self, url: str, sha256: str, size: int, name: str) -> Path | None:
        owner = self.server.owner
        try:
            with owner.session.get(fetch_url(url, owner.fetch_from), stream=True, timeout=60) as r:
                if r.status_code != 200:
                    self._reply(r.status_code, f"upstream: HTTP {r.status_code}\n".encode())
                    return None
                with owner.cache.adding(sha256, size) as (out, h):
                    written = 0
                    for chunk in r.raw.stream(1 << 16, decode_content=False):
                        written += len(chunk)
                        if written > size:
                            break  # longer than the signed index says: refused below
                        h.update(chunk)
                        out.write(chunk)
        except requests.RequestException as e:
            self._reply(502, f"upstream: {e.__class__.__name__}\n".encode())
            return None
        path = owner.cache.path(sha256)
        if not path.is_file():  # adding() stored nothing: the bytes did not match
            with owner.lock:
                owner.stats.rejected.append(name)
            self._reply(502, f"{name}: the mirror's bytes do not match its signed index\n".encode())
            return None
        with owner.lock:
            owner.stats.downloaded.append(name)
        return path

    def _forward(self, head: bool) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.stats.passed += 1
        headers = {k: v for k in _ASK_HEADERS if (v := self.headers.get(k))}
        try:
            where = fetch_url(self.path, owner.fetch_from)
            r = owner.session.request("HEAD" if head else "GET", where, headers=headers, stream=True, timeout=60)
        except requests.RequestException as e:
            self._reply(502, f"upstream: {e.__class__.__name__}\n".encode())
            return
        with r:
            self.send_response(r.status_code)
            for k in _PASS_HEADERS:
                if k in r.headers:
                    self.send_header(k, r.headers[k])
            length = r.headers.get("Content-Length")
            if length is None and not head:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not head and r.status_code not in (204, 304):
                for chunk in r.raw.stream(1 << 16, decode_content=False):
                    self.wfile.write(chunk)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: DebianPackageCache


class DebianPackageCache:
    """One build's view of the shared Debian package and base cache: the proxy, the environment that makes DIB
    use it, and what it did (for the build record)."""

    def __init__(
        self,
        cache_dir: Path,
        work: Path,
        dib_env: dict[str, str],
        dib_arch: str,
        dib: str,
        *,
        fetch_from: dict[str, str] | None = None,
        pinned: dict[str, str] | None = None,
        pinned_releases: dict[str, str] | None = None,
    ) -> None:
        """``fetch_from`` and ``pinned`` are for ``imagectl rebuild``: the bytes of a mirror fetched from a stand-in
        (a snapshot of it), and each suite held to the signed Packages indexes the original build's record names
        (:meth:`DebianIndex.load`); apt in the build's chroot then accepts those InRelease files past their
        Valid-Until (our element's root.d/50, removed again in cleanup.d). ``pinned_releases`` (the record's
        ``mirror_state``) lets each suite's InRelease come from the package cache when it holds the recorded one."""
        self.fetch_from, self.pinned, self.pinned_releases = fetch_from, pinned, pinned_releases
        self.cache = PackageCache(cache_dir, "debian")
        self.base = BaseCache(cache_dir, "debian")
        self.work, self.dib_env, self.arch, self.dib = work, dib_env, dib_arch, dib
        self.token = secrets.token_hex(16)
        self.session = make_session()
        self.lock = threading.Lock()
        self.stats = CacheStats()
        self.index: DebianIndex | None = None
        self.base_key: str | None = None
        self.base_meta: dict[str, Any] = {}
        self.base_reused = False
        self.keyring = DEFAULT_KEYRING  # the archive keyring debootstrap and apt use (tests put their own)
        self.hosts = mirror_hosts(dib_env)

    @property
    def tarball(self) -> Path:
        """Where DIB's debootstrap element looks for a base tarball to use (``$DIB_IMAGE_CACHE``)."""
        return self.work / f"debootstrap-debian-{self.dib_env['DIB_RELEASE']}-{self.arch}.tar.gz"

    @property
    def saved(self) -> Path:
        """Where our element's root.d/76 saves the base system of a build that did not reuse one."""
        return self.work / "imagectl-base.tar.gz"

    @contextlib.contextmanager
    def serving(self) -> Iterator[dict[str, str]]:
        """Run the proxy; yields the environment to add to disk-image-create's (none of it is in the build key)."""
        self.work.mkdir(parents=True, exist_ok=True)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        thread = threading.Thread(target=server.serve_forever, name="imagectl-package-cache", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield {
                "http_proxy": url,
                "IMAGECTL_PKGCACHE_CONTROL": f"{url}/{self.token}",
                "IMAGECTL_PYTHON": sys.executable,
                "DIB_IMAGE_CACHE": str(self.work),  # DIB's own caches (the base tarball) are per build, ours
                "DIB_DEBOOTSTRAP_CACHE": "0",  # our root.d/76 saves the base after debian-minimal's base install
                "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",  # DIB untars it instead of bootstrapping, when prepare() put
                # one there (root.d/75 then finds nothing to upgrade or install)
                **({"IMAGECTL_PKGCACHE_PINNED": "1"} if self.pinned is not None else {}),
            }
        finally:
            server.shutdown()
            server.server_close()
            self.session.close()

    def prepare(self) -> str:
        """Fetch and verify the signed indexes; put a verified base tarball for this mirror state in place."""
        env = self.dib_env
        wanted = suites(env)
        self.index = DebianIndex.load(
            self.session,
            wanted,
            self.arch,
            self.cache.root / "indexes",
            keyring=self.keyring,
            fetch_from=self.fetch_from,
            pinned=self.pinned,
            store=self.cache,
            pinned_releases=self.pinned_releases,
        )
        mirror = env.get("DIB_DISTRIBUTION_MIRROR", "").rstrip("/")
        # The base is debootstrap's system after debian-minimal's dist-upgrade and base packages: it depends on
        # every suite's signed state (updates and security too), so any of them changing makes a new base.
        self.base_meta = {
            "format": 2,  # 2: the archive keeps the base's extended attributes (imagectl.imaging.xattrs)
            "release": env["DIB_RELEASE"],
            "arch": self.arch,
            "mirror": redact(mirror),
            "mirror_state": {state_key(s): h for s, h in self.index.releases.items()},
            "package_indexes": dict(self.index.indexes),  # what imagectl rebuild pins: the signed Packages indexes
            "components": env.get("DIB_DEBIAN_COMPONENTS", "main"),
            "debootstrap": tool_version(["dpkg-query", "-W", "-f=${Version}", "debootstrap"]),
            "dib": self.dib,
        }
        # credentials do not reach the record, but do the key
        material = {**self.base_meta, "mirror": mirror, "sources": [(s.mirror, s.suite, s.components) for s in wanted]}
        self.base_key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        found = self.base.find(self.base_key)
        if found is not None:
            self.tarball.unlink(missing_ok=True)
            os.link(found, self.tarball)
            self.base_reused = True
        state = "reused" if self.base_reused else "not cached yet"
        return f"{len(self.index.files)} packages indexed; base {self.base_key[:12]} {state}"

    def finish(self, succeeded: bool) -> dict[str, Any] | None:
        """Keep a newly made base tarball (only from a build that succeeded); what the cache did, for the build
        record (None when the element never asked, as with a stand-in disk-image-create)."""
        if self.index is None:
            return None
        if succeeded and self.base_key and not self.base_reused and self.saved.is_file():
            self.base.store(self.base_key, self.saved, self.base_meta)
        return {
            "hits": self.stats.hits,
            "downloaded": len(self.stats.downloaded),
            "downloaded_packages": sorted(self.stats.downloaded),
            "rejected_packages": sorted(self.stats.rejected),
            "removed_damaged": self.cache.removed,
            "indexes_served": self.stats.indexes,
            "releases_from_cache": list(self.index.from_cache),
            "passed_through": self.stats.passed,
            "base": {"key": self.base_key, "reused": self.base_reused, **self.base_meta},
        }
