"""``imagectl catalogue upgrade``: bring a catalogue written by an older imagectl up to the current layout.

Today that means the target files (``targets/NAME/VERSION/ARCH/HEX.NAME-VERSION-ARCH.FORMAT``) that stock TUF clients
download: catalogues published before they existed hold image bytes only at ``blobs/sha256/HEX``. Upgrading writes no
metadata and needs no signing key: it only adds files named by metadata already signed, so it is safe to run at any
time, next to publishers, as often as wanted (what exists is kept). ``catalogue verify`` says when it is needed.

With ``one_copy`` (``catalogue upgrade --one-copy``), on S3, it also drops the second copy such a catalogue keeps of
each image: the blob key, once the image's target file is found to hold the same bytes, becomes a pointer to it
(catalogue/README.md §6). That halves the bytes the bucket holds for images, and clients older than that layout,
which download blobs, can no longer read those images: so it is asked for, never done by default.

Re-binning (``catalogue rebin``, :func:`rebin_catalogue`) is the other step: a name whose image role holds more than
``bins.BIN_THRESHOLD`` versions (a catalogue written before hashed bins, or a name that outgrew its bins) is spread
over hash bins. That re-signs metadata, so it needs the targets keys (catalogue/README.md §2.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import ImageRecord, blob_key, role_for, target_file_key
from imagectl.catalogue.state import CatalogueState, load_state, transact
from imagectl.catalogue.trust import require_keys
from imagectl.errors import CatalogueStateError, ImagectlError, NotFoundError
from imagectl.store import Store

__all__ = ["RebinReport", "UpgradeReport", "rebin_catalogue", "upgrade_catalogue"]


@dataclass
class UpgradeReport:
    created: list[str] = field(default_factory=list)  # target files written now
    present: int = 0  # target files that were already right
    problems: list[str] = field(default_factory=list)  # images whose target file could not be made (blob damage)
    pointers: list[str] = field(default_factory=list)  # --one-copy: blobs turned into pointers now
    freed_bytes: int = 0  # --one-copy: the bytes those blobs held

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.problems, **dataclasses.asdict(self)}


def upgrade_catalogue(
    store: Store, say: Callable[[str], None] = lambda _m: None, *, one_copy: bool = False
) -> UpgradeReport:
    """Make the target file of every image the verified metadata lists (and with ``one_copy``, turn each blob
    still holding a second copy of an image into a pointer to its target file); report what was done and what
    could not be (a missing or damaged blob or target file: ``catalogue verify`` tells more). Raises like
    :func:`load_state` when the metadata does not verify: nothing is written on the word of unverified
    metadata."""
    if not store.writable:
        raise CatalogueStateError(
            f"catalogue {store.shown} is read-only over this protocol",
            hint="upgrade the directory (or S3 bucket) the web server serves",
        )
    state = load_state(store)
    report = UpgradeReport()
    failed: list[tuple[ImageRecord, str, str]] = []
    held: dict[str, str] = {}  # sha256 -> a target file holding those bytes
    sizes: dict[str, int] = {}  # sha256 -> its signed length
    for name in state.names():
        for rec in state.images(name):
            sizes[rec.sha256] = rec.size
            key = target_file_key(rec.path, rec.sha256)
            try:
                made = store.place_target(blob_key(rec.sha256), key, rec.size)
            except ImagectlError as e:
                failed.append((rec, key, e.message))
                continue
            held.setdefault(rec.sha256, key)
            if made:
                report.created.append(key)
                say(f"created {key}")
            else:
                report.present += 1
    # Without its blob (or with a pointer at a target file since removed), an image is made from another
    # version's target file of the same bytes, when there is one.
    for rec, key, message in failed:
        if rec.sha256 in held:
            try:
                store.place_target(held[rec.sha256], key, rec.size)
            except ImagectlError as e:
                message = e.message
            else:
                report.created.append(key)
                say(f"created {key}")
                continue
        report.problems.append(f"{rec.name}:{rec.version} {rec.arch}: {message}")
    report.created.sort()
    if one_copy:
        _release_blobs(store, held, sizes, report, say)
    return report


def _release_blobs(
    store: Store, held: dict[str, str], sizes: dict[str, int], report: UpgradeReport, say: Callable[[str], None]
) -> None:
    """Turn each blob that holds a second copy of an image into a pointer to a target file found to hold it."""
    for sha256, key in sorted(held.items()):
        blob = blob_key(sha256)
        try:
            freed = store.release_blob(blob, key, sizes[sha256], sha256)
        except ImagectlError as e:
            report.problems.append(f"{blob}: {e.message}")
            continue
        if freed:
            report.pointers.append(blob)
            report.freed_bytes += freed
            say(f"{blob} now points at {key}")


@dataclass
class RebinReport:
    rebinned: dict[str, int] = field(default_factory=dict)  # name -> bins it now has
    unchanged: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)  # binned names whose record of arches and formats was mended
    index_roles: int = 0  # index roles the names were spread over by this run (0: the index was left as it was)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rebin_catalogue(
    store: Store,
    keys: KeyRing,
    expiry_days: dict[str, int],
    names: list[str] | None = None,
    *,
    bits: int | None = None,
) -> RebinReport:
    """Spread the versions of each of ``names`` (default: every name that would benefit, i.e. a role or a bin past
    the threshold) over hash bins sized for what it holds now, or ``2**bits`` bins; one commit. This is how an
    older catalogue (no bins) or a name that outgrew its bins is brought to bounded publishes; it re-signs every
    version of those names once. Each binned name of ``names`` (default: every name) whose role lacks the record
    of its bins' arches and formats (``layouts``), or holds a stale one, gets it. Without ``names``, the name index
    is also made (or re-made with more index roles) when the catalogue has outgrown it (catalogue/README.md §2.3).
    Raises KeyProblemError before writing when the targets keys are missing."""

    def apply(state: CatalogueState) -> RebinReport:
        report = RebinReport()
        chosen = names if names else [n for n in state.names() if state.crowded(n)]
        for name in chosen:
            before = state.succinct(state.role(role_for(name)) or _missing(name))
            now = state.rebin(name, bits)
            if before is not None and before.bit_length == now:
                report.unchanged.append(name)
            else:
                report.rebinned[name] = 2**now
        # a name binned before its bins' arches and formats were recorded (or one an older imagectl published a new
        # pair into): the record that lets a lookup by version read one bin per pair, not up to 100
        for name in names or state.names():
            if state.record_layouts(name):
                report.layouts.append(name)
        if not names and state.index_crowded():  # too many names under targets or one index role
            report.index_roles = 2 ** state.reindex()
        require_keys(state, keys, ["targets", "snapshot", "timestamp"])
        if state.changed:
            state.commit(keys, expiry_days)
        return report

    if not store.writable:
        raise CatalogueStateError(f"catalogue {store.shown} is read-only over this protocol")
    return transact(store, apply)


def _missing(name: str) -> Any:
    raise NotFoundError(f"no image named {name!r} in the catalogue")
