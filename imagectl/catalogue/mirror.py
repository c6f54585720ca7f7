"""``imagectl mirror SRC DEST``: copy a verified subset of a catalogue, with the signed metadata that covers it.

A mirror serves the *same signed bytes* as its source (it holds no keys and signs nothing), so deployers pull
from it with the root they already pin. It is partial by design: the metadata chain (roots, timestamp, snapshot,
targets) in full, but only the image roles and blobs that the filters select; a client asking the mirror for an
image it does not hold gets a clear "not found", never unverified bytes.

Everything copied is verified first: the metadata by ``tuf.ngclient`` against the pinned root (the mirror writes
the very bytes the Updater verified, taken from its trusted cache), every blob by length and SHA-256 while it
streams. Order mirrors a publish: blobs, then versioned metadata, ``timestamp.json`` last, so an interrupted run
leaves the mirror as it was plus some blobs, and the next run resumes by skipping what is already there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.catalogue import model
from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.metadata import ROOT_MAX, cap_for, parse_metadata
from imagectl.catalogue.model import METADATA, ImageRecord, blob_key, image_keys, target_file_key
from imagectl.catalogue.verify import MIRROR_FILE
from imagectl.errors import (
    CatalogueStateError,
    ImageMismatchError,
    InvalidInputError,
    RollbackError,
    UntrustedMetadataError,
)
from imagectl.store import ObjectMissingError, Store
from imagectl.store.digest import FileDigest, Hasher

__all__ = ["MIRROR_FILE", "MirrorFilter", "MirrorReport", "mirror"]


@dataclass(frozen=True)
class MirrorFilter:
    names: frozenset[str] = frozenset()  # empty: every name
    arches: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()  # only versions some selected channel points at
    max_versions: int | None = None  # newest N versions per (name, arch)

    @classmethod
    def parse(cls, filters: list[str], max_versions: int | None) -> MirrorFilter:
        """From ``name=…``, ``arch=…``, ``channel=…`` (repeatable; values may be comma-separated)."""
        by: dict[str, set[str]] = {"name": set(), "arch": set(), "channel": set()}
        for f in filters:
            key, _, value = f.partition("=")
            if key not in by or not value:
                raise InvalidInputError(f"--filter takes name=…, arch=… or channel=…, got {f!r}")
            for v in value.split(","):
                {"name": model.check_name, "arch": model.check_arch, "channel": model.check_channel}[key](v)
                by[key].add(v)
        if max_versions is not None and max_versions < 1:
            raise InvalidInputError("--max must be at least 1")
        return cls(frozenset(by["name"]), frozenset(by["arch"]), frozenset(by["channel"]), max_versions)


@dataclass
class MirrorReport:
    images: list[str] = field(default_factory=list)
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    metadata_written: int = 0
    timestamp_version: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _select(reader: CatalogueReader, f: MirrorFilter) -> dict[str, list[ImageRecord]]:
    names = [n for n in reader.names() if not f.names or n in f.names]
    missing = sorted(f.names - set(reader.names()))
    if missing:
        raise InvalidInputError(f"the source has no image named {missing[0]!r}")
    chosen: dict[str, list[ImageRecord]] = {}
    for name in names:
        images = [r for r in reader.images(name) if not f.arches or r.arch in f.arches]
        if f.channels:
            pointed = {str(p.get("version")) for c, p in reader.ext(name)["channels"].items() if c in f.channels}
            images = [r for r in images if r.version in pointed]
        if f.max_versions is not None:
            keep: list[ImageRecord] = []
            for arch in sorted({r.arch for r in images}):
                keep += [r for r in images if r.arch == arch][-f.max_versions :]  # images() is oldest first
            images = keep
        if images:
            chosen[name] = images
    return chosen


def _fetch(src: Store, keys: list[str], length: int, sha: str, part_size: int, tmpdir: Path) -> tuple[str, FileDigest]:
    """Stream the first of ``keys`` ``src`` holds into a temp file under ``tmpdir``, checking length and SHA-256;
    the file's path and digest (in ``part_size`` parts). The caller removes the file."""
    fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".blob")
    try:
        with Hasher(part_size) as h, os.fdopen(fd, "wb") as out, src.open_first(keys) as stream:
            for chunk in stream.chunks:
                if h.size + len(chunk) > length:
                    raise ImageMismatchError(f"{keys[0]} at the source is longer than its signed {length} bytes")
                h.update(chunk)
                out.write(chunk)
        digest = h.result()
        if digest.size != length or digest.sha256 != sha:
            raise ImageMismatchError(f"{keys[0]} at the source does not match its signed length and SHA-256")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp, digest


def _copy_blob(src: Store, dest: Store, sha: str, length: int, tmpdir: Path) -> int:
    """Copy one side blob (a build record, an SBOM) from ``src`` to ``dest``, verified; bytes copied."""
    key = blob_key(sha)
    tmp, digest = _fetch(src, [key], length, sha, dest.part_size, tmpdir)
    try:
        dest.upload_file(key, tmp, digest)
        return digest.size
    finally:
        os.unlink(tmp)


def _copy_image(src: Store, dest: Store, rec: ImageRecord, tmpdir: Path) -> int:
    """Copy one image from ``src`` (its target file, or the blob of a catalogue written before target files) to
    ``dest``'s blob and target file, verified; image bytes sent."""
    tkey = target_file_key(rec.path, rec.sha256)
    tmp, digest = _fetch(src, image_keys(rec.path, rec.sha256), rec.size, rec.sha256, dest.part_size, tmpdir)
    try:
        return digest.size if dest.store_image(blob_key(rec.sha256), tkey, tmp, digest) else 0
    finally:
        os.unlink(tmp)


def _placed(dest: Store, rec: ImageRecord, tkey: str) -> bool:
    """Whether ``dest`` holds the image already (its blob, or on an object store a pointer to a copy of it) and
    now has its target file too, made from what it holds: then nothing is copied from the source."""
    if not dest.exists(blob_key(rec.sha256)):
        return False
    try:
        dest.place_target(blob_key(rec.sha256), tkey, rec.size)
    except (ObjectMissingError, CatalogueStateError):  # a pointer at nothing, or a damaged blob: copy it again
        return False
    return True


def _version_at(store: Store, key: str) -> int:
    """Version of the metadata at ``key``, 0 if there is none or it does not parse (it is replaced, not trusted)."""
    try:
        return int(parse_metadata(store.read(key, cap_for(key)), key).signed.version)
    except ObjectMissingError:
        return 0
    except UntrustedMetadataError:
        return 0


def _trusted(reader: CatalogueReader, name: str) -> tuple[bytes, int]:
    """Bytes of a role as the Updater verified and cached them, and their version."""
    data = reader.trusted_bytes(name)
    return data, parse_metadata(data, name).signed.version


def _trusted_root(reader: CatalogueReader, src: Store, n: int) -> bytes:
    """Root N as the Updater verified and kept it, or the source's copy where it holds none (the roots before the
    one this client first trusted: the mirror needs the whole chain, and its readers verify it)."""
    try:
        return reader.trusted_bytes(f"root_history/{n}.root.json")
    except FileNotFoundError:
        return src.read(f"{METADATA}{n}.root.json", ROOT_MAX)


def check_destination(src: Store, dest: Store, first_root: bytes) -> None:
    """Refuse a mirror destination that is the source itself or holds another catalogue.

    A destination may be empty, or an earlier mirror of the same catalogue (its ``1.root.json`` is the source's,
    and it has a ``mirror.json``). A full catalogue — a publisher's, whose ``timestamp.json`` and ``root.json``
    a mirror run would replace — and a catalogue of another root are refused (CatalogueStateError, exit 16)
    before anything is written.
    """
    if dest.url == src.url:
        raise CatalogueStateError(f"refusing to mirror {src.shown} onto itself")
    try:
        theirs: bytes | None = dest.read(f"{METADATA}1.root.json", ROOT_MAX)
    except ObjectMissingError:
        theirs = None
    has_root = theirs is not None or dest.exists(f"{METADATA}root.json")
    if theirs is not None and theirs != first_root:
        raise CatalogueStateError(
            f"refusing to mirror into {dest.shown}: it holds another catalogue (its first root differs)",
            hint="mirror into an empty location, or an earlier mirror of the same catalogue",
        )
    if has_root and theirs is None:
        raise CatalogueStateError(f"refusing to mirror into {dest.shown}: it holds metadata but no 1.root.json")
    if has_root and not dest.exists(MIRROR_FILE):
        raise CatalogueStateError(
            f"refusing to mirror into {dest.shown}: it is a full catalogue (no {MIRROR_FILE}), which a mirror "
            "would overwrite",
            hint="mirror into an empty location, or an earlier mirror of the same catalogue",
        )


def mirror(
    src: Store,
    dest: Store,
    cache: Path,
    root: str | None,
    filters: MirrorFilter,
    warn: Callable[[str], None],
    say: Callable[[str], None] = lambda _m: None,
    *,
    retries: int = 3,
) -> MirrorReport:
    """Copy what ``filters`` select from ``src`` to ``dest``, verified; resumable; never rolls ``dest`` back."""
    report = MirrorReport()
    with CatalogueReader(src, cache, root, warn, retries=retries) as reader, tempfile.TemporaryDirectory() as tmp:
        first_root = _trusted_root(reader, src, 1)
        check_destination(src, dest, first_root)
        chosen = _select(reader, filters)
        # 1. blobs (images and their build records), skipping what the mirror already holds
        for name, images in chosen.items():
            for rec in images:
                report.images.append(f"{name}:{rec.version} {rec.arch}")
                tkey = target_file_key(rec.path, rec.sha256)
                if _placed(dest, rec, tkey):
                    report.blobs_present += 1
                else:
                    report.bytes_copied += _copy_image(src, dest, rec, Path(tmp))
                    report.blobs_copied += 1
                    say(f"copied {tkey} ({rec.size} bytes)")
                for _what, sha, size in model.side_blobs(rec.build_record):
                    if not isinstance(sha, str) or type(size) is not int:
                        continue
                    if dest.exists(blob_key(sha)):
                        report.blobs_present += 1
                        continue
                    report.bytes_copied += _copy_blob(src, dest, sha, size, Path(tmp))
                    report.blobs_copied += 1
                    say(f"copied {blob_key(sha)} ({size} bytes)")
        # 2. metadata: the root chain, then targets, the selected image roles and the snapshot, as verified
        root_now = _trusted(reader, "root.json")[1]
        for n in range(1, root_now + 1):
            data = _trusted_root(reader, src, n)
            report.metadata_written += dest.write_new(f"{METADATA}{n}.root.json", data)
        # index roles (shared by names), image roles, and the bins of binned names
        roles = list(dict.fromkeys(r for n in chosen for r in reader.role_names(n)))
        files = ["targets.json", *(f"{r}.json" for r in roles), "snapshot.json"]
        for f in files:
            data, version = _trusted(reader, f)
            report.metadata_written += dest.write_new(f"{METADATA}{version}.{f}", data)
        ts_bytes, ts_version = _trusted(reader, "timestamp.json")
        theirs = _version_at(dest, f"{METADATA}timestamp.json")
        if theirs > ts_version:
            raise RollbackError(
                f"the mirror already serves timestamp version {theirs}, newer than the source's {ts_version}",
                hint="the source is behind the mirror: mirror from the catalogue the mirror was made from",
            )
        root_bytes, _ = _trusted(reader, "root.json")
        dest.write(f"{METADATA}root.json", root_bytes)
        dest.write(
            MIRROR_FILE,
            json.dumps(
                {
                    "source": src.shown,
                    "names": sorted(chosen),
                    "filters": {
                        "names": sorted(filters.names),
                        "arches": sorted(filters.arches),
                        "channels": sorted(filters.channels),
                        "max_versions": filters.max_versions,
                    },
                    "images": report.images,
                },
                indent=2,
            ).encode()
            + b"\n",
        )
        dest.write(f"{METADATA}timestamp.json", ts_bytes)  # last: the mirror's commit point
        report.metadata_written += 1
        report.timestamp_version = ts_version
    return report
