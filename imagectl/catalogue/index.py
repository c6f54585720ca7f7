"""The name index: how a catalogue of many names keeps ``targets.json`` and a cold pull small.

Up to :data:`INDEX_THRESHOLD` names, ``targets`` delegates each image role ``image-NAME`` itself (one delegation
of ~160 bytes per name: 2,000 names made a 336 KB ``targets.json`` that every pull downloaded and every publish
parsed). Past it, the commit that adds the next name *indexes* the catalogue: names are spread by the SHA-256 of
the name over ``2**B`` index roles ``names~bB-HH``; ``targets`` delegates each index role with the path patterns
``NAME/*/*/*`` of the names it holds (~20 bytes per name), and each index role delegates its names' image roles.
TUF clients, stock ones included, find a name's role by those patterns: a cold pull reads targets, one index role
and the image role. A publish into an existing name re-signs neither; a new name re-signs targets and one index
role (~``2**-B`` of the names). Image roles never change when the index does (their delegator does), so indexing
or re-indexing a catalogue re-signs targets and the ~names/:data:`INDEX_FILL` index roles only.

Names cannot contain ``~``, so no image role is an index role; B is in the role name, so a re-index to another B
makes new names (the old ones stay listed in the snapshot, undelegated, as re-binned bins do: TUF clients refuse
a snapshot that drops a role they have seen). catalogue/README.md §2.2.
"""

from __future__ import annotations

import hashlib
import math
import re

from tuf.api.metadata import DelegatedRole, Targets

from imagectl.catalogue.model import ROLE_PREFIX

__all__ = [
    "INDEX_CROWDED",
    "INDEX_FILL",
    "INDEX_PREFIX",
    "INDEX_THRESHOLD",
    "MAX_BITS",
    "delegated_names",
    "index_bits",
    "index_role",
    "is_index",
    "name_pattern",
]

INDEX_THRESHOLD = 256  # names targets delegates directly; the next name indexes the catalogue
INDEX_FILL = 32  # names per index role aimed at when (re-)indexing
INDEX_CROWDED = 256  # names in one index role past which the next commit re-indexes with more roles
MAX_BITS = 12  # at most 4,096 index roles (~130,000 names at INDEX_FILL)
INDEX_PREFIX = "names~b"
_INDEX_ROLE = re.compile(r"names~b([0-9]{1,2})-([0-9a-f]{1,3})")
_PATTERN_TAIL = "/*/*/*"


def index_bits(names: int) -> int:
    """B for an index of ``names`` names: the fewest roles (at least 2) of ~INDEX_FILL names each."""
    return min(MAX_BITS, max(1, math.ceil(math.log2(max(names, 1) / INDEX_FILL))))


def index_role(name: str, bits: int) -> str:
    """``names~bB-HH``: the index role holding NAME in an index of ``2**bits`` roles (first B bits of
    sha256(NAME), in as many hex digits as the largest number needs, as TUF's succinct bins are named)."""
    width = len(f"{2**bits - 1:x}")
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> (32 - bits)
    return f"{INDEX_PREFIX}{bits}-{n:0{width}x}"


def is_index(role: str) -> bool:
    return _INDEX_ROLE.fullmatch(role) is not None


def bits_of(role: str) -> int:
    m = _INDEX_ROLE.fullmatch(role)
    if m is None:
        raise ValueError(f"{role} is not an index role")
    return int(m.group(1))


def name_pattern(name: str) -> str:
    """The one path pattern that delegates NAME's targets (``NAME/VERSION/ARCH/FILE``)."""
    return name + _PATTERN_TAIL


def delegated_names(targets: Targets) -> dict[str, str]:
    """NAME -> the role that delegates ``image-NAME``: ``targets`` itself, or an index role (read from the index
    role's path patterns in ``targets``, so no index role has to be fetched to know every name)."""
    out: dict[str, str] = {}
    d = targets.delegations
    if d is None or d.roles is None:
        return out
    for role, dr in d.roles.items():
        if role.startswith(ROLE_PREFIX):
            out[role.removeprefix(ROLE_PREFIX)] = "targets"
        elif is_index(role):
            for pattern in dr.paths or []:
                if pattern.endswith(_PATTERN_TAIL):
                    out[pattern.removesuffix(_PATTERN_TAIL)] = role
    return out


def index_roles(targets: Targets) -> list[str]:
    """The index roles ``targets`` delegates now (empty for a catalogue that is not indexed)."""
    d = targets.delegations
    return sorted(r for r in (d.roles or {}) if is_index(r)) if d is not None else []


def image_delegation(name: str, keyids: list[str], threshold: int) -> DelegatedRole:
    return DelegatedRole(
        name=ROLE_PREFIX + name, keyids=list(keyids), threshold=threshold, terminating=True, paths=[name_pattern(name)]
    )
