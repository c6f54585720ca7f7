"""The one thing every export reads: a snapshot of the catalogue taken from verified metadata only.

:func:`read_view` asks a :class:`~imagectl.catalogue.client.CatalogueReader` (``tuf.ngclient`` underneath) for
every name, its images, channels and revocations, and the snapshot version. Revoked versions are not in the signed
targets, so no export can list one. Download URLs are those of the images' target files (catalogue/README.md
§6: the one copy on S3, a hard link of the blob on a directory; hash-named, so cacheable forever) under the
catalogue's public URL, never with credentials in them. A catalogue with images still lacking their target file
(written before they existed) is refused until ``imagectl catalogue upgrade`` has made them.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata, Timestamp

from imagectl.catalogue import model
from imagectl.catalogue.cachedir import client_cache
from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.model import ImageRecord, image_keys, target_file_key
from imagectl.errors import CatalogueStateError, DownloadError, ImageMismatchError, InvalidInputError
from imagectl.fsio import AtomicFile
from imagectl.store import Store

__all__ = [
    "CatalogueView",
    "NameView",
    "missing_target_files",
    "newest_live",
    "public_base",
    "read_view",
    "verified_sha512",
]

CHUNK = 1 << 20


@dataclass(frozen=True)
class NameView:
    """One image name: its images (version order, then arch) and the channels that point at a listed version."""

    name: str
    images: tuple[ImageRecord, ...]
    channels: dict[str, str]  # channel -> version

    def channels_of(self, version: str) -> list[str]:
        return sorted(c for c, v in self.channels.items() if v == version)


@dataclass(frozen=True)
class CatalogueView:
    base: str  # public URL of the catalogue, ending in "/", no credentials, no query
    snapshot_version: int  # grows with every change to the catalogue
    names: tuple[NameView, ...]

    def image_url(self, rec: ImageRecord) -> str:
        return self.base + target_file_key(rec.path, rec.sha256)

    def images(self) -> list[ImageRecord]:
        return [rec for nv in self.names for rec in nv.images]


def public_base(url: str) -> str:
    """``url`` as a base for download URLs: ``user:password@``, query and fragment removed, ``/`` at the end.

    Raises InvalidInputError for a URL that is not http(s) or file (an export's URL is for other programs).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise InvalidInputError("the catalogue's public URL is not a valid URL") from None
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not host):
        raise InvalidInputError(
            f"public URL must be http(s)://HOST/PATH or file:///PATH, got {parts.scheme or 'a path'}",
            hint="set --public-url or IMAGECTL_PUBLIC_URL to where deployers reach the catalogue",
        )
    if ":" in host:
        host = f"[{host}]"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit((parts.scheme, host + port, path, "", ""))


def read_view(reader: CatalogueReader, public_url: str | None = None) -> CatalogueView:
    """Everything the exports need, from verified metadata. Raises what the reader raises (exit 8–13, 16, 17)."""
    names = []
    for name in reader.names():
        ext = reader.ext(name)
        images = tuple(reader.images(name))
        listed = {rec.version for rec in images}
        channels = {
            c: p["version"]
            for c, p in ext["channels"].items()
            if isinstance(p, dict) and p.get("version") in listed  # a pointer at nothing listed is not exported
        }
        names.append(NameView(name, images, channels))
    missing = sum(len(missing_target_files(reader.store, nv.name, nv.images)) for nv in names)
    if missing:
        raise CatalogueStateError(
            f"{missing} image(s) of {reader.store.shown} have no target file, the file an export's URLs name",
            hint=f"run: imagectl catalogue upgrade {reader.store.shown}",
        )
    ts = Metadata[Timestamp].from_bytes(reader.trusted_bytes("timestamp.json")).signed  # what the Updater trusted
    return CatalogueView(public_base(public_url or reader.url), ts.snapshot_meta.version, tuple(names))


def missing_target_files(store: Store, name: str, images: Sequence[ImageRecord]) -> list[str]:
    """The target file keys of ``images`` (all of image name ``name``) that ``store`` lacks: one listing of
    ``targets/NAME/`` where the store can list, a check per key where it cannot (HTTP)."""
    keys = [target_file_key(rec.path, rec.sha256) for rec in images]
    held = store.regular_keys(f"{model.TARGETS}{name}/")
    return [k for k in keys if not store.exists(k)] if held is None else [k for k in keys if k not in held]


def verified_sha512(reader: CatalogueReader, rec: ImageRecord, cache: Path) -> str:
    """The SHA-512 of ``rec``'s bytes, which only a HEPiX image list needs (the catalogue signs SHA-256).

    The blob is streamed once and hashed both ways; the SHA-512 is kept only if exactly the signed length arrived
    and its SHA-256 matches the signed one. Results are kept in the client cache (``export/sha512/SHA256``), so
    each blob is read once. Raises ImageMismatchError for bytes that break the signature, DownloadError when the
    blob cannot be read, LocalIOError when the cache cannot be written.
    """
    tree = client_cache(cache)
    rel = "export/sha512"
    with tree.dir(rel, create=True, mode=0o700) as d:
        try:
            fd = os.open(rec.sha256, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d)
            with os.fdopen(fd, "rb") as f:
                known = f.read(200).decode("ascii", "replace").strip()
            if re.fullmatch(r"[0-9a-f]{128}", known):
                return known
        except FileNotFoundError:
            pass
        except OSError as e:
            raise tree.refuse(f"{rel}/{rec.sha256}", e) from None
        s256, s512, got = hashlib.sha256(), hashlib.sha512(), 0
        try:
            with reader.store.open_first(image_keys(rec.path, rec.sha256)) as stream:
                for chunk in stream.chunks:
                    got += len(chunk)
                    if got > rec.size:
                        break
                    s256.update(chunk)
                    s512.update(chunk)
        except OSError as e:
            raise DownloadError(f"cannot read the blob of {rec.path}: {e.strerror or e}") from None
        if got != rec.size or s256.hexdigest() != rec.sha256:
            raise ImageMismatchError(
                f"{rec.path}: the catalogue's blob does not match the signed length and sha256 "
                "(tampered or damaged blob; not exported)"
            )
        digest = s512.hexdigest()
        with AtomicFile(tree.root / rel / rec.sha256, mode=0o600, dir_fd=d, name=rec.sha256) as f:
            f.write(f"{digest}\n".encode())
        return digest


def newest_live(images: tuple[ImageRecord, ...], arch: str) -> ImageRecord | None:
    """What ``imagectl pull NAME --arch ARCH`` resolves to: the newest non-deprecated version (§8 step 5)."""
    live = [r for r in images if r.arch == arch and not r.deprecated]
    return max(live, key=lambda r: model.version_key(r.version), default=None)
