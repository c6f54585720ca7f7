"""Read a yum repository (``repodata/repomd.xml`` and its primary metadata) and fetch verified packages from it.

This is stage 1 of the SLC bootstrap (see :mod:`imagectl.imaging.slc.bootstrap`): the host's rpm cannot write the
Berkeley-DB database SLC <= 6 reads, so we read the metadata ourselves, pick the seed packages and fetch them.
Every byte goes through the project's one HTTP session, bounded by the size the metadata declares and hashed while
it streams (sha256, or sha1 ``sha``/md5 in the old SLC 3/4 repositories). Packages land in a cache keyed by their
checksum, written atomically, so a second run downloads only ``repomd.xml``.

Trust: ``repomd.xml`` -> primary -> package checksums form a chain, so a package cannot change without the
repomd.xml changing; but repomd.xml itself is unsigned (as it was in the SLC era), so authenticity comes from the
packages' GPG signatures, which stage 1 checks against the recipe's pinned keys before unpacking anything
(:mod:`imagectl.imaging.slc.rpmsig`) and stage 2 checks again with the release's keys (``rpm -K``).

Transport: an ``http://`` repository is tried once over https (:meth:`YumRepository.prefer_https`) and read over
https when that answers, so a mirror that offers TLS is never read in the clear; one that does not is read over
http, said once.
"""

from __future__ import annotations

import abc
import bz2
import dataclasses
import difflib
import errno
import gzip
import hashlib
import lzma
import os
import re
import stat
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar, Protocol

import requests
import urllib3.exceptions

from imagectl.errors import (
    DownloadError,
    ImagectlError,
    ImageMismatchError,
    InvalidInputError,
    LocalIOError,
    NotFoundError,
)
from imagectl.fsio import AtomicFile, mark_used
from imagectl.http import make_session, safe_url
from imagectl.imaging.slc.evr import EVR
from imagectl.store.base import Pace, paced

__all__ = [
    "ChecksumMismatchError",
    "MetadataFile",
    "MissingFileError",
    "Package",
    "RepoMetadataError",
    "RepositoryReader",
    "UnknownPackageError",
    "YumRepository",
    "compatible_arches",
    "parse_primary",
    "parse_repomd",
    "resolve",
]

CHUNK = 1 << 20  # bytes per read
REPOMD_MAX = 4 << 20  # bytes: a repomd.xml is a few KiB; anything this large is not one
METADATA_MAX = 512 << 20  # bytes: cap for a primary file whose size repomd.xml does not declare (SLC 3/4 era)
HTTPS_PROBE_TIMEOUT = 5.0  # seconds for the one https attempt on an http:// mirror (connect and each read)
NO_REPOSITORY_HINT = (
    "no yum repository there; an SLC mirror is the release directory (e.g. https://linuxsoft.cern.ch/cern/slc6X), "
    "to which ARCH/yum/os is appended"
)

_REPO_NS = "{http://linux.duke.edu/metadata/repo}"
_COMMON_NS = "{http://linux.duke.edu/metadata/common}"
_RPM_NS = "{http://linux.duke.edu/metadata/rpm}"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_HASHES = {"sha": "sha1", "sha1": "sha1", "md5": "md5", "sha224": "sha224", "sha256": "sha256"}
_HASHES |= {"sha384": "sha384", "sha512": "sha512"}
_SAFE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~^%-]*\Z")


class ChecksumMismatchError(ImageMismatchError):
    """Downloaded (or cached) bytes do not match the checksum or size the repository metadata declares."""


class UnknownPackageError(NotFoundError):
    """A seed package name is not in the repository for that architecture."""


class RepoMetadataError(InvalidInputError):
    """The mirror answered, but with something that is not yum repository metadata."""


class MissingFileError(DownloadError):
    """The mirror has no such file (HTTP 404 or 410, or no such local file): how stage 1 tells which repository
    format a mirror serves."""


@dataclass(frozen=True)
class MetadataFile:
    """One ``<data>`` entry of repomd.xml (primary, filelists, ...)."""

    type: str
    href: str
    checksum_type: str
    checksum: str
    size: int | None  # bytes of the file as stored; None in repomd.xml files older than createrepo 0.4.9
    base: str | None = None  # xml:base, when the file lives under another URL


@dataclass(frozen=True)
class Package:
    """One package of the primary metadata: what we need to choose it, fetch it and verify it."""

    name: str
    arch: str
    evr: EVR
    href: str  # location relative to the repository (or to ``base``)
    checksum_type: str  # as the repository spells it: sha256, sha (sha1), md5, ...; "" where none is declared
    checksum: str
    size: int | None  # bytes of the .rpm file; None where the repository does not declare it (yum 2.0 headers/)
    repo_url: str = ""  # the repository it came from (set by the reader's packages())
    base: str | None = None
    requires: tuple[str, ...] = field(default=(), compare=False)
    provides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def filename(self) -> str:
        """The file name of the .rpm (the last part of its location)."""
        return self.href.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return _join(self.base or self.repo_url, self.href)


def _join(base: str, href: str) -> str:
    return base.rstrip("/") + "/" + href.lstrip("/")


def _check_href(href: str, what: str) -> str:
    """Refuse locations that are absolute, carry a scheme or climb out of the repository."""
    parts = urllib.parse.urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/") or ".." in href.split("/") or not href:
        raise RepoMetadataError(f"{what}: refusing location {href!r} outside the repository")
    if not _SAFE_FILE.match(href.rsplit("/", 1)[-1]):
        raise RepoMetadataError(f"{what}: refusing unusual file name in location {href!r}")
    return href


def _check_base(base: str | None, what: str) -> str | None:
    if base is not None and urllib.parse.urlsplit(base).scheme not in ("http", "https", "file"):
        raise RepoMetadataError(f"{what}: refusing xml:base {base!r} (only http, https and file URLs)")
    return base


def _hash_name(checksum_type: str, what: str) -> str:
    try:
        return _HASHES[checksum_type.lower()]
    except KeyError:
        raise RepoMetadataError(f"{what}: unknown checksum type {checksum_type!r}") from None


def _parse_xml(data: bytes, what: str) -> ET.Element:
    # Python's expat (>= 2.4) limits entity amplification and ElementTree never fetches external entities, so the
    # classic XML attacks end in a parse error here; defusedxml would add a dependency for no further protection.
    try:
        return ET.fromstring(data)  # noqa: S314
    except ET.ParseError as e:
        raise RepoMetadataError(f"{what} is not valid XML: {e}") from None


def parse_repomd(data: bytes, what: str = "repomd.xml") -> dict[str, MetadataFile]:
    """Parse repomd.xml into ``{type: MetadataFile}``.

    Raises RepoMetadataError for XML that is not a repomd document or entries without location or checksum.
    """
    root = _parse_xml(data, what)
    if root.tag not in (f"{_REPO_NS}repomd", "repomd"):
        raise RepoMetadataError(f"{what} is not a repomd document (root element <{root.tag}>)")
    out: dict[str, MetadataFile] = {}
    for entry in root.iter(f"{_REPO_NS}data"):
        kind = entry.get("type", "")
        loc = entry.find(f"{_REPO_NS}location")
        csum = entry.find(f"{_REPO_NS}checksum")
        if loc is None or csum is None or not loc.get("href") or not (csum.text or "").strip():
            raise RepoMetadataError(f"{what}: <data type={kind!r}> lacks a location or checksum")
        size_text = (entry.findtext(f"{_REPO_NS}size") or "").strip()
        ctype = csum.get("type", "sha")
        _hash_name(ctype, what)
        out[kind] = MetadataFile(
            type=kind,
            href=_check_href(loc.get("href", ""), what),
            checksum_type=ctype,
            checksum=(csum.text or "").strip().lower(),
            size=int(size_text) if size_text.isdigit() else None,
            base=_check_base(loc.get(_XML_BASE), what),
        )
    if "primary" not in out:
        raise RepoMetadataError(f"{what} names no primary metadata")
    return out


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _decompressed(raw: IO[bytes]) -> _Readable:
    """Wrap ``raw`` in the decompressor its magic bytes ask for (gzip, bzip2, xz) or return it as is."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise RepoMetadataError("primary metadata is zstd-compressed, which imagectl cannot read (no SLC mirror is)")
    return raw


def parse_primary(stream: IO[bytes], what: str = "primary metadata") -> Iterator[Package]:
    """Yield every package of a primary.xml stream (compressed with gzip, bzip2 or xz, or plain).

    Streams with iterparse and drops each <package> once read, so memory stays flat on a 100 MB primary file.
    Raises RepoMetadataError for XML errors, packages without name/arch/version/location/checksum, or locations
    that leave the repository.
    """
    body = _decompressed(stream)
    root: ET.Element | None = None
    try:
        for event, elem in ET.iterparse(body, events=("start", "end")):  # noqa: S314 - see _parse_xml
            if event == "start":
                if root is None:
                    root = elem
                continue
            if elem.tag != f"{_COMMON_NS}package":
                continue
            if elem.get("type", "rpm") == "rpm":
                yield _package(elem, what)
            root.clear()  # type: ignore[union-attr]  # root is set by the first start event
    except (ET.ParseError, OSError, EOFError, lzma.LZMAError) as e:
        raise RepoMetadataError(f"{what} is unreadable: {e}") from None


def _package(elem: ET.Element, what: str) -> Package:
    def text(tag: str) -> str:
        found = elem.find(f"{_COMMON_NS}{tag}")
        return (found.text or "").strip() if found is not None else ""

    name, arch = text("name"), text("arch")
    ver, loc, csum = (elem.find(f"{_COMMON_NS}{t}") for t in ("version", "location", "checksum"))
    size = elem.find(f"{_COMMON_NS}size")
    if not name or not arch or ver is None or loc is None or csum is None or not (csum.text or "").strip():
        raise RepoMetadataError(f"{what}: package {name or '?'} lacks arch, version, location or checksum")
    try:
        epoch = int(ver.get("epoch") or 0)
        nbytes = int(size.get("package", "")) if size is not None else -1
    except ValueError:
        raise RepoMetadataError(f"{what}: package {name} has a non-numeric epoch or size") from None
    if nbytes < 0:
        raise RepoMetadataError(f"{what}: package {name} does not declare its size")
    ctype = csum.get("type", "sha")
    _hash_name(ctype, f"{what}: package {name}")
    fmt = elem.find(f"{_COMMON_NS}format")

    def entries(kind: str) -> tuple[str, ...]:
        if fmt is None:
            return ()
        return tuple(e.get("name", "") for e in fmt.iterfind(f"{_RPM_NS}{kind}/{_RPM_NS}entry"))

    return Package(
        name=name,
        arch=arch,
        evr=EVR(epoch, ver.get("ver", ""), ver.get("rel", "")),
        href=_check_href(loc.get("href", ""), f"{what}: package {name}"),
        checksum_type=ctype,
        checksum=(csum.text or "").strip().lower(),
        size=nbytes,
        base=_check_base(loc.get(_XML_BASE), f"{what}: package {name}"),
        requires=entries("requires"),
        provides=entries("provides"),
    )


_X86_32 = ("i686", "i586", "i486", "i386")


def compatible_arches(arch: str) -> tuple[str, ...]:
    """Package architectures that may go into an ``arch`` image, best first: the exact arch, then noarch, then
    (for 32-bit x86) the other x86 flavours, newest CPU first.

    An x86_64 image never takes i686 packages: x86_64 trees carry them for multilib only.
    """
    if arch in _X86_32:
        return (arch, "noarch", *(a for a in _X86_32 if a != arch))
    return (arch, "noarch")


def resolve(
    packages: Iterable[Package], names: Iterable[str], arch: str, where: str = "the repository"
) -> list[Package]:
    """Pick one package per name for an ``arch`` image, in the order of ``names``.

    The best architecture wins (see :func:`compatible_arches`); among packages of that architecture, the newest
    epoch:version-release in rpm's ordering. Raises UnknownPackageError naming every missing name and, for each,
    the closest names the repository does have.
    """
    rank = {a: i for i, a in enumerate(compatible_arches(arch))}
    best: dict[str, Package] = {}
    all_names: set[str] = set()
    for p in packages:
        all_names.add(p.name)
        if p.arch not in rank:
            continue
        cur = best.get(p.name)
        if cur is None or rank[p.arch] < rank[cur.arch] or (p.arch == cur.arch and p.evr > cur.evr):
            best[p.name] = p
    wanted = list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in best]
    if missing:
        parts = []
        for n in missing:
            close = difflib.get_close_matches(n, all_names, n=3, cutoff=0.6)
            other_arch = " (only for other architectures)" if n in all_names else ""
            parts.append(f"{n}{other_arch}" + (f" (close: {', '.join(close)})" if close and not other_arch else ""))
        more = f"; and {len(parts) - 8} more" if len(parts) > 8 else ""
        raise UnknownPackageError(
            f"not in {where} for {arch}: {'; '.join(parts[:8])}{more}",
            hint="is the mirror the right release and architecture?" if len(parts) > 8 else None,
        )
    return [best[n] for n in wanted]


class RepositoryReader(abc.ABC):
    """What every repository format shares: the repository's URL, a cache, one HTTP session with retries, reads
    bounded and paced (:func:`imagectl.store.base.paced`), https preferred when an ``http://`` mirror offers it.

    A subclass names its index file (``index_path``, at most ``index_max`` bytes), checks it (``_check_index``) and
    turns it into packages; stage 1 uses nothing else.
    """

    index_path: ClassVar[str]  # the file that says the repository is there, relative to it
    index_max: ClassVar[int]  # bytes

    def __init__(
        self,
        url: str,
        cache: Path,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            raise InvalidInputError(f"unsupported repository URL {safe_url(url)!r} (http, https or file)")
        self.url = url.rstrip("/")
        self.cache = Path(cache)
        self.session = session or make_session()
        self.timeout = timeout
        self.pace = Pace(window=max(timeout, 1.0))  # how slow a mirror may get before a download fails
        self.attempts = max(1, attempts)
        self.downloaded = 0  # bytes received over the network by this object (tests and progress read it)
        self.https_refused = False  # the https probe got no HTTP answer at all (TLS or connection failure)

    def prefer_https(self, *, timeout: float = HTTPS_PROBE_TIMEOUT, session: requests.Session | None = None) -> str:
        """For an ``http://`` repository, try its index file once over https (``timeout`` seconds, no retries; a
        refused connection or TLS failure ends it at once, and sets ``https_refused``); if that answers with an
        index, read everything over https from now on. Returns one line saying which was chosen, for the user.

        Never raises for a failed probe: the repository stays on http.
        """
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http":
            return f"reading {safe_url(self.url)}"
        https = urllib.parse.urlunsplit(("https", *parts[1:]))
        probe = session or make_session(retries=0)  # one attempt: the https answer is a bonus, not a need
        url = _join(https, self.index_path)
        why = ""
        try:
            with probe.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code >= 400:
                    why = f"HTTP {resp.status_code}"
                elif not str(resp.url).startswith("https://"):
                    why = "it redirects to http"
                else:
                    body = bytearray()
                    for chunk in resp.iter_content(CHUNK):
                        body += chunk
                        if len(body) > self.index_max:
                            break
                    self._check_index(bytes(body), safe_url(url))
        except requests.RequestException as e:
            why = type(e).__name__
            self.https_refused = True
        except RepoMetadataError:
            why = "not a yum repository there"
        finally:
            if session is None:
                probe.close()
        if why:
            return f"{safe_url(https)} does not answer over https ({why}); reading it over http"
        self.url = https.rstrip("/")
        return f"reading {safe_url(self.url)} (https: the mirror offers it)"

    def discard(self, path: Path) -> None:
        """Remove a cached file (a package refused after its download) and its emptied directories."""
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise LocalIOError(f"cannot remove refused package {path}: {e.strerror}") from None
        _remove_empty(path.parent, self.cache)

    @abc.abstractmethod
    def _check_index(self, data: bytes, what: str) -> None:
        """Raise RepoMetadataError unless ``data`` is this format's index file."""

    @abc.abstractmethod
    def load_index(self) -> None:
        """Fetch and parse the index now, for the next :meth:`packages` to use. Raises MissingFileError if the
        mirror has no such file, DownloadError, RepoMetadataError."""

    @abc.abstractmethod
    def packages(self) -> list[Package]:
        """Every package the repository lists."""

    @abc.abstractmethod
    def download(self, pkg: Package) -> Path:
        """The verified .rpm of ``pkg`` (one of :meth:`packages`) in the cache."""

    def _read_index(self) -> bytes:
        """The index file's bytes; raises RepoMetadataError past ``index_max`` bytes."""
        url = _join(self.url, self.index_path)
        buf = bytearray()
        for chunk in self._chunks(url):
            buf += chunk
            if len(buf) > self.index_max:
                raise RepoMetadataError(f"{safe_url(url)} is larger than {self.index_max} bytes; not its index file")
        return bytes(buf)

    def _chunks(self, url: str) -> Iterator[bytes]:
        """The body of ``url`` in chunks; raises MissingFileError (HTTP 404/410, no such file) or DownloadError for
        anything but a readable 2xx answer."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = urllib.parse.unquote(parts.path)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
                with os.fdopen(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise DownloadError(f"{url} is not a regular file")
                    os.set_blocking(fd, True)
                    while chunk := f.read(CHUNK):
                        self.downloaded += len(chunk)
                        yield chunk
            except OSError as e:
                kind = MissingFileError if e.errno == errno.ENOENT else DownloadError
                raise kind(f"cannot read {url}: {e.strerror}") from None
            return
        try:
            # identity: some mirrors add Content-Encoding: gzip to .gz files, which requests would then undo
            resp = self.session.get(url, stream=True, timeout=self.timeout, headers={"Accept-Encoding": "identity"})
        except requests.RequestException as e:
            raise DownloadError(f"cannot reach {safe_url(url)}: {type(e).__name__}") from None
        with resp:
            if resp.status_code >= 400:
                hint = None
                if resp.status_code == 404 and url.endswith(self.index_path):
                    hint = NO_REPOSITORY_HINT
                kind = MissingFileError if resp.status_code in (404, 410) else DownloadError
                raise kind(f"HTTP {resp.status_code} from {safe_url(url)}", hint=hint)
            # read1 hands over what each socket read brings, so a mirror that drips its answer trips the pace
            # check (at least min_rate bytes/s over every window) instead of holding the build forever.
            try:
                for chunk in paced(iter(lambda: resp.raw.read1(CHUNK), b""), self.pace, safe_url(url)):
                    self.downloaded += len(chunk)
                    yield chunk
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                raise DownloadError(f"connection lost while reading {safe_url(url)}: {type(e).__name__}") from None


class YumRepository(RepositoryReader):
    """One yum repository at ``url`` (the directory that holds ``repodata/``), read through one HTTP session.

    ``cache`` holds verified primary files and packages, each under its checksum.
    """

    index_path = "repodata/repomd.xml"
    index_max = REPOMD_MAX
    _repomd: dict[str, MetadataFile] | None = None  # fetched by load_index, used once by packages

    def _check_index(self, data: bytes, what: str) -> None:
        parse_repomd(data, what)

    def load_index(self) -> None:
        self._repomd = self.repomd()

    def repomd(self) -> dict[str, MetadataFile]:
        """Fetch and parse repodata/repomd.xml (always fetched: it is what says whether anything changed).

        Raises DownloadError if the mirror cannot be reached or has no repository there, RepoMetadataError if
        what it serves is not repomd.xml.
        """
        return parse_repomd(self._read_index(), safe_url(_join(self.url, self.index_path)))

    def packages(self) -> list[Package]:
        """Every package of the repository's primary metadata (fetched once, then served from the cache), from
        the repomd.xml :meth:`load_index` fetched, or a fresh one.

        Raises DownloadError, RepoMetadataError, or ChecksumMismatchError if the primary file does not match
        repomd.xml.
        """
        repomd, self._repomd = self._repomd or self.repomd(), None
        primary = repomd["primary"]
        path = self._fetch(
            _join(primary.base or self.url, primary.href),
            primary.checksum_type,
            primary.checksum,
            primary.size,
            Path("repodata") / _hash_name(primary.checksum_type, "primary") / primary.checksum,
            f"primary metadata of {safe_url(self.url)}",
        )
        with path.open("rb") as f:
            found = list(parse_primary(f, f"primary metadata of {safe_url(self.url)}"))
        return [_with_repo(p, self.url) for p in found]

    def download(self, pkg: Package) -> Path:
        """The verified .rpm of ``pkg`` in the cache: fetched unless a verified copy is already there.

        Raises ChecksumMismatchError (nothing kept) if the bytes differ from the metadata, DownloadError if the
        mirror fails, LocalIOError if the cache is unwritable.
        """
        return self._fetch(
            pkg.url,
            pkg.checksum_type,
            pkg.checksum,
            pkg.size,
            Path("packages") / _hash_name(pkg.checksum_type, pkg.nevra) / pkg.checksum / pkg.filename,
            pkg.nevra,
        )

    def _fetch(self, url: str, ctype: str, digest: str, size: int | None, rel: Path, what: str) -> Path:
        dest = self.cache / rel
        algo = _hash_name(ctype, what)
        if dest.is_file():
            try:
                if _verify_file(dest, algo, digest, size):
                    mark_used(dest)  # for cache prune: served from the cache now
                    return dest
                dest.unlink()  # a corrupted cache entry is dropped, never used
            except OSError as e:
                raise LocalIOError(f"cannot read cached {dest}: {e.strerror}") from None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LocalIOError(f"cannot create cache directory {dest.parent}: {e.strerror}") from None
        attempt = 1
        try:
            while True:
                try:
                    self._fetch_once(url, algo, ctype, digest, size, dest, what)
                    return dest
                except DownloadError:
                    if attempt >= self.attempts:
                        raise
                    attempt += 1
        except ImagectlError:
            _remove_empty(dest.parent, self.cache)  # a refused or failed package leaves no trace in the cache
            raise

    def _fetch_once(
        self, url: str, algo: str, ctype: str, digest: str, size: int | None, dest: Path, what: str
    ) -> None:
        cap = METADATA_MAX if size is None else size
        h = hashlib.new(algo)
        n = 0
        with AtomicFile(dest, suffix=".part") as out:
            for chunk in self._chunks(url):
                n += len(chunk)
                if n > cap:
                    raise ChecksumMismatchError(
                        f"{what}: {safe_url(url)} sent more than the declared {cap} bytes; refused"
                    )
                h.update(chunk)
                out.write(chunk)
            if size is not None and n < size:
                raise DownloadError(f"{what}: {safe_url(url)} ended after {n} of {size} bytes")
            if h.hexdigest() != digest:
                raise ChecksumMismatchError(
                    f"{what}: checksum mismatch: metadata says {ctype} {digest}, downloaded bytes have "
                    f"{h.hexdigest()} ({n} bytes from {safe_url(url)}); refused, nothing kept"
                )


def _with_repo(p: Package, url: str) -> Package:
    return dataclasses.replace(p, repo_url=url)


def _verify_file(path: Path, algo: str, digest: str, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    h = hashlib.new(algo)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest() == digest


def _remove_empty(d: Path, stop: Path) -> None:
    """Remove ``d`` and its parents up to (not including) ``stop`` while they are empty."""
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent
