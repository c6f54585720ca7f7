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

from imagectl.errors import DownloadError, UntrustedMetadataError
from imagectl.fsio import atomic_write
from imagectl.runner import run
from imagectl.urls import redact

__all__ = ["DEFAULT_KEYRING", "DebianIndex", "IndexError_", "Suite", "parse_packages", "parse_release", "suites"]

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
RELEASE_MAX = 4 << 20  # bytes: an InRelease file (bookworm's is ~150 kB)
PACKAGES_MAX = 64 << 20  # bytes, compressed: bookworm main amd64 is ~9 MB
PACKAGES_TEXT_MAX = 512 << 20  # bytes, uncompressed


class IndexError_(UntrustedMetadataError):
    """A mirror index that is unsigned, signed by a key not in the keyring, expired, or does not match its hash."""


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


def parse_release(text: str) -> Release:
    """The fields of a (verified) Release text that matter here."""
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
        if when < dt.datetime.now(dt.UTC):
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


@dataclass
class DebianIndex:
    """Pool file URL -> (SHA-256, size, apt name) over every verified suite, and each suite's InRelease SHA-256."""

    files: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    releases: dict[Suite, str] = field(default_factory=dict)

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
    ) -> DebianIndex:
        """Fetch and verify the InRelease and Packages indexes of ``wanted`` for ``arch``. A Packages index already
        parsed is read back from ``cache`` (files named by the SHA-256 the signed InRelease gives it), so only the
        InRelease files are downloaded when the mirror has not changed.

        Raises IndexError_ (bad signature, expired, hash mismatch) and DownloadError."""
        index = cls()
        for s in wanted:
            url = f"{s.mirror}/dists/{s.suite}/InRelease"
            raw = _get(session, url, RELEASE_MAX, timeout)
            rel = parse_release(verify_signed(raw, keyring, redact(url)).decode("utf-8", "replace"))
            index.releases[s] = hashlib.sha256(raw).hexdigest()
            for comp in s.components:
                path = f"{comp}/binary-{arch}/Packages.xz"
                if path not in rel.files:
                    raise IndexError_(f"{redact(url)} lists no {path}")
                digest, size = rel.files[path]
                parsed = cache / f"{digest}.tsv"
                entries = _read_tsv(parsed)
                if entries is None:
                    where = f"{comp}/binary-{arch}/by-hash/SHA256/{digest}" if rel.by_hash else path
                    data = _get(session, f"{s.mirror}/dists/{s.suite}/{where}", PACKAGES_MAX, timeout)
                    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                        raise IndexError_(f"{redact(s.mirror)}/dists/{s.suite}/{path} does not match its InRelease")
                    try:
                        text = lzma.LZMADecompressor().decompress(data, PACKAGES_TEXT_MAX)
                    except lzma.LZMAError:
                        raise IndexError_(f"{redact(s.mirror)}/dists/{s.suite}/{path}: not xz data") from None
                    entries = parse_packages(text.decode("utf-8", "replace"))
                    _write_tsv(parsed, entries)
                for filename, entry in entries.items():
                    index.files[f"{s.mirror}/{filename}"] = entry
        return index


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
