"""Read an .rpm's payload (what ``rpm2cpio`` does) and list the members of a cpio archive, in pure Python.

Why not the ``rpm2cpio`` program: it writes the archive to stdout only, and :func:`imagectl.runner.run` streams a
child's output as text to a log, not as bytes to a file; running it under a shell redirect is what the project
forbids. Stripping the rpm lead and headers and decompressing the payload is ~50 lines. Why list the archive here
rather than with ``cpio -t``: we see each name exactly as cpio will (a name with a newline cannot hide a ``..``
line), plus each member's type and, for symlinks, its target.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imagectl.errors import InvalidInputError

__all__ = ["CpioMember", "RpmFormatError", "cpio_members", "write_payload"]

_LEAD_MAGIC = b"\xed\xab\xee\xdb"
_HEADER_MAGIC = b"\x8e\xad\xe8\x01"
_TAG_PAYLOADCOMPRESSOR = 1125
_TAG_PAYLOADFORMAT = 1124
_RPM_STRING = 6
_MAX_HEADER = 256 << 20  # bytes: rpm refuses headers this large too
_MAX_NAME = 4096  # bytes: PATH_MAX


class RpmFormatError(InvalidInputError):
    """A file is not an rpm (or its payload is not a cpio archive imagectl can read)."""


@dataclass(frozen=True)
class CpioMember:
    name: str  # as stored, e.g. "./usr/bin/yum"
    mode: int
    size: int
    link: str | None  # symlink target, for symlinks

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise RpmFormatError(f"{what}: truncated")
    return data


def _header(f: IO[bytes], what: str) -> dict[int, str]:
    """Read one rpm header structure; return its string tags (all we need)."""
    intro = _read_exact(f, 16, what)
    if intro[:4] != _HEADER_MAGIC:
        raise RpmFormatError(f"{what}: bad header magic")
    count, size = struct.unpack(">II", intro[8:16])
    if count * 16 + size > _MAX_HEADER:
        raise RpmFormatError(f"{what}: header too large")
    index = _read_exact(f, count * 16, what)
    data = _read_exact(f, size, what)
    out: dict[int, str] = {}
    for i in range(count):
        tag, typ, offset, _n = struct.unpack(">IIII", index[i * 16 : i * 16 + 16])
        if typ == _RPM_STRING and offset < size:
            end = data.find(b"\0", offset)
            out[tag] = data[offset : size if end < 0 else end].decode("utf-8", "replace")
    return out


def write_payload(rpm: Path, out: IO[bytes]) -> None:
    """Write the uncompressed cpio payload of ``rpm`` to ``out`` (what ``rpm2cpio RPM > OUT`` does).

    Handles gzip, bzip2, xz and lzma payloads (every SLC release used gzip or xz). Raises RpmFormatError for a
    file that is not an rpm, or a payload compressed with something else (zstd) or not in cpio format.
    """
    what = rpm.name
    with rpm.open("rb") as f:
        if _read_exact(f, 96, what)[:4] != _LEAD_MAGIC:
            raise RpmFormatError(f"{what}: not an rpm file (bad lead magic)")
        _header(f, f"{what} signature")
        pad = (8 - f.tell() % 8) % 8  # the signature header is padded to 8 bytes
        _read_exact(f, pad, what)
        tags = _header(f, f"{what} header")
        fmt = tags.get(_TAG_PAYLOADFORMAT, "cpio")
        if fmt != "cpio":
            raise RpmFormatError(f"{what}: payload format {fmt!r}, expected cpio")
        compressor = tags.get(_TAG_PAYLOADCOMPRESSOR, "gzip")
        try:
            with _decompressor(compressor, f, what) as body:
                shutil.copyfileobj(body, out, 1 << 20)
        except (OSError, EOFError, lzma.LZMAError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a write error on ``out``: the caller reports it
            raise RpmFormatError(f"{what}: corrupt {compressor} payload: {e}") from None


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

    Raises RpmFormatError for another cpio format or a malformed archive.
    """
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
        mode, size, namesize = fields[1], fields[6], fields[11]
        if not 0 < namesize <= _MAX_NAME:
            raise RpmFormatError(f"{what}: cpio member name of {namesize} bytes")
        raw_name = _read_exact(archive, namesize, what)
        archive.read((4 - (110 + namesize) % 4) % 4)
        name = raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if name == "TRAILER!!!":
            return
        link = None
        if stat.S_ISLNK(mode):
            if size > _MAX_NAME:
                raise RpmFormatError(f"{what}: symlink {name} has a {size}-byte target")
            link = _read_exact(archive, size, what).decode("utf-8", "surrogateescape")
        else:
            _skip(archive, size, what)
        archive.read((4 - size % 4) % 4)
        yield CpioMember(name, mode, size, link)


def _skip(f: IO[bytes], n: int, what: str) -> None:
    if f.seekable():
        f.seek(n, 1)
        return
    while n > 0:  # pragma: no cover - payload files are seekable
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise RpmFormatError(f"{what}: truncated")
        n -= len(chunk)
