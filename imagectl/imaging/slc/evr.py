"""rpm's version ordering (``rpmvercmp``) and epoch:version-release comparison, in pure Python.

Why not the host's rpm: the seed is resolved before any rpm runs, and Debian's ``rpm`` is not always installed
where metadata is read. The algorithm follows rpm 4.15+ ``rpmvercmp`` (tilde sorts before everything, even the end
of the string; caret sorts after the end but before anything else), which agrees with every older rpm on versions
that contain neither character — SLC 3 to 6 packages never do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVR", "compare_evr", "rpmvercmp"]

_DIGITS = frozenset("0123456789")
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def rpmvercmp(a: str, b: str) -> int:
    """Compare two version (or release) strings the way rpm does: -1 if ``a`` is older, 0 if equal, 1 if newer.

    Strings split into runs of ASCII digits and of ASCII letters (anything else separates runs); numeric runs
    compare as numbers and are newer than alphabetic ones; when one string runs out first, the longer is newer.
    """
    if a == b:
        return 0
    i, j, la, lb = 0, 0, len(a), len(b)
    while i < la or j < lb:
        while i < la and a[i] not in _ALNUM and a[i] not in "~^":
            i += 1
        while j < lb and b[j] not in _ALNUM and b[j] not in "~^":
            j += 1
        if (i < la and a[i] == "~") or (j < lb and b[j] == "~"):
            if i >= la or a[i] != "~":
                return 1
            if j >= lb or b[j] != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if (i < la and a[i] == "^") or (j < lb and b[j] == "^"):
            if i >= la:
                return -1
            if j >= lb:
                return 1
            if a[i] != "^":
                return 1
            if b[j] != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (i < la and j < lb):
            break
        numeric = a[i] in _DIGITS
        kind = _DIGITS if numeric else _ALNUM - _DIGITS
        si, sj = i, j
        while i < la and a[i] in kind:
            i += 1
        while j < lb and b[j] in kind:
            j += 1
        seg_a, seg_b = a[si:i], b[sj:j]
        if not seg_b:  # runs of different kinds: a number is newer than letters
            return 1 if numeric else -1
        if numeric:
            seg_a, seg_b = seg_a.lstrip("0"), seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        if seg_a != seg_b:
            return 1 if seg_a > seg_b else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


@dataclass(frozen=True)
class EVR:
    """epoch:version-release of one package; ordered as rpm orders them."""

    epoch: int
    version: str
    release: str

    def __str__(self) -> str:
        return f"{self.epoch}:{self.version}-{self.release}" if self.epoch else f"{self.version}-{self.release}"

    def __lt__(self, other: EVR) -> bool:
        return compare_evr(self, other) < 0

    def __le__(self, other: EVR) -> bool:
        return compare_evr(self, other) <= 0

    def __gt__(self, other: EVR) -> bool:
        return compare_evr(self, other) > 0

    def __ge__(self, other: EVR) -> bool:
        return compare_evr(self, other) >= 0


def compare_evr(a: EVR, b: EVR) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as or newer than ``b``: epoch first, then version, then release."""
    if a.epoch != b.epoch:
        return 1 if a.epoch > b.epoch else -1
    return rpmvercmp(a.version, b.version) or rpmvercmp(a.release, b.release)
