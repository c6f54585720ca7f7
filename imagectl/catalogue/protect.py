"""Protected channels: a signed catalogue setting that a channel only ever points at boot-tested versions.

The setting lives in the top-level ``targets`` role, in its own ``x-imagectl`` member
(``{"protected_channels": [CHANNEL, …]}``; catalogue/README.md §5.1): it is catalogue-wide, changes rarely, and is
signed by the targets keys, the same keys that move channels. It guards against mistakes (a pipeline promoting an
untested build), not against a holder of those keys. Publishers enforce it (``promote``, ``publish --channel``)
before they sign anything; readers need not know it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tuf.api.metadata import Metadata, Targets

from imagectl.catalogue import model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import MetadataCache
from imagectl.catalogue.model import ImageRecord
from imagectl.catalogue.state import EXT, CatalogueState, transact
from imagectl.errors import InvalidInputError, ProtectedChannelError, UntrustedMetadataError
from imagectl.store import Store

__all__ = [
    "PROTECTED",
    "ProtectResult",
    "check_tested",
    "is_protected",
    "protect",
    "protected_channels",
    "refuse_untested",
    "untested_arches",
]

PROTECTED = "protected_channels"  # member of the targets role's x-imagectl object


def _read(targets: Metadata[Targets]) -> list[str]:
    ext = targets.signed.unrecognized_fields.get(EXT)
    if ext is None:
        return []
    where = f"{targets.signed.version}.targets.json: {EXT}"
    if not isinstance(ext, dict) or set(ext) - {PROTECTED}:
        raise UntrustedMetadataError(f"{where} is malformed (an object with at most {PROTECTED!r} expected)")
    channels = ext.get(PROTECTED, [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise UntrustedMetadataError(f"{where}.{PROTECTED} is not a list of channel names")
    try:
        for c in channels:
            model.check_channel(c)
    except InvalidInputError as e:
        raise UntrustedMetadataError(f"{where}.{PROTECTED}: {e.message}") from None
    if channels != sorted(set(channels)):
        raise UntrustedMetadataError(f"{where}.{PROTECTED} is not sorted and distinct")
    return list(channels)


def protected_channels(state: CatalogueState) -> list[str]:
    """The catalogue's protected channels, sorted (empty when the setting was never made). Raises
    UntrustedMetadataError when the signed setting is malformed: a publisher does not guess at a policy."""
    return _read(state.targets)


def is_protected(state: CatalogueState, channel: str) -> bool:
    return channel in protected_channels(state)


def untested_arches(records: Iterable[ImageRecord]) -> list[str]:
    """Arches among ``records`` without a passing boot test of their own bytes, sorted."""
    return sorted({r.arch for r in records if not r.boot_passed})


def check_tested(state: CatalogueState, channel: str, action: str, records: Iterable[ImageRecord]) -> None:
    """Refuse (ProtectedChannelError, exit 24) to point ``channel`` at a version whose ``records`` (every arch)
    include one without a passing boot test, if ``channel`` is protected. ``action`` says what was asked
    ("promote wn:2")."""
    if is_protected(state, channel):
        refuse_untested(channel, action, untested_arches(records))


def refuse_untested(channel: str, action: str, untested: list[str]) -> None:
    """ProtectedChannelError naming the ``untested`` arches, if there are any (the channel is protected)."""
    if untested:
        raise ProtectedChannelError(
            f"refusing to {action} to {channel}: no passing boot test for {', '.join(untested)} "
            f"({channel} is protected; boot it with imagectl test --record, then publish --from-build)"
        )


@dataclass(frozen=True)
class ProtectResult:
    protected: list[str]  # the protected channels afterwards
    changed: bool  # False: the setting already said so (nothing signed)


def protect(
    store: Store,
    keys: KeyRing,
    channels: list[str],
    expiry_days: dict[str, int],
    *,
    off: bool = False,
    meta_cache: MetadataCache | None = None,
) -> ProtectResult:
    """Protect ``channels`` (or, with ``off``, stop protecting them): a new version of the targets role.

    Needs the targets keys (and snapshot and timestamp). Raises InvalidInputError for a bad channel name.
    """
    for c in channels:
        model.check_channel(c)

    def apply(state: CatalogueState) -> ProtectResult:
        before = protected_channels(state)
        after = sorted(set(before) - set(channels)) if off else sorted(set(before) | set(channels))
        if after == before:
            return ProtectResult(after, False)
        fields = state.targets.signed.unrecognized_fields
        if after:
            fields[EXT] = {PROTECTED: after}
        else:
            fields.pop(EXT, None)
        state.changed.add("targets")
        state.commit(keys, expiry_days)
        return ProtectResult(after, True)

    return transact(store, apply, meta_cache=meta_cache)
