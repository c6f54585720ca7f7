"""Canonical JSON (the bytes TUF signs) at the speed of the C JSON encoder, identical to the reference encoder.

python-tuf signs and checks ``securesystemslib.formats.encode_canonical(signed.to_dict())``, a pure-Python
recursive encoder: ~70% of a publish into a catalogue of 2,000 names went into it (bench/metadata.py). OLPC
canonical JSON is compact JSON with sorted keys, strings escaping only ``\\`` and ``"``, no floats. For a document
whose strings hold no ``\\``, ``"`` or control character and which holds no float, ``json.dumps(…, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` writes exactly those bytes; so :func:`canonical_bytes` encodes with
it and takes the reference encoder whenever the output shows either might be present:

- any backslash in the output (``json`` escapes ``"``, ``\\`` and control characters with one; canonical JSON
  escapes the first two differently and never the third);
- any number token with a fraction or exponent: with no whitespace, every number that is not a key follows ``:``,
  ``,`` or ``[`` directly, so ``[:,[]-?[0-9]+[.eE]`` finds every float (and, harmlessly, some strings such as
  ``"a:1.2"``, which then take the slow path).

Either way the result equals the reference encoder's, or the reference raises (a float: SerializationError), as
tests/test_canonical.py checks on generated documents. Signing and verifying use :data:`SERIALIZER`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tuf.api.metadata import Signed, Snapshot
from tuf.api.serialization import SerializationError, SignedSerializer
from tuf.api.serialization.json import CanonicalJSONSerializer

__all__ = [
    "SERIALIZER",
    "FastCanonicalSerializer",
    "canonical_bytes",
    "canonical_dict",
    "canonical_snapshot",
    "signed_dict",
]

_FLOAT = re.compile(r"[:,\[]-?[0-9]+[.eE]")
_REFERENCE = CanonicalJSONSerializer()
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_dict(doc: dict[str, Any], *, floatless: bool = False) -> bytes | None:
    """The canonical bytes of the JSON document ``doc`` when the fast encoder is sure to write them, else None
    (the caller asks the reference: a backslash or a float in the output, a value JSON cannot hold, NaN, a
    non-string key, a lone surrogate). ``floatless``: ``doc`` is known to hold no float (it was just parsed by a
    parser that refuses them), so the output is not scanned for one."""
    try:
        text = _ENCODER.encode(doc)
        if "\\" not in text and (floatless or _FLOAT.search(text) is None):
            return text.encode("utf-8")
    except (TypeError, ValueError):
        pass
    return None


_SNAPSHOT_KEYS = frozenset({"_type", "expires", "meta", "spec_version", "version"})
_UNSAFE_IN_PATH = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')  # what a canonical string would not write as is


def canonical_snapshot(signed: dict[str, Any], versions: dict[str, int], *, floatless: bool = False) -> bytes | None:
    """The canonical bytes of a snapshot's ``signed`` document whose ``meta`` is ``{path: {"version": N}}`` for
    ``versions`` (``signed["meta"]`` itself is not read), or None where :func:`canonical_dict` must do it.

    A 2,000-name snapshot lists ~2,000 roles: encoding them as nested dicts with sorted keys cost a publish ~1.5 ms
    at each parse and each signing; here the entries are one join over the sorted paths. Only for the five keys
    of a snapshot (so ``"meta":{}`` occurs once in the rest, which holds no backslash, hence no quote inside a
    string), paths that a canonical string writes as they are (no quote, backslash, control character or lone
    surrogate) and versions that are plain ints; anything else takes the general encoder. ``floatless`` as for
    :func:`canonical_dict`."""
    if signed.keys() != _SNAPSHOT_KEYS:
        return None
    rest = canonical_dict({**signed, "meta": {}}, floatless=floatless)
    if rest is None or _UNSAFE_IN_PATH.search("".join(versions)) or rest.count(b'"meta":{}') != 1:
        return None
    if not all(type(v) is int for v in versions.values()):
        return None
    entries = ",".join([f'"{path}":{{"version":{versions[path]}}}' for path in sorted(versions)])
    head, _, tail = rest.partition(b'"meta":{}')
    return head + b'"meta":{' + entries.encode("utf-8") + b"}" + tail


def _plain_snapshot(signed: Signed) -> tuple[dict[str, Any], dict[str, int]] | None:
    """For a snapshot whose entries are all plain ``{"version": N}`` (every one imagectl writes): its
    ``to_dict()`` with an empty ``meta``, and the entries as ``{path: N}``, without a ``MetaFile.to_dict`` call
    per entry (a 2,000-name snapshot lists ~2,000 roles). None for anything else."""
    if not isinstance(signed, Snapshot):
        return None
    meta = signed.meta
    if not all(m.length is None and m.hashes is None and not m.unrecognized_fields for m in meta.values()):
        return None
    signed.meta = {}
    try:
        rest = signed.to_dict()
    finally:
        signed.meta = meta
    return rest, {path: m.version for path, m in meta.items()}


def signed_dict(signed: Signed) -> dict[str, Any]:
    """``signed.to_dict()``, a plain snapshot's entries built directly (:func:`_plain_snapshot`)."""
    plain = _plain_snapshot(signed)
    if plain is None:
        return signed.to_dict()
    out, versions = plain
    out["meta"] = {path: {"version": v} for path, v in versions.items()}
    return out


def canonical_bytes(signed: Signed) -> bytes:
    """``encode_canonical(signed.to_dict())`` as UTF-8; raises SerializationError where the reference does."""
    plain = _plain_snapshot(signed)
    fast = canonical_snapshot(*plain) if plain is not None else None
    if fast is None:
        fast = canonical_dict(signed_dict(signed))
    return fast if fast is not None else _REFERENCE.serialize(signed)


class FastCanonicalSerializer(SignedSerializer):
    """A python-tuf ``SignedSerializer`` producing :func:`canonical_bytes`."""

    def serialize(self, signed_obj: Signed) -> bytes:
        try:
            return canonical_bytes(signed_obj)
        except SerializationError:
            raise
        except Exception as e:
            raise SerializationError from e


SERIALIZER = FastCanonicalSerializer()
