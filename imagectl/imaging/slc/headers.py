"""Read a yum 2.0 repository (``headers/header.info`` and one ``headers/*.hdr`` per package), as SLC 3's mirrors
serve them, and fetch packages from it bound to the headers they were chosen by.

The format (yum 2.0, ``yum-arch``): ``header.info`` has one line per package, ``EPOCH:NAME-VERSION-RELEASE.ARCH=
PATH``, PATH relative to the repository; ``headers/NAME-EPOCH-VERSION-RELEASE.ARCH.hdr`` is that package's main
rpm header, gzip-compressed (or not: yum-arch without ``-z``). A ``.hdr`` is either the header's bytes as in the
.rpm (with or without the 8-byte header magic), or what ``yum-arch`` wrote with rpm 4.2's ``hdr.unload(1)``: a
copy made by ``headerCopy`` (no region tag, entries laid out anew) of the header as ``rpmReadPackageFile``
returned it, i.e. with the signature header's tags merged in (SIGSIZE, SIGMD5, SIGGPG, ... under tags 256-999,
PAYLOADSIZE as ARCHIVESIZE) and FILEUIDS/FILEGIDS dropped. Both are accepted; see :func:`header_difference`.

Trust: neither file is signed, and header.info carries no checksums. A package is accepted only if

- its .hdr describes exactly the package the header.info line names (name, epoch, version, release, arch),
  checked before the .rpm is fetched;
- the downloaded .rpm's main header is that .hdr: the same bytes, or every tag of the .rpm's header present in the
  .hdr with the same type, count and value, and nothing else in the .hdr but what rpm merges in from the signature
  header (:func:`header_difference`). So a tampered .hdr, or a header.info line pointing at another package (an
  older signed build, say), is refused with the package's name (exit 11) and nothing of it is kept;
- and, checked by stage 1 before anything is unpacked, its OpenPGP signatures verify against the recipe's pinned
  keys (:mod:`imagectl.imaging.slc.rpmsig`). Authenticity comes from there alone: a hostile mirror controls both the
  .hdr and the .rpm, so the header check binds the choice to the package, it does not prove who built it.

Bounds: header.info at most :data:`HEADER_INFO_MAX` bytes, a .hdr :data:`HDR_MAX` as served and
:data:`HDR_UNPACKED_MAX` gunzipped, and an .rpm, whose size nothing declares, :data:`RPM_MAX` (512 MiB: the
largest SLC 3 packages are a few ten MB). Every read goes through the repository's one HTTP session and its pace
rule (:func:`imagectl.store.base.paced`).

Cache: ``CACHE/headers/NAME-EPOCH-VERSION-RELEASE.ARCH/`` holds the verified pair (the gunzipped .hdr and the
.rpm) and the .rpm's sha256 as it was downloaded, written only once the two agree; a second run fetches header.info
only, and checks the pair again (a cached .rpm whose bytes changed is dropped and fetched anew).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from imagectl.errors import DownloadError, ImagectlError, ImageMismatchError, LocalIOError
from imagectl.fsio import AtomicFile, atomic_write, mark_used, sha256_file
from imagectl.http import safe_url
from imagectl.imaging.slc.evr import EVR
from imagectl.imaging.slc.repo import Package, RepoMetadataError, RepositoryReader, _check_href, _join, _remove_empty
from imagectl.imaging.slc.rpmfile import RpmFormatError, read_layout

__all__ = [
    "HDR_MAX",
    "HDR_UNPACKED_MAX",
    "HEADER_INFO_MAX",
    "RPM_MAX",
    "HeaderMismatchError",
    "HeadersRepository",
    "hdr_name",
    "header_difference",
    "parse_header_info",
]

HEADER_INFO_MAX = 32 << 20  # bytes: about 100 bytes a package, so a few hundred KiB for SLC 3's largest trees
HDR_MAX = 4 << 20  # bytes of a .hdr as served (gzip): the largest package headers take a few hundred KiB
HDR_UNPACKED_MAX = 64 << 20  # bytes of a .hdr once gunzipped; also the largest .rpm main header compared with one
RPM_MAX = 512 << 20  # bytes of an .rpm: header.info declares no size, so this generous cap stands in for one
_CHUNK = 1 << 20

_MAGIC = b"\x8e\xad\xe8\x01"
_REGION_TAGS = (61, 62, 63)  # HEADERIMAGE, HEADERSIGNATURES, HEADERIMMUTABLE: layout, not content
_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_EPOCH, _TAG_ARCH = 1000, 1001, 1002, 1003, 1022
_DROPPED_BY_RPM = (1031, 1032)  # FILEUIDS, FILEGIDS: legacyRetrofit removes them when file owner names are there
_ADDED_BY_RPM = (1046, 1098)  # ARCHIVESIZE (from the signature's PAYLOADSIZE), PREFIXES (from DEFAULTPREFIX)
_TAG_NAMES = {1000: "NAME", 1001: "VERSION", 1002: "RELEASE", 1003: "EPOCH", 1004: "SUMMARY", 1005: "DESCRIPTION"}
_TAG_NAMES |= {1022: "ARCH", 1028: "FILESIZES", 1030: "FILEMODES", 1035: "FILEDIGESTS", 1117: "BASENAMES"}
_INT_WIDTH = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8}  # CHAR, INT8, INT16, INT32, INT64
_BIN, _STRING, _STRING_ARRAY, _I18NSTRING = 7, 6, 8, 9
_FIELD = re.compile(r"[A-Za-z0-9._+~^%-]+\Z")

_T = TypeVar("_T")
_Entries = dict[int, tuple[int, int, bytes]]  # tag -> (type, count, data)


class HeaderMismatchError(ImageMismatchError):
    """A .hdr, or a downloaded .rpm, is not the package header.info names: another package, altered bytes, or more
    bytes than any package has."""


def hdr_name(pkg: Package) -> str:
    """The file name yum-arch gives the header of ``pkg``: ``NAME-EPOCH-VERSION-RELEASE.ARCH.hdr``."""
    return f"{pkg.name}-{pkg.evr.epoch}-{pkg.evr.version}-{pkg.evr.release}.{pkg.arch}.hdr"


def _strip_envra(envra: str) -> tuple[str, str, str, str, str] | None:
    """yum 2.0's ``stripENVRA``: arch after the last '.', release after the last '-' before it, version after the
    '-' before that, epoch before the first ':', the name between. None when a part is missing."""
    arch_at = envra.rfind(".")
    rel_at = envra.rfind("-", 0, arch_at) if arch_at > 0 else -1
    ver_at = envra.rfind("-", 0, rel_at) if rel_at > 0 else -1
    epoch_at = envra.find(":")
    if min(arch_at, rel_at, ver_at, epoch_at) <= 0 or epoch_at >= ver_at:
        return None
    epoch, name, version = envra[:epoch_at], envra[epoch_at + 1 : ver_at], envra[ver_at + 1 : rel_at]
    return epoch, name, version, envra[rel_at + 1 : arch_at], envra[arch_at + 1 :]


def parse_header_info(data: bytes, what: str = "headers/header.info") -> list[Package]:
    """The packages a yum 2.0 ``header.info`` lists (blank lines are skipped).

    Raises RepoMetadataError naming the line number for a line that is not ``EPOCH:NAME-VERSION-RELEASE.ARCH=PATH``
    (ASCII, a numeric epoch, no part empty or holding characters a package file name cannot have), or whose PATH is
    not an .rpm inside the repository.
    """
    out: list[Package] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        where = f"{what} line {number}"
        shown = line[:120].decode("ascii", "backslashreplace") + ("..." if len(line) > 120 else "")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise RepoMetadataError(f"{where}: not ASCII text: {shown!r}") from None
        envra, sep, href = text.partition("=")
        parts = _strip_envra(envra) if sep and "=" not in href else None
        if parts is None or not all(_FIELD.match(p) for p in parts) or not parts[0].isdigit():
            raise RepoMetadataError(f"{where}: expected EPOCH:NAME-VERSION-RELEASE.ARCH=PATH, got {shown!r}")
        epoch, name, version, release, arch = parts
        _check_href(href, where)
        if not href.endswith(".rpm"):
            raise RepoMetadataError(f"{where}: location {href!r} is not an .rpm")
        out.append(Package(name, arch, EVR(int(epoch), version, release), href, "", "", None))
    return out


def _entries(body: bytes, what: str) -> _Entries:
    """The entries of one header structure without its magic (counts, index, data), each with its data bytes.

    Raises HeaderMismatchError for a structure whose sizes or entries do not fit its bytes.
    """
    if len(body) < 8:
        raise HeaderMismatchError(f"{what} is not an rpm header (too short)")
    count, size = struct.unpack(">II", body[:8])
    if 8 + 16 * count + size != len(body):
        raise HeaderMismatchError(f"{what} is not an rpm header (its sizes do not add up)")
    data = body[8 + 16 * count :]
    out: _Entries = {}
    for i in range(count):
        tag, typ, offset, n = struct.unpack(">IIII", body[8 + 16 * i : 24 + 16 * i])
        if tag in out:
            raise HeaderMismatchError(f"{what}: tag {tag} appears twice")
        if typ in _INT_WIDTH or typ == _BIN:
            end = offset + n * _INT_WIDTH.get(typ, 1)
        elif typ in (_STRING, _STRING_ARRAY, _I18NSTRING):
            end = offset
            for _ in range(1 if typ == _STRING else n):
                nul = data.find(b"\0", end) if end < size else -1
                if nul < 0:
                    raise HeaderMismatchError(f"{what}: tag {tag} runs past the header's data")
                end = nul + 1
        else:
            end = offset  # RPM_NULL_TYPE and types rpm does not define: compared by type and count only
        if end > size:
            raise HeaderMismatchError(f"{what}: tag {tag} runs past the header's data")
        out[tag] = (typ, n, data[offset:end])
    return out


def _body(blob: bytes) -> bytes:
    """A header structure without its 8 bytes of magic, whichever way it came."""
    return blob[8:] if blob.startswith(_MAGIC) else blob


def header_difference(hdr: bytes, main: bytes, what: str = "the .hdr") -> str | None:
    """None if ``hdr`` (a gunzipped .hdr) is the .rpm main header ``main`` (from its magic to the payload), else
    why not, in words.

    They agree when the bytes are the same (a .hdr may lack the magic), or when every tag of ``main`` but its region
    tag is in ``hdr`` with the same type, count and value, and ``hdr`` has nothing more than the tags rpm adds when
    it reads a package (the signature tags it merges in; see the module's docstring). Byte layout (order, padding,
    region trailers) is not content and is not compared. Raises HeaderMismatchError if either is not a header.
    """
    a, b = _body(hdr), _body(main)
    if a == b:
        return None
    ours, theirs = _entries(a, what), _entries(b, "the .rpm's header")
    for tag, entry in theirs.items():
        if tag in _REGION_TAGS or (tag in _DROPPED_BY_RPM and tag not in ours):
            continue
        name = f"tag {tag}" + (f" ({_TAG_NAMES[tag]})" if tag in _TAG_NAMES else "")
        if tag not in ours:
            return f"{name} is not in {what}"
        if ours[tag] != entry:
            return f"{name} differs"
    for tag in ours:
        if tag not in theirs and tag not in _REGION_TAGS and not (256 <= tag < 1000 or tag in _ADDED_BY_RPM):
            return f"{what} has tag {tag}, which the .rpm's header lacks"
    return None


def _nevra_of(entries: _Entries) -> tuple[str, int, str, str, str] | None:
    def string(tag: int) -> str | None:
        typ, _n, data = entries.get(tag, (0, 0, b""))
        return data[:-1].decode("utf-8", "surrogateescape") if typ == _STRING and data.endswith(b"\0") else None

    typ, n, raw = entries.get(_TAG_EPOCH, (4, 1, bytes(4)))  # no EPOCH tag: epoch 0
    epoch = struct.unpack(">I", raw)[0] if typ == 4 and n == 1 and len(raw) == 4 else None
    name, version, release, arch = (string(t) for t in (_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_ARCH))
    if epoch is None or name is None or version is None or release is None or arch is None:
        return None
    return name, epoch, version, release, arch


def _describe(nevra: tuple[str, int, str, str, str]) -> str:
    name, epoch, version, release, arch = nevra
    return f"{name}-{f'{epoch}:' if epoch else ''}{version}-{release}.{arch}"


def _gunzip(raw: bytes, what: str) -> bytes:
    """``raw`` gunzipped (at most HDR_UNPACKED_MAX bytes), or as it is when it is not gzip data."""
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(raw, HDR_UNPACKED_MAX + 1)
    except zlib.error as e:
        raise HeaderMismatchError(f"{what} is corrupt gzip data ({e})") from None
    if len(out) > HDR_UNPACKED_MAX:
        raise HeaderMismatchError(f"{what} unpacks to more than {HDR_UNPACKED_MAX} bytes; not a package header")
    if not d.eof:
        raise HeaderMismatchError(f"{what} is truncated gzip data")
    return out


class HeadersRepository(RepositoryReader):
    """One yum 2.0 repository at ``url`` (the directory that holds ``headers/``), read through one HTTP session.

    Same interface as :class:`imagectl.imaging.slc.repo.YumRepository` for stage 1: :meth:`packages` lists what
    header.info names (no size, no checksum), :meth:`download` fetches a package's .hdr and .rpm and returns the
    .rpm once the two agree and match the header.info line (see the module's docstring).
    """

    index_path = "headers/header.info"
    index_max = HEADER_INFO_MAX
    _listed: list[Package] | None = None  # parsed by load_index, used once by packages

    def _check_index(self, data: bytes, what: str) -> None:
        parse_header_info(data, what)

    def load_index(self) -> None:
        self._listed = self._parse(self._read_index())

    def _parse(self, data: bytes) -> list[Package]:
        found = parse_header_info(data, safe_url(_join(self.url, self.index_path)))
        return [dataclasses.replace(p, repo_url=self.url) for p in found]

    def packages(self) -> list[Package]:
        """Every package header.info lists (the one :meth:`load_index` fetched, or a fresh one; never cached).

        Raises MissingFileError if there is no header.info, DownloadError, RepoMetadataError for a line that does
        not parse or a location outside the repository.
        """
        listed, self._listed = self._listed, None
        return listed if listed is not None else self._parse(self._read_index())

    def _dir(self, pkg: Package) -> Path:
        return self.cache / "headers" / hdr_name(pkg).removesuffix(".hdr")

    def download(self, pkg: Package) -> Path:
        """The .rpm of ``pkg`` in the cache, verified against its .hdr and header.info's line (not yet against the
        pinned keys: stage 1 does that); a verified pair already in the cache is checked again and used.

        Raises HeaderMismatchError (exit 11; nothing of the package kept) for a .hdr or .rpm that is not the package
        header.info names, or an .rpm larger than RPM_MAX; MissingFileError/DownloadError if the mirror fails;
        LocalIOError if the cache is unwritable.
        """
        d = self._dir(pkg)
        hdr_file, rpm_file, sum_file = d / hdr_name(pkg), d / pkg.filename, d / f"{pkg.filename}.sha256"
        kept = (hdr_file, rpm_file, sum_file)
        try:
            if all(f.is_file() for f in kept):
                try:
                    if sha256_file(rpm_file) == sum_file.read_text(encoding="ascii").strip():
                        self._check_rpm(pkg, self._check_hdr(pkg, _read_bounded(hdr_file)), rpm_file, str(rpm_file))
                        mark_used(rpm_file)  # for cache prune: served from the cache now
                        return rpm_file
                except (HeaderMismatchError, UnicodeDecodeError):
                    pass  # a damaged cache entry is dropped, never used
            for f in kept:
                f.unlink(missing_ok=True)
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LocalIOError(f"cannot use cache directory {d}: {e.strerror}") from None
        try:
            hdr = self._retrying(lambda: self._check_hdr(pkg, self._fetch_hdr(pkg)))
            with AtomicFile(rpm_file, suffix=".part") as rpm:
                digest = self._retrying(lambda: self._fetch_rpm(pkg, rpm))
                rpm.seal()
                self._check_rpm(pkg, hdr, Path(rpm.temp), safe_url(pkg.url))
                atomic_write(hdr_file, hdr)
                atomic_write(sum_file, f"{digest}\n".encode())
            return rpm_file
        except ImagectlError:
            for f in kept:
                f.unlink(missing_ok=True)
            raise
        finally:
            _remove_empty(d, self.cache)

    def discard(self, path: Path) -> None:
        """Remove a refused package from the cache: its .rpm and what is kept beside it (.hdr, sha256)."""
        if path.parent.parent == self.cache / "headers":
            for f in path.parent.glob("*.hdr"):
                super().discard(f)
            super().discard(path.with_name(f"{path.name}.sha256"))
        super().discard(path)

    def _retrying(self, fetch: Callable[[], _T]) -> _T:
        attempt = 1
        while True:
            try:
                return fetch()
            except DownloadError:
                if attempt >= self.attempts:
                    raise
                attempt += 1

    def _fetch_hdr(self, pkg: Package) -> bytes:
        url = _join(self.url, f"headers/{hdr_name(pkg)}")
        raw = bytearray()
        for chunk in self._chunks(url):
            raw += chunk
            if len(raw) > HDR_MAX:
                raise HeaderMismatchError(
                    f"{pkg.nevra}: {safe_url(url)} is larger than {HDR_MAX} bytes; not a package header; refused"
                )
        return _gunzip(bytes(raw), f"{pkg.nevra}: headers/{hdr_name(pkg)}")

    def _check_hdr(self, pkg: Package, hdr: bytes) -> bytes:
        """``hdr``, if it is a header of exactly the package header.info names; raises HeaderMismatchError."""
        what = f"headers/{hdr_name(pkg)}"
        found = _nevra_of(_entries(_body(hdr), f"{pkg.nevra}: {what}"))
        want = (pkg.name, pkg.evr.epoch, pkg.evr.version, pkg.evr.release, pkg.arch)
        if found != want:
            other = _describe(found) if found else "a header without name, version, release or arch"
            raise HeaderMismatchError(f"{pkg.nevra}: {what} describes {other}, not what header.info lists; refused")
        return hdr

    def _fetch_rpm(self, pkg: Package, out: AtomicFile) -> str:
        """Download the .rpm of ``pkg`` into ``out`` (emptied first: this may be a retry); its sha256."""
        out.file.seek(0)
        out.file.truncate()
        n, h = 0, hashlib.sha256()
        for chunk in self._chunks(pkg.url):
            n += len(chunk)
            if n > RPM_MAX:
                raise HeaderMismatchError(
                    f"{pkg.nevra}: {safe_url(pkg.url)} sent more than {RPM_MAX} bytes, the cap for a package "
                    "whose size the repository does not declare; refused, nothing kept"
                )
            h.update(chunk)
            out.write(chunk)
        return h.hexdigest()

    def _check_rpm(self, pkg: Package, hdr: bytes, rpm: Path, shown: str) -> None:
        """Raise HeaderMismatchError unless the .rpm at ``rpm`` (from ``shown``) has ``hdr`` as its main header."""
        what = f"headers/{hdr_name(pkg)}"
        try:
            with rpm.open("rb") as f:
                layout = read_layout(f, pkg.nevra)
                length = layout.payload_start - layout.header.start
                if length > HDR_UNPACKED_MAX:
                    raise HeaderMismatchError(f"{pkg.nevra}: {shown} has a {length}-byte header; refused, nothing kept")
                f.seek(layout.header.start)
                main = f.read(length)
        except RpmFormatError as e:
            raise HeaderMismatchError(f"{pkg.nevra}: {shown} is not an rpm ({e}); refused, nothing kept") from None
        except OSError as e:
            raise LocalIOError(f"cannot read {rpm}: {e.strerror}") from None
        found = _nevra_of(_entries(_body(main), f"{pkg.nevra}: the header of {shown}"))
        if found != (pkg.name, pkg.evr.epoch, pkg.evr.version, pkg.evr.release, pkg.arch):
            other = _describe(found) if found else "a package without name, version, release or arch"
            raise HeaderMismatchError(
                f"{pkg.nevra}: {shown} is {other}, not the package header.info lists; refused, nothing kept"
            )
        why = header_difference(hdr, main, what)
        if why is not None:
            raise HeaderMismatchError(
                f"{pkg.nevra}: the header of {shown} is not the one {what} holds ({why}); refused, nothing kept"
            )


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(HDR_UNPACKED_MAX + 1)
    if len(data) > HDR_UNPACKED_MAX:
        raise HeaderMismatchError(f"cached {path} is larger than {HDR_UNPACKED_MAX} bytes")
    return data
