"""``imagectl catalogue verify``: check every signature, version link, expiry, hash and length; list each problem.

Unlike a client, which stops at the first failure, the verifier keeps going and reports everything it finds, so
an operator sees the whole damage at once. It reads only through the store interface and so works on any store.

A partial mirror (``imagectl mirror``) holds only some image names and images and says which in its unsigned
``mirror.json``. That file can only *excuse an absence*: an image role or blob the mirror does not hold is
reported as skipped rather than missing; everything that is present is verified as in a full catalogue, and what
``mirror.json`` claims is checked against the signed metadata. Dropping a forged ``mirror.json`` into a catalogue
therefore silences nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuf.api.metadata import Metadata

from imagectl.catalogue import bins, index, model
from imagectl.catalogue.metadata import ROOT_MAX, cap_for, parse_metadata, verify_signatures
from imagectl.catalogue.model import BLOBS, METADATA, ROLE_PREFIX, ImageRecord, blob_key, utcnow
from imagectl.errors import CatalogueStateError, ImagectlError, InvalidInputError
from imagectl.fsio import SymlinkRefusedError
from imagectl.store import ObjectMissingError, Store

__all__ = ["MIRROR_FILE", "Report", "verify_catalogue"]

MIRROR_FILE = "mirror.json"  # at a partial mirror's root: the image names and images it holds
MIRROR_FILE_MAX = 16 << 20  # bytes
MISSING_SHOWN = 20  # missing target files listed one by one; the rest are counted in one problem


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # absences a partial mirror's mirror.json excuses
    partial: bool = False  # the catalogue says (mirror.json) that it is a partial mirror
    roles: int = 0
    images: int = 0
    blob_bytes: int = 0
    needs_upgrade: int = 0  # images without the target file stock TUF clients fetch: `catalogue upgrade` adds them
    needs_rebin: list[str] = field(default_factory=list)  # names whose role (or a bin) is past bins.BIN_THRESHOLD
    needs_reindex: bool = False  # targets (or an index role) delegates more names than the index keeps per role

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "problems": self.problems,
            "partial_mirror": self.partial,
            "skipped": self.skipped,
            "roles_checked": self.roles,
            "images_checked": self.images,
            "blob_bytes_hashed": self.blob_bytes,
            "needs_upgrade": self.needs_upgrade,
            "needs_rebin": self.needs_rebin,
            "needs_reindex": self.needs_reindex,
        }


@dataclass(frozen=True)
class _Scope:
    """What a partial mirror says it holds: image roles, and images as ``NAME:VERSION ARCH``."""

    roles: frozenset[str]
    images: frozenset[str]


class _Verifier:
    def __init__(self, store: Store, check_blobs: bool) -> None:
        self.store = store
        self.check_blobs = check_blobs
        self.report = Report()
        self.now = utcnow()
        self._listed: tuple[str, set[str] | None] = ("", None)  # (NAME, its target files) for the name at hand
        self.unheld: set[str] = set()  # name patterns routed to index roles a partial mirror does not hold

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def read(self, key: str, limit: int) -> bytes | None:
        """The bytes at ``key``, or None after reporting why there are none (missing, oversized, a symlink…)."""
        try:
            return self.store.read(key, limit)
        except ObjectMissingError:
            self.problem(f"{key}: missing")
        except ImagectlError as e:
            self.problem(f"{key}: unreadable: {e.message}")
        return None

    def load(self, key: str) -> Metadata[Any] | None:
        data = self.read(key, cap_for(key))
        if data is None:
            return None
        try:
            return parse_metadata(data, key, as_written=False)  # checked exactly as a stock TUF client checks it
        except ImagectlError as e:
            self.problem(e.message)  # parse_metadata's messages begin with the key
            return None

    def signed_by(self, delegator: Metadata[Any], role: str, md: Metadata[Any], key: str) -> bool:
        try:
            verify_signatures(delegator, role, md, key)
            return True
        except ImagectlError as e:
            self.problem(e.message.replace("signature check failed", "bad signatures"))
            return False

    def checked(self, delegator: Metadata[Any], role: str, md: Metadata[Any], key: str, version: int) -> None:
        """Signed by ``delegator`` for ``role``, at the version the snapshot (or timestamp) says, not expired."""
        self.signed_by(delegator, role, md, key)
        self.version(md, version, key)
        self.fresh(md, key)

    def fresh(self, md: Metadata[Any], key: str) -> None:
        self.report.roles += 1
        if md.signed.is_expired(self.now):
            self.problem(f"{key}: expired on {md.signed.expires.isoformat()}")

    def version(self, md: Metadata[Any], want: int, key: str) -> None:
        if md.signed.version != want:
            self.problem(f"{key}: has version {md.signed.version}, expected {want}")

    def roots(self) -> Metadata[Any] | None:
        first = self.load(f"{METADATA}1.root.json")
        if first is None:
            return None
        self.signed_by(first, "root", first, f"{METADATA}1.root.json")
        self.version(first, 1, f"{METADATA}1.root.json")
        current, n = first, 2
        while True:
            key = f"{METADATA}{n}.root.json"
            if not self.store.exists(key):
                break
            nxt = self.load(key)
            if nxt is None:
                break
            self.version(nxt, n, key)
            self.signed_by(current, "root", nxt, f"{key} (by root {n - 1})")
            self.signed_by(nxt, "root", nxt, f"{key} (by itself)")
            current, n = nxt, n + 1
        self.fresh(current, f"{METADATA}{current.signed.version}.root.json")
        latest = self.read(f"{METADATA}root.json", ROOT_MAX)
        if latest is not None and latest != self.read(f"{METADATA}{current.signed.version}.root.json", ROOT_MAX):
            self.problem(f"{METADATA}root.json is not the newest versioned root ({current.signed.version})")
        return current

    def blob(self, label: str, sha256: str, size: int, key: str | None = None, what: str = "blob") -> None:
        """Hash the blob ``sha256`` names (or the file at ``key``), checking it against the signed ``size`` and
        ``sha256``."""
        key = key or blob_key(sha256)
        try:
            n, got = self.store.hash_object(key, size)
        except ObjectMissingError:
            self.problem(f"{label}: {what} {key} is missing")
            return
        except ImagectlError as e:
            self.problem(f"{label}: {what} {key} unreadable: {e.message}")
            return
        self.report.blob_bytes += n
        if n != size:
            held = f"more than {size}" if n > size else str(n)
            self.problem(f"{label}: {what} {key} has {held} bytes, signed length is {size}")
        elif got != sha256:
            self.problem(f"{label}: {what} {key} has sha256 {got}, signed is {sha256}")

    def image_blob(self, rec: ImageRecord) -> None:
        """The image's blob key: its bytes (a directory; an object store written before images were stored once),
        or on an object store a pointer to a target file of the same hash (the bytes are checked there, by
        :meth:`target_file`)."""
        key = blob_key(rec.sha256)
        try:
            at = self.store.pointer(key)
        except ImagectlError as e:
            self.problem(f"{rec.path}: blob {key} unreadable: {e.message}")
            return
        if at is None:
            self.blob(rec.path, rec.sha256, rec.size)
        # A pointer may name another version's target file of the same bytes, even one gc has since removed:
        # it only spares a publish an upload (which checks it first), and no reader follows it.

    def target_file(self, rec: ImageRecord) -> None:
        """The file a stock TUF client downloads (``targets/…``): present, and (with blobs) the signed bytes — a
        hard link of the blob just hashed counts as checked."""
        key = model.target_file_key(rec.path, rec.sha256)
        if not self.target_present(rec.name, key):
            self.report.needs_upgrade += 1
            if self.report.needs_upgrade <= MISSING_SHOWN:  # then one line with the count, at the end
                self.problem(f"{rec.path}: target file {key} is missing (stock TUF clients cannot download it)")
        elif self.check_blobs and not self.store.same_object(blob_key(rec.sha256), key):
            self.blob(rec.path, rec.sha256, rec.size, key, "target file")

    def target_present(self, name: str, key: str) -> bool:
        """Whether target file ``key`` of NAME exists: one listing of ``targets/NAME/`` per name (a few LISTs on
        S3, where a HEAD per image made verify of 100,000 images take minutes), a check per key where the store
        cannot list (HTTP). Only the current name's listing is held, so memory does not grow with the catalogue."""
        if self._listed[0] != name:
            self._listed = (name, self.store.regular_keys(f"{model.TARGETS}{name}/"))
        listed = self._listed[1]
        return self.store.exists(key) if listed is None else key in listed

    def record_blob(self, rec: ImageRecord) -> None:
        """The build record ``publish --from-build`` stored beside the image, and the SBOM it references: signed
        (sha256, size) in custom."""
        for what, sha, size in model.side_blobs(rec.build_record):
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)) or type(size) is not int or size < 0:
                self.problem(f"{rec.path}: the {what} names no valid blob (sha256 {sha!r}, size {size!r})")
                continue
            self.blob(f"{rec.path} ({what})", sha, size)

    def scope(self) -> _Scope | None:
        """What mirror.json says this partial mirror holds; None for a full catalogue (or an unusable file, which
        is a problem: then every absence is one too)."""
        try:
            data = self.store.read(MIRROR_FILE, MIRROR_FILE_MAX)
        except ObjectMissingError:
            return None
        except ImagectlError as e:
            self.problem(f"{MIRROR_FILE}: unreadable ({e.message}); checked as a full catalogue")
            return None
        try:
            info = json.loads(data)
            missing = [k for k in ("names", "images") if not (isinstance(info, dict) and k in info)]
            if missing:
                raise ValueError(f"no {missing[0]!r}")
            names, images = info["names"], info["images"]
            if not (isinstance(names, list) and isinstance(images, list)):
                raise TypeError("names and images must be lists")
            roles = frozenset(model.role_for(model.check_name(n)) for n in names)
            held = frozenset(str(i) for i in images if isinstance(i, str))
        except (ValueError, KeyError, TypeError, RecursionError, InvalidInputError) as e:
            self.problem(f"{MIRROR_FILE}: malformed ({e}); checked as a full catalogue")
            return None
        self.report.partial = True
        return _Scope(roles, held)

    def listing(self) -> None:
        """Report entries a listable store holds that are not plain files (symlinks are never followed)."""
        for prefix in (METADATA, BLOBS, model.TARGETS):
            try:
                for entry in self.store.list_entries(prefix):
                    if not entry.regular:
                        self.problem(
                            f"{entry.key}: not a regular file (a symlink, device, FIFO or socket; not followed)"
                        )
            except SymlinkRefusedError:
                self.problem(f"{prefix.rstrip('/')}: a symlink or not a directory (not followed)")
            except CatalogueStateError:
                return  # a read-only store over HTTP cannot list

    def targets(
        self,
        key: str,
        md: Metadata[Any],
        name: str,
        bin_of: tuple[Any, str] | None,
        scope: _Scope | None,
        seen: set[str],
    ) -> None:
        """Check the targets of an image role or bin: in the name (and in the bin their path hashes into, else a
        client never finds them), well-formed, and their blobs and target files."""
        for path, t in md.signed.targets.items():
            if not path.startswith(name + "/"):
                self.problem(f"{key}: target {path} is outside the role's image name")
            elif bin_of is not None and bins.bin_role_for(bin_of[0], path) != bin_of[1]:
                self.problem(f"{key}: target {path} is in the wrong bin (its path hashes elsewhere)")
            try:
                rec = ImageRecord.from_target(path, t.length, t.hashes, t.custom)
            except InvalidInputError as e:
                self.problem(f"{key}: {e}")
                continue
            label = f"{rec.name}:{rec.version} {rec.arch}"
            if scope is not None:  # only a partial mirror's claims need every label: memory stays flat otherwise
                seen.add(label)
            if scope is not None and label not in scope.images and not self.store.exists(blob_key(rec.sha256)):
                self.report.skipped.append(f"{label}: not held by this partial mirror")
                continue
            self.report.images += 1
            if self.check_blobs:
                self.image_blob(rec)
                self.record_blob(rec)
            self.target_file(rec)

    def index_role(
        self, snap: Metadata[Any], snap_key: str, targets: Metadata[Any], t_key: str, role: str, scope: Any
    ) -> list[tuple[str, Metadata[Any]]]:
        """Check index role ``role`` (signatures, version, expiry, that it holds no targets and delegates exactly
        the names whose patterns targets gives it, each hashing to it); return its image roles."""
        meta = snap.signed.meta.get(f"{role}.json")
        if meta is None:
            self.problem(f"{snap_key}: index role {role} is not listed")
            return []
        key = f"{METADATA}{meta.version}.{role}.json"
        if scope is not None and not self.store.exists(key):
            self.report.skipped.append(f"{role}: not held by this partial mirror")
            self.unheld |= set(targets.signed.get_delegated_role(role).paths or [])
            return []
        md = self.load(key)
        if md is None:
            return []
        self.checked(targets, role, md, key, meta.version)
        if md.signed.targets:
            self.problem(f"{key}: an index role holds targets (they belong in image roles)")
        patterns = set(targets.signed.get_delegated_role(role).paths or [])
        d = md.signed.delegations
        inner = dict(d.roles) if d is not None and d.roles is not None else {}
        if d is not None and d.succinct_roles is not None:
            self.problem(f"{key}: an index role delegates hash bins (only image roles)")
        bits = index.bits_of(role)
        out = []
        for image_role, dr in sorted(inner.items()):
            name = image_role.removeprefix(ROLE_PREFIX)
            if not image_role.startswith(ROLE_PREFIX) or dr.paths != [index.name_pattern(name)]:
                self.problem(f"{key}: delegates {image_role}, which is not an image role of its own name")
                continue
            if index.name_pattern(name) not in patterns:
                self.problem(f"{key}: delegates {name}, which targets does not route to {role}")
                continue
            if index.index_role(name, bits) != role:
                self.problem(f"{key}: holds {name}, whose name hashes to another index role")
            out.append((image_role, md))
        if len(out) > index.INDEX_CROWDED:
            self.report.needs_reindex = True
        for pattern in sorted(patterns - {index.name_pattern(r.removeprefix(ROLE_PREFIX)) for r, _ in out}):
            self.problem(f"{t_key}: routes {pattern} to {role}, which does not delegate it")
        return out

    def image_role(
        self, snap: Metadata[Any], snap_key: str, delegator: Metadata[Any], role: str, scope: Any, seen: set[str]
    ) -> None:
        meta = snap.signed.meta.get(f"{role}.json")
        if meta is None:
            self.problem(f"{snap_key}: delegated role {role} is not listed")
            return
        key = f"{METADATA}{meta.version}.{role}.json"
        if scope is not None and role not in scope.roles and not self.store.exists(key):
            self.report.skipped.append(f"{role.removeprefix(ROLE_PREFIX)}: not held by this partial mirror")
            return
        md = self.load(key)
        if md is None:
            return
        self.checked(delegator, role, md, key, meta.version)
        name = role.removeprefix(ROLE_PREFIX)
        self.targets(key, md, name, None, scope, seen)
        d = md.signed.delegations
        succinct = None if d is None else d.succinct_roles
        if d is not None and (
            d.roles or succinct is None or succinct.name_prefix != bins.bin_prefix(name, succinct.bit_length)
        ):
            self.problem(f"{key}: delegates other than {name}'s hash bins (image roles delegate only to bins)")
            return
        if succinct is None:
            if len(md.signed.targets) > bins.BIN_THRESHOLD:
                self.report.needs_rebin.append(name)
            return
        if md.signed.targets:
            self.problem(f"{key}: a binned image role holds targets (they belong in its bins)")
        recorded = bins.layouts(md)
        held: set[str] = set()
        crowded = False
        for bin_role in succinct.get_roles():
            bmeta = snap.signed.meta.get(f"{bin_role}.json")
            if bmeta is None:
                self.problem(f"{snap_key}: bin {bin_role} is not listed")
                continue
            bkey = f"{METADATA}{bmeta.version}.{bin_role}.json"
            if scope is not None and role not in scope.roles and not self.store.exists(bkey):
                continue
            bmd = self.load(bkey)
            if bmd is None:
                continue
            self.checked(md, bin_role, bmd, bkey, bmeta.version)
            if bmd.signed.delegations is not None:
                self.problem(f"{bkey}: a bin delegates further")
            crowded |= len(bmd.signed.targets) > bins.BIN_THRESHOLD
            held |= {p for path in bmd.signed.targets if (p := model.layout_of(path)) is not None}
            self.targets(bkey, bmd, name, (succinct, bin_role), scope, seen)
        unrecorded = sorted(held - set(recorded or ()))
        if recorded is not None and unrecorded:  # lookups by version would miss these images
            self.problem(
                f"{key}: its bins hold {', '.join(unrecorded)} images its layouts do not list (written by an older "
                f"imagectl?): imagectl catalogue rebin CATALOGUE {name}"
            )
        if crowded or recorded is None:  # no record: a lookup by version tries every arch and format's bin
            self.report.needs_rebin.append(name)

    def run(self) -> Report:
        scope = self.scope()
        self.listing()
        root = self.roots()
        if root is None:
            return self.report
        ts_key = f"{METADATA}timestamp.json"
        ts = self.load(ts_key)
        if ts is None:
            return self.report
        self.signed_by(root, "timestamp", ts, ts_key)
        self.fresh(ts, ts_key)
        snap_key = f"{METADATA}{ts.signed.snapshot_meta.version}.snapshot.json"
        snap = self.load(snap_key)
        if snap is None:
            return self.report
        self.checked(root, "snapshot", snap, snap_key, ts.signed.snapshot_meta.version)
        tmeta = snap.signed.meta.get("targets.json")
        if tmeta is None:
            self.problem(f"{snap_key}: does not list targets.json")
            return self.report
        t_key = f"{METADATA}{tmeta.version}.targets.json"
        targets = self.load(t_key)
        if targets is None:
            return self.report
        self.checked(root, "targets", targets, t_key, tmeta.version)
        d = targets.signed.delegations
        top = sorted(d.roles) if d is not None and d.roles is not None else []
        # (image role, the metadata delegating it): straight from targets, or through the name index
        image_roles: list[tuple[str, Metadata[Any]]] = []
        for role in top:
            if role.startswith(ROLE_PREFIX):
                image_roles.append((role, targets))
            elif index.is_index(role):
                image_roles += self.index_role(snap, snap_key, targets, t_key, role, scope)
            else:
                self.problem(f"{t_key}: delegates {role}, which is neither an image role nor an index role")
        delegated = {r for r, _ in image_roles}
        if not any(index.is_index(r) for r in top) and len(image_roles) > index.INDEX_THRESHOLD:
            self.report.needs_reindex = True
        listed = {k.removesuffix(".json") for k in snap.signed.meta} - {"targets"}
        for extra in sorted(listed - delegated - set(top)):
            name = bins.name_of_bin(extra)
            if index.is_index(extra):
                continue  # an index role a re-index replaced: listed for good (clients refuse a dropped role)
            of = name or extra.removeprefix(ROLE_PREFIX)
            if extra.startswith(ROLE_PREFIX) and index.name_pattern(of) in self.unheld:
                continue  # delegated by an index role this partial mirror does not hold: not checked here
            if name is None or model.role_for(name) not in delegated:  # a bin (current or re-binned away) is fine
                self.problem(f"{snap_key}: lists {extra}, which targets does not delegate")
        if scope is not None:
            for role in sorted(scope.roles - delegated):
                self.problem(f"{MIRROR_FILE}: claims {role.removeprefix(ROLE_PREFIX)}, which the signed metadata lacks")
        seen: set[str] = set()
        for role, delegator in image_roles:
            self.image_role(snap, snap_key, delegator, role, scope, seen)
        if self.report.needs_upgrade > MISSING_SHOWN:
            more = self.report.needs_upgrade - MISSING_SHOWN
            self.problem(
                f"{more} more {'image lacks its' if more == 1 else 'images lack their'} target file "
                "(stock TUF clients cannot download them)"
            )
        if scope is not None:
            for label in sorted(scope.images - seen):
                self.problem(f"{MIRROR_FILE}: claims image {label}, which the signed metadata lacks")
        return self.report


def verify_catalogue(store: Store, *, check_blobs: bool = True) -> Report:
    """Check the whole catalogue; raises CatalogueStateError only if ``store`` holds no catalogue at all."""
    if not store.exists(f"{METADATA}1.root.json") and not store.exists(f"{METADATA}root.json"):
        raise CatalogueStateError(f"{store.shown} is not a catalogue (no {METADATA}1.root.json)")
    return _Verifier(store, check_blobs).run()
