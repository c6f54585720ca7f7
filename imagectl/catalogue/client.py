"""Reading side: every answer comes from metadata ``tuf.ngclient.Updater`` has verified.

The Updater verifies root rotation, timestamp, snapshot, targets and the delegated image role, with rollback and
freeze protection across runs (it keeps the trusted metadata in the client cache). The Updater answers questions
about one target path; imagectl also needs to list an image's versions, so after the Updater has loaded (verified
and persisted) an image role, that role is read back from the Updater's own metadata directory — the file it has
just trusted.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Snapshot, TargetFile, Targets
from tuf.api.serialization import SerializationError
from tuf.ngclient import Updater, UpdaterConfig

from imagectl import __version__
from imagectl.catalogue import bins, index, model
from imagectl.catalogue.cachedir import cache_key, client_cache
from imagectl.catalogue.fetcher import StoreFetcher
from imagectl.catalogue.metadata import (
    ROOT_MAX,
    SNAPSHOT_MAX,
    TARGETS_MAX,
    TIMESTAMP_MAX,
    ValueCounter,
    cap_for,
    parse_metadata,
)
from imagectl.catalogue.model import EXT, METADATA, ImageRecord, ImageRef
from imagectl.errors import (
    CatalogueStateError,
    DownloadError,
    ExpiredError,
    ImagectlError,
    InvalidInputError,
    MixAndMatchError,
    NotFoundError,
    RevokedError,
    RollbackError,
    UntrustedMetadataError,
    WrongRootError,
)
from imagectl.fsio import Beneath, SymlinkRefusedError, atomic_write, read_at_most, read_regular
from imagectl.http import safe_url
from imagectl.store import ObjectMissingError, Store

__all__ = ["CatalogueReader", "Resolved"]

_ROLLBACK = re.compile(r"must be >=|Expected \S+\.json version")


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
    except SerializationError:  # a signed part that cannot be canonicalised (a float) to check its signatures
        # (before RepositoryError, which python-tuf's SerializationError subclasses)
        raise UntrustedMetadataError(f"metadata from {url} cannot be checked: not canonical JSON") from None
    except tuf_exc.RepositoryError as e:
        raise UntrustedMetadataError(f"bad metadata from {url}: {_why(e)}") from None
    except tuf_exc.DownloadHTTPError as e:
        raise NotFoundError(f"missing catalogue file at {url}: {e}") from None
    except tuf_exc.DownloadError as e:
        if isinstance(e.__cause__, ImagectlError):
            raise e.__cause__ from None  # our own error, with its own exit code (a refusal is not a network failure)
        raise DownloadError(f"download from {url} failed: {e}") from None


_ROOT_LINK = re.compile(r"root_history/[1-9][0-9]{0,11}\.root\.json")  # python-tuf's link to its current root
_TAIL = re.compile(rb'"version":(\d{1,12})}}\s*$')


def read_trusted(tree: Beneath, rel: str, file: str) -> bytes:
    """The bytes of ``file`` (``ROLE.json``, ``root_history/N.root.json``) in the client's TUF metadata directory
    ``rel`` of the cache ``tree``: what python-tuf verified and persisted. Opened below the cache without following
    a symlink and read up to the format's cap for that role, as every read of the directory is (the Updater's own
    included: :class:`_CacheUpdater`). ``root.json`` is python-tuf's symlink to ``root_history/N.root.json`` (tuf
    6 and later; a plain file before): that one form of link is read, a link elsewhere refused.

    Raises FileNotFoundError if the file is not there, SymlinkRefusedError (exit 14) for a symlink or a file that is
    not regular, UntrustedMetadataError (exit 8) past the cap."""
    if file == "root.json":
        try:
            is_link = stat.S_ISLNK(tree.lstat(f"{rel}/{file}").st_mode)
            link = str((tree.root / rel / file).readlink()) if is_link else None
        except FileNotFoundError:
            raise
        except OSError as e:
            raise tree.refuse(f"{rel}/{file}", e) from None
        if link is not None:
            if not _ROOT_LINK.fullmatch(link):
                raise SymlinkRefusedError(
                    f"refusing {tree.root / rel / file}: a symlink to {link!r}, not to root_history/"
                )
            file = link
    cap = cap_for(file)
    fd = tree.open_regular(f"{rel}/{file}")
    try:
        data = read_at_most(fd, cap + 1)
    except OSError as e:
        raise tree.refuse(f"{rel}/{file}", e) from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise UntrustedMetadataError(f"cached {file} is over the {cap}-byte cap of the format")
    return data


class _CacheUpdater(Updater):
    """python-tuf's Updater, whose reads of its own metadata directory (the trusted timestamp, snapshot and roles it
    starts from) go through :func:`read_trusted`: python-tuf opens them following symlinks and reads them whole."""

    def __init__(self, read: Callable[[str], bytes], *args: Any, **kwargs: Any) -> None:
        self._read_cached = read
        super().__init__(*args, **kwargs)

    def _load_local_metadata(self, rolename: str) -> bytes:
        return self._read_cached(f"{urllib.parse.quote(rolename, '')}.json")


def _why(e: Exception) -> str:
    """What went wrong, for a message: python-tuf raises some errors without any text."""
    return str(e) or type(e).__name__


@dataclass(frozen=True)
class Resolved:
    record: ImageRecord
    target: TargetFile  # as verified by the Updater: length and hashes to check the blob against


class CatalogueReader:
    """Verified, read-only view of one catalogue for one trusted root."""

    def __init__(
        self, store: Store, cache: Path, root: str | None, warn: Callable[[str], None], *, retries: int = 3
    ) -> None:
        self.store = store
        self.url = store.url
        self.shown_url = safe_url(store.url)  # what messages say: never a password
        tree = client_cache(cache)
        rel = f"tuf/{cache_key(store.url)}"
        self.dir = tree.root / rel
        self._tree, self._rel = tree, rel
        self._lock = contextlib.ExitStack()
        with tree.dir(rel, create=True, mode=0o700) as d:
            try:
                lock = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
            except OSError as e:
                raise tree.refuse(f"{rel}/.lock", e) from None
        self._lock.callback(os.close, lock)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            atomic_write(self.dir / "url", (self.shown_url + "\n").encode(), mode=0o600)
            self.fetcher = StoreFetcher(store, retries=retries)
            self.updater = self._updater(self._bootstrap(root, warn))
        except BaseException:
            self._lock.close()  # a refused catalogue must not keep the cache locked for the next command
            raise
        self._roles: dict[str, Targets] = {}
        self._names: dict[str, str] | None = None
        self._sorted: list[str] | None = None  # names(), sorted once (read-ahead looks its place up per name)
        self._snap_meta: dict[str, int] | None = None
        self._loads = 0  # names whose role this reader has loaded (read-ahead starts at the second)
        self._ahead_roles: list[str] = []  # keys of roles read ahead (forgotten when the next read-ahead starts)

    def _updater(self, bootstrap: bytes) -> Updater:
        with translate_tuf(self.shown_url):
            try:
                updater = _CacheUpdater(
                    self.trusted_bytes,
                    str(self.dir),
                    self.url + METADATA,
                    None,
                    self.url,
                    self.fetcher,
                    UpdaterConfig(
                        app_user_agent=f"imagectl/{__version__}",
                        # the format's caps (catalogue/README.md §9.2); the publisher refuses to write more
                        root_max_length=ROOT_MAX,
                        timestamp_max_length=TIMESTAMP_MAX,
                        snapshot_max_length=SNAPSHOT_MAX,
                        targets_max_length=TARGETS_MAX,
                    ),
                    bootstrap=bootstrap,
                )
            except tuf_exc.RepositoryError as e:
                raise WrongRootError(f"the trusted root is not valid root metadata: {_why(e)}") from None
            updater.refresh()
        return updater

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> CatalogueReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trust anchor -------------------------------------------------------------------------------------
    def _read_root(self, key: str) -> bytes | None:
        """The catalogue's copy of a root file (None if it has none), refused past the size any root may have."""
        buf = bytearray()
        counter = ValueCounter(f"{key} from {self.shown_url}")
        try:
            with self.store.open_range(key) as stream:
                for chunk in stream.chunks:
                    buf += chunk
                    counter.feed(chunk)
                    if len(buf) > ROOT_MAX:  # endless or oversized: untrusted metadata, not a network failure
                        raise UntrustedMetadataError(f"{key} from {self.shown_url} is too long: over {ROOT_MAX} bytes")
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
            raise WrongRootError(f"no root of {self.shown_url} has the pinned SHA-256 {want[:16]}…")
        if root:
            # A FIFO, /dev/zero or a huge file is refused here, before any byte is parsed.
            data = read_regular(root, ROOT_MAX, what="trusted root", error=InvalidInputError)
            try:
                pinned = parse_metadata(data, f"{METADATA}root.json")
            except UntrustedMetadataError:  # malformed, or another role's metadata (parsed as the key says)
                raise InvalidInputError(f"{root} is not TUF root metadata") from None
            theirs = self._read_root(f"{METADATA}{pinned.signed.version}.root.json")
            try:
                same = theirs is not None and parse_metadata(theirs, f"{METADATA}root.json") == pinned
            except UntrustedMetadataError:
                same = False
            if not same:
                raise WrongRootError(
                    f"the pinned root {root} (version {pinned.signed.version}) is not a root of {self.shown_url}",
                    hint="pin the root.json that `imagectl catalogue init` printed for this catalogue",
                )
            return data
        cached = self._cached_root()
        if cached is not None:
            return cached
        data = self._read_root(f"{METADATA}1.root.json")
        if data is None:
            raise CatalogueStateError(f"{self.shown_url} is not a catalogue (no {METADATA}1.root.json)")
        warn(
            f"trusting the root of {self.shown_url} on first use (sha256:{hashlib.sha256(data).hexdigest()}); "
            "pin it with --root to be safe from a server that was already compromised"
        )
        return data

    def _cached_root(self) -> bytes | None:
        """The root this cache trusted last time (:func:`read_trusted`), None if it holds none."""
        try:
            return self.trusted_bytes("root.json")
        except FileNotFoundError:
            return None

    # -- verified reads -----------------------------------------------------------------------------------
    def _name_index(self) -> dict[str, str]:
        """NAME -> the role delegating its image role, from the verified targets.json alone (no index role read).

        Read once per reader: the Updater refreshes top-level metadata only when the reader is made, so targets.json
        cannot change under it (reading it again per name made listing N names cost N parses of targets.json)."""
        if self._names is None:
            self._names = index.delegated_names(Metadata[Targets].from_bytes(self.trusted_bytes("targets.json")).signed)
        return self._names

    def names(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._name_index())
        return list(self._sorted)

    def role(self, name: str) -> Targets:
        """The verified image role of NAME (for a binned name: its channels, revocations and bin delegation)."""
        if name in self._roles:
            return self._roles[name]
        if name not in self._name_index():
            names = self.names()
            raise NotFoundError(
                f"no image named {name!r} in {self.shown_url}",
                hint=f"images: {', '.join(names[:20])}" if names else "the catalogue is empty",
            )
        self._read_ahead(name)
        with translate_tuf(self.shown_url):
            self.updater.get_targetinfo(f"{name}/-/-/-")  # loads and verifies the image role (and one bin)
        self._roles[name] = self._trusted(model.role_for(name))
        return self._roles[name]

    def _read_ahead(self, name: str) -> None:
        """From the second name whose role this reader loads on (a listing, an export, a mirror, the browse site:
        each walks the names in order), read the roles of NAME and the names after it the Updater lacks, as many at
        once as the store sends (:meth:`StoreFetcher.prefetch`), instead of one round trip each. A pull, which
        loads one name, reads nothing ahead: no other name's bytes."""
        self._loads += 1
        step = self.store.concurrent_requests
        if step < 2 or self._loads < 2 or self.fetcher.holds(self._key(model.role_for(name)) or ""):
            return
        names = self.names()
        at = bisect.bisect_left(names, name)
        upcoming = [n for n in names[at:] if n not in self._roles][:step]
        keys = [k for n in upcoming if (k := self._key(model.role_for(n))) is not None]
        self.fetcher.forget(self._ahead_roles)
        self._ahead_roles = self._stale(keys)
        self.fetcher.prefetch(self._ahead_roles, TARGETS_MAX)

    def _key(self, role: str) -> str | None:
        """``metadata/V.ROLE.json`` as the Updater asks for it, V as the trusted snapshot lists it (None: unlisted)."""
        listed = self._snapshot_meta().get(f"{role}.json")
        return None if listed is None else f"{METADATA}{listed}.{urllib.parse.quote(role, '')}.json"

    def _trusted(self, role: str) -> Targets:
        """A role the Updater has just verified and persisted, read back from its metadata directory."""
        return Metadata[Targets].from_bytes(self.trusted_bytes(f"{urllib.parse.quote(role, '')}.json")).signed

    def trusted_bytes(self, file: str) -> bytes:
        """A file of the Updater's metadata directory, which it has verified and persisted (:func:`read_trusted`:
        no symlink followed, at most the format's cap). FileNotFoundError if it is not there."""
        return read_trusted(self._tree, self._rel, file)

    def _held_version(self, file: str) -> int | None:
        """The ``version`` a metadata file imagectl wrote ends with (``..."version":N}}``) if the metadata directory
        holds ``file``, else None: a hint of whether a cached role is current, never trusted (no symlink followed;
        the last 64 bytes read)."""
        try:
            fd = self._tree.open_regular(f"{self._rel}/{file}")
        except (OSError, ImagectlError):
            return None
        try:
            tail = os.pread(fd, 64, max(0, os.fstat(fd).st_size - 64))
        except OSError:
            return None
        finally:
            os.close(fd)
        m = _TAIL.search(tail)
        return None if m is None else int(m.group(1))

    def role_names(self, name: str) -> list[str]:
        """The roles on the way to NAME's images: its index role (in an indexed catalogue), its image role, and its
        bins when it is binned."""
        succinct = self._succinct(name)
        holder = self._name_index().get(name, "targets")
        via = [] if holder == "targets" else [holder]
        return [*via, model.role_for(name), *([] if succinct is None else succinct.get_roles())]

    def _succinct(self, name: str) -> Any:
        d = self.role(name).delegations
        return None if d is None else d.succinct_roles

    def _bin(self, name: str, role: str, probes: dict[str, str] | None = None) -> Targets:
        """Bin ``role`` of NAME as the Updater verified it; ``probes``: :func:`bins.probe_paths` of NAME, when
        every bin is read."""
        if role not in self._roles:
            probe = probes[role] if probes else bins.probe_path(name, self._succinct(name), role)
            with translate_tuf(self.shown_url):
                self.updater.get_targetinfo(probe)  # fetches and verifies the bin
            self._roles[role] = self._trusted(role)
        return self._roles[role]

    def _records(self, name: str, targets: dict[str, TargetFile]) -> list[ImageRecord]:
        out = []
        for path, t in targets.items():
            try:
                out.append(ImageRecord.from_target(path, t.length, t.hashes, t.custom))
            except InvalidInputError as e:
                raise UntrustedMetadataError(f"signed metadata of {name} is malformed: {e}") from None
        return out

    def images(self, name: str) -> list[ImageRecord]:
        """Every image of NAME, oldest first; for a binned name every bin is fetched (a listing reads the name's
        metadata in full, a pull by version or channel does not: :meth:`resolve`)."""
        role = self.role(name)
        succinct = self._succinct(name)
        out = self._records(name, role.targets)
        if succinct is not None:
            roles = list(succinct.get_roles())
            probes = bins.probe_paths(name, succinct)
            step = max(1, self.store.concurrent_requests)  # bins read at once, and held in memory at once
            for at in range(0, len(roles), step):
                batch = [r for r in roles[at : at + step] if r not in self._roles]
                ahead = []
                if step > 1:
                    ahead = self._stale([k for r in batch if (k := self._key(r)) is not None])
                    self.fetcher.prefetch(ahead, TARGETS_MAX)
                try:
                    for r in roles[at : at + step]:
                        out += self._records(name, self._bin(name, r, probes).targets)
                finally:
                    self.fetcher.forget(ahead)
        return sorted(out, key=lambda r: (model.version_key(r.version), r.arch))

    def _stale(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` (``metadata/V.ROLE.json``, V as the trusted snapshot lists it) the Updater will
        download: those its metadata directory does not hold at version V (told by the version at the end of the
        file as imagectl writes it; a wrong guess costs a read, never trust: the Updater checks all)."""
        out = []
        for key in keys:
            version, _, rest = key.removeprefix(METADATA).partition(".")
            if self._held_version(rest) != int(version):
                out.append(key)
        return out

    def _snapshot_meta(self) -> dict[str, int]:
        """role file -> version, from the snapshot the Updater verified and persisted when this reader was made."""
        if self._snap_meta is None:
            snap = Metadata[Snapshot].from_bytes(self.trusted_bytes("snapshot.json")).signed
            self._snap_meta = {path: m.version for path, m in snap.meta.items()}
        return self._snap_meta

    def _version_for_arch(self, name: str, version: str, arch: str) -> list[ImageRecord]:
        """The images of NAME:VERSION for ARCH, looked up by path (one bin per format, in the likely order). For a
        binned name, the formats its signed ``layouts`` records for ARCH come first (catalogue/README.md §5): the
        first lookup finds the image of a name that has one format per arch; the others are tried only when those
        find nothing (a record an older imagectl left without a pair still finds every image)."""
        formats = list(model.FORMATS)
        recorded = bins.layouts(self.role(name)) if self._succinct(name) is not None else None
        if recorded is not None:
            formats.sort(key=lambda f: f"{arch}/{f}" not in recorded)  # stable: the likely order within each part
        out = []
        for fmt in formats:
            path = model.target_path(name, version, arch, fmt)
            with translate_tuf(self.shown_url):
                t = self.updater.get_targetinfo(path)
            if t is not None:
                out += self._records(name, {path: t})
                break
        return out

    def ext(self, name: str) -> dict[str, dict[str, Any]]:
        """NAME's signed ``x-imagectl``: channels, revoked, and (catalogue/README.md §5) revoke_at and history."""
        ext = self.role(name).unrecognized_fields.get(EXT, {})
        return {k: dict(ext.get(k, {})) for k in ("channels", "revoked", "revoke_at", "history")}

    def revoked_now(self, name: str, version: str, now: dt.datetime | None = None) -> dict[str, Any] | None:
        """The tombstone (or the scheduled revocation whose time has come) of NAME:VERSION, else None."""
        ext = self.ext(name)
        if version in ext["revoked"]:
            return dict(ext["revoked"][version])
        due = ext["revoke_at"].get(version)
        if isinstance(due, dict) and isinstance(due.get("at"), str) and due["at"] <= _stamp(now or model.utcnow()):
            return {"reason": due.get("reason", ""), "at": due["at"], "scheduled": True}
        return None

    def resolve(self, ref: ImageRef, arch: str) -> Resolved:
        """The one image ``ref`` names for ``arch``; raises NotFoundError/RevokedError saying what exists.

        For a binned name and a known version (``NAME:VERSION``, ``NAME@CHANNEL``) only the bins of that version's
        paths are read; every bin is read only to choose the newest (``NAME``) or to say what exists."""
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
        why = None if version is None else self.revoked_now(ref.name, version)
        if why is not None:
            raise RevokedError(f"{ref.name}:{version} was revoked on {why.get('at', '?')}: {why.get('reason', '')}")
        if version is not None and self._succinct(ref.name) is not None:
            found = self._version_for_arch(ref.name, version, arch)
            if found:
                return self._verified(found[0])
        images = self.images(ref.name)
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
            if not images:
                raise NotFoundError(f"{ref.name} has no image of any arch (none published, or every version revoked)")
            if not for_arch:
                arches = sorted({r.arch for r in images})
                raise NotFoundError(
                    f"{ref.name} has no {arch} image (arches: {', '.join(arches)})", hint="choose one with --arch"
                )
            usable = [r for r in for_arch if self.revoked_now(ref.name, r.version) is None]
            if not usable:  # every one revoked at a date that has come
                raise NotFoundError(f"every {arch} version of {ref.name} is revoked")
            live = [r for r in usable if not r.deprecated]
            if not live:
                raise NotFoundError(
                    f"every {arch} version of {ref.name} is deprecated"
                    + (" or revoked" if len(usable) < len(for_arch) else ""),
                    hint=f"ask for one explicitly, e.g. {ref.name}:{usable[-1].version}",
                )
            rec = live[-1]
        return self._verified(rec)

    def _verified(self, rec: ImageRecord) -> Resolved:
        with translate_tuf(self.shown_url):
            target = self.updater.get_targetinfo(rec.path)
        if target is None:  # the walk disagrees with the role we read: never expected, never trusted
            raise UntrustedMetadataError(f"{rec.path} is listed but not found by the TUF delegation walk")
        return Resolved(rec, target)
