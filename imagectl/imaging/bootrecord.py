"""``imagectl test IMAGE --record``: the boot test's result written into the image's build record.

The record (``NAME-ARCH.build.json`` beside the image, what ``publish --from-build`` reads) gains a ``boot_test``
member: passed or not, the marker, the accelerator, how long, on which host, when, and the SHA-256 of the bytes
that were booted. ``publish --from-build`` carries it into the signed metadata, where a protected channel asks for
it. The record is checked before the (long) boot and again before it is rewritten, atomically: it must be a
regular file (not a symlink), an imagectl build record, and describe exactly this image file with these bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl.buildrecord import MAX_SIZE, BootTest, BuildRecord, NotJSONError, parse
from imagectl.errors import ImageMismatchError, InvalidInputError, LocalIOError, NotFoundError
from imagectl.fsio import SymlinkRefusedError, atomic_write, describe_mode, read_regular, sha256_file

__all__ = ["BootRecord", "open_record"]


def _sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise LocalIOError.from_os("read", path, e) from None


def _load(path: Path, image: Path, sha256: str) -> tuple[BuildRecord, int]:
    """The record at ``path`` (not through a symlink) and its mode; refused unless it describes ``image`` with
    these bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError(
            f"no build record {path} for {image.name}", hint="pass the record: imagectl test IMAGE --record RECORD"
        ) from None
    except OSError as e:
        raise LocalIOError.from_os("read", path, e) from None
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefusedError(f"refusing build record {path}: it is a symbolic link (not followed)")

    def same_file(now: os.stat_result) -> None:  # not swapped for another file between lstat and open
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise SymlinkRefusedError(f"refusing build record {path}: it changed while being opened")

    data = read_regular(path, MAX_SIZE, what="build record", error=InvalidInputError, check=same_file)
    try:
        record = parse(data, str(path))
    except NotJSONError as e:
        raise InvalidInputError(f"build record {path} is not JSON: {e.reason}") from None
    entry = record.image(image.name)
    if entry is None:
        files = [i.file for i in record.images or ()]
        raise ImageMismatchError(
            f"build record {path} is for {', '.join(files) or 'no image'}, not {image.name}",
            hint="pass this image's record with --record RECORD",
        )
    described = path.parent / image.name
    try:
        same = described.samefile(image)
    except OSError:
        same = False
    if not same:
        raise ImageMismatchError(f"build record {path} describes {described}, not {image}")
    if entry.sha256 != sha256:
        raise ImageMismatchError(
            f"{image} has sha256 {sha256[:12]}…, its build record {path} says {str(entry.sha256)[:12]}…: "
            "the image changed after the build",
            hint="build it again (imagectl build), then test the new image",
        )
    return record, stat.S_IMODE(st.st_mode)


@dataclass(frozen=True)
class BootRecord:
    """A build record checked to describe one image file, ready to receive that image's boot test."""

    path: Path
    image: Path
    image_sha256: str
    hypervisor: str = "hvm"  # what the record says the image was built for (xen-pv boots through pygrub)

    def write(self, *, passed: bool, marker: str, accel: str, seconds: float) -> dict[str, Any]:
        """Add (or replace) ``boot_test`` in the record, atomically; return it. The record is checked again first
        (it may have been rebuilt while the guest booted)."""
        record, mode = _load(self.path, self.image, self.image_sha256)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        result = BootTest(
            passed=passed,
            marker=marker,
            accel=accel,
            seconds=max(0, round(seconds)),
            host=socket.gethostname()[:255] or "unknown",
            at=now.isoformat().replace("+00:00", "Z"),
            image_sha256=self.image_sha256,
        )
        atomic_write(self.path, dataclasses.replace(record, boot_test=result).to_json().encode(), mode=mode)
        return result.to_dict()


def open_record(image: Path, record: Path | None = None) -> BootRecord:
    """The build record of ``image`` (``record``, else ``NAME-ARCH.build.json`` beside it), checked before a boot.

    Raises NotFoundError when there is none, SymlinkRefusedError (exit 14) for a symlink, InvalidInputError (3)
    for a file that is not an imagectl build record, ImageMismatchError (11) for a record of another image file or
    of other bytes, LocalIOError when the image cannot be read.
    """
    try:
        st = os.stat(image)
    except OSError as e:
        raise LocalIOError.from_os("read", image, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{image} is {describe_mode(st.st_mode)}, not an image file")
    path = record if record is not None else image.with_name(f"{image.stem}.build.json")
    sha256 = _sha256(image)
    rec, _mode = _load(path, image, sha256)
    return BootRecord(path, image, sha256, rec.target.hypervisor or "hvm")
