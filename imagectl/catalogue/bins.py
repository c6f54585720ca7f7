"""Hashed bins: how an image name whose role outgrows a threshold spreads its targets over delegated bin roles.

An image role ``image-NAME`` holds every version of NAME until it holds more than :data:`BIN_THRESHOLD` targets.
The commit that takes it past that point turns it into a *binned* role: it keeps its ``x-imagectl`` (channels and
revocations stay signed per name) but hands its targets to ``2**B`` bin roles ``image-NAME~bB-HH…`` through a TUF
succinct hash-bin delegation (``delegations.succinct_roles``; a target path goes to the bin named by the first B
bits of its SHA-256). A publish then re-signs one bin, whose size is ~ versions / 2**B, instead of every version
(catalogue/README.md §2.2). ``~`` cannot occur in an image name, so a bin's role name never equals another name's
role; B is part of the prefix, so a re-bin to another B creates new role names (TUF forbids a snapshot to drop a
role a client trusts, and forbids versions to go back: reusing names would need both).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from tuf.api.metadata import Metadata, SuccinctRoles, Targets

from imagectl.catalogue.model import ARCHES, EXT, FORMATS, ROLE_PREFIX

__all__ = [
    "ALL_LAYOUTS",
    "BIN_FILL",
    "BIN_THRESHOLD",
    "LAYOUTS",
    "MAX_BITS",
    "bin_bits",
    "bin_prefix",
    "bin_role_for",
    "layouts",
    "name_of_bin",
    "probe_path",
    "probe_paths",
]

LAYOUTS = "layouts"  # x-imagectl of a binned image role: the ARCH/FORMAT pairs its bins hold (README §5)
ALL_LAYOUTS = tuple(f"{a}/{f}" for a in ARCHES for f in FORMATS)  # every pair imagectl knows, in its order
BIN_THRESHOLD = 512  # targets: a plain image role past this is binned; a bin past this is worth a re-bin
BIN_FILL = 128  # targets per bin aimed at when a name is (re-)binned: room to grow 4x before the threshold
MAX_BITS = 14  # at most 16,384 bins per name: the snapshot lists every bin (~45 bytes each)


def bin_bits(targets: int) -> int:
    """The bit length B for a name holding ``targets`` targets: the fewest bins (at least 2) of ~BIN_FILL each."""
    return min(MAX_BITS, max(1, math.ceil(math.log2(max(targets, 1) / BIN_FILL))))


def bin_prefix(name: str, bits: int) -> str:
    """``image-NAME~bB``: the succinct ``name_prefix`` of NAME's bins (role names ``PREFIX-HH``)."""
    return f"{ROLE_PREFIX}{name}~b{bits}"


def name_of_bin(role: str) -> str | None:
    """NAME for a bin role ``image-NAME~bB-HH``, None for any other role name."""
    if not role.startswith(ROLE_PREFIX) or "~b" not in role:
        return None
    return role[len(ROLE_PREFIX) :].rpartition("~b")[0] or None


def bin_role_for(succinct: SuccinctRoles, path: str) -> str:
    """The bin that holds target ``path`` (TUF's rule: the first bit_length bits of sha256(path))."""
    return succinct.get_role_for_target(path)


def probe_path(name: str, succinct: SuccinctRoles, role: str) -> str:
    """A target path under NAME that hashes into bin ``role`` (no such image exists): looking it up makes a stock
    TUF client fetch and verify exactly that bin. Found by trying ``NAME/-/-/I`` for I = 0, 1, …; ~2**B tries for
    the last bin of 2**B, each one SHA-256 of a short string."""
    want = int(role.rpartition("-")[2], 16)
    shift = 256 - succinct.bit_length
    i = 0
    while True:
        path = f"{name}/-/-/{i}"
        if int.from_bytes(hashlib.sha256(path.encode()).digest(), "big") >> shift == want:
            return path
        i += 1


def probe_paths(name: str, succinct: SuccinctRoles) -> dict[str, str]:
    """:func:`probe_path` of every bin of NAME at once (the same paths): one pass over I = 0, 1, … until each bin
    has its first, ~2**B·ln(2**B) tries in all where a probe per bin costs ~2**B each (0.6 s of a listing of a
    512-bin name)."""
    roles = list(succinct.get_roles())
    shift = 256 - succinct.bit_length
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(roles):
        path = f"{name}/-/-/{i}"
        found.setdefault(int.from_bytes(hashlib.sha256(path.encode()).digest(), "big") >> shift, path)
        i += 1
    return {roles[b]: path for b, path in found.items()}


def layouts(md: Metadata[Targets] | Targets) -> list[str] | None:
    """The ``ARCH/FORMAT`` pairs a binned image role's signed ``x-imagectl.layouts`` says its bins hold targets of
    (catalogue/README.md §5), those imagectl knows, in its order: the bins a lookup of one version must read. None
    when the role has no such record, or one that is not a list of strings: then every pair must be tried."""
    signed = md.signed if isinstance(md, Metadata) else md
    ext: Any = signed.unrecognized_fields.get(EXT)
    raw = ext.get(LAYOUTS) if isinstance(ext, dict) else None
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        return None
    return [p for p in ALL_LAYOUTS if p in raw]
