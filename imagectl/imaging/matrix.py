"""``imagectl plan``: the build matrix a CI pipeline fans out, one entry per (recipe, arch, hypervisor).

Nothing is built. Each entry carries the build key ``imagectl build`` would compute (the same function,
:func:`imagectl.imaging.builder.target_key`), whether the build cache already holds that build, and the runner it
needs. Unlike ``build``, the plan lists arches this host cannot build: a pipeline sends those jobs elsewhere.

Runner tags are a convention CI templates and runner registrations share: every job carries ``imagectl`` and the
build host's arch (``x86_64`` for x86_64 and i386 targets, ``ia64`` for ia64: never an x86 tag, there is no
emulator).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagectl.errors import InvalidInputError
from imagectl.imaging.builder import dib_version, is_cached, target_key
from imagectl.imaging.elements import check_elements, elements_paths
from imagectl.imaging.plan import BuildTarget, buildable_arches, host_machine, targets
from imagectl.recipe.model import Recipe
from imagectl.recipe.schema import RecipeError

__all__ = ["RUNNER_TAG", "PlanEntry", "Runner", "plan_matrix", "runner_for"]

RUNNER_TAG = "imagectl"  # every job's first tag: a runner set up with ci/host-setup.sh
_BUILD_HOST = {"x86_64": "x86_64", "i386": "x86_64", "i686": "x86_64", "ia64": "ia64"}  # target arch -> host arch
_X86 = ("x86_64", "i386", "i686")


@dataclass(frozen=True)
class Runner:
    """Where one entry's jobs run: the host arch, whether its boot test wants KVM, the tags that select it."""

    arch: str
    kvm: bool
    tags: list[str]
    buildable_here: bool
    why: str

    def as_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "kvm": self.kvm,
            "tags": self.tags,
            "buildable_here": self.buildable_here,
            "why": self.why,
        }


@dataclass(frozen=True)
class PlanEntry:
    job: str
    recipe: str  # as given on the command line
    target: BuildTarget
    formats: list[str]
    build_key: str
    cached: bool
    runner: Runner
    source_date_epoch: int | None = None  # the epoch the key was computed with (a reproducible build's)

    def as_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "job": self.job,
            "recipe": self.recipe,
            "name": t.image_name,
            "arch": t.arch,
            "hypervisor": t.hypervisor,
            "formats": self.formats,
            "os": t.recipe.release.family,
            "os_version": t.recipe.release.release,
            "build_key": self.build_key,
            "source_date_epoch": self.source_date_epoch,
            "cached": self.cached,
            "runner": self.runner.as_json(),
        }


def runner_for(target: BuildTarget, host: str | None = None) -> Runner:
    """The runner ``target`` needs, and whether this host (``host``, default this machine) is one."""
    arch, hv = target.arch, target.hypervisor
    build_host = _BUILD_HOST.get(arch, arch)
    here = arch in buildable_arches(host or host_machine())
    on = f"{arch} builds {'natively ' if arch != build_host else ''}on an x86_64 host (VT-x)"
    if arch == "ia64":
        why = "ia64 builds need an Itanium build host (VT-i); QEMU has no ia64 emulator, so it boots only there too"
        kvm = False
    elif hv == "xen-pv":
        why = f"{on}; a xen-pv image is boot-tested through Xen's pygrub (xen-utils-4.17) and qemu"
        kvm = True
    elif arch in _X86:
        why = f"{on}; the boot test uses KVM when it works and falls back to TCG (slower) when it does not"
        kvm = True
    else:
        why = f"{arch} builds need a native {arch} build host"
        kvm = False
    return Runner(build_host, kvm, [RUNNER_TAG, build_host], here, why)


def _job(target: BuildTarget) -> str:
    """A CI job name: recipe name, arch, hypervisor; dots become dashes (x86_64 keeps its underscore)."""
    return re.sub(r"[^a-z0-9_-]", "-", f"{target.recipe.name}-{target.arch}-{target.hypervisor}")


def plan_matrix(
    recipes: list[tuple[str, Recipe]],
    arches: list[str] | None,
    cache_dir: Path,
    epoch_for: Callable[[Recipe], int | None] = lambda _recipe: None,
) -> list[PlanEntry]:
    """Every (recipe, arch, hypervisor) the recipes build, limited to ``arches`` when given.

    ``epoch_for`` gives each recipe's SOURCE_DATE_EPOCH when the plan is for reproducible builds (``plan
    --reproducible``): the epoch is part of a build's key, so each entry's key and cache state are those of
    ``build --reproducible`` with that epoch.

    ``recipes`` pairs the text the user gave with the loaded recipe. With one recipe an arch it does not build is
    refused as ``build`` refuses it; with several, each recipe contributes the given arches it builds, and an arch
    none of them builds is refused. Raises InvalidInputError for an abstract recipe or two entries with one job
    name, RecipeError for a missing element, ToolMissingError when diskimage-builder (part of the key) is missing.
    """
    for given, recipe in recipes:
        if recipe.data.get("abstract"):
            raise InvalidInputError(f"recipe {given} is an abstract base: it is only extended, never built")
    if arches and len(recipes) > 1:
        unbuilt = [a for a in arches if not any(a in r.architectures for _, r in recipes)]
        if unbuilt:
            raise InvalidInputError(f"none of the recipes builds {unbuilt[0]}")
    dib = dib_version()
    entries: list[PlanEntry] = []
    seen: dict[str, str] = {}
    for given, recipe in recipes:
        if missing := check_elements(recipe):
            raise RecipeError(missing)
        chosen = arches if len(recipes) == 1 else [a for a in arches or [] if a in recipe.architectures]
        if arches and not chosen:
            continue
        paths = elements_paths(recipe)
        epoch = epoch_for(recipe)
        for t in targets(recipe, chosen or None):
            job = _job(t)
            if job in seen:
                raise InvalidInputError(f"{given} and {seen[job]} would both build {job}: give each recipe once")
            seen[job] = given
            inv, _digest, key = target_key(recipe, t, paths, dib, epoch=epoch)
            cached = is_cached(cache_dir, key)
            entries.append(PlanEntry(job, given, t, inv.formats, key, cached, runner_for(t), epoch))
    return entries
