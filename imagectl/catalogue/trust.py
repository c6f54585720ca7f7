"""Keeping a catalogue trustworthy over time: re-sign before expiry, rotate keys.

Root rotation follows TUF: the new root (version N+1) is signed by a threshold of the old root keys *and* of the
new ones, so a client that only knows root N verifies N+1 and moves on (``tuf.ngclient`` fetches
``N+1.root.json`` on every refresh).
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from typing import Any

from tuf.api.metadata import Metadata, Root

from imagectl.catalogue.keys import TOP_ROLES, KeyRing, generate_key
from imagectl.catalogue.model import utcnow
from imagectl.catalogue.state import CatalogueState, load_state, transact
from imagectl.errors import InvalidInputError
from imagectl.store import Store

__all__ = ["expiring_roles", "resign", "rotate"]


def require_keys(state: CatalogueState, keys: KeyRing, roles: list[str]) -> None:
    """Raise KeyProblemError unless ``keys`` can sign every role in ``roles`` (top-level or image roles).

    Called before anything is generated or written: a commit writes role files one after the other, so a key found
    missing halfway would leave a new root or unreferenced versioned files behind, and those files make every later
    commit fail with "already exists".
    """
    for role in dict.fromkeys(roles):
        if role in TOP_ROLES:
            r = state.root.signed.roles[role]
            keys.signers_for(role, r.keyids, r.threshold)
        else:
            parent = state.delegator(role)
            assert parent is not None, role
            d = parent.signed.get_delegated_role(role)
            keys.signers_for("targets", d.keyids, d.threshold)


def expiring_roles(state: CatalogueState, within: dt.timedelta | None, expiry_days: dict[str, int]) -> list[str]:
    """Roles whose metadata expires within ``within`` (default: less than half of its validity period left)."""
    now = utcnow()
    out = []
    candidates: list[tuple[str, Metadata[Any], str]] = [
        ("root", state.root, "root"),
        ("targets", state.targets, "targets"),
        ("snapshot", state.snapshot, "snapshot"),
        ("timestamp", state.timestamp, "timestamp"),
    ]
    for r in state.all_roles():
        role_md = state.role(r)
        if role_md is not None:
            candidates.append((r, role_md, "targets"))
    for role, md, kind in candidates:
        limit = within if within is not None else dt.timedelta(days=expiry_days[kind]) / 2
        if md.signed.expires - now < limit:
            out.append(role)
    return out


def resign(
    store: Store,
    keys: KeyRing,
    expiry_days: dict[str, int],
    *,
    within: dt.timedelta | None = None,
    everything: bool = False,
) -> list[str]:
    """Re-sign every role about to expire (or all with ``everything``); returns the roles re-signed.

    Root (when selected) is re-signed once, first; the rest is one commit that, like a publish, starts again from
    the fresh state when another publisher wins the timestamp swap (so cron's resign never fails for a busy
    catalogue). Raises KeyProblemError before anything is written if a needed key is missing.
    """

    def chosen(state: CatalogueState) -> list[str]:
        if everything:
            return ["root", "targets", "snapshot", "timestamp", *state.all_roles()]
        return expiring_roles(state, within, expiry_days)

    with store.lock():
        state = load_state(store)
        roles = chosen(state)
        if not roles:
            return []
        # A commit always re-signs snapshot and timestamp; check every key before the first write.
        require_keys(state, keys, [*roles, "snapshot", "timestamp"])
        if "root" in roles:
            previous = Metadata.from_bytes(state.root.to_bytes())
            state.write_root(keys, [previous], expiry_days)

    def apply(state: CatalogueState) -> list[str]:
        now_roles = [r for r in roles if r != "root"] if everything else chosen(state)
        delegated = frozenset(r for r in now_roles if r not in ("root", "snapshot", "timestamp"))
        require_keys(state, keys, [*delegated, "snapshot", "timestamp"])
        for r in delegated - {"targets"}:
            state.role(r)  # load before commit re-signs it
        state.commit(keys, expiry_days, resign=delegated)
        return now_roles

    done = transact(store, apply, first=state)
    # snapshot and timestamp are always re-signed by a commit
    return sorted(set(roles) | set(done) | {"snapshot", "timestamp"})


@dataclass(frozen=True)
class RotateResult:
    role: str
    root_version: int
    new_keys: list[str]
    retired: list[str]


def rotate(
    store: Store, keys: KeyRing, role: str, expiry_days: dict[str, int], *, threshold: int = 1, count: int = 1
) -> RotateResult:
    """Replace every key of ``role`` with ``count`` new keys (``threshold`` of them needed) and sign a new root.

    Old private keys move to ``KEYDIR/retired/``. When the targets, snapshot or timestamp keys change, the metadata
    those keys sign is re-signed in the same run, so the catalogue verifies throughout.
    """
    if role not in TOP_ROLES:
        raise InvalidInputError(f"unknown role {role!r}: expected one of {', '.join(TOP_ROLES)}")
    if not 1 <= threshold <= count:
        raise InvalidInputError(f"threshold must be between 1 and the number of keys ({count})")
    with store.lock():
        state = load_state(store)
        old_root: Metadata[Root] = Metadata.from_bytes(state.root.to_bytes())
        root = state.root.signed
        old_ids = list(root.roles[role].keyids)
        # Check every key the rotation signs with (the old root keys and, when metadata is re-signed, the online
        # keys not being replaced) before generating anything, so a refused rotation leaves no new files.
        resigned: dict[str, list[str]] = {
            "root": [],
            "targets": ["snapshot", "timestamp"],
            "snapshot": ["timestamp"],
            "timestamp": ["snapshot"],
        }
        require_keys(state, keys, ["root", *resigned[role]])
        new_signers = [generate_key(keys.dir, role) for _ in range(count)]
        for keyid in old_ids:
            root.revoke_key(keyid, role)
        for signer in new_signers:
            root.add_key(signer.public_key, role)
        root.roles[role].threshold = threshold
        new_ring = KeyRing(keys.dir)
        state.write_root(new_ring, [old_root], expiry_days)

    def apply(state: CatalogueState) -> None:
        """Re-sign, with the new keys, what they sign; on the fresh state of each attempt (whose root is the new
        one), so a publisher committing meanwhile costs a retry, not a failed rotation."""
        delegated: frozenset[str] = frozenset()
        if role == "targets":
            top = state.root.signed.roles["targets"]
            new_keys = {k: state.root.signed.keys[k] for k in top.keyids}
            for r in state.all_roles():
                state.role(r)  # load (verified by the old keys) before the delegations change
            # every delegation below targets (index roles, image roles, bins) moves to the new keys
            for md in [state.targets, *(state.role(r) for r in state.all_roles())]:
                assert md is not None
                inner = md.signed.delegations
                if inner is None:
                    continue
                for dr in (inner.roles or {}).values():
                    dr.keyids = list(top.keyids)
                    dr.threshold = top.threshold
                if inner.succinct_roles is not None:  # a binned name delegates to its bins
                    inner.succinct_roles.keyids = list(top.keyids)
                    inner.succinct_roles.threshold = top.threshold
                inner.keys = dict(new_keys)
            delegated = frozenset(["targets", *state.all_roles()])
        state.commit(new_ring, expiry_days, resign=delegated)

    if role in ("targets", "snapshot", "timestamp"):
        # The first attempt signs on top of the state just verified: the timestamp (or snapshot, targets) in the
        # store is still signed by the retired key, which the new root no longer accepts.
        transact(store, apply, first=state, load=lambda: load_state(store, also_trust=old_root))
    retired_dir = keys.dir / "retired"
    retired_dir.mkdir(mode=0o700, exist_ok=True)
    retired = []
    for keyid in old_ids:
        if keyid in keys.paths:
            shutil.move(str(keys.paths[keyid]), retired_dir / keys.paths[keyid].name)
            retired.append(keys.paths[keyid].name)
    return RotateResult(role, state.root.signed.version, [s.public_key.keyid[:12] for s in new_signers], retired)
