"""Files imagectl reads at run time that ship inside the package: recipes, diskimage-builder elements, shims.

They are package data (``pip install`` of a wheel carries them), found with :mod:`importlib.resources`, never by
walking up from ``__file__`` to a source checkout. In a checkout, ``imagectl/_recipes`` is a symlink to the
top-level ``recipes/`` directory where the image team edits them; a wheel holds a copy of its files.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["elements_dir", "hostcompat_dir", "recipes_dir", "shipped_recipes"]


def _path(*parts: str) -> Path:
    """A package-data directory as a real path (diskimage-builder and shells need one)."""
    ref = importlib.resources.files("imagectl").joinpath(*parts)
    path = Path(str(ref))
    if not path.is_dir():
        raise FileNotFoundError(f"imagectl package data {'/'.join(parts)} is missing (a broken install?)")
    return path


def recipes_dir() -> Path:
    """The shipped recipes (``recipes/`` of the source tree)."""
    return _path("_recipes")


def elements_dir() -> Path:
    """imagectl's own diskimage-builder elements (``recipes/elements/``)."""
    return _path("_recipes", "elements")


def hostcompat_dir() -> Path:
    """The partx-based kpartx/dmsetup shims for kernels without device-mapper."""
    return _path("imaging", "hostcompat")


def shipped_recipes() -> dict[str, Path]:
    """Every concrete shipped recipe by file stem (``debian12-demo`` -> its path), for ``imagectl recipe list``
    and for naming a shipped recipe instead of a path."""
    root = recipes_dir()
    return {p.stem: p for p in sorted(root.glob("*/*.yaml")) if "elements" not in p.parts}
