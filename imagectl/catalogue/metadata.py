"""Metadata files as untrusted bytes: the size caps of the format, and parsing that cannot be made to eat memory.

Every metadata file is parsed *before* its signature can be checked (TUF signs the parsed document), so the
parse itself faces hostile bytes. Two limits keep it bounded, on the reading side and, so that every catalogue
imagectl writes stays readable, on the writing side too (catalogue/README.md §9.2):

- a size cap per file: root 512 000 bytes, timestamp 16 384, snapshot 2 000 000, targets and image roles
  5 000 000 (python-tuf's ``UpdaterConfig`` defaults, so a stock TUF client reads what we write);
- at most :data:`MAX_JSON_VALUES` JSON values (counted as ``{``, ``[`` and ``,`` bytes — an upper bound that
  costs one pass in C). ``[{},{},…]`` parses into ~21 bytes of Python objects per input byte; capping the values
  caps that at tens of MiB, where 5 MB of empty objects would take ~130 MiB. A well-formed role is parsed in full
  *and* serialised again (canonical JSON, to check its signatures) before a forgery is found out: ~360 bytes of
  peak memory per value. Measured (tests/test_hostile_pull.py): 300,000 values took a pull to 168 MiB; at
  200,000 it stays under 150 MiB whatever the bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization import SerializationError

from imagectl.catalogue.canonical import canonical_bytes, canonical_dict, canonical_snapshot
from imagectl.errors import KeyProblemError, UntrustedMetadataError

__all__ = [
    "MAX_JSON_VALUES",
    "ROOT_MAX",
    "SNAPSHOT_MAX",
    "TARGETS_MAX",
    "TIMESTAMP_MAX",
    "ValueCounter",
    "cap_for",
    "check_bounds",
    "kind_of",
    "parse_metadata",
    "role_of",
    "sign_with",
    "signed_file_bytes",
    "verify_signatures",
]

ROOT_MAX = 512_000  # bytes
TIMESTAMP_MAX = 16_384
SNAPSHOT_MAX = 2_000_000
TARGETS_MAX = 5_000_000  # targets.json and every image role
MAX_JSON_VALUES = 200_000  # ~28,000 plain versions (7 values each), ~13,000 with build records (15 each)


_CONTROL_BYTE = re.compile(rb"[\x00-\x1f]")


def role_of(key: str) -> str:
    """The role whose metadata file is at ``key``: ``metadata/7.image-x.root.json`` holds ``image-x.root``,
    ``metadata/timestamp.json`` holds ``timestamp``. Only a leading version number is cut off: image names may
    contain dots, and end in ``.root`` or ``root`` (``buildroot``)."""
    base = key.rsplit("/", 1)[-1].removesuffix(".json")
    version, dot, role = base.partition(".")
    return role if dot and version.isdigit() else base


_CAPS = {"root": ROOT_MAX, "timestamp": TIMESTAMP_MAX, "snapshot": SNAPSHOT_MAX}


def cap_for(key: str) -> int:
    """The size cap of the metadata file at ``key`` (``metadata/7.image-x.json``, ``metadata/timestamp.json``)."""
    return _CAPS.get(role_of(key), TARGETS_MAX)


class ValueCounter:
    """Counts JSON values in a byte stream chunk by chunk; raises UntrustedMetadataError past the limit."""

    def __init__(self, what: str, limit: int = MAX_JSON_VALUES) -> None:
        self.what, self.limit, self.count = what, limit, 0

    def feed(self, chunk: bytes) -> None:
        self.count += chunk.count(b"{") + chunk.count(b"[") + chunk.count(b",")
        if self.count > self.limit:
            raise UntrustedMetadataError(
                f"{self.what} holds more than {self.limit} JSON values: refused before parsing (metadata cap)"
            )


def check_bounds(data: bytes, key: str, cap: int | None = None) -> None:
    """Raise UntrustedMetadataError (exit 8) if ``data`` breaks the size cap of ``key`` or the value limit."""
    limit = cap_for(key) if cap is None else cap
    if len(data) > limit:
        raise UntrustedMetadataError(f"{key} is {len(data)} bytes, over the {limit}-byte cap of the format")
    ValueCounter(key).feed(data)


def kind_of(key: str) -> str:
    """The TUF type of the metadata at ``key``: root, timestamp, snapshot or targets (image roles are targets)."""
    role = role_of(key)
    return role if role in _CAPS else "targets"


_PARSED = "_imagectl_parsed_signed"  # attribute: canonical bytes of ``signed`` as parsed, for the first check
_AS_WRITTEN = "_imagectl_signed_as_written"  # attribute: the file's own bytes of ``signed``, for the first check
_HEAD, _SIGNED = b'{"signatures":', b'],"signed":'


def _plain_meta(signed: Any) -> dict[str, int] | None:
    """A snapshot's ``meta`` as {path: version} when every entry is exactly ``{"version": N}`` with N > 0 (what
    imagectl writes), else None (python-tuf then parses, and refuses, each entry itself)."""
    if not isinstance(signed, dict) or signed.get("_type") != "snapshot" or not isinstance(signed.get("meta"), dict):
        return None
    out: dict[str, int] = {}
    for path, entry in signed["meta"].items():
        if type(entry) is not dict or len(entry) != 1 or type(v := entry.get("version")) is not int or v <= 0:
            return None
        out[path] = v
    return out


def _no_float(token: str) -> Any:
    raise ValueError(f"{token}: canonical JSON has no floats")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)


def _split(data: bytes) -> tuple[Any, bytes] | None:
    """A file in the shape :func:`signed_file_bytes` writes, ``{"signatures":[…],"signed":PAYLOAD}`` and a
    newline, as (its parsed document, PAYLOAD's bytes); None for any other shape.

    Inside a JSON string a quote is always escaped, so ``],"signed":`` cannot occur there: its first occurrence
    ends the signatures' array unless it is nested inside it, and then that part does not parse on its own.
    Both parts parsing whole is exactly the file parsing as ``{"signatures": A, "signed": B}``."""
    body = data[:-1] if data.endswith(b"\n") else data
    if not body.startswith(_HEAD) or not body.endswith(b"}"):
        return None
    cut = body.find(_SIGNED, len(_HEAD))
    if cut < 0:
        return None
    payload = body[cut + len(_SIGNED) : -1]
    try:
        return {"signatures": _loads(body[len(_HEAD) : cut + 1]), "signed": _loads(payload)}, payload
    except ValueError:
        return None


def _fast_parse(data: bytes, *, as_written: bool) -> Metadata[Any]:
    """``Metadata.from_bytes(data)``, keeping the bytes the first signature check is over and building a plain
    snapshot's entries directly. Any exception: the caller parses again with python-tuf alone, for its exact
    refusal.

    The bytes kept: with ``as_written``, a file of imagectl's own shape (:func:`_split`) keeps its own bytes of
    ``signed``, which are what its signers signed, byte for byte (:func:`signed_file_bytes` writes the signed
    payload as it is): the check then needs no encoding (a 2,000-name snapshot's took 0.5 ms of every load), and
    only when those bytes do not verify is the canonical form of the parsed document checked, as python-tuf
    checks it. Otherwise, the canonical bytes of ``signed`` as parsed, made here.

    A float (or NaN, Infinity) stops this parse: canonical JSON has none, so such a document can never verify
    (python-tuf's parse keeps it, and its check then fails as not canonical). The kept bytes are therefore made
    without scanning them for floats."""
    split = _split(data) if as_written else None
    doc, written = split if split is not None else (_loads(data), None)
    signed = doc["signed"]
    meta = _plain_meta(signed)
    payload = None
    if written is None:
        payload = None if meta is None else canonical_snapshot(signed, meta, floatless=True)
        payload = payload or canonical_dict(signed, floatless=True)
    if meta is not None:
        signed["meta"] = {}
    md = Metadata.from_dict(doc)
    if meta is not None:
        md.signed.meta = {path: MetaFile(version) for path, version in meta.items()}  # type: ignore[attr-defined]
    if written is not None:
        setattr(md, _AS_WRITTEN, written)
    elif payload is not None:
        setattr(md, _PARSED, payload)
    return md


def parse_metadata(data: bytes, key: str, *, as_written: bool = True) -> Metadata[Any]:
    """Parse untrusted metadata bytes within the format's bounds, as the type its key says it is.

    ``as_written``: the first signature check may be over the file's own bytes of ``signed`` (see
    :func:`_fast_parse`); False where the check must be exactly python-tuf's, over the canonical form of the
    parsed document and nothing else (``catalogue verify``, which judges a catalogue as stock TUF clients do:
    a signer that signed other bytes than the canonical ones would pass the first check only).

    Raises UntrustedMetadataError for oversized or malformed metadata, or metadata of another type (a targets
    document served as ``timestamp.json``), its message beginning with ``key``; never a parser's own exception.
    """
    check_bounds(data, key)
    try:
        md = _fast_parse(data, as_written=as_written)
    except Exception:  # noqa: BLE001 - python-tuf parses it again below and says what is wrong
        try:
            md = Metadata.from_bytes(data)
        except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is the same user-facing fact
            raise UntrustedMetadataError(f"{key} is not valid TUF metadata: {type(e).__name__}: {e}") from None
    if md.signed.type != kind_of(key):
        raise UntrustedMetadataError(f"{key} holds {md.signed.type} metadata, not {kind_of(key)}")
    return md


def verify_signatures(delegator: Metadata[Any], role: str, md: Metadata[Any], key: str) -> None:
    """``delegator.verify_delegate(role, md)``, with every failure (bad signatures, and metadata that cannot be put
    in canonical form to be checked, e.g. a float) as UntrustedMetadataError naming ``key``.

    The first check of a document :func:`parse_metadata` returned is over the bytes it kept of ``signed`` as
    parsed: the file's own, falling back to the canonical form when those do not verify, or the canonical bytes
    made while parsing. Any later check, like any check of a document built or changed here, encodes
    ``md.signed`` as it is then."""
    try:
        written, parsed = md.__dict__.pop(_AS_WRITTEN, None), md.__dict__.pop(_PARSED, None)
        if written is not None:
            try:
                delegator.signed.verify_delegate(role, written, md.signatures)
                return
            except UnsignedMetadataError:
                pass  # not signed as written (another writer's spelling, or a forgery): as python-tuf checks
        delegator.signed.verify_delegate(role, parsed or canonical_bytes(md.signed), md.signatures)
    except UnsignedMetadataError as e:
        raise UntrustedMetadataError(f"{key}: signature check failed: {e}") from None
    except SerializationError:
        raise UntrustedMetadataError(f"{key}: cannot be checked: not canonical JSON (a float?)") from None


def sign_with(md: Metadata[Any], signers: Iterable[Signer]) -> bytes:
    """Add a signature by each of ``signers`` to ``md`` (keeping those it has), over canonical bytes made once;
    returns those bytes (:func:`signed_file_bytes` makes the file from them)."""
    payload = canonical_bytes(md.signed)
    for signer in signers:
        try:
            signature = signer.sign(payload)
        except Exception as e:  # a signer (a key file, a KMS) may fail in any way: one message
            raise KeyProblemError(f"cannot sign with key {signer.public_key.keyid[:12]}…: {e}") from e
        md.signatures[signature.keyid] = signature
    return payload


def signed_file_bytes(md: Metadata[Any], payload: bytes) -> bytes:
    """The metadata file of ``md`` whose ``signed`` is ``payload`` (its canonical bytes, as just signed):
    ``{"signatures":[...],"signed":PAYLOAD}``, compact JSON with sorted keys, without encoding ``signed`` a second
    time (a 2,000-name snapshot cost a publish ~4 ms per encoding)."""
    # Keys beside signatures and signed: not this shape. A control character in a string: canonical JSON keeps it
    # raw (it escapes only quote and backslash), which JSON readers refuse, so the file gets JSON's own escapes (the
    # signature is over the canonical form of the parsed value, whichever way the file spells it).
    if md.unrecognized_fields or _CONTROL_BYTE.search(payload):
        return json.dumps(md.to_dict(), separators=(",", ":"), sort_keys=True).encode() + b"\n"
    sigs = json.dumps([s.to_dict() for s in md.signatures.values()], separators=(",", ":"), sort_keys=True)
    return b'{"signatures":' + sigs.encode() + b',"signed":' + payload + b"}\n"
