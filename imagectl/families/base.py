"""The parts every OS family module shares: :class:`Family`, :class:`Release`, :class:`DibPlan`. Family modules
import only this module (never each other, nor the registry in ``imagectl.families``)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagectl.recipe.model import Recipe

__all__ = ["HYPERVISORS", "DibPlan", "Family", "Release"]

HYPERVISORS = ("hvm", "xen-pv")  # fully virtualised; Xen paravirtualised (domU kernel, no bootloader of its own)


@dataclass(frozen=True)
class Release:
    """One OS release: where its packages come from, what it runs on, and how its disk is laid out."""

    family: str
    release: str
    arches: tuple[str, ...]  # imagectl's names (x86_64, i386, ia64), as recipes and the catalogue write them
    mirror: str  # default mirror; a recipe's `mirror:` or IMAGECTL_MIRROR_<FAMILY><RELEASE> overrides it
    repo_path: str  # appended to the mirror: the yum/apt repository of one arch ({arch} is substituted)
    codename: str = ""
    fs_type: str = "ext4"  # root filesystem
    mkfs_options: str = ""  # extra mkfs flags for the root filesystem (disk-image-create --mkfs-options)
    bootloader: str = "grub2"  # what makes the disk bootable (a description, recorded in docs and `recipe show`)
    hypervisors: tuple[str, ...] = ("hvm",)

    @property
    def env(self) -> str:
        return f"IMAGECTL_MIRROR_{self.family.upper()}{self.release}"


@dataclass(frozen=True)
class DibPlan:
    """A family's part of one ``disk-image-create`` run; imagectl/imaging/plan.py adds what every family shares
    (imagectl-config, the batch worker, the recipe's own elements, output, formats, size)."""

    elements: list[str]
    env: dict[str, str]
    packages: list[str]  # installed by DIB (`-p`); a family that installs them itself returns []
    argv: list[str] = field(default_factory=list)  # extra disk-image-create arguments (-n, --mkfs-options …)
    notes: list[str] = field(default_factory=list)  # deliberate deviations, recorded in the build record


class Family(abc.ABC):
    """One OS family. Subclasses set the class attributes and implement :meth:`dib`."""

    name: str
    title: str  # for people: "Scientific Linux CERN"
    releases: Mapping[str, Release]
    dib_arch: Mapping[str, str]  # imagectl arch -> the name DIB's -a takes (Debian says amd64)
    signs_packages_with_recipe_keys: bool = False  # recipes may pin package signing keys (gpg_keys:)

    @abc.abstractmethod
    def dib(self, release: Release, arch: str, hypervisor: str, recipe: Recipe, mirror: str) -> DibPlan:
        """The elements, environment, packages and arguments that build ``recipe`` for (arch, hypervisor)."""

    @abc.abstractmethod
    def interface_file(self, iface: str, net: Mapping[str, Any]) -> tuple[str, bytes]:
        """Where this family configures network interface ``iface``, and the file's bytes, for a recipe's
        ``network:`` (``mode`` dhcp or static with ``address`` CIDR, ``gateway``, ``dns``)."""

    def recipe_problems(self, release: Release, data: Mapping[str, Any], pos: Any) -> list[str]:
        """Family-specific recipe checks beyond the schema: ``pos(path)`` gives file:line:col of a key."""
        out = []
        for i, h in enumerate(data.get("hypervisors", [])):
            if h not in release.hypervisors:
                out.append(
                    f"{pos(('hypervisors', i))}: hypervisors[{i}]: {h} images are not built for "
                    f"{self.name} {release.release} (expected one of {', '.join(release.hypervisors)})"
                )
        return out

    def build_needs(self, release: Release, data: Mapping[str, Any], pos: Any) -> list[str]:
        """What a valid, concrete recipe still lacks before it can be built, one line each with ``file:line:col``
        (``pos(path)``): ``recipe validate`` warns with them, ``imagectl build`` refuses the recipe with the first
        before any build work. Nothing by default."""
        return []

    @staticmethod
    def resolve(recipe: Recipe, rel: str) -> Path:
        """A path the recipe names relative to its own file, absolute."""
        return (recipe.path.parent / rel).resolve()
