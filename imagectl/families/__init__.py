"""OS families: everything imagectl knows about one kind of guest OS, in one module per family.

A family (``debian``, ``slc``) owns its releases (with their architectures, default mirror, repository layout,
root filesystem and bootloader), the names diskimage-builder uses for its architectures, and how a build target
becomes DIB elements, environment and arguments (:meth:`Family.dib`). The recipe schema, recipe validation and
the build planner (imagectl/imaging/plan.py) ask the registry, never a family by name, so supporting another OS
is adding one module here and one line to :data:`FAMILIES` (the way mkosi keeps one module per distribution).

This package imports nothing from the rest of imagectl at run time (recipes and the build side import it).
"""

from __future__ import annotations

from imagectl.families.base import HYPERVISORS, DibPlan, Family, Release
from imagectl.families.debian import Debian
from imagectl.families.slc import Slc

__all__ = ["ARCHITECTURES", "FAMILIES", "HYPERVISORS", "RELEASES", "DibPlan", "Family", "Release", "family"]

FAMILIES: dict[str, Family] = {f.name: f for f in (Debian(), Slc())}
RELEASES: dict[tuple[str, str], Release] = {
    (f.name, r): rel for f in FAMILIES.values() for r, rel in f.releases.items()
}
ARCHITECTURES: tuple[str, ...] = tuple(dict.fromkeys(a for rel in RELEASES.values() for a in rel.arches))


def family(name: str) -> Family:
    return FAMILIES[name]
