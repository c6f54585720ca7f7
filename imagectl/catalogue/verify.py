"""``imagectl catalogue verify``: check every signature, version link, expiry, hash and length; list each problem.

Unlike a client, which stops at the first failure, the verifier keeps going and reports everything it finds, so
an operator sees the whole damage at once. It reads only through the store interface and so works on any store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata

from imagectl.catalogue import model
from imagectl.catalogue.model import METADATA, ROLE_PREFIX, ImageRecord, blob_key, utcnow
from imagectl.catalogue.state import MAX_METADATA
from imagectl.errors import CatalogueStateError, ImagectlError, InvalidInputError
from imagectl.store import ObjectMissingError, Store

__all__ = ["Report", "verify_catalogue"]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    roles: int = 0
    images: int = 0
    blob_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "problems": self.problems,
            "roles_checked": self.roles,
            "images_checked": self.images,
            "blob_bytes_hashed": self.blob_bytes,
        }


class _Verifier:
    def __init__(self, store: Store, check_blobs: bool) -> None:
        self.store = store
        self.check_blobs = check_blobs
        self.report = Report()
        self.now = utcnow()

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def load(self, key: str) -> Metadata[Any] | None:
        try:
            data = self.store.read(key, MAX_METADATA)
        except ObjectMissingError:
            self.problem(f"{key}: missing")
            return None
        try:
            return Metadata.from_bytes(data)
        except Exception as e:  # noqa: BLE001 - report any parse failure of untrusted bytes
            self.problem(f"{key}: not valid TUF metadata ({type(e).__name__}: {e})")
            return None

    def signed_by(self, delegator: Metadata[Any], role: str, md: Metadata[Any], key: str) -> bool:
        try:
            delegator.verify_delegate(role, md)
            return True
        except UnsignedMetadataError as e:
            self.problem(f"{key}: bad signatures: {e}")
            return False

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
            try:
                self.store.read(key, MAX_METADATA)
            except ObjectMissingError:
                break
            nxt = self.load(key)
            if nxt is None:
                break
            self.version(nxt, n, key)
            self.signed_by(current, "root", nxt, f"{key} (by root {n - 1})")
            self.signed_by(nxt, "root", nxt, f"{key} (by itself)")
            current, n = nxt, n + 1
        self.fresh(current, f"{METADATA}{current.signed.version}.root.json")
        latest = self.load(f"{METADATA}root.json")
        if latest is not None and latest != current:
            self.problem(f"{METADATA}root.json is not the newest versioned root ({current.signed.version})")
        return current

    def blob(self, rec: ImageRecord) -> None:
        key = blob_key(rec.sha256)
        h, n = hashlib.sha256(), 0
        try:
            with self.store.open_range(key) as stream:
                for chunk in stream.chunks:
                    h.update(chunk)
                    n += len(chunk)
        except ObjectMissingError:
            self.problem(f"{rec.path}: blob {key} is missing")
            return
        except ImagectlError as e:
            self.problem(f"{rec.path}: blob {key} unreadable: {e}")
            return
        self.report.blob_bytes += n
        if n != rec.size:
            self.problem(f"{rec.path}: blob {key} has {n} bytes, signed length is {rec.size}")
        elif h.hexdigest() != rec.sha256:
            self.problem(f"{rec.path}: blob {key} has sha256 {h.hexdigest()}, signed is {rec.sha256}")

    def partial(self) -> tuple[set[str], set[str]] | None:
        """For a partial mirror (mirror.json at its root): the image names and images it holds; else None."""
        try:
            info = json.loads(self.store.read("mirror.json", 16 << 20))
            return {model.role_for(n) for n in info["names"]}, set(info["images"])
        except ObjectMissingError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            self.problem(f"mirror.json: unreadable ({e})")
            return None

    def run(self) -> Report:
        partial = self.partial()
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
        self.signed_by(root, "snapshot", snap, snap_key)
        self.version(snap, ts.signed.snapshot_meta.version, snap_key)
        self.fresh(snap, snap_key)
        tmeta = snap.signed.meta.get("targets.json")
        if tmeta is None:
            self.problem(f"{snap_key}: does not list targets.json")
            return self.report
        t_key = f"{METADATA}{tmeta.version}.targets.json"
        targets = self.load(t_key)
        if targets is None:
            return self.report
        self.signed_by(root, "targets", targets, t_key)
        self.version(targets, tmeta.version, t_key)
        self.fresh(targets, t_key)
        d = targets.signed.delegations
        delegated = sorted(d.roles) if d is not None and d.roles is not None else []
        listed = {k.removesuffix(".json") for k in snap.signed.meta} - {"targets"}
        for extra in sorted(listed - set(delegated)):
            self.problem(f"{snap_key}: lists {extra}, which targets does not delegate")
        for role in delegated:
            if partial is not None and role not in partial[0]:
                continue  # a partial mirror does not hold this image name, by design
            meta = snap.signed.meta.get(f"{role}.json")
            if meta is None:
                self.problem(f"{snap_key}: delegated role {role} is not listed")
                continue
            key = f"{METADATA}{meta.version}.{role}.json"
            md = self.load(key)
            if md is None:
                continue
            self.signed_by(targets, role, md, key)
            self.version(md, meta.version, key)
            self.fresh(md, key)
            for path, t in md.signed.targets.items():
                if not path.startswith(role.removeprefix(ROLE_PREFIX) + "/"):
                    self.problem(f"{key}: target {path} is outside the role's image name")
                try:
                    rec = ImageRecord.from_target(path, t.length, t.hashes, t.custom)
                except InvalidInputError as e:
                    self.problem(f"{key}: {e}")
                    continue
                if partial is not None and f"{rec.name}:{rec.version} {rec.arch}" not in partial[1]:
                    continue  # filtered out of this partial mirror
                self.report.images += 1
                if self.check_blobs:
                    self.blob(rec)
        return self.report


def verify_catalogue(store: Store, *, check_blobs: bool = True) -> Report:
    """Check the whole catalogue; raises CatalogueStateError only if ``store`` holds no catalogue at all."""
    if not store.exists(f"{METADATA}1.root.json") and not store.exists(f"{METADATA}root.json"):
        raise CatalogueStateError(f"{store.url} is not a catalogue (no {METADATA}1.root.json)")
    return _Verifier(store, check_blobs).run()
