"""From a recipe to diskimage-builder invocations: one per (arch, hypervisor), and which host can build which.

Everything here is pure (no builds run), so every (os, release, arch, hypervisor) combination in recipes/ can be
compiled and checked in unit tests.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from imagectl.errors import InvalidInputError, UnsupportedHostError
from imagectl.families import family
from imagectl.recipe.model import Recipe

__all__ = ["BuildTarget", "DibInvocation", "buildable_arches", "check_host", "plan_dib", "targets"]

# What a host of each arch builds without emulation (x86_64 runs i386 code natively).
_NATIVE = {"x86_64": ("x86_64", "i386"), "i386": ("i386",), "i686": ("i386",), "ia64": ("ia64",)}
_HOST_KIND = {
    "ia64": "an Itanium (ia64, VT-i) build host, e.g. a CI runner tagged 'ia64'; there is no ia64 emulator",
    "x86_64": "an x86_64 build host (VT-x), e.g. any amd64 CI runner",
    "i386": "an x86 build host (i386 or x86_64)",
}


def host_machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64"}.get(m, m)


def buildable_arches(host: str | None = None) -> tuple[str, ...]:
    return _NATIVE.get(host or host_machine(), ())


def check_host(arches: list[str], host: str | None = None) -> None:
    """Refuse, before any work, arches this host cannot build; the message names a host kind that can."""
    host = host or host_machine()
    bad = [a for a in arches if a not in buildable_arches(host)]
    if bad:
        a = bad[0]
        raise UnsupportedHostError(
            f"cannot build {a} images on this {host} host: that needs {_HOST_KIND.get(a, f'a native {a} host')}",
            hint=f"build only the others here with --arch {' --arch '.join(x for x in arches if x not in bad)}"
            if len(bad) < len(arches)
            else None,
        )


@dataclass(frozen=True)
class BuildTarget:
    recipe: Recipe
    arch: str
    hypervisor: str

    @property
    def image_name(self) -> str:
        """Catalogue name: the recipe's, with ``-xen`` for paravirtualised images (they boot only under Xen)."""
        return self.recipe.name + ("-xen" if self.hypervisor == "xen-pv" else "")

    @property
    def basename(self) -> str:
        return f"{self.image_name}-{self.arch}"


def targets(recipe: Recipe, arches: list[str] | None = None, hypervisors: list[str] | None = None) -> list[BuildTarget]:
    """The recipe's (arch, hypervisor) matrix, optionally limited to ``arches`` and ``hypervisors`` (each of which
    must be in the recipe: InvalidInputError otherwise)."""
    chosen = arches or recipe.architectures
    unknown = [a for a in chosen if a not in recipe.architectures]
    if unknown:
        raise InvalidInputError(
            f"recipe {recipe.name} does not build {unknown[0]} (it builds {', '.join(recipe.architectures)})"
        )
    kinds = hypervisors or recipe.hypervisors
    other = [h for h in kinds if h not in recipe.hypervisors]
    if other:
        raise InvalidInputError(
            f"recipe {recipe.name} does not build {other[0]} images (it builds {', '.join(recipe.hypervisors)})"
        )
    return [BuildTarget(recipe, a, h) for a in chosen for h in kinds]


@dataclass(frozen=True)
class DibInvocation:
    """One ``disk-image-create`` run: the exact argument list and the environment it adds."""

    target: BuildTarget
    argv: list[str]
    env: dict[str, str]
    elements: list[str]
    output_base: Path  # DIB writes output_base.FORMAT and output_base.d/
    formats: list[str]
    notes: list[str] = field(default_factory=list)  # deliberate deviations, recorded in the build record
    raw_only: bool = False  # DIB makes output_base.raw only; imagectl makes ``formats`` from it


CONVERTED_HERE = ("qcow2", "raw")  # formats imagectl makes from DIB's raw disk itself (qemu-img convert)


def _image_size_gb(size: str) -> str:
    number, unit = float(size[:-1]), size[-1]
    gb = number if unit == "G" else number / 1024
    return f"{gb:g}"


def plan_dib(
    target: BuildTarget,
    output_dir: Path,
    config_dir: Path,
    elements_path: list[Path],
    formats: list[str] | None = None,
    epoch: int | None = None,
) -> DibInvocation:
    """Compile ``target`` into a disk-image-create invocation.

    ``config_dir`` holds the generated per-image configuration (users, files, network) our ``imagectl-config``
    element applies inside the image. With ``epoch`` (a reproducible build) DIB gets SOURCE_DATE_EPOCH (mkinitramfs
    and shadow honour it) and makes a raw disk only: imagectl normalizes it and converts it to ``formats`` itself.
    Without, DIB also makes only the raw disk when every format is one of :data:`CONVERTED_HERE`: imagectl's
    conversion compresses a qcow2 on every core (DIB's own runs on one), which a reproducible build cannot do.
    """
    r = target.recipe
    fam = family(r.release.family)
    fmts = formats or list(r.data["formats"])
    base = output_dir / target.basename
    env = {
        "ELEMENTS_PATH": ":".join(str(p) for p in elements_path),
        "IMAGECTL_CONFIG_DIR": str(config_dir),
        "DIB_RELEASE": r.release.codename or r.release.release,
    }
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    raw_only = epoch is not None or set(fmts) <= set(CONVERTED_HERE)
    own = fam.dib(r.release, target.arch, target.hypervisor, r, r.mirror())
    env.update(own.env)
    elements = [*own.elements, "imagectl-config"]
    if r.data.get("batch"):
        elements.append("batch-worker")  # the recipe's batch: and the node's context at boot
    elements += [e for e in r.data["elements"] if e not in elements]
    argv = [
        "disk-image-create",
        "-a",
        fam.dib_arch[target.arch],
        "-o",
        str(base),
        "-t",
        "raw" if raw_only else ",".join(fmts),
        "--image-size",
        _image_size_gb(r.data["disk_size"]),
        *own.argv,
    ]
    if own.packages:
        argv += ["-p", ",".join(own.packages)]
    argv += elements
    notes = list(own.notes)
    if epoch is not None:
        notes.append(f"reproducible: SOURCE_DATE_EPOCH={epoch}; DIB's raw disk normalized, then converted by imagectl")
    elif raw_only and "qcow2" in fmts:
        notes.append("DIB's raw disk converted to qcow2 by imagectl, compressed on every core (qemu-img convert -W)")
    return DibInvocation(target, argv, env, elements, base, fmts, notes, raw_only)
