"""What the browse site shows: a read model of one catalogue, built from verified metadata only.

The renderer (:mod:`imagectl.site.render`) turns a :class:`SiteModel` into files and knows nothing of TUF or
stores; :mod:`imagectl.site.load` fills the model from a catalogue. Keeping the two apart lets a benchmark (or a
test) render a model of any size without signing it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagectl.catalogue.model import ImageRecord, version_key

__all__ = [
    "BuildInfo",
    "MetadataInfo",
    "Package",
    "PackageChanges",
    "SiteImage",
    "SiteModel",
    "SiteName",
    "SiteVersion",
    "compare_packages",
    "make_name",
]


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class PackageChanges:
    """What changed in an image's package list against the same arch of the previous version."""

    against: str  # the previous version compared with
    added: tuple[Package, ...] = ()
    removed: tuple[Package, ...] = ()
    changed: tuple[tuple[Package, Package], ...] = ()  # (before, after), same name and arch

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        """The changes as every JSON document imagectl writes them (the site feed, diff, rebuild): added and
        removed as ``{name, version, arch}``, changed as ``{name, arch, from, to}``."""

        def pkg(p: Package) -> dict[str, str]:
            return {"name": p.name, "version": p.version, "arch": p.arch}

        return {
            "added": [pkg(p) for p in self.added],
            "removed": [pkg(p) for p in self.removed],
            "changed": [{"name": b.name, "arch": b.arch, "from": a.version, "to": b.version} for a, b in self.changed],
        }

    def lines(self) -> list[str]:
        """One line per change for a terminal: ``+ NAME VERSION ARCH``, ``- …``, ``~ NAME OLD -> NEW ARCH``."""
        out = [f"+ {p.name} {p.version} {p.arch}".rstrip() for p in self.added]
        out += [f"- {p.name} {p.version} {p.arch}".rstrip() for p in self.removed]
        return out + [f"~ {b.name} {a.version} -> {b.version} {b.arch}".rstrip() for a, b in self.changed]


@dataclass(frozen=True)
class BuildInfo:
    """An image's build record: the signed summary, and the package list read from the verified record blob."""

    summary: dict[str, Any]  # as signed in custom.build_record (sha256, size, build_key, started, …)
    packages: tuple[Package, ...] | None = None  # None: not available (``problem`` says why)
    problem: str | None = None


@dataclass(frozen=True)
class SiteImage:
    record: ImageRecord
    build: BuildInfo | None = None  # None: published without a build record
    changes: PackageChanges | None = None  # None: nothing to compare (no list here or in the previous version)
    no_changes_because: str | None = None  # why ``changes`` is None although this image has a package list

    @property
    def status(self) -> str:
        return "deprecated" if self.record.deprecated else "current"


@dataclass(frozen=True)
class SiteVersion:
    version: str
    images: tuple[SiteImage, ...]  # by arch; empty for a revoked version
    channels: tuple[str, ...] = ()
    revoked: dict[str, Any] | None = None  # the signed tombstone: at, reason, sha256

    @property
    def status(self) -> str:
        """revoked; deprecated (every arch is); or current."""
        if self.revoked is not None:
            return "revoked"
        if self.images and all(i.record.deprecated for i in self.images):
            return "deprecated"
        return "current"


@dataclass(frozen=True)
class SiteName:
    name: str
    versions: tuple[SiteVersion, ...]  # newest first (catalogue/README.md §3.1)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # CHANNEL -> {version, updated}


@dataclass(frozen=True)
class MetadataInfo:
    """How fresh the signed metadata is. ``expires`` is the earliest expiry of every file the site was rendered
    from (root, timestamp, snapshot, targets, the image roles): after it, a client refuses the catalogue."""

    version: int  # of timestamp.json: every change and every re-sign raises it
    snapshot_version: int
    expires: str  # ISO 8601 UTC, whole seconds, "Z"
    expires_role: str  # which file expires first
    expired: bool  # already at render time: rendered from signature-verified but expired metadata
    root_sha256: str  # of the newest trusted root's bytes: what a deployer pins (--root sha256:HEX)


@dataclass(frozen=True)
class SiteModel:
    catalogue_url: str  # shown in pull commands: where deployers reach the catalogue
    metadata: MetadataInfo
    names: tuple[SiteName, ...]  # sorted by name


def _key(p: Package) -> tuple[str, str]:
    return (p.name, p.arch)


def compare_packages(against: str, old: tuple[Package, ...], new: tuple[Package, ...]) -> PackageChanges:
    """Added, removed and changed packages (by name and arch) from ``old`` to ``new``, each sorted by name."""
    before = {_key(p): p for p in old}
    after = {_key(p): p for p in new}
    return PackageChanges(
        against=against,
        added=tuple(after[k] for k in sorted(after.keys() - before.keys())),
        removed=tuple(before[k] for k in sorted(before.keys() - after.keys())),
        changed=tuple(
            (before[k], after[k]) for k in sorted(before.keys() & after.keys()) if before[k].version != after[k].version
        ),
    )


def make_name(
    name: str,
    images: list[SiteImage],
    channels: dict[str, dict[str, Any]],
    revoked: dict[str, dict[str, Any]],
) -> SiteName:
    """Group one name's images by version (newest first) and add revoked versions, channels and package changes.

    Package changes compare each image with the same arch of the next older version that has that arch; when
    that one has no package list, ``no_changes_because`` says so.
    """
    by_version: dict[str, list[SiteImage]] = {}
    for img in images:
        by_version.setdefault(img.record.version, []).append(img)
    for v in revoked:
        by_version.setdefault(v, [])
    previous: dict[str, SiteImage] = {}  # arch -> the image of the last older version seen
    ordered: list[SiteVersion] = []
    for v in sorted(by_version, key=version_key):
        row: list[SiteImage] = []
        for img in sorted(by_version[v], key=lambda i: i.record.arch):
            prev = previous.get(img.record.arch)
            mine = img.build.packages if img.build else None
            if mine is not None and prev is not None:
                theirs = prev.build.packages if prev.build else None
                if theirs is not None:
                    img = SiteImage(img.record, img.build, compare_packages(prev.record.version, theirs, mine))
                else:
                    why = f"the previous version ({prev.record.version}) has no package list"
                    img = SiteImage(img.record, img.build, None, why)
            row.append(img)
            previous[img.record.arch] = img
        pointing = tuple(sorted(c for c, p in channels.items() if isinstance(p, dict) and p.get("version") == v))
        tomb = revoked.get(v)
        if v in revoked:  # a tombstone that is not an object still revokes: show it without a reason
            tomb = dict(tomb) if isinstance(tomb, dict) else {}
        ordered.append(SiteVersion(v, tuple(row), pointing, tomb))
    ordered.reverse()
    return SiteName(name, tuple(ordered), dict(channels))
