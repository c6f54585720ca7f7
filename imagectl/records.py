"""Build records to compare or describe: from a ``*.build.json`` file, or the signed blob of a published image.

``imagectl diff`` and ``imagectl sbom`` take either. A record from a catalogue is the blob ``publish --from-build``
stored (catalogue/README.md §4.2): the image is resolved through :class:`~imagectl.catalogue.client.CatalogueReader`
(signatures, versions, expiry), and the blob is read bounded by its signed size and checked against the signed
SHA-256 before a byte of it is parsed. A record file is the user's own input, read as one (bounded, regular file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl.buildrecord import MAX_SIZE, BuildRecord, parse
from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.model import ImageRef, blob_key, parse_ref, side_blobs
from imagectl.errors import ImageMismatchError, LocalIOError, NotFoundError
from imagectl.fsio import read_regular
from imagectl.site.model import Package
from imagectl.store.base import ObjectMissingError, ObjectTooLargeError

__all__ = ["LoadedRecord", "is_record_path", "load_file", "load_published", "packages"]


@dataclass(frozen=True)
class LoadedRecord:
    """One image's build record and what is known of the image itself."""

    label: str  # NAME:VERSION (ARCH) or the file path: what messages and output call it
    build: BuildRecord
    name: str
    version: str | None
    arch: str
    os: str  # the record's target.os ("debian", "slc", …): chooses the purl type
    images: dict[str, tuple[int | None, str | None]]  # format -> (size, sha256) of the image files
    signed_format: str | None = None  # for a published image: the format the catalogue signed
    sbom: bytes | None = None  # for a published image: the SBOM publish stored, verified against its signed hash

    @property
    def record(self) -> dict[str, Any]:
        """The record as JSON, for readers of free-form members (the merged recipe, a package's licence)."""
        return self.build.to_dict()


def is_record_path(text: str) -> bool:
    """Whether a command-line reference names a build-record file rather than ``NAME[:VERSION|@CHANNEL]``: it holds
    a ``/`` (no reference does), or ends in ``.json`` without a ``:`` or ``@`` (``wn:1.json`` is a version)."""
    return "/" in text or (text.endswith(".json") and not any(c in text for c in ":@"))


def _images(record: BuildRecord) -> dict[str, tuple[int | None, str | None]]:
    return {f: (i.size, i.sha256) for f, i in record.images_by_format().items()}


def load_file(path: Path) -> LoadedRecord:
    """The build record at ``path``: LocalIOError (exit 14) if it is missing or unreadable, InvalidInputError
    (exit 3) if it is not a build record."""
    record = parse(read_regular(path, MAX_SIZE, what="build record", error=LocalIOError), str(path))
    target = record.target
    return LoadedRecord(
        label=str(path),
        build=record,
        name=target.name or path.name.removesuffix(".build.json"),
        version=target.version,
        arch=target.arch or "",
        os=target.os or "",
        images=_images(record),
    )


def load_published(reader: CatalogueReader, ref: ImageRef | str, arch: str) -> LoadedRecord:
    """The signed build record of the image ``ref`` names for ``arch``.

    Raises what :meth:`CatalogueReader.resolve` raises; NotFoundError (exit 4) when the image was published without
    a build record; ImageMismatchError (exit 11) when the blob is missing, longer or shorter than its signed size
    or has another SHA-256; InvalidInputError (exit 3) when the verified bytes are not a build record.
    """
    if isinstance(ref, str):
        ref = parse_ref(ref)
    rec = reader.resolve(ref, arch).record
    label = f"{rec.name}:{rec.version} ({rec.arch})"
    summary = rec.build_record
    if summary is None or "sha256" not in summary:
        raise NotFoundError(
            f"{label} has no build record", hint="only `publish --from-build` stores one; compare record files instead"
        )
    blobs = {what: _signed_blob(reader, label, what, sha, size) for what, sha, size in side_blobs(summary)}
    record = parse(blobs["build record"], f"the build record of {label}")
    return LoadedRecord(
        label=label,
        build=record,
        name=rec.name,
        version=rec.version,
        arch=rec.arch,
        os=rec.os or record.target.os or "",
        images={**_images(record), rec.format: (rec.size, rec.sha256)},  # the signed image wins over the record
        signed_format=rec.format,
        sbom=blobs.get("SBOM"),
    )


def _signed_blob(reader: CatalogueReader, label: str, what: str, sha: Any, size: Any) -> bytes:
    """The blob ``sha`` of ``size`` bytes the signed metadata names for ``label``, read within that size and
    checked: ImageMismatchError (exit 11) when it is missing, longer, shorter or has another SHA-256."""
    if not isinstance(sha, str) or len(sha) != 64 or type(size) is not int or size < 0:
        raise ImageMismatchError(f"{label}: the signed {what} summary names no valid blob")
    if size > MAX_SIZE:
        raise ImageMismatchError(f"{label}: its {what} is {size} bytes, more than the {MAX_SIZE} read")
    try:
        data = reader.store.read(blob_key(sha), size)  # refused past the signed size: never an endless read
    except ObjectMissingError:
        raise ImageMismatchError(f"{label}: its {what} {blob_key(sha)} is missing from the catalogue") from None
    except ObjectTooLargeError:
        raise ImageMismatchError(f"{label}: its {what} is longer than the signed {size} bytes") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise ImageMismatchError(
            f"{label}: its {what} does not match the signed size and SHA-256 (tampered or corrupt)"
        )
    return data


def packages(loaded: LoadedRecord) -> tuple[Package, ...]:
    """The record's package list, sorted by name, arch and version."""
    out = [Package(p.name, p.version or "", p.arch or "") for p in loaded.build.packages or ()]
    return tuple(sorted(out, key=lambda p: (p.name, p.arch, p.version)))
