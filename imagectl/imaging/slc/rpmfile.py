"""Read an .rpm in pure Python: its headers (typed tags, byte ranges), its file list, its payload, and the members
of the payload's "newc" cpio archive with their data.

Why not the ``rpm2cpio`` program: it writes the archive to stdout only, and :func:`imagectl.runner.run` streams a
child's output as text to a log, not as bytes to a file; running it under a shell redirect is what the project
forbids. Why read the archive here rather than with ``cpio``: the code that checks a member's name must be the code
that writes it (see :mod:`imagectl.imaging.slc.extract`), so each member is given exactly as stored: raw name bytes,
type, ids, link count, inode and where its data lies.

The layout (rpm's "lead", signature header, header, payload) follows rpm's file format documentation; every size
read from the file is bounded before it is used.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagectl.errors import InvalidInputError

__all__ = [
    "CpioMember",
    "FileEntry",
    "Header",
    "RpmFormatError",
    "RpmLayout",
    "cpio_members",
    "digest_algo",
    "file_entries",
    "payload_limit",
    "read_data",
    "read_layout",
    "write_payload",
]

_LEAD_MAGIC = b"\xed\xab\xee\xdb"
_HEADER_MAGIC = b"\x8e\xad\xe8\x01"
_MAX_HEADER = 256 << 20  # bytes: rpm refuses headers this large too
MAX_NAME = 4096  # bytes: PATH_MAX, for member names and symlink targets
MAX_MEMBERS = 1_000_000  # files in one package; the largest distribution packages hold a few ten thousand
CHUNK = 1 << 20

# Header tags (rpmtag.h); the signature header's own tags live in rpmsig.
TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH = 1000, 1001, 1002, 1003, 1022
TAG_OLDFILENAMES, TAG_FILESIZES, TAG_FILEMODES, TAG_FILEMTIMES = 1027, 1028, 1030, 1034
TAG_FILEDIGESTS, TAG_FILELINKTOS, TAG_FILEFLAGS = 1035, 1036, 1037
TAG_FILEUSERNAME, TAG_FILEGROUPNAME = 1039, 1040
TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1116, 1117, 1118
TAG_PAYLOADFORMAT, TAG_PAYLOADCOMPRESSOR = 1124, 1125
TAG_LONGFILESIZES, TAG_FILEDIGESTALGO = 5008, 5011
TAG_PAYLOADDIGEST, TAG_PAYLOADDIGESTALGO = 5092, 5093
FILE_GHOST = 1 << 6  # RPMFILE_GHOST: listed in the header, never in the payload

# OpenPGP hash algorithm numbers, as rpm stores them (FILEDIGESTALGO, PAYLOADDIGESTALGO).
DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

_CHAR, _INT8, _INT16, _INT32, _INT64, _STRING, _BIN, _STRING_ARRAY, _I18NSTRING = range(1, 10)
_INT_FORMATS = {_CHAR: "B", _INT8: "B", _INT16: "H", _INT32: "I", _INT64: "Q"}


class RpmFormatError(InvalidInputError):
    """A file is not an rpm (or its payload is not a cpio archive imagectl can read)."""


@dataclass(frozen=True)
class Header:
    """One rpm header structure: its tags by type and where it lies in the file (``start``: its magic's offset)."""

    int_tags: dict[int, tuple[int, ...]]
    str_tags: dict[int, tuple[str, ...]]  # STRING (one element), STRING_ARRAY and I18NSTRING tags
    bin_tags: dict[int, bytes]
    start: int
    end: int

    def ints(self, tag: int) -> tuple[int, ...] | None:
        return self.int_tags.get(tag)

    def strings(self, tag: int) -> tuple[str, ...] | None:
        return self.str_tags.get(tag)

    def string(self, tag: int) -> str | None:
        v = self.str_tags.get(tag)
        return v[0] if v else None

    def binary(self, tag: int) -> bytes | None:
        return self.bin_tags.get(tag)

    def __contains__(self, tag: int) -> bool:
        return tag in self.int_tags or tag in self.str_tags or tag in self.bin_tags


@dataclass(frozen=True)
class RpmLayout:
    """The two headers of an .rpm and where its (compressed) payload starts."""

    signature: Header
    header: Header
    payload_start: int
    file_size: int

    @property
    def nevra(self) -> str:
        """name-[epoch:]version-release.arch, as the header says (for messages)."""
        h = self.header
        epoch = h.ints(TAG_EPOCH)
        ev = f"{epoch[0]}:" if epoch else ""
        return f"{h.string(TAG_NAME)}-{ev}{h.string(TAG_VERSION)}-{h.string(TAG_RELEASE)}.{h.string(TAG_ARCH)}"


@dataclass(frozen=True)
class FileEntry:
    """One file of the header's file list: what the (signed) header declares about it."""

    name: str  # without the leading "/": "usr/bin/yum"; "" for "/" itself
    mode: int  # st_mode: type and permission bits, setuid/setgid/sticky included
    size: int
    digest: str  # lower-case hex, "" for anything but a regular file
    link: str  # symlink target, "" for anything but a symlink
    flags: int
    user: str
    group: str
    mtime: int | None


@dataclass(frozen=True)
class CpioMember:
    """One member of a newc cpio archive, exactly as stored."""

    name: str  # decoded with surrogateescape (so it round-trips to the raw bytes), e.g. "./usr/bin/yum"
    mode: int
    size: int
    link: str | None  # symlink target, for symlinks
    raw_name: bytes = b""  # the name's bytes up to (not including) the terminating NUL
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    dev: tuple[int, int] = (0, 0)  # major, minor of the device the file was on (hard links: same dev and ino)
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node
    data_offset: int | None = field(default=None, compare=False)  # where the data starts (seekable archives)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise RpmFormatError(f"{what}: truncated")
    return data


def _read_header(f: IO[bytes], what: str) -> Header:
    """Read one header structure at the current position of ``f`` and decode every tag."""
    start = f.tell()
    intro = _read_exact(f, 16, what)
    if intro[:4] != _HEADER_MAGIC:
        raise RpmFormatError(f"{what}: bad header magic")
    count, size = struct.unpack(">II", intro[8:16])
    if count * 16 + size > _MAX_HEADER:
        raise RpmFormatError(f"{what}: header too large")
    index = _read_exact(f, count * 16, what)
    data = _read_exact(f, size, what)
    ints: dict[int, tuple[int, ...]] = {}
    strs: dict[int, tuple[str, ...]] = {}
    bins: dict[int, bytes] = {}
    for i in range(count):
        tag, typ, offset, n = struct.unpack(">IIII", index[i * 16 : i * 16 + 16])
        if offset >= size or n == 0:
            continue  # region trailers point past the data; nothing we read is empty
        if typ in _INT_FORMATS:
            width = struct.calcsize(_INT_FORMATS[typ])
            if offset + n * width > size:
                raise RpmFormatError(f"{what}: tag {tag} runs past the header's data")
            ints[tag] = struct.unpack_from(f">{n}{_INT_FORMATS[typ]}", data, offset)
        elif typ == _BIN:
            if offset + n > size:
                raise RpmFormatError(f"{what}: tag {tag} runs past the header's data")
            bins[tag] = data[offset : offset + n]
        elif typ in (_STRING, _STRING_ARRAY, _I18NSTRING):
            strs[tag] = _strings(data, offset, 1 if typ == _STRING else n, f"{what}: tag {tag}")
    return Header(ints, strs, bins, start, f.tell())


def _strings(data: bytes, offset: int, n: int, what: str) -> tuple[str, ...]:
    if n > len(data) - offset:
        raise RpmFormatError(f"{what} runs past the header's data")
    out: list[str] = []
    pos = offset
    for _ in range(n):
        end = data.find(b"\0", pos)
        if end < 0:
            raise RpmFormatError(f"{what} runs past the header's data")
        out.append(data[pos:end].decode("utf-8", "surrogateescape"))
        pos = end + 1
    return tuple(out)


def read_layout(f: IO[bytes], what: str) -> RpmLayout:
    """Read the lead and both headers of the rpm open as ``f`` (from its start); ``f`` is left at the payload.

    Raises RpmFormatError for a file that is not an rpm or whose headers are malformed or truncated.
    """
    f.seek(0, 2)
    file_size = f.tell()
    f.seek(0)
    if _read_exact(f, 96, what)[:4] != _LEAD_MAGIC:
        raise RpmFormatError(f"{what}: not an rpm file (bad lead magic)")
    sig = _read_header(f, f"{what} signature")
    _read_exact(f, (8 - f.tell() % 8) % 8, what)  # the signature header is padded to 8 bytes
    header = _read_header(f, f"{what} header")
    return RpmLayout(sig, header, f.tell(), file_size)


def file_entries(header: Header, what: str) -> dict[str, FileEntry]:
    """The header's file list, by name without the leading "/" (rpm's OLDFILENAMES, or BASENAMES + DIRNAMES +
    DIRINDEXES since rpm 4), with modes, sizes, digests, link targets, flags, owners and mtimes.

    Raises RpmFormatError when the per-file arrays disagree in length or a digest algorithm is unknown.
    """
    names = header.strings(TAG_OLDFILENAMES)
    if names is None:
        base, dirs, idx = header.strings(TAG_BASENAMES), header.strings(TAG_DIRNAMES), header.ints(TAG_DIRINDEXES)
        if base is None:
            return {}
        if dirs is None or idx is None or len(idx) != len(base) or any(i >= len(dirs) for i in idx):
            raise RpmFormatError(f"{what}: the header's file list is inconsistent (dirnames/dirindexes)")
        names = tuple(dirs[i] + b for i, b in zip(idx, base, strict=True))
    n = len(names)
    if n > MAX_MEMBERS:
        raise RpmFormatError(f"{what}: the header lists {n} files, more than {MAX_MEMBERS}")
    modes = header.ints(TAG_FILEMODES)
    sizes = header.ints(TAG_LONGFILESIZES) or header.ints(TAG_FILESIZES)
    digests = header.strings(TAG_FILEDIGESTS) or ("",) * n
    links = header.strings(TAG_FILELINKTOS) or ("",) * n
    flags = header.ints(TAG_FILEFLAGS) or (0,) * n
    users = header.strings(TAG_FILEUSERNAME) or ("",) * n
    groups = header.strings(TAG_FILEGROUPNAME) or ("",) * n
    mtimes: tuple[int | None, ...] = header.ints(TAG_FILEMTIMES) or (None,) * n
    arrays = (modes, sizes, digests, links, flags, users, groups, mtimes)
    if any(a is None or len(a) != n for a in arrays):
        raise RpmFormatError(f"{what}: the header's per-file arrays do not all have {n} entries")
    assert modes is not None and sizes is not None
    out: dict[str, FileEntry] = {}
    for i, full in enumerate(names):
        name = full.strip("/")
        out[name] = FileEntry(
            name, modes[i], sizes[i], digests[i].lower(), links[i], flags[i], users[i], groups[i], mtimes[i]
        )
    return out


def digest_algo(header: Header, what: str) -> str:
    """hashlib's name for the header's file digest algorithm (MD5 when the header does not say, as before rpm 4.6).

    Raises RpmFormatError for an algorithm imagectl does not know.
    """
    algo = (header.ints(TAG_FILEDIGESTALGO) or (1,))[0]
    if algo not in DIGEST_ALGOS:
        raise RpmFormatError(f"{what}: unknown file digest algorithm {algo}")
    return DIGEST_ALGOS[algo]


def payload_limit(files: dict[str, FileEntry]) -> int:
    """The largest uncompressed payload the header's file list allows: every file's data and name with cpio's
    headers and padding, plus the trailer. A payload larger than this is refused while it is decompressed."""
    return sum(e.size + len(e.name) + 110 + 2 + 1 + 6 for e in files.values()) + 512


def write_payload(rpm: Path, out: IO[bytes], *, limit: int | None = None) -> RpmLayout:
    """Write the uncompressed cpio payload of ``rpm`` to ``out`` (what ``rpm2cpio RPM > OUT`` does); return the
    rpm's layout.

    Handles gzip, bzip2, xz and lzma payloads (every SLC release used gzip or xz). Raises RpmFormatError for a
    file that is not an rpm, a payload compressed with something else (zstd), not in cpio format, or larger than
    ``limit`` bytes once decompressed.
    """
    what = rpm.name
    with rpm.open("rb") as f:
        layout = read_layout(f, what)
        tags = layout.header
        fmt = tags.string(TAG_PAYLOADFORMAT) or "cpio"
        if fmt != "cpio":
            raise RpmFormatError(f"{what}: payload format {fmt!r}, expected cpio")
        compressor = tags.string(TAG_PAYLOADCOMPRESSOR) or "gzip"
        written = 0
        try:
            with _decompressor(compressor, f, what) as body:
                while block := body.read(CHUNK):
                    written += len(block)
                    if limit is not None and written > limit:
                        raise RpmFormatError(
                            f"{what}: the payload decompresses to more than the {limit} bytes its header declares"
                        )
                    out.write(block)
        except (OSError, EOFError, lzma.LZMAError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a write error on ``out``: the caller reports it
            raise RpmFormatError(f"{what}: corrupt {compressor} payload: {e}") from None
    return layout


def _decompressor(compressor: str, f: IO[bytes], what: str) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    # Closing these leaves ``f`` open: each was handed a file object, not a name.
    if compressor == "gzip":
        return gzip.GzipFile(fileobj=f)
    if compressor == "bzip2":
        return bz2.BZ2File(f)
    if compressor in ("xz", "lzma"):
        return lzma.LZMAFile(f, format=lzma.FORMAT_XZ if compressor == "xz" else lzma.FORMAT_ALONE)
    raise RpmFormatError(f"{what}: payload compressed with {compressor!r}, which imagectl cannot read")


def cpio_members(archive: IO[bytes], what: str = "archive") -> Iterator[CpioMember]:
    """Yield the members of a "newc" cpio archive (the format of every rpm payload), up to its trailer.

    Names are given as stored: a name with a NUL byte inside is *not* cut there (the caller refuses it). Symlink
    targets are read (at most :data:`MAX_NAME` bytes); other data is skipped, its offset recorded when the
    archive is seekable (:func:`read_data` reads it). Raises RpmFormatError for another cpio format, a malformed
    or truncated archive, or more than :data:`MAX_MEMBERS` members.
    """
    count = 0
    while True:
        head = archive.read(110)
        if len(head) != 110:
            raise RpmFormatError(f"{what}: cpio archive ends without a trailer")
        magic = head[:6]
        if magic not in (b"070701", b"070702"):
            raise RpmFormatError(f"{what}: not a newc cpio archive (magic {magic!r})")
        try:
            fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise RpmFormatError(f"{what}: malformed cpio header") from None
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, _check = fields
        if not 0 < namesize <= MAX_NAME + 1:
            raise RpmFormatError(f"{what}: cpio member name of {namesize} bytes")
        stored = _read_exact(archive, namesize, what)
        _read_exact(archive, (4 - (110 + namesize) % 4) % 4, what)
        if stored[-1:] != b"\0":
            raise RpmFormatError(f"{what}: cpio member name is not NUL-terminated")
        raw = stored[:-1]
        if raw == b"TRAILER!!!":
            return
        count += 1
        if count > MAX_MEMBERS:
            raise RpmFormatError(f"{what}: more than {MAX_MEMBERS} cpio members")
        name = raw.decode("utf-8", "surrogateescape")
        link = None
        offset = archive.tell() if archive.seekable() else None
        if stat.S_ISLNK(mode):
            if size > MAX_NAME:
                raise RpmFormatError(f"{what}: symlink {name!r} has a {size}-byte target")
            link = _read_exact(archive, size, what).decode("utf-8", "surrogateescape")
        else:
            _skip(archive, size, what)
        _read_exact(archive, (4 - size % 4) % 4, what)
        yield CpioMember(name, mode, size, link, raw, ino, uid, gid, nlink, mtime, (dmaj, dmin), (rmaj, rmin), offset)


def read_data(archive: IO[bytes], member: CpioMember, what: str) -> Iterator[bytes]:
    """The data of ``member`` in chunks, read from its recorded offset in the seekable ``archive``.

    Raises RpmFormatError if the archive is shorter than the member says.
    """
    if member.data_offset is None:
        raise RpmFormatError(f"{what}: member {member.name!r} has no recorded data offset")
    archive.seek(member.data_offset)
    left = member.size
    while left > 0:
        chunk = archive.read(min(left, CHUNK))
        if not chunk:
            raise RpmFormatError(f"{what}: truncated")
        left -= len(chunk)
        yield chunk


def _skip(f: IO[bytes], n: int, what: str) -> None:
    if f.seekable():
        end = f.seek(0, 1) + n
        if f.seek(0, 2) < end:
            raise RpmFormatError(f"{what}: truncated")
        f.seek(end)
        return
    while n > 0:
        chunk = f.read(min(n, CHUNK))
        if not chunk:
            raise RpmFormatError(f"{what}: truncated")
        n -= len(chunk)
