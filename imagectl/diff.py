"""What changed between two images: packages, the merged recipe, the image size (``imagectl diff``).

Package changes are :func:`imagectl.site.model.compare_packages`, the same comparison the browse site shows
between versions. The recipe diff is flat: the merged recipes' nested mappings become dotted keys
(``release.version``), and a list is one value (the elements' order matters to DIB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imagectl.records import LoadedRecord, packages
from imagectl.site.model import PackageChanges, compare_packages
from imagectl.text import count

__all__ = ["ImageDiff", "diff_records", "flatten"]

_ABSENT = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; an empty mapping below the top stays a value of its own."""
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _merged(loaded: LoadedRecord) -> dict[str, Any]:
    recipe = loaded.record.get("recipe")
    merged = recipe.get("merged") if isinstance(recipe, dict) else None
    return flatten(merged) if isinstance(merged, dict) else {}


@dataclass(frozen=True)
class ImageDiff:
    a: LoadedRecord
    b: LoadedRecord
    packages: PackageChanges
    recipe: dict[str, tuple[Any, Any]]  # dotted key -> (in A, in B); a side without the key is None
    recipe_only: dict[str, str]  # dotted key -> "a" or "b": the key exists on that side only
    size_format: str | None  # the image format whose sizes are compared (None: no common one)
    size_a: int | None
    size_b: int | None

    @property
    def size_change(self) -> int | None:
        return None if self.size_a is None or self.size_b is None else self.size_b - self.size_a

    def as_json(self) -> dict[str, Any]:
        return {
            "a": self.a.label,
            "b": self.b.label,
            "packages": self.packages.as_json(),
            "recipe": {
                k: {"a": a, "b": b, **({"only": self.recipe_only[k]} if k in self.recipe_only else {})}
                for k, (a, b) in self.recipe.items()
            },
            "size": {"format": self.size_format, "a": self.size_a, "b": self.size_b, "change": self.size_change},
        }

    def text(self) -> str:
        """The diff for a person: one line per change, ``+``/``-``/``~`` first."""
        lines = [f"--- {self.a.label}", f"+++ {self.b.label}"]
        pc = self.packages
        lines.append(f"packages: {len(pc.added)} added, {len(pc.removed)} removed, {len(pc.changed)} changed")
        lines += pc.lines()
        lines.append(f"recipe: {count(len(self.recipe), 'key')} changed")
        for k, (a, b) in self.recipe.items():
            side = self.recipe_only.get(k)
            if side == "b":
                lines.append(f"+ {k}: {json.dumps(b)}")
            elif side == "a":
                lines.append(f"- {k}: {json.dumps(a)}")
            else:
                lines.append(f"~ {k}: {json.dumps(a)} -> {json.dumps(b)}")
        if self.size_change is None:
            lines.append("size: unknown (no image format with a size on both sides)")
        else:
            lines.append(f"size ({self.size_format}): {self.size_a} -> {self.size_b} bytes ({self.size_change:+d})")
        return "\n".join(lines)


def _size_format(a: LoadedRecord, b: LoadedRecord) -> str | None:
    """The format to compare sizes in: a signed one first, then the first of A's that B also has with a size."""
    sized = [f for f in (a.signed_format, b.signed_format, *a.images) if f is not None]
    for fmt in sized:
        if a.images.get(fmt, (None, None))[0] is not None and b.images.get(fmt, (None, None))[0] is not None:
            return fmt
    return None


def diff_records(a: LoadedRecord, b: LoadedRecord) -> ImageDiff:
    """Everything that changed from image ``a`` to image ``b``, by their build records."""
    ra, rb = _merged(a), _merged(b)
    recipe: dict[str, tuple[Any, Any]] = {}
    only: dict[str, str] = {}
    for key in sorted(ra.keys() | rb.keys()):
        va, vb = ra.get(key, _ABSENT), rb.get(key, _ABSENT)
        if va == vb:
            continue
        if va is _ABSENT:
            only[key] = "b"
        elif vb is _ABSENT:
            only[key] = "a"
        recipe[key] = (None if va is _ABSENT else va, None if vb is _ABSENT else vb)
    fmt = _size_format(a, b)
    return ImageDiff(
        a=a,
        b=b,
        packages=compare_packages(a.label, packages(a), packages(b)),
        recipe=recipe,
        recipe_only=only,
        size_format=fmt,
        size_a=a.images[fmt][0] if fmt else None,
        size_b=b.images[fmt][0] if fmt else None,
    )
