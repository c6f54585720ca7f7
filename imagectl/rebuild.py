"""``imagectl rebuild``: build a published image again from its signed build record and compare the bytes.

The record (verified against the catalogue's signed SHA-256, :mod:`imagectl.records`) carries what a reproducible
build was made of: the merged recipe and its digest, the target, the formats, the diskimage-builder version, the
digest of the elements and ``SOURCE_DATE_EPOCH``. The rebuild builds that recipe for that target with that epoch,
bypassing the build cache (a cached copy would prove nothing), and compares the SHA-256 of the image in the signed
format with the one the catalogue signed.

The packages are the mirror's, so a rebuild can only match while the mirror is in the state of the original build.
For Debian images the record names that state (the SHA-256 of each Packages index the suites' InRelease files
sign, from imagectl's package cache), and the rebuild is pinned to it: it checks each suite before building (a
mirror that moved is refused in seconds, exit 25), and the package cache holds the build to the same indexes.
The record also names each suite's InRelease (``mirror_state``), which imagectl's package cache keeps with the
Packages indexes it signs: on a host whose cache holds them (the one that built the original, or one given its
cache) the rebuild takes them from there, verified against the archive keyring again, and does not depend on the
mirror standing still; the packages then come from the cache, or from the mirror while it still has them.
``--mirror MIRROR SNAPSHOT`` fetches the bytes of MIRROR from SNAPSHOT (snapshot.debian.org, or a local copy)
through that cache, checked against the same signed indexes, while the image still names MIRROR, as the original
does; an InRelease that signs the pinned indexes is accepted past its Valid-Until. ``--anyway`` builds against
the mirror as it is. When the bytes differ, the rebuild says which
packages changed version against the record's list, and whether the diskimage-builder version or the elements
differ: those are what explain a difference, before any file is compared.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.model import ImageRef
from imagectl.errors import InvalidInputError, NotReproducibleError
from imagectl.fsio import sha256_file
from imagectl.http import make_session
from imagectl.imaging.builder import (
    REPRODUCIBLE_FORMATS,
    BuildOptions,
    BuildOutput,
    build_recipe,
    describe_differences,
    dib_version,
)
from imagectl.imaging.debindex import check_pinned
from imagectl.imaging.pkgcache import PackageCache
from imagectl.pull import pull
from imagectl.recipe.model import Recipe, load_recipe
from imagectl.records import LoadedRecord, load_file, packages
from imagectl.site.model import PackageChanges, compare_packages
from imagectl.text import agree, count

__all__ = ["Rebuild", "original_beside", "original_published", "pinned_mirror", "rebuild"]


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
    files: str | None = None  # on a difference: which files differ from the original image, in a few words
    published: bool = True  # expected is what a catalogue signed (else what a build record file gives)

    @property
    def matches(self) -> bool:
        return self.sha256 == self.expected

    def as_json(self) -> dict[str, Any]:
        return {
            "image": self.label,
            "format": self.format,
            "rebuilt": str(self.image),
            "record": str(self.record),
            "sha256": self.sha256,
            "expected_sha256": self.expected,
            "identical": self.matches,
            "packages": self.packages.as_json(),
            "notes": self.notes,
            "files": self.files,
            "seconds": round(self.seconds, 1),
        }  # fmt: skip

    def text(self) -> list[str]:
        verdict = "identical to" if self.matches else "differs from"
        whose = "the signed" if self.published else "the recorded"
        lines = [f"rebuilt {self.label}: {self.image} (sha256 {self.sha256}), {verdict} {whose} {self.expected}"]
        return lines + self.explanation()

    def explanation(self) -> list[str]:
        """What differs from the original build, one line each: packages, then DIB and elements."""
        pc, lines = self.packages, []
        if not pc.empty:
            lines.append(
                f"packages against the build record: {len(pc.added)} added, {len(pc.removed)} removed, "
                f"{len(pc.changed)} changed"
            )
            lines += pc.lines()
        if self.files:
            lines.append(f"files: {self.files}")
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
            f"rebuild of {self.label} differs: sha256 {self.sha256}, "
            f"{'the catalogue signed' if self.published else 'its build record gives'} {self.expected} ({why})",
            hint="the lines above say what differs; other packages need the mirror as it was: --mirror MIRROR SNAPSHOT",
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


_HTTP = re.compile(r"https?://[^\s]+")


def _check_state(
    pinned: dict[str, str], releases: dict[str, str] | None, fetch_from: dict[str, str] | None, cache_dir: Path
) -> str:
    """Check each suite of a pinned build before it starts (:func:`check_pinned`: the InRelease files the package
    cache holds, else the mirror's); what was checked, in words. MirrorMovedError (exit 25) for a suite that moved."""
    store = PackageCache(cache_dir, "debian")
    with make_session() as session:
        checked, held = check_pinned(session, pinned, fetch_from, store=store, pinned_releases=releases)
    kept = f" ({held} from imagectl's package cache, as the original build signed them)" if held else ""
    return f"{count(checked, 'suite')} in the recorded state{kept}"


def pinned_mirror(
    records: Sequence[LoadedRecord], label: str, arches: Sequence[str], cache_dir: Path
) -> tuple[dict[str, str], dict[str, str] | None, str]:
    """``build --pin-mirror RECORD|REF``: the Debian mirror state the build records ``records`` name (a file, or a
    published image's signed records, one per arch; ``label`` is what the user named), for a build of ``arches``:
    their signed Packages indexes and InRelease files for the package cache to serve, checked now as a rebuild's
    is; and what was checked, in words. A Packages index is per arch, so every arch built needs a record of its
    own; the records' states are merged (a suite's InRelease must then be the same in all).

    InvalidInputError (exit 3) for a record that names no mirror state, an arch built that no record pins, records
    of one suite in different states; MirrorMovedError (exit 25) when neither the package cache nor the mirror has
    that state any more."""
    pinned = {r.arch for r in records}
    if missing := [a for a in arches if a not in pinned]:
        raise InvalidInputError(
            f"--pin-mirror {label}: its build record pins the mirror state of {', '.join(sorted(pinned))}, and "
            f"this build makes {', '.join(missing)} too (Debian's package indexes are per arch)",
            hint="pin a published image (NAME:VERSION), whose record of each arch names its state, or build only "
            + " ".join(f"--arch {a}" for a in sorted(pinned)),
        )
    state: dict[str, str] = {}
    releases: dict[str, str] | None = None
    for loaded in records:
        indexes = loaded.build.package_indexes(loaded.label)
        if indexes is None:
            raise InvalidInputError(
                f"--pin-mirror {label}: its build record names no Debian mirror state (an SLC build, or one made "
                "without imagectl's package cache)"
            )
        mine = loaded.build.mirror_releases()
        if mine is not None:
            releases = releases or {}
            if clash := sorted(k for k in mine.keys() & releases.keys() if mine[k] != releases[k]):
                raise InvalidInputError(
                    f"--pin-mirror {label}: the records of {', '.join(r.arch for r in records)} were built from "
                    f"different states of {clash[0]}",
                    hint="pin one arch at a time: build --arch ARCH --pin-mirror …",
                )
            releases |= mine
        state |= indexes
    return state, releases, _check_state(state, releases, None, cache_dir)


def _fetch_from(pairs: list[tuple[str, str]], state: dict[str, str] | None, label: str) -> dict[str, str] | None:
    """``--mirror MIRROR SNAPSHOT`` pairs, each MIRROR one the original build used (InvalidInputError otherwise)."""
    if not pairs:
        return None
    if state is None:
        raise InvalidInputError(
            f"{label}: --mirror stands in for a Debian mirror behind imagectl's package cache, and its build record "
            "names no mirror state"
        )
    used = sorted({k.split(" ")[0] for k in state})
    out = {}
    for mirror, snapshot in pairs:
        if not _HTTP.fullmatch(snapshot):
            raise InvalidInputError(f"--mirror {mirror} {snapshot}: the snapshot must be an http(s) URL")
        if mirror.rstrip("/") not in used:
            raise InvalidInputError(
                f"--mirror {mirror}: not a mirror {label} was built from (it used {', '.join(used)})"
            )
        out[mirror.rstrip("/")] = snapshot.rstrip("/")
    return out


def rebuild(
    loaded: LoadedRecord,
    output: Path,
    cache_dir: Path,
    *,
    recipe_file: Path | None = None,
    mirrors: list[tuple[str, str]] | None = None,
    anyway: bool = False,
    original: Callable[[Path], Path | None] | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> Rebuild:
    """Build the image of ``loaded`` again into ``output`` (reproducibly, with its record's epoch, the build cache
    bypassed, pinned to its mirror state unless ``anyway``) and return how it compares. Raises InvalidInputError
    (exit 3) when the record does not describe a reproducible build or its recipe cannot be had, MirrorMovedError
    (exit 25) when the mirror is no longer in the recorded state, and what ``build_recipe`` raises for a build
    that fails. On a difference, ``original(DIR)`` (if given) puts the original image, verified, in DIR and returns
    its path (or None when it cannot be had); the files that differ are then named."""
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
    state = rec.package_indexes(loaded.label)
    fetch_from = _fetch_from(mirrors or [], state, loaded.label)
    pinned = None if anyway else state
    releases = None if anyway else rec.mirror_releases()
    with tempfile.TemporaryDirectory(prefix="imagectl-rebuild-") as work:
        recipe = recipe_of(loaded, recipe_file, Path(work))
        if pinned is not None:  # a mirror that moved is said now, not minutes into the build
            progress(f"{loaded.label}: {_check_state(pinned, releases, fetch_from, cache_dir)}")
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
            mirror_state=pinned,
            mirror_releases=releases,
            fetch_from=fetch_from,
        )
        [out] = build_recipe(recipe, opts)
    result = _compare(loaded, out, fmt, expected, notes)
    if result.matches or original is None:
        return result
    where = output / "original"
    first = original(where)
    if first is None:
        return result
    report = output / f"{result.image.name}.differences.txt"
    progress(f"{loaded.label}: comparing the files of the rebuilt and the original image")
    return dataclasses.replace(result, files=f"{describe_differences(first, result.image, report)} (details: {report})")


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
        published=loaded.signed_format is not None,
    )


def original_beside(record: Path, loaded: LoadedRecord) -> Callable[[Path], Path | None]:
    """For a record file: the original image is the file the record names beside it, if its bytes are still the
    ones the record gives (else None: there is nothing trustworthy to compare with)."""

    def find(_where: Path) -> Path | None:
        fmt = loaded.signed_format or next(iter(loaded.images), None)
        entry = loaded.build.images_by_format().get(fmt or "")
        if entry is None or "/" in entry.file or entry.file in ("", ".", ".."):
            return None
        path = record.parent / entry.file
        try:
            ok = path.is_file() and not path.is_symlink() and sha256_file(path) == entry.sha256
        except OSError:
            return None
        return path if ok else None

    return find


def original_published(
    reader: CatalogueReader, loaded: LoadedRecord, cache: Path, retries: int
) -> Callable[[Path], Path | None]:
    """For a published image: pull it (verified against the signed metadata, as ``imagectl pull`` does) into the
    directory given."""

    def fetch(where: Path) -> Path | None:
        where.mkdir(parents=True, exist_ok=True)
        ref = ImageRef(loaded.name, version=loaded.version)
        return Path(pull(reader, ref, loaded.arch, str(where) + "/", cache, retries=retries, progress=False).path)

    return fetch
