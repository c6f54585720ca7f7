"""Recipes: load, validate, merge ``extends:``, and expand the (arch x hypervisor) matrix.

Merge rules for ``extends:`` (the child is the recipe that names a parent):
- scalars (name, description, version, disk_size, mirror) and the lists architectures, hypervisors and formats:
  the child's value replaces the parent's;
- mappings (os, network, boot_test, batch): merged key by key, the child's keys winning, one level deep (a
  child's batch.options or network.hosts replaces the parent's whole);
- packages and elements: the parent's, then the child's, duplicates dropped; a child entry ``-NAME`` removes
  NAME inherited from the parent;
- repositories, users and files: the parent's, then the child's; an entry with the same ``name`` (``path`` for
  files) as a parent entry replaces it in place;
- ``extends`` is resolved relative to the file that says it; chains are allowed, cycles are errors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.errors import InvalidInputError
from imagectl.families import ARCHITECTURES, FAMILIES, HYPERVISORS, RELEASES, Release
from imagectl.fsio import read_regular
from imagectl.recipe.schema import Bool, Int, List, Map, RecipeError, Str, Table, validate
from imagectl.recipe.yamlpos import Located, load_located

__all__ = ["RECIPE_SCHEMA", "RELEASES", "Recipe", "Release", "load_recipe"]

_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"
_URL = r"(https?|file)://\S+"
_SIZE = r"[1-9][0-9]*(\.[0-9]+)?[MG]"


RECIPE_FORMATS = ("qcow2", "raw", "vmdk", "vhd", "tar")
BATCH_SYSTEMS = ("pbs", "lsf", "slurm", "htcondor")
SOURCE_MAX = 16 << 20  # bytes: a file a recipe adds to the image (it travels inside a generated script)

RECIPE_SCHEMA = Map(
    doc="A recipe",
    required=("name", "os", "architectures"),
    fields={
        "name": Str(pattern=_NAME, rule="an image name: 1-64 of a-z 0-9 . _ -", doc="image name in the catalogue"),
        "description": Str(doc="one line for people browsing the catalogue"),
        "extends": Str(doc="path of a parent recipe, relative to this file"),
        "parent": Str(
            pattern=_NAME + r"(@[a-z][a-z0-9_-]{0,31}|:[0-9A-Za-z][0-9A-Za-z._+~-]{0,63})",
            rule="a published image: NAME@CHANNEL or NAME:VERSION",
            doc="the published image this one is built from (recorded at publish: catalogue list --outdated)",
        ),
        "abstract": Bool(doc="true for a base recipe that is only extended, never built"),
        "version": Str(
            pattern=r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}",
            rule="a version (e.g. 6.10)",
            doc="version to publish under (default: automatic YYYYMMDD.N)",
        ),
        "os": Map(
            required=("family", "release"),
            doc="operating system",
            fields={
                "family": Str(enum=tuple(FAMILIES), doc=" or ".join(FAMILIES)),
                "release": Str(
                    numbers_ok=True,
                    pattern=r"[0-9]+",
                    rule="a release number (e.g. 6)",
                    doc="; ".join(f"{', '.join(f.releases)} for {n}" for n, f in FAMILIES.items()),
                ),
            },
        ),
        "architectures": List(Str(enum=ARCHITECTURES), min_items=1, unique=True, doc=", ".join(ARCHITECTURES)),
        "hypervisors": List(
            Str(enum=HYPERVISORS),
            min_items=1,
            unique=True,
            doc="hvm (fully virtualised, default) and/or xen-pv (paravirtualised)",
        ),
        "formats": List(Str(enum=RECIPE_FORMATS), min_items=1, unique=True, doc="default [qcow2]"),
        "disk_size": Str(pattern=_SIZE, rule="a size like 800M or 4G", doc="root disk size (default 2G)"),
        "packages": List(
            Str(pattern=r"-?[A-Za-z0-9][A-Za-z0-9._+-]*", rule="a package name"),
            doc="packages to install (`-NAME` removes one inherited)",
        ),
        "elements": List(
            Str(pattern=r"-?[a-z0-9][a-z0-9_-]*", rule="a diskimage-builder element name"),
            doc="extra diskimage-builder elements: ours (recipes/elements) or upstream",
        ),
        "mirror": Str(pattern=_URL, rule="an http(s):// or file:// URL", doc="package mirror for this recipe"),
        "repositories": List(
            Map(
                required=("name", "url"),
                fields={
                    "name": Str(pattern=r"[A-Za-z0-9._-]+", rule="a repository id"),
                    "url": Str(pattern=_URL, rule="an http(s):// or file:// URL ({arch} is substituted)"),
                    "gpgcheck": Bool(),
                    "gpgkey": Str(pattern=_URL, rule="an http(s):// or file:// URL"),
                },
            ),
            doc="extra yum repositories (name, url, gpgcheck, gpgkey)",
        ),
        "gpg_keys": List(
            Str(
                pattern=r"[^/:\s\x00-\x1f\x7f][^:\s\x00-\x1f\x7f]{0,1023}",
                rule="a key file path relative to the recipe, without ':' or spaces",
            ),
            min_items=1,
            unique=True,
            doc="OpenPGP public key files (relative to the recipe, inside its directory) that must have signed "
            "every SLC seed package before it is unpacked",
        ),
        "batch": Map(
            required=("system",),
            doc="this image is a batch worker node: the batch system's client, configured (needs the batch-worker "
            "element; the packages come from `packages`)",
            fields={
                "system": Str(
                    enum=BATCH_SYSTEMS,
                    doc="pbs (Torque/OpenPBS MOM), lsf, slurm (slurmd) or htcondor (startd)",
                ),
                "server": Str(
                    pattern=r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}( [A-Za-z0-9][A-Za-z0-9.-]{0,252}){0,7}",
                    rule="a host name (LSF: up to 8, space-separated)",
                    doc="the batch server, LSF master candidates, slurmctld or HTCondor central manager "
                    "(default: set at boot from the node's context, BATCH_SERVER)",
                ),
                "cluster": Str(pattern=r"[A-Za-z0-9_-]{1,40}", rule="a cluster name", doc="Slurm/LSF cluster name"),
                "options": Table(
                    Str(pattern=r"[A-Za-z$_][A-Za-z0-9_]{0,63}", rule="a configuration key"),
                    Str(pattern=r"[^\n\x00-\x1f]{0,1024}", rule="a one-line value"),
                    doc="extra lines of the system's main configuration (slurm.conf, mom_priv/config, lsf.conf, "
                    "config.d/50-imagectl.conf of HTCondor), KEY: VALUE",
                ),
            },
        ),
        "network": Map(
            doc="dhcp (default) or static",
            fields={
                "mode": Str(enum=("dhcp", "static")),
                "interface": Str(pattern=r"[a-z][a-z0-9]{0,14}", rule="an interface name (e.g. eth0)"),
                "address": Str(pattern=r"[0-9.]+/[0-9]{1,2}", rule="an IPv4 address with prefix (10.0.0.5/24)"),
                "gateway": Str(pattern=r"[0-9.]+", rule="an IPv4 address"),
                "dns": List(Str(pattern=r"[0-9.]+", rule="an IPv4 address")),
                "hostname": Str(pattern=r"[A-Za-z0-9.-]+", rule="a host name"),
                "hosts": Table(
                    Str(pattern=r"[A-Za-z0-9.-]+", rule="a host name"), Str(pattern=r"[0-9.]+", rule="an IPv4 address")
                ),
            },
        ),
        "users": List(
            Map(
                required=("name",),
                fields={
                    "name": Str(pattern=r"[a-z_][a-z0-9_-]{0,31}", rule="a user name"),
                    "ssh_keys": List(Str(pattern=r"(ssh|ecdsa)-\S+ \S+( .*)?", rule="an OpenSSH public key line")),
                    "sudo": Bool(),
                    "groups": List(Str(pattern=r"[a-z_][a-z0-9_-]{0,31}", rule="a group name")),
                },
            ),
            doc="users to create, with ssh keys",
        ),
        "files": List(
            Map(
                required=("path",),
                fields={
                    "path": Str(pattern=r"/\S+", rule="an absolute path in the image"),
                    "content": Str(),
                    "source": Str(doc="file relative to the recipe"),
                    "mode": Str(pattern=r"0?[0-7]{3,4}", rule="an octal mode like 0644"),
                },
            ),
            doc="files to add (content inline or source file)",
        ),
        "boot_test": Map(
            doc="what `imagectl test` waits for",
            fields={
                "marker": Str(doc="console text that means the image booted (default: 'login:')"),
                "timeout": Int(min=10, max=3600),
            },
        ),
    },
)

_REPLACE_LISTS = ("architectures", "hypervisors", "formats")
_NAME_LISTS = {"packages": None, "elements": None, "repositories": "name", "users": "name", "files": "path"}


@dataclass(frozen=True)
class Recipe:
    """A validated, fully merged recipe."""

    path: Path
    data: dict[str, Any]  # merged, normalised (defaults filled in)
    chain: tuple[Path, ...]  # this file, its parent, ...
    loc: Located | None = field(default=None, compare=False, repr=False)  # where each value came from

    def pos(self, path: tuple[str | int, ...], *, key: bool = False) -> str:
        """``file:line:column`` of a value (or key) of the merged recipe, for diagnostics made after loading."""
        return str(self.loc.pos(path, key=key)) if self.loc is not None else f"{self.path}:1:1"

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def release(self) -> Release:
        return FAMILIES[self.data["os"]["family"]].releases[self.data["os"]["release"]]

    @property
    def architectures(self) -> list[str]:
        return list(self.data["architectures"])

    @property
    def hypervisors(self) -> list[str]:
        return list(self.data["hypervisors"])

    def mirror(self, env: dict[str, str] | None = None) -> str:
        """The mirror to use: IMAGECTL_MIRROR_<FAMILY><RELEASE>, else the recipe's, else the release default."""
        env = dict(os.environ) if env is None else env
        return str(env.get(self.release.env) or self.data.get("mirror") or self.release.mirror).rstrip("/")

    def source_bytes(self, rel: str) -> bytes:
        """The bytes of a file the recipe names (``files[].source``, ``gpg_keys``), read only if it resolves,
        symlinks followed, inside the recipe's own directory tree. Raises InvalidInputError otherwise: a recipe
        must not copy the build host's files (``/etc/shadow``, ``../../id_rsa``) into an image."""
        base = self.path.parent.resolve()
        path = (base / rel).resolve()
        if not path.is_relative_to(base):
            raise InvalidInputError(f"{self.path}: {rel!r} leads outside the recipe's directory {base}")
        return read_regular(path, SOURCE_MAX, what="recipe file", error=InvalidInputError)

    def digest(self) -> str:
        """SHA-256 of the merged recipe and the bytes of every file it adds or pins: what the recipe *means*."""
        h = hashlib.sha256(json.dumps(self.data, sort_keys=True).encode())
        for f in self.data.get("files", []):
            if "source" in f:
                h.update(self.source_bytes(f["source"]))
        for key in self.data.get("gpg_keys", []):  # a new signing key changes which packages a build accepts
            h.update(self.source_bytes(key))
        return "sha256:" + h.hexdigest()


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(parent)
    for key, value in child.items():
        if key == "extends":
            continue
        if key in _NAME_LISTS and isinstance(value, list):
            ident = _NAME_LISTS[key]
            merged = list(out.get(key, []))
            for item in value:
                if ident is None:
                    if isinstance(item, str) and item.startswith("-"):
                        merged = [m for m in merged if m != item[1:]]
                    elif item not in merged:
                        merged.append(item)
                else:
                    idx = next((i for i, m in enumerate(merged) if m.get(ident) == item.get(ident)), None)
                    if idx is None:
                        merged.append(item)
                    else:
                        merged[idx] = item
            out[key] = merged
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACE_LISTS:
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    data["os"]["release"] = str(data["os"]["release"])
    data.setdefault("hypervisors", ["hvm"])
    data.setdefault("formats", ["qcow2"])
    data.setdefault("disk_size", "2G")
    for key in ("packages", "elements"):  # removals only make sense against a parent
        data[key] = [p for p in data.get(key, []) if not p.startswith("-")]
    for key in ("repositories", "users", "files"):
        data.setdefault(key, [])
    data.setdefault("network", {})
    data["network"].setdefault("mode", "dhcp")
    data.setdefault("boot_test", {})
    data["boot_test"].setdefault("marker", "login:")
    data["boot_test"].setdefault("timeout", 600)
    return {k: data[k] for k in RECIPE_SCHEMA.fields if k in data}  # the schema's order: name first


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], tuple[Path, ...], Located, bool]:
    """Load ``path`` and its parents; return the merged data, the chain, merged positions and whether the file
    itself says ``abstract: true``.

    Positions of inherited values point into the parent file that set them; the child's own values win.
    """
    path = path.resolve()
    loc = load_located(path)
    if not isinstance(loc.data, dict):
        raise RecipeError([f"{loc.pos(())}: (top level): expected a mapping, got {type(loc.data).__name__}"])
    # A parent may be partial (no name, no architectures): check keys and types, not completeness.
    validate(RECIPE_SCHEMA, loc, partial=True)
    parent_ref = loc.data.get("extends")
    abstract = bool(loc.data.get("abstract"))
    if parent_ref is None:
        return loc.data, (path,), loc, abstract
    parent_path = (path.parent / parent_ref).resolve()
    if parent_path in (*seen, path):
        cycle = " -> ".join(p.name for p in (*seen, path, parent_path))
        raise RecipeError([f"{loc.pos(('extends',))}: extends: cycle: {cycle}"])
    if not parent_path.is_file():
        raise RecipeError(
            [f"{loc.pos(('extends',))}: extends: no such recipe {parent_ref!r} (looked for {parent_path})"]
        )
    parent, chain, ploc, _ = _load_chain(parent_path, (*seen, path))
    positions = Located(_merge(parent, loc.data), {**ploc.values, **loc.values}, {**ploc.keys, **loc.keys}, loc.file)
    return positions.data, (path, *chain), positions, abstract


def _source_problems(rel: str, loc: Located, at: tuple[str | int, ...], base: Path) -> list[str]:
    """A ``files[].source`` must name a regular file inside the recipe's directory tree, symlinks followed."""
    where, root = f"{loc.pos(at)}: {'.'.join(str(p) for p in at[:1])}[{at[1]}].source", base.resolve()
    try:
        path = (base / rel).resolve()
        if not path.is_relative_to(root):
            return [f"{where}: {rel!r} leads outside the recipe's directory {root}"]
        if not path.is_file():
            return [f"{where}: no such file {rel!r}"]
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        return [f"{where}: cannot read {rel!r}: {e}"]
    return []


def _gpg_key_problems(data: dict[str, Any], loc: Located, base: Path) -> list[str]:
    """``gpg_keys`` entries must name regular files inside the recipe's directory tree once symlinks are followed
    (a recipe cannot pin whatever key file the build host happens to have), and only SLC builds use them."""
    keys = data.get("gpg_keys", [])
    out = []
    if keys and not FAMILIES[data["os"]["family"]].signs_packages_with_recipe_keys:
        signing = " and ".join(n for n, f in FAMILIES.items() if f.signs_packages_with_recipe_keys)
        out.append(f"{loc.pos(('gpg_keys',))}: gpg_keys: only {signing} builds verify package signatures with them")
    root = base.resolve()
    for i, key in enumerate(keys):
        where, path = f"{loc.pos(('gpg_keys', i))}: gpg_keys[{i}]", (base / key).resolve()
        try:
            if not path.is_relative_to(root):
                out.append(f"{where}: {key!r} leads outside the recipe's directory {root}")
            elif not path.is_file():
                out.append(f"{where}: no such file {key!r}")
        except OSError as e:
            out.append(f"{where}: cannot read {key!r}: {e.strerror}")
    return out


def load_recipe(path: str | Path) -> Recipe:
    """Load, merge and validate a recipe; raises RecipeError with file:line:column for every problem.

    An ``abstract: true`` recipe (a base that others extend) is checked for keys and types only.
    """
    data, chain, loc, abstract = _load_chain(Path(path), ())
    if abstract:
        return Recipe(chain[0], data, chain, loc)
    data.pop("abstract", None)  # a child of an abstract base is concrete
    validate(RECIPE_SCHEMA, loc)
    data = _normalise(data)
    fam, rel = data["os"]["family"], data["os"]["release"]
    if rel not in FAMILIES[fam].releases:
        known = ", ".join(FAMILIES[fam].releases)
        raise RecipeError(
            [f"{loc.pos(('os', 'release'))}: os.release: {fam} {rel} is not supported (expected one of {known})"]
        )
    release = FAMILIES[fam].releases[rel]
    problems = [
        f"{loc.pos(('architectures', i))}: architectures[{i}]: {fam} {rel} has no {a} release "
        f"(expected one of {', '.join(release.arches)})"
        for i, a in enumerate(data["architectures"])
        if a not in release.arches
    ]
    problems += FAMILIES[fam].recipe_problems(release, data, loc.pos)
    for i, f in enumerate(data["files"]):
        if ("content" in f) == ("source" in f):
            problems.append(f"{loc.pos(('files', i))}: files[{i}]: give exactly one of content or source")
        elif "source" in f:
            problems += _source_problems(f["source"], loc, ("files", i, "source"), Path(chain[0]).parent)
    problems += _gpg_key_problems(data, loc, Path(chain[0]).parent)
    if data["network"]["mode"] == "static" and "address" not in data["network"]:
        problems.append(f"{loc.pos(('network',))}: network: static mode needs an address")
    if problems:
        raise RecipeError(problems)
    return Recipe(chain[0], data, chain, loc)
