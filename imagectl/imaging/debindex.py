"""A Debian mirror's signed package indexes, fetched and verified by imagectl itself.

For every suite a build's apt sources name (``bookworm``, ``bookworm-updates``, ``bookworm-security``), the
``InRelease`` file is checked with ``gpgv`` against the archive keyring (the same one debootstrap and apt use);
only the text gpgv says was signed is parsed. The ``Packages.xz`` index of each component is fetched (by hash
when the suite offers it) and must match the SHA-256 and size that signed text gives it. What comes out is the
one thing the package cache trusts: pool path -> (SHA-256, size) of every package the mirror signed for.

Why not trust apt's own verification: the cache is used outside apt (by our proxy, before apt sees the bytes),
and a cached file must never be reused because of its name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import lzma
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imagectl.errors import DownloadError, NotReproducibleError, UntrustedMetadataError
from imagectl.fsio import atomic_write
from imagectl.imaging.pkgcache import PackageCache
from imagectl.runner import run
from imagectl.urls import redact, safe_url

__all__ = [
    "DEFAULT_KEYRING",
    "DebianIndex",
    "IndexError_",
    "MirrorMovedError",
    "Suite",
    "check_pinned",
    "fetch_url",
    "index_key",
    "parse_packages",
    "parse_release",
    "state_key",
    "suites",
]

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
RELEASE_MAX = 4 << 20  # bytes: an InRelease file (bookworm's is ~150 kB)
PACKAGES_MAX = 64 << 20  # bytes, compressed: bookworm main amd64 is ~9 MB
PACKAGES_TEXT_MAX = 512 << 20  # bytes, uncompressed


class IndexError_(UntrustedMetadataError):
    """A mirror index that is unsigned, signed by a key not in the keyring, expired, or does not match its hash."""


class MirrorMovedError(NotReproducibleError):
    """A rebuild pinned to the mirror states of a build record met a suite in another state (exit 25)."""


def fetch_url(url: str, fetch_from: dict[str, str] | None) -> str:
    """Where to fetch ``url`` from: the same URL, or, when it lies under a mirror ``fetch_from`` maps, the same path
    under that mirror's stand-in (a snapshot of it). What the build asks for, and what the image names, stays
    ``url``; only the bytes come from elsewhere, and they are verified against the same signed indexes."""
    for mirror, instead in (fetch_from or {}).items():
        base = mirror.rstrip("/")
        if url == base or url.startswith(base + "/"):
            return instead.rstrip("/") + url[len(base) :]
    return url


def state_key(suite: Suite) -> str:
    """How a build record names one suite's state: ``MIRROR SUITE`` (credentials redacted) -> InRelease SHA-256."""
    return f"{redact(suite.mirror)} {suite.suite}"


@dataclass(frozen=True)
class Suite:
    mirror: str  # no trailing slash
    suite: str
    components: tuple[str, ...] = ("main",)


def suites(env: dict[str, str]) -> list[Suite]:
    """The suites a diskimage-builder Debian build will use, read from the environment imagectl gives it:
    ``DIB_APT_SOURCES_CONF`` (``name:deb URL SUITE COMPONENT…`` lines) when set, else debian-minimal's default
    (the release, its -updates from ``DIB_DISTRIBUTION_MIRROR``, its -security from ``DIB_DEBIAN_SECURITY_MIRROR``)."""
    release = env["DIB_RELEASE"]
    conf = env.get("DIB_APT_SOURCES_CONF")
    if not conf:
        mirror = env.get("DIB_DISTRIBUTION_MIRROR", "http://deb.debian.org/debian")
        security = env.get("DIB_DEBIAN_SECURITY_MIRROR", "http://security.debian.org/")
        conf = (
            f"default:deb {mirror} {release} main\nupdates:deb {mirror} {release}-updates main\n"
            f"security:deb {security} {release}-security main"
        )
    out = []
    for line in conf.splitlines():
        words = line.partition(":")[2].split()
        if len(words) >= 4 and words[0] == "deb":
            out.append(Suite(words[1].rstrip("/"), words[2], tuple(words[3:])))
    return out


@dataclass(frozen=True)
class Release:
    sha256: str  # of the whole InRelease file: the mirror state
    files: dict[str, tuple[str, int]]  # path under dists/SUITE/ -> (sha256, size)
    by_hash: bool
    date: str


def parse_release(text: str, *, check_expiry: bool = True) -> Release:
    """The fields of a (verified) Release text that matter here. ``check_expiry`` False: a ``Valid-Until`` in the
    past is accepted (only for the exact InRelease a signed build record pins: its freshness is not the question)."""
    files: dict[str, tuple[str, int]] = {}
    fields: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith((" ", "\t")):
            words = line.split()
            if section == "SHA256" and len(words) == 3 and words[1].isdigit():
                files[words[2]] = (words[0].lower(), int(words[1]))
            continue
        key, _, value = line.partition(":")
        section = key
        fields[key] = value.strip()
    if until := fields.get("Valid-Until"):
        when = email.utils.parsedate_to_datetime(until)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        if check_expiry and when < dt.datetime.now(dt.UTC):
            raise IndexError_(f"the mirror's Release file expired on {until} (a stale or frozen mirror)")
    return Release("", files, fields.get("Acquire-By-Hash", "").lower() == "yes", fields.get("Date", ""))


def parse_packages(text: str) -> dict[str, tuple[str, int, str]]:
    """``Filename`` -> (SHA-256, size, apt's file name ``NAME_VERSION_ARCH.deb``) for each stanza of a Packages
    index. Stanzas without a SHA256 field are left out: they cannot be verified."""
    out: dict[str, tuple[str, int, str]] = {}
    for stanza in text.split("\n\n"):
        f: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace():
                key, _, value = line.partition(":")
                if key in ("Package", "Version", "Architecture", "Filename", "SHA256", "Size"):
                    f[key] = value.strip()
        if {"Package", "Version", "Architecture", "Filename", "SHA256", "Size"} <= f.keys() and f["Size"].isdigit():
            name = f"{f['Package']}_{f['Version'].replace(':', '%3a')}_{f['Architecture']}.deb"
            out[f["Filename"]] = (f["SHA256"].lower(), int(f["Size"]), name)
    return out


def verify_signed(data: bytes, keyring: Path, what: str) -> bytes:
    """The text inside a clearsigned ``InRelease`` that gpgv verified against ``keyring`` (nothing outside the
    signature is ever parsed). Raises IndexError_ naming ``what`` when the signature is missing or bad."""
    with tempfile.TemporaryDirectory(prefix="imagectl-gpgv.") as home:
        signed, out = Path(home) / "InRelease", Path(home) / "signed"
        signed.write_bytes(data)
        res = run(
            ["gpgv", "--homedir", home, "--keyring", keyring, "--status-fd", "1", "--output", out, signed],
            check=False,
            what=f"gpgv ({what})",
        )
        status = [ln.split() for ln in res.output.splitlines() if ln.startswith("[GNUPG:] ")]
        if res.returncode != 0 or not any(w[1] == "VALIDSIG" for w in status) or not out.is_file():
            raise IndexError_(f"{what}: no valid signature by a key in {keyring}")
        if any(w[1] in ("REVKEYSIG", "EXPKEYSIG") for w in status):
            raise IndexError_(f"{what}: signed by a revoked or expired key")
        return out.read_bytes()


def _get(session: requests.Session, url: str, limit: int, timeout: float) -> bytes:
    try:
        with session.get(url, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise DownloadError(f"{redact(url)}: HTTP {r.status_code}")
            data = bytearray()
            for chunk in r.iter_content(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise DownloadError(f"{redact(url)}: larger than {limit} bytes")
            return bytes(data)
    except requests.RequestException as e:
        raise DownloadError(f"{redact(url)}: {e.__class__.__name__}") from None


def index_key(suite: Suite, path: str) -> str:
    """How a build record names one signed package index: ``MIRROR SUITE PATH`` (credentials redacted), mapped to
    the SHA-256 the suite's InRelease gives it. Those indexes are what decides which package files a build gets:
    a new InRelease that signs the same indexes (Debian re-signs every few hours, with a new Date) is the same
    state."""
    return f"{state_key(suite)} {path}"


def _pinned_problem(suite: Suite, rel: Release, paths: list[str], pinned: dict[str, str], shown: str) -> str | None:
    """What differs between the indexes ``rel`` signs and the ones ``pinned`` names for ``suite``, or None."""
    for path in paths:
        want = pinned.get(index_key(suite, path))
        got = rel.files.get(path, ("(none)", 0))[0]
        if want != got:
            return f"{shown} {suite.suite} {path} (sha256 {got[:12]}, the record's {(want or '(none)')[:12]})"
    return None


@dataclass
class DebianIndex:
    """Pool file URL -> (SHA-256, size, apt name) over every verified suite; each suite's InRelease SHA-256; and
    each signed Packages index's SHA-256 (:func:`index_key`), the state a rebuild is pinned to. ``releases_at``
    and ``lists_at``: the URLs apt and debootstrap ask for those indexes at -> the verified InRelease bytes, and
    the (SHA-256, size) of each Packages.xz (plain and by-hash URL), so the build's proxy answers them with exactly
    the state imagectl verified and the record names, whatever the mirror has published since. ``from_cache``:
    the suites (:func:`state_key`) whose pinned InRelease came from the package cache, not the mirror."""

    files: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    releases: dict[Suite, str] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)
    releases_at: dict[str, bytes] = field(default_factory=dict)
    lists_at: dict[str, tuple[str, int]] = field(default_factory=dict)
    from_cache: list[str] = field(default_factory=list)

    def lookup(self, url: str) -> tuple[str, int, str] | None:
        return self.files.get(url)

    @classmethod
    def load(
        cls,
        session: requests.Session,
        wanted: list[Suite],
        arch: str,
        cache: Path,
        *,
        keyring: Path = DEFAULT_KEYRING,
        timeout: float = 60.0,
        fetch_from: dict[str, str] | None = None,
        pinned: dict[str, str] | None = None,
        store: PackageCache | None = None,
        pinned_releases: dict[str, str] | None = None,
    ) -> DebianIndex:
        """Fetch and verify the InRelease and Packages indexes of ``wanted`` for ``arch``. A Packages index already
        parsed is read back from ``cache`` (files named by the SHA-256 the signed InRelease gives it), so only the
        InRelease files are downloaded when the mirror has not changed.

        ``fetch_from`` maps a mirror to a stand-in the bytes are fetched from (:func:`fetch_url`); ``pinned`` (a
        build record's ``package_indexes``, for ``imagectl rebuild``) names the SHA-256 each signed Packages index
        must have: another one raises MirrorMovedError, and an InRelease that signs the pinned indexes is accepted
        past its Valid-Until.

        ``store`` (the package cache) keeps every InRelease and Packages.xz verified here, under its SHA-256; with
        ``pinned_releases`` (a record's ``mirror_state``: :func:`state_key` -> InRelease SHA-256) a suite whose
        recorded InRelease the store holds is read from there, verified against ``keyring`` again, and the mirror
        is not asked: a rebuild on a host that made (or was given) the original build's cache does not depend on
        the mirror staying still, as Debian's security suite does not for an hour.

        Raises IndexError_ (bad signature, expired, hash mismatch), MirrorMovedError and DownloadError."""
        index = cls()
        for s in wanted:
            url = f"{s.mirror}/dists/{s.suite}/InRelease"
            raw = _held_release(store, pinned_releases, s)
            fetched = raw is None
            if raw is None:
                raw = _get(session, fetch_url(url, fetch_from), RELEASE_MAX, timeout)
            else:
                index.from_cache.append(state_key(s))
            signed = verify_signed(raw, keyring, redact(url)).decode("utf-8", "replace")
            rel = parse_release(signed, check_expiry=pinned is None)
            paths = [f"{comp}/binary-{arch}/Packages.xz" for comp in s.components]
            if pinned is not None and (moved := _pinned_problem(s, rel, paths, pinned, redact(s.mirror))):
                raise MirrorMovedError(
                    f"the mirror is not in the state of the original build: {moved}",
                    hint="rebuild from a snapshot of the mirror as it was: imagectl rebuild … --mirror MIRROR SNAPSHOT",
                )
            index.releases[s] = hashlib.sha256(raw).hexdigest()
            index.releases_at[url] = raw
            if store is not None and fetched:  # kept for a rebuild; one read from the store is there already
                store.put(raw)
            for path in paths:
                if path not in rel.files:
                    raise IndexError_(f"{redact(url)} lists no {path}")
                digest, size = rel.files[path]
                if size > PACKAGES_MAX:
                    raise IndexError_(f"{redact(url)}: its {path} is larger than {PACKAGES_MAX} bytes")
                index.indexes[index_key(s, path)] = digest
                by_hash = path.replace("/Packages.xz", f"/by-hash/SHA256/{digest}")
                for where in (path, by_hash):
                    index.lists_at[f"{s.mirror}/dists/{s.suite}/{where}"] = (digest, size)
                parsed = cache / f"{digest}.tsv"
                entries = _read_tsv(parsed)
                held = store.get(digest, size) if store is not None else None
                if entries is None or (store is not None and held is None):
                    if held is not None:
                        data = held.read_bytes()
                    else:
                        where = by_hash if rel.by_hash else path
                        data = _get(
                            session, fetch_url(f"{s.mirror}/dists/{s.suite}/{where}", fetch_from), PACKAGES_MAX, timeout
                        )
                    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                        raise IndexError_(f"{redact(s.mirror)}/dists/{s.suite}/{path} does not match its InRelease")
                    if store is not None and held is None:  # as the InRelease
                        store.put(data)
                    if entries is None:
                        try:
                            text = lzma.LZMADecompressor().decompress(data, PACKAGES_TEXT_MAX)
                        except lzma.LZMAError:
                            raise IndexError_(f"{redact(s.mirror)}/dists/{s.suite}/{path}: not xz data") from None
                        entries = parse_packages(text.decode("utf-8", "replace"))
                        _write_tsv(parsed, entries)
                for filename, entry in entries.items():
                    index.files[f"{s.mirror}/{filename}"] = entry
        return index


def _held_release(store: PackageCache | None, pinned_releases: dict[str, str] | None, suite: Suite) -> bytes | None:
    """The InRelease a record pins ``suite`` to, when the package cache holds it (its bytes hash to the recorded
    SHA-256: that is what makes them the original build's); else None. Its signature is checked by the caller."""
    want = (pinned_releases or {}).get(state_key(suite))
    return store.read(want, RELEASE_MAX) if store is not None and want else None


def check_pinned(
    session: requests.Session,
    pinned: dict[str, str],
    fetch_from: dict[str, str] | None,
    *,
    keyring: Path | None = None,
    timeout: float = 60.0,
    store: PackageCache | None = None,
    pinned_releases: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Before a pinned rebuild: fetch and verify the InRelease of each suite a record's ``package_indexes`` names
    (through ``fetch_from``) and compare the Packages indexes it signs with the pinned ones, so a mirror that moved
    is said in seconds instead of minutes into a build. A suite whose recorded InRelease (``pinned_releases``, the
    record's ``mirror_state``) ``store`` holds is checked on that copy, as the build will use it, without asking the
    mirror. Suites whose recorded URL had its credentials redacted are left to the build's own check. Returns how
    many suites were checked and how many of them on the cache's copy; raises MirrorMovedError naming every suite
    that moved, IndexError_ and DownloadError. ``keyring`` defaults to the archive keyring apt uses."""
    keyring = keyring or DEFAULT_KEYRING
    by_suite: dict[tuple[str, str], list[str]] = {}
    for key in pinned:
        mirror, suite, path = key.rsplit(" ", 2)
        by_suite.setdefault((mirror, suite), []).append(path)
    moved = []
    checked = held = 0
    for (mirror, suite), paths in sorted(by_suite.items()):
        if "<hidden>@" in mirror:
            continue
        s, where = Suite(mirror, suite), fetch_url(f"{mirror}/dists/{suite}/InRelease", fetch_from)
        raw, what = _held_release(store, pinned_releases, s), safe_url(where)
        if raw is None:
            raw = _get(session, where, RELEASE_MAX, timeout)
        else:
            held += 1
            what = f"{safe_url(f'{mirror}/dists/{suite}/InRelease')} (imagectl's package cache)"
        rel = parse_release(verify_signed(raw, keyring, what).decode("utf-8", "replace"), check_expiry=False)
        checked += 1
        if problem := _pinned_problem(s, rel, sorted(paths), pinned, safe_url(fetch_url(mirror, fetch_from))):
            moved.append(problem)
    if moved:
        raise MirrorMovedError(
            f"the mirror is not in the state of the original build: {'; '.join(moved)}",
            hint="rebuild from a snapshot of the mirror as it was: imagectl rebuild … --mirror MIRROR SNAPSHOT "
            "(or --anyway, to build and list the packages that moved)",
        )
    return checked, held


def _read_tsv(path: Path) -> dict[str, tuple[str, int, str]] | None:
    """A parsed index imagectl wrote (its name is the verified Packages.xz hash); None when absent or damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    body, _, check = text.rpartition("# sha256 ")
    if hashlib.sha256(body.encode()).hexdigest() != check.strip():
        return None  # truncated or edited: parse the signed index again
    out = {}
    for line in body.splitlines():
        filename, digest, size, name = line.split("\t")
        out[filename] = (digest, int(size), name)
    return out


def _write_tsv(path: Path, entries: dict[str, tuple[str, int, str]]) -> None:
    body = "".join(f"{f}\t{d}\t{s}\t{n}\n" for f, (d, s, n) in entries.items())
    atomic_write(path, (body + f"# sha256 {hashlib.sha256(body.encode()).hexdigest()}\n").encode())
    # keep the few newest parsed indexes only: a mirror moves on every day or so
    olds = sorted(path.parent.glob("*.tsv"), key=lambda p: p.stat().st_mtime, reverse=True)[16:]
    for old in olds:
        with contextlib.suppress(OSError):
            os.unlink(old)
