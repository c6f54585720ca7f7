"""Lifecycle of published versions: channel history and rollback, scheduled revocation, restore, ancestry.

All of it lives in the signed ``x-imagectl`` object of an image role (catalogue/README.md §5):

- ``history``: CHANNEL -> the channel's moves, oldest first (``{"version", "at", "action"}``; ``version`` is
  ``null`` when a revocation emptied the channel), at most :data:`HISTORY_MAX` per channel. ``promote --rollback``
  moves a channel back to the newest earlier version in its history that is still published.
- ``revoke_at``: VERSION -> ``{"at", "reason"}``, a signed revocation that takes effect at ``at``: clients refuse
  the version from then on, while the targets stay listed until someone revokes it outright.
- tombstones of ``revoked`` keep the removed targets' file info (``targets``), so that ``restore`` can list them
  again, as long as their blobs are still in the store (gc removes a revoked version's blobs after its grace).
- ancestry: an image's ``parent_image`` custom field (name, channel, version, sha256 of the image it was built
  from); :func:`descendants` finds the images built from a version, :func:`outdated` those whose parent's channel
  has moved on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from imagectl.catalogue import model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import MetadataCache
from imagectl.catalogue.model import ImageRecord, blob_key, target_file_key, utcnow
from imagectl.catalogue.state import CatalogueState, Want, transact
from imagectl.errors import ConflictError, InvalidInputError, NotFoundError, RevokedError
from imagectl.store import Store

__all__ = [
    "HISTORY_MAX",
    "descendants",
    "outdated",
    "record_move",
    "resolve_parent",
    "restore",
    "revoke",
    "revoke_versions",
    "rollback",
    "schedule_revocation",
    "stamp",
]

HISTORY_MAX = 100  # moves kept per channel (the role is re-signed by every move: keep it bounded)


def stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def record_move(md: Metadata[Targets], channel: str, version: str | None, action: str, now: dt.datetime) -> None:
    """Append a move of ``channel`` to the role's signed history (``version`` None: the channel was emptied)."""
    history = CatalogueState.ext(md).setdefault("history", {})
    moves = history.setdefault(channel, [])
    moves.append({"version": version, "at": stamp(now), "action": action})
    del moves[:-HISTORY_MAX]


def set_channel(md: Metadata[Targets], channel: str, version: str, now: dt.datetime, action: str) -> str:
    """Point ``channel`` at ``version`` and record the move; returns the version it pointed at before, or ''."""
    ext = CatalogueState.ext(md)
    before = str(ext["channels"].get(channel, {}).get("version", ""))
    ext["channels"][channel] = {"version": version, "updated": stamp(now)}
    record_move(md, channel, version, action, now)
    return before


def _published(state: CatalogueState, name: str, version: str) -> bool:
    ext = CatalogueState.ext(state.role(model.role_for(name)) or _missing(name))
    return version not in ext["revoked"] and bool(state.version_images(name, version))


def rollback(
    store: Store,
    keys: KeyRing,
    name: str,
    channel: str,
    expiry_days: dict[str, int],
    *,
    meta_cache: MetadataCache | None = None,
) -> tuple[str, str]:
    """Move ``channel`` of NAME back to the newest earlier version in its history that is still published (not
    revoked, still listed); returns (from, to). Refuses when the history holds no such version."""
    model.check_name(name)
    model.check_channel(channel)

    def apply(state: CatalogueState) -> tuple[str, str]:
        now = utcnow()
        md = state.role_for_update(name, now + dt.timedelta(days=expiry_days["targets"]))
        ext = CatalogueState.ext(md)
        current = str(ext["channels"].get(channel, {}).get("version", ""))
        moves = [m for m in ext.get("history", {}).get(channel, []) if isinstance(m, dict)]
        for version in reversed(_earlier(moves, current)):
            if _published(state, name, version):
                from imagectl.catalogue.protect import check_tested  # a protected channel stays protected

                check_tested(state, channel, f"roll {name}@{channel} back", state.version_images(name, version))
                set_channel(md, channel, version, now, "rollback")
                state.commit(keys, expiry_days)
                return current, version
        raise NotFoundError(
            f"{name}@{channel} has no earlier version to roll back to"
            + (f" (it points at {current})" if current else ""),
            hint=f"see the channel's moves: imagectl catalogue show {name} --history",
        )

    return transact(store, apply, want=Want(name), meta_cache=meta_cache)


def _earlier(moves: list[dict[str, Any]], current: str) -> list[str]:
    """The versions a channel pointed at before its current one, oldest first, by replaying its moves: a promote
    (or publish) stacks a version, a rollback unstacks down to the version it chose, a revocation unstacks the
    version it emptied. So repeated rollbacks keep going back, and never forward to what was rolled back."""
    stack: list[str] = []
    for m in moves:
        version = m.get("version")
        if m.get("action") == "rollback" and isinstance(version, str):
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
        elif version is None:
            if stack:
                stack.pop()
        elif isinstance(version, str):
            stack.append(version)
    if stack and stack[-1] == current:
        stack.pop()
    return [v for v in stack if v != current]


def _revocation(ref: str, reason: str, what: str) -> tuple[model.ImageRef, str]:
    """The reference and version a revocation names; refused without a version or a reason."""
    r = model.parse_ref(ref)
    if r.version is None:
        raise InvalidInputError(f"{what} needs NAME:VERSION, got {ref!r}")
    if not model.clean_reason(reason):
        raise InvalidInputError("revoke needs a non-empty --reason: deployers are shown it")
    return r, r.version


def schedule_revocation(
    store: Store,
    keys: KeyRing,
    ref: str,
    reason: str,
    at: dt.datetime,
    expiry_days: dict[str, int],
    *,
    meta_cache: MetadataCache | None = None,
) -> str:
    """Sign a revocation of NAME:VERSION that takes effect at ``at`` (a future time); returns its timestamp."""
    r, version = _revocation(ref, reason, "revoke --at")

    def apply(state: CatalogueState) -> str:
        now = utcnow()
        if at <= now:
            raise InvalidInputError(f"revoke --at {stamp(at)} is not in the future: revoke without --at")
        if not _published(state, r.name, version):
            raise NotFoundError(f"{r.name}:{version} is not published (nothing to revoke)")
        md = state.role_for_update(r.name, now + dt.timedelta(days=expiry_days["targets"]))
        when = stamp(at)
        CatalogueState.ext(md).setdefault("revoke_at", {})[version] = {
            "at": when,
            "reason": model.clean_reason(reason),
        }
        state.commit(keys, expiry_days)
        return when

    return transact(store, apply, want=Want(r.name), meta_cache=meta_cache)


def revoke_versions(
    state: CatalogueState, versions: list[tuple[str, str]], reason: str, now: dt.datetime, expires: dt.datetime
) -> list[str]:
    """Revoke each (NAME, VERSION) in ``state`` (no commit): targets removed, a tombstone that keeps their file
    info, channels that pointed there emptied (and the move recorded). Returns ``NAME@CHANNEL`` of each emptied
    channel."""
    dropped = []
    for name, version in versions:
        records = state.version_images(name, version, every_layout=True)  # a revocation trusts no shortcut
        if not records:
            raise NotFoundError(f"{name} has no version {version!r}")
        md = state.role_for_update(name, expires)
        held = {}
        for rec in records:
            holder = state.holder(name, rec.path)
            t = None if holder is None else holder.signed.targets.get(rec.path)
            if t is not None:
                held[rec.path] = t.to_dict()
            state.remove_target(name, rec.path)
        ext = CatalogueState.ext(md)
        ext["revoked"][version] = {
            "reason": model.clean_reason(reason),
            "at": stamp(now),
            "sha256": sorted({rec.sha256 for rec in records}),
            "targets": held,
        }
        ext.get("revoke_at", {}).pop(version, None)
        for channel in [c for c, p in ext["channels"].items() if p.get("version") == version]:
            del ext["channels"][channel]
            record_move(md, channel, None, "revoke", now)
            dropped.append(f"{name}@{channel}")
    return dropped


def revoke(
    store: Store,
    keys: KeyRing,
    ref: str,
    reason: str,
    expiry_days: dict[str, int],
    *,
    cascade: bool = False,
    meta_cache: MetadataCache | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Revoke every arch of NAME:VERSION (with ``cascade``, also every image built from it, transitively) in one
    commit, keeping signed tombstones with the reason. Returns the (NAME, VERSION) revoked and the emptied
    ``NAME@CHANNEL``s."""
    r, version = _revocation(ref, reason, "revoke")

    def apply(state: CatalogueState) -> tuple[list[tuple[str, str]], list[str]]:
        now = utcnow()
        md = state.role(model.role_for(r.name)) or _missing(r.name)
        if version in CatalogueState.ext(md)["revoked"]:
            raise RevokedError(f"{r.name}:{version} is already revoked")
        if not state.version_images(r.name, version, every_layout=True):
            known = sorted({i.version for i in state.images(r.name)}, key=model.version_key)
            raise NotFoundError(f"{r.name} has no version {version!r} (versions: {', '.join(known[-10:])})")
        chosen = [(r.name, version), *(descendants(state, r.name, version) if cascade else [])]
        expires = now + dt.timedelta(days=expiry_days["targets"])
        dropped = revoke_versions(state, chosen, reason, now, expires)
        state.commit(keys, expiry_days)
        return chosen, dropped

    return transact(store, apply, want=Want(r.name), meta_cache=meta_cache)


def restore(
    store: Store, keys: KeyRing, ref: str, expiry_days: dict[str, int], *, meta_cache: MetadataCache | None = None
) -> list[ImageRecord]:
    """List a revoked NAME:VERSION again, from the file info its tombstone kept; refused when the tombstone has
    none (revoked by an older imagectl) or a blob or target file is gone (gc after the grace period)."""
    r = model.parse_ref(ref)
    if r.version is None:
        raise InvalidInputError(f"restore needs NAME:VERSION, got {ref!r}")
    version = r.version

    def apply(state: CatalogueState) -> list[ImageRecord]:
        now = utcnow()
        md = state.role(model.role_for(r.name)) or _missing(r.name)
        tomb = CatalogueState.ext(md)["revoked"].get(version)
        if tomb is None:
            raise NotFoundError(f"{r.name}:{version} is not revoked")
        held = tomb.get("targets")
        if not isinstance(held, dict) or not held:
            raise ConflictError(
                f"{r.name}:{version} was revoked without a record of its targets (an older imagectl): cannot restore",
                hint="publish the image again under a new version",
            )
        records = []
        for path, info in sorted(held.items()):
            t = TargetFile.from_dict(dict(info), path)
            rec = ImageRecord.from_target(path, t.length, t.hashes, t.custom)
            for key in (blob_key(rec.sha256), target_file_key(rec.path, rec.sha256)):
                if not store.exists(key):
                    raise ConflictError(
                        f"{r.name}:{version} cannot be restored: {key} is gone from the store (garbage-collected)",
                        hint="publish the image again under a new version",
                    )
            records.append(rec)
        expires = now + dt.timedelta(days=expiry_days["targets"])
        md = state.role_for_update(r.name, expires)
        for rec in records:
            state.add_image(rec, expires)
        del CatalogueState.ext(md)["revoked"][version]
        state.commit(keys, expiry_days)
        return records

    return transact(store, apply, want=Want(r.name), meta_cache=meta_cache)


def resolve_parent(state: CatalogueState, ref: str, arch: str) -> dict[str, Any]:
    """``parent_image`` for an image built from ``ref`` (``NAME@CHANNEL`` or ``NAME:VERSION``) in this catalogue:
    the parent's name, channel, version and the sha256 of its image for ``arch`` (else of its first arch)."""
    p = model.parse_ref(ref)
    md = state.role(model.role_for(p.name))
    if md is None:
        raise NotFoundError(f"parent {ref}: no image named {p.name!r} in the catalogue")
    version = p.version
    if p.channel is not None:
        pointer = CatalogueState.ext(md)["channels"].get(p.channel)
        if pointer is None:
            raise NotFoundError(f"parent {ref}: {p.name} has no channel {p.channel!r}")
        version = str(pointer["version"])
    if version is None:
        raise InvalidInputError(f"parent {ref}: name a channel (NAME@CHANNEL) or a version (NAME:VERSION)")
    images = state.version_images(p.name, version)
    if not images:
        raise NotFoundError(f"parent {ref}: {p.name}:{version} is not published")
    pick = next((i for i in images if i.arch == arch), images[0])
    out = {"name": p.name, "version": version, "sha256": pick.sha256}
    if p.channel is not None:
        out["channel"] = p.channel
    return out


def _parent_of(rec: ImageRecord) -> dict[str, Any] | None:
    p = rec.parent_image
    return p if isinstance(p, dict) and isinstance(p.get("name"), str) else None


def descendants(state: CatalogueState, name: str, version: str) -> list[tuple[str, str]]:
    """(NAME, VERSION) of every published image built from NAME:VERSION, and from those, and so on."""
    children: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for other in state.names():
        for rec in state.images(other):
            p = _parent_of(rec)
            if p is not None:
                children.setdefault((p["name"], str(p.get("version"))), set()).add((rec.name, rec.version))
    out: list[tuple[str, str]] = []
    todo = [(name, version)]
    while todo:
        for child in sorted(children.get(todo.pop(0), ())):
            if child not in out and child != (name, version):
                out.append(child)
                todo.append(child)
    return out


def outdated(records: list[ImageRecord], channels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Which of ``records`` were built from a parent channel that now points elsewhere. ``channels``: the
    parent names' signed channels (NAME -> CHANNEL -> pointer)."""
    out = []
    for rec in records:
        p = _parent_of(rec)
        if p is None or not isinstance(p.get("channel"), str):
            continue
        now = channels.get(p["name"], {}).get(p["channel"], {}).get("version")
        if now is not None and now != p.get("version"):
            out.append({**dataclasses.asdict(rec), "parent_now": now})
    return out


def _missing(name: str) -> Any:
    raise NotFoundError(f"no image named {name!r} in the catalogue")
