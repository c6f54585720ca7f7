"""The publisher's view of a catalogue: load the signed metadata, change it, sign and write a new version.

Write order is what makes a publish atomic for readers: blobs first, then the new versioned role files
(``N.image-NAME.json``, ``N.targets.json``), then ``N.snapshot.json``, and last ``timestamp.json``, the file that
commits the change (``root.json``, a copy of the newest ``N.root.json``, is the only other file ever replaced).
Until the timestamp is replaced, nothing a client can reach refers to the new files.

Concurrency is compare-and-swap, the same on a directory and on S3 (see catalogue/README.md, "Publishing
protocol"): versioned files are created only if absent (a name that is taken, by a publisher still running or
one that died, is skipped for the next version: TUF only needs versions to grow), and ``timestamp.json`` is
replaced only if it is still the one this publisher read. A publisher that loses the swap starts again from the
fresh state (:func:`transact`), so no change is ever lost and the metadata always verifies.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

from imagectl.catalogue import bins, index, model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import CatalogueCache, MetadataCache
from imagectl.catalogue.metadata import (
    ROOT_MAX,
    TIMESTAMP_MAX,
    cap_for,
    check_bounds,
    parse_metadata,
    sign_with,
    signed_file_bytes,
    verify_signatures,
)
from imagectl.catalogue.model import EXT, METADATA, ROLE_PREFIX, ImageRecord, role_for, utcnow
from imagectl.errors import (
    CatalogueStateError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UntrustedMetadataError,
)
from imagectl.store import ObjectMissingError, Store
from imagectl.store.base import Outcome

__all__ = ["EXT", "CatalogueState", "CommitConflict", "Want", "load_state", "metadata_bytes", "transact"]

T = TypeVar("T")

_MAX_SKIPS = 1000  # versioned names a commit may find taken before giving up


def metadata_bytes(md: Metadata[Any]) -> bytes:
    # Compact JSON with sorted keys: the C encoder writes a 5,000-version role in a few milliseconds, where an
    # indented dump (pure Python) took 0.16 s per publish (bench/publish.py). The signature covers the canonical
    # form, not these bytes; `python3 -m json.tool` makes them readable.
    return json.dumps(md.to_dict(), separators=(",", ":"), sort_keys=True).encode() + b"\n"


_parse = parse_metadata


def encoded(md: Metadata[Any], key: str, payload: bytes | None = None) -> bytes:
    """The bytes of ``md`` as written to ``key`` (made from ``payload``, the canonical bytes just signed, when
    given), refused (CatalogueStateError, before anything is written) when a
    client would refuse them: over the format's size cap or its JSON value limit."""
    data = metadata_bytes(md) if payload is None else signed_file_bytes(md, payload)
    try:
        check_bounds(data, key)
    except UntrustedMetadataError as e:
        raise CatalogueStateError(
            f"cannot write {key}: {e.message}",
            hint="spread the name over more hash bins: imagectl catalogue rebin DEST NAME --bits B",
        ) from None
    return data


_verify = verify_signatures


@dataclass
class CatalogueState:
    """Verified metadata of one catalogue version, and the changes a command is about to sign."""

    store: Store
    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    roles: dict[str, Metadata[Targets]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    new_roles: set[str] = field(default_factory=set)  # created by this change: signed as version 1
    timestamp_tag: str = ""  # version tag of timestamp.json as read: the commit swaps it only if unchanged
    root_copy: bytes = b""  # root.json as read (the convenience copy of the newest root; the chain decides)
    _fetched: dict[str, Outcome[bytes]] = field(default_factory=dict)  # role files load_state read ahead (Want)
    _names: dict[str, str] | None = None  # NAME -> role delegating image-NAME (targets or an index role)
    _listed: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # (NAME, VERSION, ARCH): its files
    cache: CatalogueCache | None = None  # this host's copies of immutable metadata files (catalogue.metacache)
    _cached: dict[str, bytes] = field(default_factory=dict)  # role files load_state found in the cache (Want)
    # the cache, left unused: the store's timestamp is older than one this host saw (restored from a backup?)
    _rewound: CatalogueCache | None = None

    # -- reading ------------------------------------------------------------------------------------------
    def name_index(self) -> dict[str, str]:
        """NAME -> the role that delegates ``image-NAME``: ``targets``, or the index role holding NAME."""
        if self._names is None:
            self._names = index.delegated_names(self.targets.signed)
        return self._names

    def role_names(self) -> list[str]:
        """The image roles ``image-NAME`` of every name (not their bins, nor index roles), sorted."""
        return sorted(role_for(n) for n in self.name_index())

    def index_roles(self) -> list[str]:
        """The index roles targets delegates (empty while the catalogue is not indexed)."""
        return index.index_roles(self.targets.signed)

    def delegator(self, role: str) -> Metadata[Targets] | None:
        """The verified metadata that delegates ``role``: targets for an index role, targets or the name's index
        role for an image role, the image role for a bin (None when nothing delegates it now, e.g. a bin a
        re-bin replaced, an index role a re-index replaced)."""
        name = bins.name_of_bin(role)
        if index.is_index(role):
            return self.targets if role in self.index_roles() else None
        if name is None:
            parent_name = (
                self.name_index().get(role.removeprefix(ROLE_PREFIX)) if role.startswith(ROLE_PREFIX) else None
            )
            if parent_name is None:
                return None
            return self.targets if parent_name == "targets" else self.role(parent_name)
        parent = self.role(role_for(name))
        succinct = None if parent is None else self.succinct(parent)
        return parent if succinct is not None and succinct.is_delegated_role(role) else None

    def role(self, role: str) -> Metadata[Targets] | None:
        """The verified metadata of a delegated image role or bin, or None if nothing delegates it."""
        if role in self.roles:
            return self.roles[role]
        delegator = self.delegator(role)
        meta = self.snapshot.signed.meta.get(f"{role}.json")
        if meta is None or delegator is None:
            return None
        key = f"{METADATA}{meta.version}.{role}.json"

        def check(data: bytes) -> Metadata[Any]:
            md = _parse(data, key)
            _verify(delegator, role, md, key)
            _check_version(md, meta.version, key, "snapshot")
            return md

        cached = self._cached.pop(key, None)
        if cached is None and key not in self._fetched:
            cached = None if self.cache is None else self.cache.get(key, cap_for(key))
        md = _cache_checked(self.cache, key, cached, check)
        if md is None:
            data = _bytes(self.store, key, self._fetched.pop(key, None))
            md = check(data)
            if self.cache is not None:
                self.cache.put(key, data)
        self.roles[role] = cast("Metadata[Targets]", md)
        return self.roles[role]

    @staticmethod
    def succinct(md: Metadata[Targets]) -> SuccinctRoles | None:
        """The hash-bin delegation of a binned image role, None for a plain one."""
        d = md.signed.delegations
        return None if d is None else d.succinct_roles

    def bin_roles(self, name: str) -> list[str]:
        """The bins of NAME (empty for a plain role or an unknown name), in bin order."""
        md = self.role(role_for(name))
        succinct = None if md is None else self.succinct(md)
        return [] if succinct is None else list(succinct.get_roles())

    def all_roles(self) -> list[str]:
        """Every delegated role below targets: index roles, then image roles and, after each binned one, its
        bins (a delegator always comes before what it delegates)."""
        out = self.index_roles()
        for role in self.role_names():
            out.append(role)
            out += self.bin_roles(role.removeprefix(ROLE_PREFIX))
        return out

    def holder(self, name: str, path: str) -> Metadata[Targets] | None:
        """The role that holds (or would hold) target ``path`` of NAME: its image role, or the one bin the path
        hashes into. Reads at most two files."""
        md = self.role(role_for(name))
        succinct = None if md is None else self.succinct(md)
        if md is None or succinct is None:
            return md
        return self.role(bins.bin_role_for(succinct, path))

    def target(self, name: str, path: str) -> TargetFile | None:
        md = self.holder(name, path)
        return None if md is None else md.signed.targets.get(path)

    def target_roles(self, name: str) -> list[Metadata[Targets]]:
        """The roles that hold NAME's targets: its image role, or every bin of it (reads them all)."""
        md = self.role(role_for(name))
        if md is None:
            return []
        if self.succinct(md) is None:
            return [md]
        return [b for b in (self.role(r) for r in self.bin_roles(name)) if b is not None]

    def images(self, name: str) -> list[ImageRecord]:
        """Every image of NAME (every bin of a binned name is read)."""
        return [
            ImageRecord.from_target(p, t.length, t.hashes, t.custom)
            for md in self.target_roles(name)
            for p, t in md.signed.targets.items()
        ]

    def version_images(self, name: str, version: str, *, every_layout: bool = False) -> list[ImageRecord]:
        """Every arch of NAME:VERSION. A binned name is asked by target path, so only the bins those paths hash
        into are read, never all of them: the path of each arch and format its image role's signed ``layouts``
        lists (one or two bins for most names), or, without that record (a name binned by an older imagectl) or
        with ``every_layout``, of every arch and format imagectl knows (up to 100 bins)."""
        md = self.role(role_for(name))
        if md is None:
            return []
        if self.succinct(md) is None:
            return [r for r in self.images(name) if r.version == version]
        recorded = None if every_layout else bins.layouts(md)
        pairs = bins.ALL_LAYOUTS if recorded is None else recorded
        out = []
        for pair in pairs:
            arch, _, fmt = pair.partition("/")
            path = model.target_path(name, version, arch, fmt)
            t = self.target(name, path)
            if t is not None:
                out.append(ImageRecord.from_target(path, t.length, t.hashes, t.custom))
        return out

    def _note_layout(self, md: Metadata[Targets], record: ImageRecord) -> None:
        """Add the arch and format of ``record`` to binned image role ``md``'s ``layouts`` (re-signing the
        role, the first time a name gets that pair only). A role without the record is left without it: only a
        read of every bin could tell its pairs (``catalogue rebin`` does)."""
        pair = model.layout_of(record.path)
        if pair is None or bins.layouts(md) is None:  # no record (or none that reads as one): left as it is
            return
        raw: list[str] = md.signed.unrecognized_fields[EXT][bins.LAYOUTS]  # pairs of later imagectls kept too
        if pair not in raw:
            self._set_layouts(md, {*raw, pair})
            self.changed.add(role_for(record.name))

    @classmethod
    def _set_layouts(cls, md: Metadata[Targets], pairs: Iterable[str | None]) -> None:
        cast("dict[str, Any]", cls.ext(md))[bins.LAYOUTS] = sorted({p for p in pairs if p is not None})

    def record_layouts(self, name: str) -> bool:
        """Make binned NAME's ``layouts`` say what its bins hold (reads every bin): for a name binned before the
        record, or one an older imagectl published a new arch or format into. Whether the record changed."""
        md = self.role(role_for(name))
        if md is None or self.succinct(md) is None:
            return False
        held = {p for roles in self.target_roles(name) for t in roles.signed.targets if (p := model.layout_of(t))}
        recorded = bins.layouts(md)
        if recorded is not None and set(recorded) == held:
            return False
        self._set_layouts(md, held)
        self.changed.add(role_for(name))
        return True

    def names(self) -> list[str]:
        return sorted(self.name_index())

    def target_file_formats(self, name: str, version: str, arch: str) -> set[str]:
        """The formats of the target files under ``targets/NAME/VERSION/ARCH/`` (one listing of the store, kept
        with this state). A target file is made before any metadata lists it (catalogue/README.md §6), so the
        listing names at least every format this state's metadata holds for NAME:VERSION on ARCH; a publish that
        checks the version before uploading and again in its commit, on the same state, lists once."""
        key = (name, version, arch)
        if key not in self._listed:
            self._listed[key] = _files_listed(self.store, key)
        return {f.rsplit(".", 1)[-1] for f in self._listed[key]}

    def target_file_unlisted(self, key: str) -> bool:
        """Whether target file ``key`` (``targets/NAME/VERSION/ARCH/FILE``) was absent from this state's listing
        of its directory: then the store need not be asked again whether it holds it. False when that directory
        was not listed. (A file made since the listing is merely sent again: its name is its bytes' hash.)"""
        parts = key.removeprefix(model.TARGETS).split("/")
        listed = self._listed.get((parts[0], parts[1], parts[2])) if len(parts) == 4 else None
        return listed is not None and parts[3] not in listed

    @staticmethod
    def ext(md: Metadata[Targets]) -> dict[str, dict[str, Any]]:
        ext = md.signed.unrecognized_fields.setdefault(EXT, {})
        ext.setdefault("channels", {})
        ext.setdefault("revoked", {})
        return cast("dict[str, dict[str, Any]]", ext)

    # -- changing -----------------------------------------------------------------------------------------
    def role_for_update(self, name: str, expires: dt.datetime) -> Metadata[Targets]:
        """The image role of ``name``, created (and delegated from targets) if new; marked to be re-signed."""
        md = self._name_role(name, expires)
        self.changed.add(role_for(name))
        return md

    def _name_role(self, name: str, expires: dt.datetime) -> Metadata[Targets]:
        role = role_for(name)
        md = self.role(role)
        if md is None:
            md = Metadata(Targets(version=1, expires=expires))
            self.new_roles.add(role)
            self.changed.add(role)
            top = self.root.signed.roles["targets"]
            indexed = self.index_roles()
            if indexed:  # one more pattern in targets, one more delegation in the name's index role
                holder_role = index.index_role(name, index.bits_of(indexed[0]))
                holder = self.role(holder_role)
                if holder is None:  # every index role is made at once: signed metadata that lacks one is inconsistent
                    raise UntrustedMetadataError(f"index role {holder_role} is delegated but missing")
                self._index_name(holder_role, name, top.keyids, top.threshold)
                self._delegate_image(holder, name, top.keyids, top.threshold)
                self.changed.add(holder_role)
                self.name_index()[name] = holder_role
            else:
                self._delegate_image(self.targets, name, top.keyids, top.threshold)
                self.name_index()[name] = "targets"
            self.roles[role] = md
            self.changed.add("targets")
        return md

    def _keys_into(self, md: Metadata[Targets], keyids: list[str]) -> Delegations:
        if md.signed.delegations is None:
            md.signed.delegations = Delegations(keys={}, roles={})
        for keyid in keyids:
            md.signed.delegations.keys[keyid] = self.root.signed.keys[keyid]
        return md.signed.delegations

    def _delegate(self, md: Metadata[Targets], role: str, keyids: list[str], threshold: int) -> DelegatedRole:
        """The delegation of ``role`` in ``md``, made (terminating, no paths yet) if missing."""
        d = self._keys_into(md, keyids)
        assert d.roles is not None
        if role not in d.roles:
            d.roles[role] = DelegatedRole(
                name=role, keyids=list(keyids), threshold=threshold, terminating=True, paths=[]
            )
        return d.roles[role]

    def _index_name(self, role: str, name: str, keyids: list[str], threshold: int) -> None:
        """Add NAME's path pattern to index role ``role``'s delegation in targets."""
        paths = self._delegate(self.targets, role, keyids, threshold).paths
        assert paths is not None
        paths.append(index.name_pattern(name))

    def _delegate_image(self, md: Metadata[Targets], name: str, keyids: list[str], threshold: int) -> None:
        d = self._keys_into(md, keyids)
        assert d.roles is not None
        d.roles[role_for(name)] = index.image_delegation(name, keyids, threshold)

    def reindex(self, bits: int | None = None) -> int:
        """Spread every name over ``2**bits`` new index roles (default :func:`index.index_bits` of the number of
        names); targets delegates the index roles, each index role its names' image roles, which are not
        re-signed. Returns the bit length (unchanged: nothing to do)."""
        names = self.name_index()
        bits = bits or index.index_bits(len(names))
        if not 1 <= bits <= index.MAX_BITS:
            raise InvalidInputError(f"an index has 2 to {2**index.MAX_BITS} roles (1 to {index.MAX_BITS} bits)")
        old = self.index_roles()
        if old and index.bits_of(old[0]) == bits:
            return bits
        current: dict[str, DelegatedRole] = {}  # each name's delegation as it is now (its keys and threshold)
        for holder_role in {*names.values()}:
            holder = self.targets if holder_role == "targets" else self.role(holder_role)
            if holder is None or holder.signed.delegations is None or holder.signed.delegations.roles is None:
                raise CatalogueStateError(f"{holder_role} is delegated but missing")
            current.update(holder.signed.delegations.roles)
        top = self.root.signed.roles["targets"]
        expires = self.targets.signed.expires
        self.targets.signed.delegations = Delegations(keys={}, roles={})
        made: dict[str, Metadata[Targets]] = {}
        width = len(f"{2**bits - 1:x}")
        for n in range(2**bits):  # every index role exists, so a new name always finds its own
            role = f"{index.INDEX_PREFIX}{bits}-{n:0{width}x}"
            made[role] = Metadata(Targets(version=1, expires=expires))
            self._delegate(self.targets, role, top.keyids, top.threshold)
            self.roles[role] = made[role]
            self.new_roles.add(role)
            self.changed.add(role)
        self._names = {}
        for name in sorted(names):
            role = index.index_role(name, bits)
            was = current[role_for(name)]
            self._index_name(role, name, top.keyids, top.threshold)
            self._delegate_image(made[role], name, was.keyids, was.threshold)
            self._names[name] = role
        self.changed.add("targets")
        return bits

    def index_crowded(self) -> bool:
        """Whether the name index should be (re-)made: too many names straight under targets, or an index role
        past :data:`index.INDEX_CROWDED` names."""
        indexed = self.index_roles()
        if not indexed:
            return len(self.name_index()) > index.INDEX_THRESHOLD
        counts: dict[str, int] = {}
        for holder in self.name_index().values():
            counts[holder] = counts.get(holder, 0) + 1
        return max(counts.values(), default=0) > index.INDEX_CROWDED

    def add_image(self, record: ImageRecord, expires: dt.datetime) -> None:
        """Add (or replace) the target of ``record``, re-signing only the role that holds it (one bin of a binned
        name; the image role itself only when the name is new or plain, or gets its first ``record.arch`` image
        in ``record.format``)."""
        self.add_target(self._name_role(record.name, expires), record)

    def add_target(self, md: Metadata[Targets], record: ImageRecord) -> None:
        """Add ``record`` to image role ``md``, or to the bin it hashes into when ``md`` is binned (and its pair of
        arch and format to the role's ``layouts``, re-signing the role too when the pair is new to the name)."""
        succinct = self.succinct(md)
        if succinct is None:
            self._put(role_for(record.name), record)
            return
        self._put(bins.bin_role_for(succinct, record.path), record)
        self._note_layout(md, record)

    def _put(self, role: str, record: ImageRecord) -> None:
        md = self.role(role)
        assert md is not None
        md.signed.targets[record.path] = TargetFile(
            length=record.size,
            hashes={"sha256": record.sha256},
            path=record.path,
            unrecognized_fields={"custom": record.custom()},
        )
        self.changed.add(role)

    def remove_target(self, name: str, path: str) -> None:
        md = self.role(role_for(name))
        succinct = None if md is None else self.succinct(md)
        role = role_for(name) if succinct is None else bins.bin_role_for(succinct, path)
        held = self.role(role)
        if held is not None and path in held.signed.targets:
            del held.signed.targets[path]
            self.changed.add(role)

    def rebin(self, name: str, bits: int | None = None) -> int:
        """Spread NAME's targets over ``2**bits`` new bins (default :func:`bins.bin_bits` of its size); the image
        role keeps its ``x-imagectl`` and delegates to the bins. Re-signs every version of NAME once: this is the
        one operation whose cost grows with the name. Returns the bit length (unchanged: nothing to do)."""
        md = self.role(role_for(name))
        if md is None:
            raise NotFoundError(f"no image named {name!r} in the catalogue")
        targets = [t for held in self.target_roles(name) for t in held.signed.targets.values()]
        bits = bits or bins.bin_bits(len(targets))
        if not 1 <= bits <= bins.MAX_BITS:
            raise InvalidInputError(f"a name has 2 to {2**bins.MAX_BITS} bins (1 to {bins.MAX_BITS} bits)")
        old = self.succinct(md)
        if old is not None and old.bit_length == bits:
            return bits
        parent = self.delegator(role_for(name))
        assert parent is not None
        d = parent.signed.get_delegated_role(role_for(name))
        keys = {k: self.root.signed.keys[k] for k in d.keyids}
        succinct = SuccinctRoles(list(d.keyids), d.threshold, bits, bins.bin_prefix(name, bits))
        md.signed.delegations = Delegations(keys=keys, succinct_roles=succinct)
        md.signed.targets = {}
        self._set_layouts(md, (model.layout_of(t.path) for t in targets))
        self.changed.add(role_for(name))
        for role in succinct.get_roles():
            self.roles[role] = Metadata(Targets(version=1, expires=md.signed.expires))
            self.new_roles.add(role)
            self.changed.add(role)
        for t in targets:
            self.roles[succinct.get_role_for_target(t.path)].signed.targets[t.path] = t
        return bits

    def crowded(self, name: str) -> bool:
        """Whether NAME would benefit from (re-)binning: a plain role or any loaded bin past the threshold."""
        return any(len(md.signed.targets) > bins.BIN_THRESHOLD for md in self.target_roles(name))

    def _signers(self, role: str, keys: KeyRing, delegator: Metadata[Any]) -> list[Any]:
        r = delegator.signed.get_delegated_role(role)
        # index roles, image roles and bins are signed with the targets keys
        label = "targets" if role.startswith(ROLE_PREFIX) or index.is_index(role) else role
        return keys.signers_for(label, r.keyids, r.threshold)

    def _sign(self, md: Metadata[Any], role: str, keys: KeyRing, delegator: Metadata[Any]) -> bytes:
        md.signatures.clear()
        return sign_with(md, self._signers(role, keys, delegator))

    def _write_versioned(
        self, role: str, md: Metadata[Any], keys: KeyRing, delegator: Metadata[Any]
    ) -> tuple[str, bytes]:
        """Sign and create ``N.ROLE.json``; if N is taken (a concurrent or a dead publisher), use the next N.
        Returns the key and the bytes written.

        TUF requires versions to grow, not to be consecutive, so skipping a taken name is safe; the timestamp
        swap decides which of two racing publishers' files become the catalogue.
        """
        for _ in range(_MAX_SKIPS):
            payload = self._sign(md, role, keys, delegator)
            key = f"{METADATA}{md.signed.version}.{role}.json"
            data = encoded(md, key, payload)
            if self.store.write_new(key, data):
                return key, data
            md.signed.version += 1
        raise CommitConflict(f"{_MAX_SKIPS} versions of {role} in a row were taken")

    def commit(self, keys: KeyRing, expiry_days: dict[str, int], *, resign: frozenset[str] = frozenset()) -> None:
        """Sign and write every changed role, then a new snapshot and timestamp.

        Raises KeyProblemError, before anything is written, if a key needed for any of the signatures is missing.
        """
        now = utcnow()

        def bump(md: Metadata[Any], days: int) -> None:
            md.signed.version += 1
            md.signed.expires = now + dt.timedelta(days=days)

        # A plain image role this change takes past the threshold is binned now: one re-sign of at most
        # BIN_THRESHOLD + (what this commit adds) targets, after which every publish re-signs one bin.
        for role in sorted(self.changed):
            md = self.roles.get(role)
            if (
                md is not None
                and bins.name_of_bin(role) is None
                and role.startswith(ROLE_PREFIX)
                and self.succinct(md) is None
                and len(md.signed.targets) > bins.BIN_THRESHOLD
            ):
                self.rebin(role.removeprefix(ROLE_PREFIX))
        if self.new_roles and self.index_crowded():  # a new name took the catalogue (or an index role) past it
            self.reindex()
        changed = (self.changed | set(resign)) - {"root", "snapshot", "timestamp"}
        image_roles = sorted(r for r in changed if r != "targets")
        writes: list[tuple[str, Metadata[Any]]] = [(r, self.roles[r]) for r in image_roles]
        if "targets" in changed:
            writes.append(("targets", self.targets))

        def delegator(role: str) -> Metadata[Any]:
            if role == "targets":
                return self.root
            md = self.delegator(role)
            assert md is not None, role
            return md

        # Every key is checked before the first byte is written, so a missing key leaves the catalogue as it was.
        for role, _md in writes:
            self._signers(role, keys, delegator(role))
        for role in ("snapshot", "timestamp"):
            self._signers(role, keys, self.root)
        written: list[tuple[str, bytes]] = []
        for role, md in writes:
            bump(md, expiry_days["targets"])
            if role in self.new_roles:
                # a role name a snapshot listed before (a bin of an earlier re-bin) must not go back in version
                listed = self.snapshot.signed.meta.get(f"{role}.json")
                md.signed.version = 1 if listed is None else listed.version + 1
            written.append(self._write_versioned(role, md, keys, delegator(role)))
            self.snapshot.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        bump(self.snapshot, expiry_days["snapshot"])
        written.append(self._write_versioned("snapshot", self.snapshot, keys, self.root))
        bump(self.timestamp, expiry_days["timestamp"])
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        payload = self._sign(self.timestamp, "timestamp", keys, self.root)
        ts_bytes = encoded(self.timestamp, f"{METADATA}timestamp.json", payload)
        if not self.store.write_if_match(f"{METADATA}timestamp.json", ts_bytes, self.timestamp_tag):
            raise CommitConflict("another publisher changed the catalogue first")
        if self._rewound is not None:  # committed on top of a timestamp older than one seen: the store went back
            self._rewound.clear()
            self.cache, self._rewound = self._rewound, None
        if self.cache is not None:  # committed: these are now the store's bytes under these names for good
            for key, data in written:
                self.cache.put(key, data)
            self.cache.saw(self.timestamp.signed.version, hashlib.sha256(ts_bytes).hexdigest())
        root_copy = metadata_bytes(self.root)
        # heal a rotation cut short: root.json one version behind the chain (read again only if it was then)
        if self.root_copy != root_copy and self.store.read(f"{METADATA}root.json", ROOT_MAX) != root_copy:
            self.store.write(f"{METADATA}root.json", root_copy)
        self.root_copy = root_copy
        self.changed.clear()
        self.new_roles.clear()

    def write_root(self, keys: KeyRing, signers_from: list[Metadata[Root]], expiry_days: dict[str, int]) -> bytes:
        """Sign the (already changed) root with its own keys and every root in ``signers_from``; write it."""
        root = self.root
        root.signed.version += 1
        root.signed.expires = utcnow() + dt.timedelta(days=expiry_days["root"])
        root.signatures.clear()
        seen: set[str] = set()
        for signer_root in [*signers_from, root]:
            r = signer_root.signed.roles["root"]
            for signer in keys.signers_for("root", r.keyids, r.threshold):
                if signer.public_key.keyid not in seen:
                    root.sign(signer, append=True)
                    seen.add(signer.public_key.keyid)
        data = encoded(root, f"{METADATA}{root.signed.version}.root.json")
        if not self.store.write_new(f"{METADATA}{root.signed.version}.root.json", data):
            raise ConflictError(f"root version {root.signed.version} already exists; retry")
        self.store.write(f"{METADATA}root.json", data)
        self.root_copy = data
        return data


class CommitConflict(ConflictError):
    """Another publisher committed between our read and our timestamp swap; :func:`transact` starts again."""


def transact(
    store: Store,
    apply: Callable[[CatalogueState], T],
    *,
    attempts: int = 100,
    first: CatalogueState | None = None,
    load: Callable[[], CatalogueState] | None = None,
    want: Want | None = None,
    meta_cache: MetadataCache | None = None,
) -> T:
    """Load the current state, ``apply`` a change (which commits), and start again if the commit lost the swap.

    Backoff is exponential with full jitter (50 ms doubling to 2 s), so racing publishers spread out. On a local
    directory each attempt also holds the writer lock (fcntl), which makes losses rare; on S3 the swap alone
    orders publishers. Raises ConflictError after ``attempts`` lost swaps.

    ``first``: a state the caller has already loaded and verified, used for the first attempt instead of loading
    again (if it is stale by then, its swap fails and the next attempt loads afresh: correct either way).
    ``load``: how later attempts load the state (default :func:`load_state` with ``want`` and ``meta_cache``).
    """
    delay = 0.05
    for _ in range(attempts):
        with store.lock():
            state, first = first or (load or (lambda: load_state(store, want=want, meta_cache=meta_cache)))(), None
            try:
                return apply(state)
            except CommitConflict:
                pass
        time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not cryptography
        delay = min(delay * 2, 2.0)
    raise ConflictError(f"the catalogue changed under this command {attempts} times in a row; try again")


def _verify_top(root: Metadata[Any], also: Metadata[Any] | None, role: str, md: Metadata[Any], key: str) -> None:
    """Verify a top-level role against the root; with ``also`` (the root a key rotation just replaced), its keys
    count too. Only the rotating command passes ``also``: a publisher that raced it may have signed with the
    retired key, and the rotation's retry re-signs that state with the new one."""
    try:
        _verify(root, role, md, key)
    except UntrustedMetadataError:
        if also is None:
            raise
        _verify(also, role, md, f"{key} (by the root before the rotation)")


def _check_version(md: Metadata[Any], version: int, key: str, by: str) -> None:
    """Refuse ``md`` read under ``key`` unless it is the ``version`` its referrer (``by``) names."""
    if md.signed.version != version:
        raise UntrustedMetadataError(f"{key} has version {md.signed.version}, {by} says {version}")


def _cache_checked(
    cache: CatalogueCache | None, key: str, data: bytes | None, check: Callable[[bytes], Metadata[Any]]
) -> Metadata[Any] | None:
    """``check(data)`` of the bytes the cache held for ``key`` (None: it held none). Cached bytes that fail the
    check (parse, signatures, version) are dropped from the cache and the answer is None: read the store."""
    if data is None or cache is None:
        return None
    try:
        return check(data)
    except UntrustedMetadataError:
        cache.drop(key)
        return None


def _bytes(store: Store, key: str, pre: Outcome[bytes] | None) -> bytes:
    """The metadata file ``key``: read now, or (``pre``) what :meth:`Store.gather` already fetched."""
    return store.read(key, cap_for(key)) if pre is None else pre.get()


def _files_listed(store: Store, listing: tuple[str, str, str]) -> set[str]:
    """The names of the files under ``targets/NAME/VERSION/ARCH/`` (``listing``), from one listing."""
    return {k.rpartition("/")[2] for k in store.list(f"{model.TARGETS}{'/'.join(listing)}/")}


def _read_bytes(store: Store, key: str, pre: Outcome[bytes] | None = None) -> bytes:
    """The bytes of metadata file ``key``, read now or (``pre``) already fetched by :meth:`Store.gather`; a file
    the metadata refers to that is missing is UntrustedMetadataError."""
    try:
        return _bytes(store, key, pre)
    except ObjectMissingError:
        raise UntrustedMetadataError(f"{key} is missing from {store.shown}") from None


def _read(store: Store, key: str, pre: Outcome[bytes] | None = None) -> Metadata[Any]:
    """Parse ``key``, read now or (``pre``) already fetched by :meth:`Store.gather`."""
    return _parse(_read_bytes(store, key, pre), key)


def _root_key(n: int) -> str:
    return f"{METADATA}{n}.root.json"


def _walk_roots(store: Store, fetched: dict[int, Outcome[bytes]] | None = None) -> Metadata[Any]:
    """Verify the root chain 1 -> N as a client would and return its end (``fetched``: reads of the first roots
    made already, by number).

    A publisher signs on top of the root it loads, so it must not take root.json's word for which keys count;
    root.json is a convenience copy that a rotation killed at the wrong moment may have left one version behind.
    """
    fetched = fetched or {}
    root = _read(store, _root_key(1), fetched.get(1))
    _verify(root, "root", root, _root_key(1))
    n = 2
    while True:
        key = _root_key(n)
        try:
            nxt = _parse(_bytes(store, key, fetched.get(n)), key)
        except ObjectMissingError:
            break
        _verify(root, "root", nxt, f"{key} (by root {n - 1})")
        _verify(nxt, "root", nxt, key)
        if nxt.signed.version != n:
            raise UntrustedMetadataError(f"{key} has version {nxt.signed.version}")
        root, n = nxt, n + 1
    return root


@dataclass(frozen=True)
class Want:
    """What a command will read of one name once the state is loaded: :func:`load_state` fetches its roles beside
    ``targets.json`` and its listing beside the snapshot (rounds of requests instead of one after another on S3).
    A hint only: what is fetched is verified when it is used, as if it were read then, and a guess that does not
    match is never used."""

    name: str
    paths: tuple[str, ...] = ()  # target paths it will look up: the bins they hash into, for a binned name
    # (VERSION, ARCH): it will list targets/NAME/VERSION/ARCH/ (a binned name's version check) or ask whether its
    # target file is there (any name: the listing answers, instead of a HEAD)
    listing: tuple[str, str] | None = None


def _sizes_listed(meta: dict[str, MetaFile], prefix: str, max_bits: int) -> set[int]:
    """The sizes B of the roles ``PREFIX{B}-{HEX}`` (bins, index roles) that a snapshot's ``meta`` lists, told by
    the first role of each size, which every size has (all are made at once): ``max_bits`` lookups, where a
    scan of a 50,000-version name's snapshot (512 bins) took 0.13 ms of each publish."""
    return {b for b in range(1, max_bits + 1) if f"{prefix}{b}-{'0' * len(f'{2**b - 1:x}')}.json" in meta}


def _wanted_roles(meta: dict[str, MetaFile], want: Want) -> list[str]:
    """The metadata keys ``want`` will read, named from the snapshot's list alone: the name's index role and its
    image role, and the bin of each path. Where the snapshot lists roles of more than one index or bin size (the
    old ones of a re-index or re-bin stay listed), which is current is only known after verifying their
    delegator: those are left to be read then."""
    role = role_for(want.name)
    roles = [role] if f"{role}.json" in meta else []
    index_bits = _sizes_listed(meta, index.INDEX_PREFIX, index.MAX_BITS)
    if len(index_bits) == 1:
        roles.append(index.index_role(want.name, index_bits.pop()))
    bin_bits = _sizes_listed(meta, f"{role}~b", bins.MAX_BITS)  # every bin of the name: image-NAME~bB-HEX
    if len(bin_bits) == 1:
        succinct = SuccinctRoles([], 1, bits := bin_bits.pop(), bins.bin_prefix(want.name, bits))
        roles += sorted({bins.bin_role_for(succinct, p) for p in want.paths})
    return [f"{METADATA}{meta[f'{r}.json'].version}.{r}.json" for r in roles if f"{r}.json" in meta]


@dataclass
class _Reads:
    """What :func:`load_state` reads once it knows the snapshot: targets.json (``targets``: verified from the
    cache) and the role files ``want`` names, those the cache holds (``cached``, verified when used) and the rest
    (``extra``), fetched in one round with targets.json when the cache lacks it."""

    targets_key: str
    check_targets: Callable[[bytes], Metadata[Any]]
    targets: Metadata[Any] | None
    extra: list[str] = field(default_factory=list)
    cached: dict[str, bytes] = field(default_factory=dict)

    def calls(self, store: Store) -> list[Callable[[], bytes]]:
        keys = ([] if self.targets is not None else [self.targets_key]) + self.extra
        return [functools.partial(store.read, key, cap_for(key)) for key in keys]


def load_state(
    store: Store,
    *,
    also_trust: Metadata[Root] | None = None,
    want: Want | None = None,
    meta_cache: MetadataCache | None = None,
) -> CatalogueState:
    """Read and verify the current metadata of the catalogue in ``store``; with ``want``, also fetch what the
    command will read of that name (verified when it is used); with ``meta_cache``, take the versioned files
    this host already holds from it (verified as if downloaded: :mod:`imagectl.catalogue.metacache`), and keep
    there what is read and, once committed, written.

    Raises CatalogueStateError if ``store`` holds no catalogue, UntrustedMetadataError if what it holds does not
    verify (a publisher never signs on top of metadata it cannot verify).
    """
    # root.json (its presence marks a catalogue), the first two roots and the timestamp: one round
    first: list[Outcome[Any]] = store.gather(
        [
            lambda: store.read(f"{METADATA}root.json", ROOT_MAX),
            lambda: store.read(_root_key(1), cap_for(_root_key(1))),
            lambda: store.read(_root_key(2), cap_for(_root_key(2))),
            lambda: store.read_versioned(f"{METADATA}timestamp.json", TIMESTAMP_MAX),
        ]
    )
    try:
        root_bytes: bytes = first[0].get()
    except ObjectMissingError:
        raise CatalogueStateError(
            f"{store.shown} is not a catalogue (no {METADATA}root.json)",
            hint="create one with: imagectl catalogue init DEST",
        ) from None
    root = _walk_roots(store, {1: first[1], 2: first[2]})
    try:
        ts_bytes, ts_tag = first[3].get()
    except ObjectMissingError:
        raise UntrustedMetadataError(f"{METADATA}timestamp.json is missing from {store.shown}") from None
    ts = _parse(ts_bytes, f"{METADATA}timestamp.json")
    _verify_top(root, also_trust, "timestamp", ts, f"{METADATA}timestamp.json")
    bound = None if meta_cache is None else meta_cache.bind(store.identity, first[1].get())
    # a timestamp older than one this host saw: nothing is taken from the cache (see catalogue.metacache)
    rewound = bound is not None and not bound.saw(ts.signed.version, hashlib.sha256(ts_bytes).hexdigest())
    cache = None if rewound else bound
    snap_version = ts.signed.snapshot_meta.version
    snap_key = f"{METADATA}{snap_version}.snapshot.json"

    def cached(key: str) -> bytes | None:
        return None if cache is None else cache.get(key, cap_for(key))

    def check_snapshot(data: bytes) -> Metadata[Any]:
        md = _parse(data, snap_key)
        _verify_top(root, also_trust, "snapshot", md, snap_key)
        _check_version(md, snap_version, snap_key, "timestamp.json")
        return md

    def plan(snap: Metadata[Any]) -> _Reads:
        """What is read once the snapshot is known: targets.json and the roles ``want`` names, from the cache
        where it holds them, the rest to fetch in one round."""
        tmeta = snap.signed.meta.get("targets.json")
        if tmeta is None:
            raise UntrustedMetadataError(f"{snap_key} does not list targets.json")
        tkey = f"{METADATA}{tmeta.version}.targets.json"

        def check_targets(data: bytes) -> Metadata[Any]:
            md = _parse(data, tkey)
            _verify_top(root, also_trust, "targets", md, tkey)
            _check_version(md, tmeta.version, tkey, snap_key)
            return md

        reads = _Reads(tkey, check_targets, _cache_checked(cache, tkey, cached(tkey), check_targets))
        for key in [] if want is None else _wanted_roles(snap.signed.meta, want):
            if (data := cached(key)) is not None:
                reads.cached[key] = data
            else:
                reads.extra.append(key)
        return reads

    # The target-file listing goes with the snapshot: it is taken after the timestamp that fixes this state, so
    # it names every target file the state's metadata can list (each is made before any metadata names it, §6).
    # A snapshot the cache holds spares its GET, and what it names is then fetched in this same round.
    listing = None if want is None or want.listing is None else (want.name, *want.listing)
    snap = _cache_checked(cache, snap_key, cached(snap_key), check_snapshot)
    reads = None if snap is None else plan(snap)
    second: list[Callable[[], Any]] = []
    if snap is None:
        second.append(functools.partial(store.read, snap_key, cap_for(snap_key)))
    if listing is not None:
        second.append(functools.partial(_files_listed, store, listing))
    if reads is not None:
        second += reads.calls(store)
    got = store.gather(second)
    if snap is None:
        snap_bytes = _read_bytes(store, snap_key, got.pop(0))
        snap = check_snapshot(snap_bytes)
        if cache is not None:
            cache.put(snap_key, snap_bytes)
    listed = None if listing is None else got.pop(0)
    if reads is None:
        reads = plan(snap)
        got = store.gather(reads.calls(store))
    targets = reads.targets
    if targets is None:
        targets_bytes = _read_bytes(store, reads.targets_key, got.pop(0))
        targets = reads.check_targets(targets_bytes)
        if cache is not None:
            cache.put(reads.targets_key, targets_bytes)
    state = CatalogueState(store, root, ts, snap, targets, timestamp_tag=ts_tag, root_copy=root_bytes, cache=cache)
    state._rewound = bound if rewound else None
    state._fetched = dict(zip(reads.extra, got, strict=True))
    state._cached = reads.cached
    if listing is not None and listed is not None and listed.error is None:  # else listed again where it is used
        state._listed[listing] = listed.get()
    return state
