"""``imagectl catalogue gc``: delete what no signed metadata refers to, once it is older than a grace period.

Referenced, and so always kept: every ``N.root.json`` and ``root.json``, ``timestamp.json``, the snapshot it names, the
targets and image-role versions that snapshot names, the blob and the target file (``targets/…``) of every image those
roles list and every build-record blob they reference. Anything else under ``metadata/``, ``blobs/`` and ``targets/`` is
an orphan: the leftovers of a publisher that died or lost a compare-and-swap, blobs and target files of revoked
versions, superseded metadata versions, temp files (``.NAME.XXXX.tmp``) of a publisher killed mid-write; on an object
store also unfinished multi-part uploads of a publisher killed mid-upload. Symlinks and other non-files are reported and
left alone: gc never follows one (a ``blobs/sha256`` that points elsewhere must not get elsewhere emptied). An orphan
younger than the grace period is kept, because a publisher still running may be about to sign a reference to it (blobs
are uploaded before the commit) and a reader may still be fetching the previous snapshot's files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from imagectl.catalogue.model import BLOBS, METADATA, TARGETS, side_blobs, target_file_key
from imagectl.catalogue.state import load_state
from imagectl.fsio import SymlinkRefusedError
from imagectl.store import Store

__all__ = ["GcReport", "collect_garbage"]

_ROOT = re.compile(r"metadata/(\d+\.)?root\.json")


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    young: list[str] = field(default_factory=list)  # orphans kept because they are within the grace period
    skipped: list[str] = field(default_factory=list)  # symlinks and other non-files: reported, never followed
    aborted_uploads: list[str] = field(default_factory=list)  # unfinished multi-part uploads (object stores)
    referenced: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _referenced(store: Store) -> set[str]:
    state = load_state(store)
    keep = {
        f"{METADATA}timestamp.json",
        f"{METADATA}{state.timestamp.signed.snapshot_meta.version}.snapshot.json",
    }
    for name, meta in state.snapshot.signed.meta.items():
        keep.add(f"{METADATA}{meta.version}.{name}")
    for role in state.all_roles():  # index roles, image roles and the bins of binned names
        md = state.role(role)
        if md is None:
            continue
        for t in md.signed.targets.values():
            keep.add(BLOBS + t.hashes["sha256"])
            keep.add(target_file_key(t.path, t.hashes["sha256"]))
            record = t.custom.get("build_record") if isinstance(t.custom, dict) else None
            keep.update(BLOBS + sha for _what, sha, _size in side_blobs(record) if isinstance(sha, str))
    return keep


def collect_garbage(store: Store, *, grace: dt.timedelta, dry_run: bool = False) -> GcReport:
    """Remove unreferenced metadata versions and blobs older than ``grace``; report what was (or would be) removed.

    The catalogue is loaded and verified first: gc never deletes on the word of metadata it cannot verify.
    """
    keep = _referenced(store)
    report = GcReport(referenced=len(keep), dry_run=dry_run)
    for prefix in (METADATA, BLOBS, TARGETS):
        try:
            entries = list(store.list_entries(prefix, hidden=True))  # hidden: temp files of killed publishers
        except SymlinkRefusedError:
            report.skipped.append(f"{prefix.rstrip('/')}: a symlink or not a directory; not followed, nothing removed")
            continue
        for entry in entries:
            if not entry.regular:
                report.skipped.append(f"{entry.key}: not a regular file; not followed, not removed")
                continue
            if entry.key in keep or _ROOT.fullmatch(entry.key):
                continue
            if entry.age < grace.total_seconds():
                report.young.append(entry.key)
                continue
            if not dry_run:
                store.delete(entry.key)
            report.removed.append(entry.key)
            report.bytes_freed += entry.size
    report.aborted_uploads = sorted(store.abort_stale_uploads(grace.total_seconds(), dry_run=dry_run))
    report.removed.sort()
    report.young.sort()
    return report
