"""Reading side: every answer comes from metadata ``tuf.ngclient.Updater`` has verified.

The Updater verifies root rotation, timestamp, snapshot, targets and the delegated image role, with rollback and
freeze protection across runs (it keeps the trusted metadata in the client cache). The Updater answers questions
about one target path; imagectl also needs to list an image's versions, so after the Updater has loaded (verified
and persisted) an image role, that role is read back from the Updater's own metadata directory — the file it has
just trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from imagectl import __version__
from imagectl.catalogue import model
from imagectl.catalogue.fetcher import StoreFetcher
from imagectl.catalogue.model import METADATA, ImageRecord, ImageRef
from imagectl.catalogue.state import EXT, MAX_METADATA
from imagectl.errors import (
    CatalogueStateError,
    DownloadError,
    ExpiredError,
    ImagectlError,
    InvalidInputError,
    LocalIOError,
    MixAndMatchError,
    NotFoundError,
    RevokedError,
    RollbackError,
    UntrustedMetadataError,
    WrongRootError,
)
from imagectl.store import ObjectMissingError, Store

__all__ = ["CatalogueReader", "Resolved"]

_ROLLBACK = re.compile(r"must be >=|Expected \S+\.json version")


@contextlib.contextmanager
def translate_tuf(url: str) -> Iterator[None]:
    """Turn python-tuf's exceptions into imagectl's, one class per cause."""
    try:
        yield
    except ImagectlError:
        raise
    except tuf_exc.ExpiredMetadataError as e:
        raise ExpiredError(
            f"expired metadata from {url}: {e}", hint="the catalogue must be re-signed: imagectl catalogue resign"
        ) from None
    except tuf_exc.BadVersionNumberError as e:
        if _ROLLBACK.search(str(e)):
            raise RollbackError(f"rollback refused: {e} (metadata older than already trusted)") from None
        raise MixAndMatchError(f"inconsistent metadata versions from {url}: {e}") from None
    except tuf_exc.UnsignedMetadataError as e:
        raise UntrustedMetadataError(f"metadata from {url} is not validly signed: {e}") from None
    except tuf_exc.LengthOrHashMismatchError as e:
        raise UntrustedMetadataError(f"metadata from {url} does not match its signed length/hash: {e}") from None
    except tuf_exc.DownloadLengthMismatchError as e:
        raise UntrustedMetadataError(f"metadata from {url} is too long: {e}") from None
    except tuf_exc.RepositoryError as e:
        raise UntrustedMetadataError(f"bad metadata from {url}: {e}") from None
    except tuf_exc.DownloadHTTPError as e:
        raise NotFoundError(f"missing catalogue file at {url}: {e}") from None
    except tuf_exc.DownloadError as e:
        cause = e.__cause__ if isinstance(e.__cause__, ImagectlError) else None
        raise DownloadError(str(cause) if cause else f"download from {url} failed: {e}") from None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on ``path`` (created if missing), held for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Resolved:
    record: ImageRecord
    target: TargetFile  # as verified by the Updater: length and hashes to check the blob against


class CatalogueReader:
    """Verified, read-only view of one catalogue for one trusted root."""

    def __init__(self, store: Store, cache: Path, root: str | None, warn: Callable[[str], None]) -> None:
        self.store = store
        self.url = store.url
        self.dir = cache / "tuf" / hashlib.sha256(store.url.encode()).hexdigest()[:16]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "url").write_text(store.url + "\n")
        except OSError as e:
            raise LocalIOError(f"cannot write the client cache {self.dir}: {e.strerror}") from None
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(file_lock(self.dir / ".lock"))
        self.fetcher = StoreFetcher(store)
        bootstrap = self._bootstrap(root, warn)
        with translate_tuf(self.url):
            try:
                self.updater = Updater(
                    str(self.dir),
                    self.url + METADATA,
                    None,
                    self.url,
                    self.fetcher,
                    UpdaterConfig(
                        app_user_agent=f"imagectl/{__version__}",
                        snapshot_max_length=MAX_METADATA,  # the publisher's own bound, so whatever it can
                        targets_max_length=MAX_METADATA,  # write, a client can read
                    ),
                    bootstrap=bootstrap,
                )
            except tuf_exc.RepositoryError as e:
                raise WrongRootError(f"the trusted root is not valid root metadata: {e}") from None
            self.updater.refresh()
        self._roles: dict[str, Targets] = {}

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> CatalogueReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trust anchor -------------------------------------------------------------------------------------
    def _read_root(self, key: str) -> bytes | None:
        """The catalogue's copy of a root file (None if it has none), refused past the size any root may have."""
        limit = UpdaterConfig().root_max_length
        buf = bytearray()
        try:
            with self.store.open_range(key) as stream:
                for chunk in stream.chunks:
                    buf += chunk
                    if len(buf) > limit:  # endless or oversized: untrusted metadata, not a network failure
                        raise UntrustedMetadataError(f"{key} from {self.url} is too long: over {limit} bytes")
        except ObjectMissingError:
            return None
        return bytes(buf)

    def _bootstrap(self, root: str | None, warn: Callable[[str], None]) -> bytes:
        if root and root.startswith("sha256:"):
            want = root.removeprefix("sha256:").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", want):
                raise InvalidInputError(f"--root sha256: needs 64 hex digits, got {want!r}")
            # The pin may be of any root version: the current root.json first, then the chain from 1 upwards.
            keys = [f"{METADATA}root.json", *(f"{METADATA}{n}.root.json" for n in range(1, 257))]
            for key in keys:
                data = self._read_root(key)
                if data is None and key != keys[0]:
                    break
                if data is not None and hashlib.sha256(data).hexdigest() == want:
                    return data
            raise WrongRootError(f"no root of {self.url} has the pinned SHA-256 {want[:16]}…")
        if root:
            try:
                data = Path(root).read_bytes()
            except OSError as e:
                raise InvalidInputError(f"cannot read trusted root {root}: {e.strerror}") from None
            try:
                pinned = Metadata.from_bytes(data)
            except Exception:  # noqa: BLE001 - any parse failure means "not a root file"
                raise InvalidInputError(f"{root} is not TUF root metadata") from None
            if pinned.signed.type != "root":
                raise InvalidInputError(f"{root} is {pinned.signed.type} metadata, not root")
            theirs = self._read_root(f"{METADATA}{pinned.signed.version}.root.json")
            try:
                same = theirs is not None and Metadata.from_bytes(theirs) == pinned
            except Exception:  # noqa: BLE001
                same = False
            if not same:
                raise WrongRootError(
                    f"the pinned root {root} (version {pinned.signed.version}) is not a root of {self.url}",
                    hint="pin the root.json that `imagectl catalogue init` printed for this catalogue",
                )
            return data
        cached = self.dir / "root.json"
        if cached.exists():
            return cached.read_bytes()
        data = self._read_root(f"{METADATA}1.root.json")
        if data is None:
            raise CatalogueStateError(f"{self.url} is not a catalogue (no {METADATA}1.root.json)")
        warn(
            f"trusting the root of {self.url} on first use (sha256:{hashlib.sha256(data).hexdigest()}); "
            "pin it with --root to be safe from a server that was already compromised"
        )
        return data

    # -- verified reads -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        top = Metadata[Targets].from_file(str(self.dir / "targets.json")).signed
        if top.delegations is None or top.delegations.roles is None:
            return []
        return sorted(r.removeprefix(model.ROLE_PREFIX) for r in top.delegations.roles)

    def role(self, name: str) -> Targets:
        if name in self._roles:
            return self._roles[name]
        names = self.names()
        if name not in names:
            raise NotFoundError(
                f"no image named {name!r} in {self.url}",
                hint=f"images: {', '.join(names[:20])}" if names else "the catalogue is empty",
            )
        with translate_tuf(self.url):
            self.updater.get_targetinfo(f"{name}/-/-/-")  # loads and verifies the image role
        role = model.role_for(name)
        md = Metadata[Targets].from_file(str(self.dir / f"{role}.json"))
        self._roles[name] = md.signed
        return md.signed

    def images(self, name: str) -> list[ImageRecord]:
        role = self.role(name)
        out = []
        for path, t in role.targets.items():
            try:
                out.append(ImageRecord.from_target(path, t.length, t.hashes, t.custom))
            except InvalidInputError as e:
                raise UntrustedMetadataError(f"signed metadata of {name} is malformed: {e}") from None
        return sorted(out, key=lambda r: (model.version_key(r.version), r.arch))

    def ext(self, name: str) -> dict[str, dict[str, Any]]:
        ext = self.role(name).unrecognized_fields.get(EXT, {})
        return {"channels": dict(ext.get("channels", {})), "revoked": dict(ext.get("revoked", {}))}

    def resolve(self, ref: ImageRef, arch: str) -> Resolved:
        """The one image ``ref`` names for ``arch``; raises NotFoundError/RevokedError saying what exists."""
        images = self.images(ref.name)
        ext = self.ext(ref.name)
        version = ref.version
        if ref.channel is not None:
            pointer = ext["channels"].get(ref.channel)
            if pointer is None:
                known = ", ".join(sorted(ext["channels"])) or "none"
                raise NotFoundError(f"{ref.name} has no channel {ref.channel!r} (channels: {known})")
            if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
                raise UntrustedMetadataError(f"signed channel {ref.channel!r} of {ref.name} is malformed")
            version = pointer["version"]
        if version is not None and version in ext["revoked"]:
            why = ext["revoked"][version]
            raise RevokedError(f"{ref.name}:{version} was revoked on {why.get('at', '?')}: {why.get('reason', '')}")
        for_arch = [r for r in images if r.arch == arch]
        if version is not None:
            if not any(r.version == version for r in images):
                versions = sorted({r.version for r in images}, key=model.version_key)
                raise NotFoundError(f"{ref.name} has no version {version!r} (versions: {', '.join(versions[-10:])})")
            pick = [r for r in for_arch if r.version == version]
            if not pick:
                arches = sorted({r.arch for r in images if r.version == version})
                raise NotFoundError(f"{ref.name}:{version} has no {arch} image (arches: {', '.join(arches)})")
            rec = pick[0]
        else:
            if not for_arch:
                arches = sorted({r.arch for r in images})
                raise NotFoundError(
                    f"{ref.name} has no {arch} image (arches: {', '.join(arches) or 'none'})",
                    hint="choose one with --arch",
                )
            live = [r for r in for_arch if not r.deprecated]
            if not live:
                raise NotFoundError(
                    f"every {arch} version of {ref.name} is deprecated",
                    hint=f"ask for one explicitly, e.g. {ref.name}:{for_arch[-1].version}",
                )
            rec = live[-1]
        with translate_tuf(self.url):
            target = self.updater.get_targetinfo(rec.path)
        if target is None:  # the walk disagrees with the role we read: never expected, never trusted
            raise UntrustedMetadataError(f"{rec.path} is listed but not found by the TUF delegation walk")
        return Resolved(rec, target)
