"""The site's JSON feed (``index.json``; catalogue/schema/site-feed.schema.json): the data of the pages, for
scripts. Full package lists stay on the pages; the feed carries each image's package changes."""

from __future__ import annotations

import shlex
from typing import Any

from imagectl.catalogue.model import ImageRecord
from imagectl.site.model import BuildInfo, PackageChanges, SiteImage, SiteModel, SiteVersion

__all__ = ["FEED_FORMAT", "feed", "pull_command"]

FEED_FORMAT = 1


def pull_command(model: SiteModel, rec: ImageRecord) -> str:
    """What a deployer runs to get exactly this image, pinned to the catalogue's root."""
    return shlex.join(
        [
            "imagectl",
            "pull",
            f"{rec.name}:{rec.version}",
            "--arch",
            rec.arch,
            "--catalogue",
            model.catalogue_url,
            "--root",
            f"sha256:{model.metadata.root_sha256}",
        ]
    )


def _changes(c: PackageChanges | None) -> dict[str, Any] | None:
    return None if c is None else {"against": c.against, **c.as_json()}


def _build(b: BuildInfo | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"summary": b.summary, "packages_shown": b.packages is not None, "problem": b.problem}


def _image(model: SiteModel, img: SiteImage) -> dict[str, Any]:
    r = img.record
    return {
        "arch": r.arch,
        "format": r.format,
        "hypervisor": r.hypervisor,
        "os": r.os,
        "os_version": r.os_version,
        "size": r.size,
        "sha256": r.sha256,
        "created": r.created,
        "deprecated": r.deprecated,
        "status": img.status,
        "pull": pull_command(model, r),
        "build_record": _build(img.build),
        "package_changes": _changes(img.changes),
    }


def _version(model: SiteModel, v: SiteVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "status": v.status,
        "channels": list(v.channels),
        "revoked": v.revoked,
        "images": [_image(model, i) for i in v.images],
    }


def feed(model: SiteModel) -> dict[str, Any]:
    m = model.metadata
    return {
        "feed": "imagectl-site",
        "feed_version": FEED_FORMAT,
        "catalogue": model.catalogue_url,
        "metadata": {
            "version": m.version,
            "snapshot_version": m.snapshot_version,
            "expires": m.expires,
            "expires_role": m.expires_role,
            "expired": m.expired,
            "root_sha256": m.root_sha256,
        },
        "names": [
            {
                "name": n.name,
                "page": f"images/{n.name}.html",
                "channels": n.channels,
                "versions": [_version(model, v) for v in n.versions],
            }
            for n in model.names
        ],
    }
