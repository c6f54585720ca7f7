"""Exports: the catalogue rendered for consumers imagectl did not write.

- :mod:`~imagectl.export.simplestreams`: ``streams/v1`` for sstream-query, sstream-mirror(-glance), LXD-style clients;
- :mod:`~imagectl.export.hepix`: a signed HEPiX image list for vmcatcher and atrope;
- :mod:`~imagectl.export.glance`: the ``openstack image create`` command (or its JSON) with nova's properties.

Every renderer reads :class:`~imagectl.export.view.CatalogueView`, made from metadata ``tuf.ngclient`` verified,
and nothing else; none touches signing keys of the catalogue or the store's write side. Outputs are written
all-or-nothing and never through a symlink (:mod:`~imagectl.export.output`). :func:`refresh_exports` is what
``publish``/``promote``/``deprecate``/``revoke --export KIND=PATH`` run after their change is committed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.model import ImageRef
from imagectl.config import Config
from imagectl.errors import CatalogueStateError, ImagectlError, InvalidInputError, KeyProblemError, printable
from imagectl.export.glance import GlanceImage, glance_image
from imagectl.export.hepix import Signer, export_hepix, load_signer
from imagectl.export.simplestreams import check_gpg_key, export_simplestreams
from imagectl.export.view import missing_target_files, read_view, verified_sha512

__all__ = [
    "KINDS",
    "VALID_DAYS_MAX",
    "glance",
    "hepix",
    "parse_specs",
    "refresh_exports",
    "signer",
    "simplestreams",
]

KINDS = ("simplestreams", "hepix")  # what --export KIND=PATH can refresh (glance is one image, not a file)
VALID_DAYS_MAX = 3650


def simplestreams(reader: CatalogueReader, out: Path, *, gpg_key: str | None, public_url: str | None) -> list[str]:
    """``imagectl export simplestreams``: write ``out/streams/v1/…``; return the files written."""
    if gpg_key is not None:
        check_gpg_key(gpg_key)
    return export_simplestreams(read_view(reader, public_url), out, gpg_key)


def hepix(
    reader: CatalogueReader,
    out: Path,
    signer: Signer,
    *,
    cache: Path,
    public_url: str | None,
    list_url: str | None = None,
    valid_days: int = 30,
) -> dict[str, Any]:
    """``imagectl export hepix``: write the signed list to ``out``; return the unsigned document."""
    if not 1 <= valid_days <= VALID_DAYS_MAX:
        raise InvalidInputError(f"--valid-days must be from 1 to {VALID_DAYS_MAX}, got {valid_days}")
    view = read_view(reader, public_url)
    digests: dict[str, str] = {}

    def sha512(rec: Any) -> str:
        if rec.sha256 not in digests:
            digests[rec.sha256] = verified_sha512(reader, rec, cache)
        return digests[rec.sha256]

    return export_hepix(view, out, signer, sha512, list_url=list_url, valid_days=valid_days)


def glance(
    reader: CatalogueReader, ref: ImageRef, arch: str, *, public_url: str | None, root: str | None
) -> GlanceImage:
    """``imagectl export glance``: the command and properties for the one image ``ref`` resolves to for ``arch``
    (exactly as ``imagectl pull`` resolves it: revoked refused, deprecated allowed by version)."""
    rec = reader.resolve(ref, arch).record
    if missing_target_files(reader.store, rec.name, [rec]):
        raise CatalogueStateError(
            f"{rec.name}:{rec.version} ({rec.arch}) has no target file in {reader.store.shown}",
            hint=f"run: imagectl catalogue upgrade {reader.store.shown}",
        )
    return glance_image(rec, public_url or reader.url, root)


def parse_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``KIND=PATH`` -> (kind, path). Raises InvalidInputError (exit 3) naming the bad spec and the kinds."""
    out = []
    for spec in specs:
        kind, sep, path = spec.partition("=")
        if not sep or kind not in KINDS or not path:
            raise InvalidInputError(f"--export takes KIND=PATH with KIND one of {', '.join(KINDS)}, got {spec!r}")
        out.append((kind, Path(path)))
    return out


def signer(cfg: Config) -> Signer:
    """The HEPiX signing certificate and key the settings name. Raises KeyProblemError (exit 7) if unset or bad."""
    if not cfg.hepix_cert or not cfg.hepix_key:
        raise KeyProblemError(
            "a HEPiX export needs a signing certificate and key",
            hint="set IMAGECTL_HEPIX_CERT and IMAGECTL_HEPIX_KEY (or hepix_cert/hepix_key in the config file)",
        )
    return load_signer(cfg.hepix_cert, cfg.hepix_key)


def _not_refreshed(err: ImagectlError, what: str) -> ImagectlError:
    """``err`` (same class, so the same exit code and hint) saying first that the change itself is published."""
    out = copy.copy(err)
    out.message = printable(f"the change is published, but {what} NOT refreshed: {err.message}")
    out.args = (out.message,)
    return out


def refresh_exports(cfg: Config, specs: list[str], warn: Callable[[str], None]) -> None:
    """Refresh each ``KIND=PATH`` export (``simplestreams=DIR``, ``hepix=FILE``) from the catalogue ``cfg`` names.

    Runs after a committed change. Every export is attempted; the first failure is raised (later ones are
    warned about) with its own exit code and a message that starts "the change is published, but … NOT refreshed".
    Signing material comes from settings: ``gpg_key`` (IMAGECTL_GPG_KEY; unsigned streams without it),
    ``hepix_cert``/``hepix_key`` (IMAGECTL_HEPIX_CERT/KEY), and download URLs from ``public_url``.
    """
    from imagectl.store import open_store

    shown = ", ".join(specs)
    try:
        jobs = parse_specs(specs)
        if cfg.gpg_key:
            check_gpg_key(cfg.gpg_key)
        hepix_signer = signer(cfg) if any(kind == "hepix" for kind, _ in jobs) else None
        if not cfg.catalogue:
            raise InvalidInputError("no catalogue given")
        store = open_store(cfg.catalogue, **cfg.store_options())
        reader = CatalogueReader(store, cfg.cache_path, cfg.root, warn, retries=cfg.retries)
    except ImagectlError as e:
        raise _not_refreshed(e, f"the exports ({shown}) were") from None
    failures: list[ImagectlError] = []
    with reader:
        for (kind, path), spec in zip(jobs, specs, strict=True):
            try:
                if kind == "simplestreams":
                    simplestreams(reader, path, gpg_key=cfg.gpg_key, public_url=cfg.public_url)
                else:
                    assert hepix_signer is not None
                    hepix(reader, path, hepix_signer, cache=cfg.cache_path, public_url=cfg.public_url)
            except ImagectlError as e:
                failures.append(_not_refreshed(e, f"the export {spec} was"))
    for later in failures[1:]:
        warn(later.message)
    if failures:
        raise failures[0]
