"""``imagectl catalogue upgrade``: bring a catalogue written by an older imagectl up to the current layout.

Today that means the target files (``targets/NAME/VERSION/ARCH/HEX.NAME-VERSION-ARCH.FORMAT``) that stock TUF clients
download: catalogues published before they existed hold image bytes only at ``blobs/sha256/HEX``. Upgrading writes no
metadata and needs no signing key: it only adds files named by metadata already signed, so it is safe to run at any
time, next to publishers, as often as wanted (what exists is kept). ``catalogue verify`` says when it is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagectl.catalogue.model import blob_key, target_file_key
from imagectl.catalogue.state import load_state
from imagectl.errors import CatalogueStateError, ImagectlError
from imagectl.store import Store

__all__ = ["UpgradeReport", "upgrade_catalogue"]


@dataclass
class UpgradeReport:
    created: list[str] = field(default_factory=list)  # target files written now
    present: int = 0  # target files that were already right
    problems: list[str] = field(default_factory=list)  # images whose target file could not be made (blob damage)

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.problems, **dataclasses.asdict(self)}


def upgrade_catalogue(store: Store, say: Callable[[str], None] = lambda _m: None) -> UpgradeReport:
    """Make the target file of every image the verified metadata lists; report what was done and what could not
    be (a missing or damaged blob: ``catalogue verify`` tells more). Raises like :func:`load_state` when the
    metadata does not verify: nothing is written on the word of unverified metadata."""
    if not store.writable:
        raise CatalogueStateError(
            f"catalogue {store.shown} is read-only over this protocol",
            hint="upgrade the directory (or S3 bucket) the web server serves",
        )
    state = load_state(store)
    report = UpgradeReport()
    for name in state.names():
        for rec in state.images(name):
            key = target_file_key(rec.path, rec.sha256)
            try:
                made = store.place_target(blob_key(rec.sha256), key, rec.size)
            except ImagectlError as e:
                report.problems.append(f"{rec.name}:{rec.version} {rec.arch}: {e.message}")
                continue
            if made:
                report.created.append(key)
                say(f"created {key}")
            else:
                report.present += 1
    report.created.sort()
    return report
