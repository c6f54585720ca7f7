"""``imagectl rebuild``: build a published image again from its signed build record and compare the bytes.

The record (verified against the catalogue's signed SHA-256, :mod:`imagectl.records`) carries what a reproducible
build was made of: the merged recipe and its digest, the target, the formats, the diskimage-builder version, the
digest of the elements and ``SOURCE_DATE_EPOCH``. The rebuild builds that recipe for that target with that epoch,
bypassing the build cache (a cached copy would prove nothing), and compares the SHA-256 of the image in the signed
format with the one the catalogue signed.

The package versions are those the mirror serves now: a rebuild matches when the mirror is in the state it was in
at the original build (a snapshot mirror, or a release that has not moved). When the bytes differ, the rebuild
says which packages changed version against the record's list, and whether the diskimage-builder version or the
elements differ: those are what explain a difference, before any file is compared.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.errors import InvalidInputError, NotReproducibleError
from imagectl.fsio import sha256_file
from imagectl.imaging.builder import REPRODUCIBLE_FORMATS, BuildOptions, BuildOutput, build_recipe, dib_version
from imagectl.recipe.model import Recipe, load_recipe
from imagectl.records import LoadedRecord, load_file, packages
from imagectl.site.model import Package, PackageChanges, compare_packages
from imagectl.text import agree, count

__all__ = ["Rebuild", "rebuild"]


@dataclass(frozen=True)
class Rebuild:
    """The outcome of one rebuild: the image made, the SHA-256 it has and the one it should have."""

    label: str  # NAME:VERSION (ARCH) or the record file
    format: str
    image: Path
    record: Path
    sha256: str
    expected: str
    packages: PackageChanges  # the record's list -> the rebuilt image's
    notes: list[str] = field(default_factory=list)  # what else differs from the original build (DIB, elements)
    seconds: float = 0.0

    @property
    def matches(self) -> bool:
        return self.sha256 == self.expected

    def as_json(self) -> dict[str, Any]:
        def pkg(p: Package) -> dict[str, str]:
            return {"name": p.name, "version": p.version, "arch": p.arch}

        return {
            "image": self.label,
            "format": self.format,
            "rebuilt": str(self.image),
            "record": str(self.record),
            "sha256": self.sha256,
            "expected_sha256": self.expected,
            "identical": self.matches,
            "packages": {
                "added": [pkg(p) for p in self.packages.added],
                "removed": [pkg(p) for p in self.packages.removed],
                "changed": [{"name": a.name, "arch": a.arch, "from": a.version, "to": b.version}
                            for a, b in self.packages.changed],
            },
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }  # fmt: skip

    def text(self) -> list[str]:
        verdict = "identical to" if self.matches else "differs from"
        lines = [f"rebuilt {self.label}: {self.image} (sha256 {self.sha256}), {verdict} the signed {self.expected}"]
        return lines + self.explanation()

    def explanation(self) -> list[str]:
        """What differs from the original build, one line each: packages, then DIB and elements."""
        pc, lines = self.packages, []
        if not pc.empty:
            lines.append(
                f"packages against the build record: {len(pc.added)} added, {len(pc.removed)} removed, "
                f"{len(pc.changed)} changed"
            )
            lines += [f"+ {p.name} {p.version} {p.arch}".rstrip() for p in pc.added]
            lines += [f"- {p.name} {p.version} {p.arch}".rstrip() for p in pc.removed]
            lines += [f"~ {b.name} {a.version} -> {b.version} {b.arch}".rstrip() for a, b in pc.changed]
        return lines + [f"note: {n}" for n in self.notes]

    def check(self) -> None:
        """Raise NotReproducibleError (exit 25) unless the rebuilt image is the signed one, bit for bit."""
        if self.matches:
            return
        pc = self.packages
        n = len(pc.added) + len(pc.removed) + len(pc.changed)
        why = (
            f"{count(n, 'package')} {agree(n, 'differs', 'differ')} from the build record"
            if not pc.empty
            else "the same packages as the build record"
        )
        raise NotReproducibleError(
            f"rebuild of {self.label} differs: sha256 {self.sha256}, the catalogue signed {self.expected} ({why})",
            hint="the lines above say what differs; the mirror must serve the packages of the original build "
            "(a snapshot mirror: IMAGECTL_MIRROR_<FAMILY><RELEASE>)",
        )


def recipe_of(loaded: LoadedRecord, given: Path | None, work: Path) -> Recipe:
    """The recipe ``loaded`` was built from: ``given`` (a file), else the merged recipe its record carries, written
    to ``work``; either way its digest must be the record's. Raises InvalidInputError when the record carries no
    recipe, when its recipe needs files the record does not hold, or when the digests differ."""
    info = loaded.build.recipe
    if info is None or info.digest is None or info.merged is None:
        raise InvalidInputError(f"{loaded.label}: its build record does not carry the recipe it was built from")
    if given is not None:
        recipe = load_recipe(given)
    else:
        merged = dict(info.merged)
        if merged.get("gpg_keys") or any("source" in f for f in merged.get("files") or [] if isinstance(f, dict)):
            raise InvalidInputError(
                f"{loaded.label}: its recipe copies files or pins keys (files[].source, gpg_keys) that the build "
                "record does not hold",
                hint="give the recipe it was built from with --recipe FILE",
            )
        path = work / f"{str(merged.get('name', 'recipe'))[:64].replace('/', '_')}.yaml"
        path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")  # JSON is YAML
        recipe = load_recipe(path)
    if recipe.digest() != info.digest:
        source = str(given) if given is not None else "the recipe in its build record"
        raise InvalidInputError(
            f"{source} is not the recipe {loaded.label} was built from: digest {recipe.digest()}, "
            f"the record's {info.digest}"
        )
    return recipe


def rebuild(
    loaded: LoadedRecord,
    output: Path,
    cache_dir: Path,
    *,
    recipe_file: Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> Rebuild:
    """Build the image of ``loaded`` again into ``output`` (reproducibly, with its record's epoch, the build cache
    bypassed) and return how it compares. Raises InvalidInputError (exit 3) when the record does not describe a
    reproducible build or its recipe cannot be had, and what ``build_recipe`` raises for a build that fails."""
    rec = loaded.build
    if rec.source_date_epoch is None or not rec.reproducible:
        raise InvalidInputError(
            f"{loaded.label} was not built with --reproducible (its build record has no source_date_epoch), so "
            "a rebuild has no bytes to match",
            hint="build with imagectl build --reproducible, then publish --from-build",
        )
    target = rec.target
    fmt = loaded.signed_format or next(iter(loaded.images), None)
    if not target.arch or not target.hypervisor or fmt is None:
        raise InvalidInputError(f"{loaded.label}: its build record names no arch, hypervisor or image format")
    expected = loaded.images.get(fmt, (None, None))[1]
    if fmt not in REPRODUCIBLE_FORMATS or expected is None:
        raise InvalidInputError(f"{loaded.label}: its {fmt} image has no SHA-256 a reproducible build can match")
    formats = [f for f in loaded.images if f in REPRODUCIBLE_FORMATS]
    with tempfile.TemporaryDirectory(prefix="imagectl-rebuild-") as work:
        recipe = recipe_of(loaded, recipe_file, Path(work))
        notes = []
        built_with = rec.dib.version if rec.dib is not None else None
        if built_with and built_with != dib_version():
            notes.append(f"diskimage-builder {dib_version()} here, {built_with} for the original build")
        opts = BuildOptions(
            output=output,
            cache_dir=cache_dir,
            arches=[target.arch],
            hypervisors=[target.hypervisor],
            formats=formats,
            rebuild=True,
            write_cache=False,
            progress=progress,
            source_date_epoch=rec.source_date_epoch,
        )
        [out] = build_recipe(recipe, opts)
    return _compare(loaded, out, fmt, expected, notes)


def _compare(loaded: LoadedRecord, out: BuildOutput, fmt: str, expected: str, notes: list[str]) -> Rebuild:
    new = load_file(out.record)
    image = next(i for i in out.images if i.suffix == f".{fmt}")
    sha = new.images.get(fmt, (None, None))[1] or sha256_file(image)
    old_dib, new_dib = loaded.build.dib, new.build.dib
    if old_dib and new_dib and old_dib.elements_digest and old_dib.elements_digest != new_dib.elements_digest:
        notes.append("the elements differ from the original build's (another imagectl, or edited elements)")
    return Rebuild(
        label=loaded.label,
        format=fmt,
        image=image,
        record=out.record,
        sha256=sha,
        expected=expected,
        packages=compare_packages(loaded.label, packages(loaded), packages(new)),
        notes=notes,
        seconds=out.seconds,
    )
