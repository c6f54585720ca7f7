"""Fill a :class:`~imagectl.site.model.SiteModel` from a catalogue: verified metadata and verified build records.

Normally through :class:`~imagectl.catalogue.client.CatalogueReader` (``tuf.ngclient``: signatures, versions,
rollback and expiry against the client cache, as ``catalogue list`` does).

**An expired catalogue** is exactly when people open the browse page to see what is wrong, and a TUF client
refuses it. Then the site is rendered from metadata whose *signatures and versions* verify but whose expiry has
passed, and says so in red: the reader has already walked the root chain from the pinned (or cached, or first-use)
root and kept it in the client cache before it met the expired file; the catalogue's own chain
(:func:`~imagectl.catalogue.state.load_state`, which checks everything but expiry) must contain that trusted root,
and its timestamp and snapshot must not be older than the ones this client trusted before (no rollback). Nothing
here is ever used to pull: the page only shows what the metadata says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata

from imagectl.catalogue.cachedir import cache_key, client_cache
from imagectl.catalogue.client import CatalogueReader, read_trusted
from imagectl.catalogue.metadata import ROOT_MAX, parse_metadata
from imagectl.catalogue.model import METADATA, ImageRecord, blob_key, role_for, utcnow
from imagectl.catalogue.state import load_state
from imagectl.errors import ExpiredError, ImagectlError, InvalidInputError, RollbackError, UntrustedMetadataError
from imagectl.site.model import BuildInfo, MetadataInfo, Package, SiteImage, SiteModel, SiteName, make_name
from imagectl.store import Store

__all__ = ["RECORD_MAX", "load_model"]

RECORD_MAX = 16 << 20  # bytes of one build record blob the site reads (a record lists a few thousand packages)
PACKAGES_MAX = 100_000  # packages of one record shown


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def metadata_info(files: dict[str, Metadata[Any]], root_bytes: bytes, *, now: dt.datetime) -> MetadataInfo:
    """Version and earliest expiry of ``files`` (role name -> verified metadata, incl. root and timestamp)."""
    role, first = min(((r, md.signed.expires) for r, md in files.items()), key=lambda x: (x[1], x[0]))
    return MetadataInfo(
        version=files["timestamp"].signed.version,
        snapshot_version=files["snapshot"].signed.version,
        expires=_iso(first),
        expires_role=role,
        expired=first <= now,
        root_sha256=hashlib.sha256(root_bytes).hexdigest(),
    )


class _Records:
    """Build record blobs, fetched once per SHA-256, bounded, and checked against the signed size and hash."""

    def __init__(self, store: Store, warn: Callable[[str], None]) -> None:
        self.store, self.warn = store, warn
        self.seen: dict[str, tuple[tuple[Package, ...] | None, str | None]] = {}

    def info(self, rec: ImageRecord) -> BuildInfo | None:
        summary = rec.build_record
        if summary is None:
            return None
        sha, size = summary.get("sha256"), summary.get("size")
        if not isinstance(sha, str) or len(sha) != 64 or type(size) is not int or size < 0:
            return BuildInfo(summary, None, "the signed summary names no valid record blob")
        if sha not in self.seen:
            self.seen[sha] = self._fetch(sha, size)
            if self.seen[sha][1]:
                self.warn(f"{rec.name}:{rec.version} {rec.arch}: build record: {self.seen[sha][1]}")
        packages, problem = self.seen[sha]
        return BuildInfo(summary, packages, problem)

    def _fetch(self, sha: str, size: int) -> tuple[tuple[Package, ...] | None, str | None]:
        if size > RECORD_MAX:
            return None, f"{size} bytes, more than the {RECORD_MAX} this page reads"
        try:
            data = self.store.read(blob_key(sha), size)  # refused past the signed size
        except ImagectlError as e:
            return None, f"cannot be read: {e.message}"
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            return None, "does not match its signed size and SHA-256 (not shown)"
        try:
            doc = json.loads(data)
            raw = doc.get("packages") or []
            if not isinstance(raw, list):
                raise TypeError("packages is not a list")
            packages = tuple(
                Package(str(p.get("name", "")), str(p.get("version", "")), str(p.get("arch", "")))
                for p in raw[:PACKAGES_MAX]
                if isinstance(p, dict)
            )
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            return None, f"malformed ({type(e).__name__})"
        return tuple(sorted(packages, key=lambda p: (p.name, p.arch, p.version))), None


def _name(
    name: str, records: Iterable[ImageRecord], ext: dict[str, Any], blobs: _Records, *, read_records: bool
) -> SiteName:
    images = [SiteImage(r, blobs.info(r) if read_records else None) for r in records]
    channels = ext.get("channels") if isinstance(ext.get("channels"), dict) else {}
    revoked = ext.get("revoked") if isinstance(ext.get("revoked"), dict) else {}
    return make_name(name, images, dict(channels or {}), dict(revoked or {}))


def _verified(reader: CatalogueReader, blobs: _Records, read_records: bool) -> tuple[list[SiteName], MetadataInfo]:
    names = [_name(n, reader.images(n), reader.ext(n), blobs, read_records=read_records) for n in reader.names()]
    files: dict[str, Metadata[Any]] = {}
    for role in ("root", "timestamp", "snapshot", "targets", *(role_for(n.name) for n in names)):
        files[role] = Metadata.from_bytes(reader.trusted_bytes(f"{role}.json"))  # what the Updater just trusted
    root_bytes = reader.trusted_bytes("root.json")
    return names, metadata_info(files, root_bytes, now=utcnow())


def _expired(store: Store, cache: Path, blobs: _Records, read_records: bool) -> tuple[list[SiteName], MetadataInfo]:
    """Signature-verified, expired metadata, anchored in the root the reader trusts; see the module docstring."""
    tree, rel = client_cache(cache), f"tuf/{cache_key(store.url)}"

    def trusted(role: str) -> Metadata[Any] | None:
        try:
            data = read_trusted(tree, rel, f"{role}.json")
        except FileNotFoundError:
            return None
        return parse_metadata(data, f"{METADATA}{role}.json")

    anchor = trusted("root")
    if anchor is None:
        raise UntrustedMetadataError("no trusted root to check the expired catalogue against")
    state = load_state(store)  # signatures, thresholds and versions of every file; not expiry
    key = f"{METADATA}{anchor.signed.version}.root.json"
    try:
        same = parse_metadata(store.read(key, ROOT_MAX), key) == anchor
    except ImagectlError:
        same = False
    if not same or state.root.signed.version < anchor.signed.version:
        raise UntrustedMetadataError(f"the root chain of {store.shown} does not contain the root this client trusts")
    for top, now in (("timestamp", state.timestamp), ("snapshot", state.snapshot)):
        before = trusted(top)
        if before is not None and now.signed.version < before.signed.version:
            raise RollbackError(
                f"rollback refused: {top} version {now.signed.version} is older than the trusted "
                f"{before.signed.version}"
            )
    names: list[SiteName] = []
    files: dict[str, Metadata[Any]] = {"root": state.root, "timestamp": state.timestamp, "snapshot": state.snapshot}
    files["targets"] = state.targets
    for name in state.names():
        md = state.role(role_for(name))
        if md is None:
            raise UntrustedMetadataError(f"the snapshot of {store.shown} does not list image {name}")
        files[role_for(name)] = md
        records = []
        for path, t in md.signed.targets.items():
            try:
                rec = ImageRecord.from_target(path, t.length, t.hashes, t.custom)
            except InvalidInputError as e:
                raise UntrustedMetadataError(f"signed metadata of {name} is malformed: {e}") from None
            if rec.name != name:  # the delegation's path pattern, which the TUF walk would have enforced
                raise UntrustedMetadataError(f"image role {name} lists {path}, outside its name")
            records.append(rec)
        ext = md.signed.unrecognized_fields.get("x-imagectl", {})
        names.append(_name(name, records, ext if isinstance(ext, dict) else {}, blobs, read_records=read_records))
    root_key = f"{METADATA}{state.root.signed.version}.root.json"
    return names, metadata_info(files, store.read(root_key, ROOT_MAX), now=utcnow())


def load_model(
    store: Store,
    cache: Path,
    root: str | None,
    warn: Callable[[str], None],
    *,
    public_url: str | None = None,
    retries: int = 3,
    read_records: bool = True,
) -> SiteModel:
    """The site model of the catalogue in ``store``, from verified metadata (see the module docstring for an
    expired catalogue, which is rendered and marked expired rather than refused).

    Raises what :class:`CatalogueReader` raises for a catalogue it refuses for any reason but expiry, and
    UntrustedMetadataError/RollbackError when expired metadata cannot be anchored in the trusted root.
    """
    blobs = _Records(store, warn)
    try:
        with CatalogueReader(store, cache, root, warn, retries=retries) as reader:
            names, info = _verified(reader, blobs, read_records)
    except ExpiredError as e:
        try:
            names, info = _expired(store, cache, blobs, read_records)
        except ImagectlError as why:
            raise ExpiredError(f"{e.message}; not rendered: {why.message}", hint=e.hint) from None
        warn(f"{e.message}: the site shows the last signed metadata, marked expired")
    return SiteModel(public_url or store.shown, info, tuple(sorted(names, key=lambda n: n.name)))
