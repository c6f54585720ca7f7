"""The browse site: ``imagectl catalogue site`` and ``--site DIR`` of the commands that change a catalogue.

A static site (HTML, CSS, a little JavaScript, and a JSON feed) rendered from verified metadata only: the reader
side (:mod:`imagectl.catalogue.client`), never the publisher's state or keys. Layout: :mod:`.model` (what the
pages show), :mod:`.load` (filling it from a catalogue), :mod:`.render` and :mod:`.feed` (files from the model,
deterministic), :mod:`.write` (the atomic swap into the destination directory). Templates, CSS and JS are package
data in ``assets/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl.catalogue.metadata import ROOT_MAX
from imagectl.catalogue.model import METADATA
from imagectl.config import Config
from imagectl.errors import ImagectlError, printable
from imagectl.site.load import load_model
from imagectl.site.model import SiteModel
from imagectl.site.render import render_site
from imagectl.site.write import existing_site, site_lock, write_site
from imagectl.store import Store, open_store

__all__ = ["SiteNotRefreshedError", "SiteResult", "build_site", "refresh_site", "render_site"]


@dataclass(frozen=True)
class SiteResult:
    path: Path
    model: SiteModel
    files: int

    def as_json(self) -> dict[str, Any]:
        m = self.model.metadata
        return {
            "path": str(self.path),
            "files": self.files,
            "names": len(self.model.names),
            "images": sum(len(v.images) for n in self.model.names for v in n.versions),
            "metadata_version": m.version,
            "expires": m.expires,
            "expired": m.expired,
            "catalogue": self.model.catalogue_url,
        }


class SiteNotRefreshedError(ImagectlError):
    """A change was committed, but the site could not be refreshed after it. Exits with the cause's code."""

    def __init__(self, dest: Path, cause: ImagectlError) -> None:
        super().__init__(f"the change is published, but the site in {dest} was NOT refreshed: {cause.message}")
        self.hint = cause.hint or printable(f"refresh it with: imagectl catalogue site --catalogue URL -o {dest}")
        self.exit_code = cause.exit_code


def build_site(
    store: Store,
    cfg: Config,
    dest: Path,
    warn: Callable[[str], None],
    *,
    public_url: str | None = None,
    root: str | None = None,
) -> SiteResult:
    """Render the catalogue in ``store`` into ``dest`` (replaced atomically; see :mod:`.write`).

    ``public_url``: the catalogue URL shown in pull commands (default: the setting ``public_url``, else the one
    the site in ``dest`` was made with, else the catalogue's own). ``root``: the trust anchor (default
    ``cfg.root``). Raises LocalIOError for a destination that is not a site and what
    :func:`~imagectl.site.load.load_model` raises for a catalogue it refuses.
    """
    with site_lock(dest):
        before = existing_site(dest) or {}
        url = public_url or cfg.public_url or before.get("public_url")
        model = load_model(
            store,
            cfg.cache_path,
            root or cfg.root,
            warn,
            public_url=url if isinstance(url, str) else None,
            retries=cfg.retries,
        )
        files = render_site(model)
        write_site(files, dest, {"public_url": model.catalogue_url})
    return SiteResult(dest, model, len(files))


def refresh_site(cfg: Config, dest: Path, warn: Callable[[str], None]) -> None:
    """After a committed change (publish, promote, deprecate, revoke with ``--site DIR``): render the catalogue
    again into ``dest``. Any failure raises :class:`SiteNotRefreshedError`, whose one line says that the change
    is published and the site is not refreshed, with the cause's exit code."""
    try:
        location = cfg.catalogue or ""
        store = open_store(location, **cfg.store_options())
        # The publisher has just verified and signed on top of the catalogue's own root chain (from 1.root.json):
        # the same anchor, without the trust-on-first-use warning a reader with nothing pinned would print.
        own = cfg.root or "sha256:" + hashlib.sha256(store.read(f"{METADATA}1.root.json", ROOT_MAX)).hexdigest()
        build_site(store, cfg, dest, warn, root=own)
    except ImagectlError as e:
        raise SiteNotRefreshedError(dest, e) from None
