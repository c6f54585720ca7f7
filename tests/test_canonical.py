"""The fast canonical encoder (imagectl/catalogue/canonical.py) against the reference, securesystemslib's.

Signatures are over canonical JSON: one byte of difference and every client refuses what we sign (or we refuse
what others signed). Hypothesis generates documents full of the cases the fast path must hand over (quotes,
backslashes, control characters, non-ASCII, lone surrogates, floats, NaN, big ints, keys that sort oddly); the
two encoders must agree byte for byte, or both refuse.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets
from tuf.api.serialization import SerializationError

from imagectl.catalogue import canonical
from imagectl.catalogue.canonical import SERIALIZER, canonical_bytes

pytestmark = pytest.mark.fuzz

settings.register_profile("imagectl-fuzz-canonical", derandomize=True, deadline=None, database=None)
FUZZ = settings.get_profile("imagectl-fuzz-canonical")

_text = st.text(st.characters(codec=None), max_size=12) | st.sampled_from(
    ['a"b', "a\\b", "\n", "\x00", "\x7f", "é", "\u2028", "\ud800", "x:1.5", "[1e3", ",-2.0", "1.5", ""]
)
_scalar = (
    _text
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
)
_json = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=20
)


class _Doc(Targets):
    """A Targets whose to_dict is the generated document (what the encoders see)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(version=1, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
        self.doc = doc

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def _reference(doc: dict[str, Any]) -> bytes | None:
    try:
        out = encode_canonical(doc)
        assert out is not None
        return out.encode("utf-8")
    except Exception:
        return None


@settings(FUZZ, max_examples=1000)
@given(st.dictionaries(_text, _json, max_size=6))
def test_fast_encoder_equals_reference(doc: dict[str, Any]) -> None:
    want = _reference(doc)
    if want is None:
        with pytest.raises(SerializationError):
            SERIALIZER.serialize(_Doc(doc))
    else:
        assert canonical_bytes(_Doc(doc)) == want


@pytest.mark.parametrize(
    "doc",
    [
        {"a": 1.5},
        {"a": [1, 2.0]},
        {"a": -1e300},
        {"a": math.inf},
        {"a": math.nan},
        {"k": {"n": 0.0}},
        {"a": "\ud800"},
    ],
)
def test_what_the_reference_refuses_is_refused(doc: dict[str, Any]) -> None:
    assert _reference(doc) is None
    with pytest.raises(SerializationError):
        SERIALIZER.serialize(_Doc(doc))


def test_the_fast_path_is_taken_for_ordinary_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary metadata never reaches the reference encoder (else the speed-up is gone unnoticed), and the
    bytes still check with python-tuf's own serializer."""
    md = Metadata(Targets(version=3, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    md.signed.unrecognized_fields["x-imagectl"] = {"channels": {"stable": "1.0"}, "revoked": {}, "t": "12:00:01Z"}
    calls: list[object] = []
    monkeypatch.setattr(canonical._REFERENCE, "serialize", lambda s: calls.append(s) or b"")
    assert canonical_bytes(md.signed) == encode_canonical(md.signed.to_dict()).encode()  # type: ignore[union-attr]
    assert calls == []
    md.signed.unrecognized_fields["note"] = 'a "quoted" word'  # takes the reference path
    canonical_bytes(md.signed)
    assert len(calls) == 1


def test_a_file_made_from_the_signed_payload_is_the_usual_file() -> None:
    """Publishers write ``{"signatures":…,"signed":PAYLOAD}`` from the bytes they signed; for ASCII metadata that
    is byte for byte what encoding the whole document gives, and it parses back to the same metadata."""
    from securesystemslib.signer import CryptoSigner

    from imagectl.catalogue.metadata import sign_with, signed_file_bytes
    from imagectl.catalogue.state import metadata_bytes

    md = Metadata(Targets(version=7, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    md.signed.unrecognized_fields["x-imagectl"] = {"channels": {"stable": {"version": "1.0"}}, "revoked": {}}
    payload = sign_with(md, [CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()])
    data = signed_file_bytes(md, payload)
    assert data == metadata_bytes(md)
    back = Metadata.from_bytes(data)
    assert back == md and back.signed_bytes == payload
    md.signed.unrecognized_fields["note"] = "é"  # non-ASCII: raw UTF-8 in the file, the same document parsed
    payload = sign_with(md, [CryptoSigner.generate_ed25519()])
    assert Metadata.from_bytes(signed_file_bytes(md, payload)) == md


# -- parsing: the signed bytes kept from the parse, and a snapshot's entries built directly ----------------------
_ENTRIES = st.dictionaries(
    st.sampled_from(
        [
            *("targets.json", "image-a.json", "image-a~b2-1.json", "names~b6-3f.json", 'q"x.json', "Z.json"),
            *("a\\b.json", "c\x01.json", "é.json", "\ud800.json", "\u2028.json"),
        ]
    ),
    st.integers(min_value=1, max_value=2**40).map(lambda v: {"version": v})
    | st.sampled_from(
        [{"version": 0}, {"version": -1}, {"version": True}, {"version": "3"}, {"version": 2, "length": 9}, {}, []]
    )
    | st.builds(lambda v: {"version": v, "hashes": {"sha256": "ab" * 32}}, st.integers(1, 9)),
    max_size=5,
)


def _snapshot_bytes(meta: dict[str, Any]) -> bytes:
    doc = {
        "signatures": [],
        "signed": {"_type": "snapshot", "spec_version": "1.0.31", "version": 3, "expires": "2030-01-01T00:00:00Z"},
    }
    doc["signed"]["meta"] = meta  # type: ignore[index]
    return json.dumps(doc).encode()


def _parsed_as_python_tuf_parses(data: bytes) -> tuple[Metadata[Any], Metadata[Any]] | None:
    """parse_metadata's and python-tuf's parses of the snapshot ``data``, checked to be the same document; None
    when python-tuf refuses it (and parse_metadata was checked to refuse it too, with its own error)."""
    from imagectl.catalogue.metadata import parse_metadata
    from imagectl.errors import UntrustedMetadataError

    try:
        theirs = Metadata.from_bytes(data)
    except Exception:
        with pytest.raises(UntrustedMetadataError, match="is not valid TUF metadata"):
            parse_metadata(data, "metadata/3.snapshot.json")
        return None
    ours = parse_metadata(data, "metadata/3.snapshot.json")
    assert ours == theirs and ours.signed.to_dict() == theirs.signed.to_dict()
    return ours, theirs


@FUZZ
@given(_ENTRIES)
def test_a_parsed_snapshot_is_python_tufs(meta: dict[str, Any]) -> None:
    """Whatever the entries, parse_metadata gives what python-tuf's own parse gives (the same document, or a
    refusal where it refuses), its kept bytes are the canonical bytes of that document, and the fast to_dict
    of a snapshot is python-tuf's to_dict."""
    from imagectl.catalogue.canonical import signed_dict
    from imagectl.catalogue.metadata import _PARSED

    parsed = _parsed_as_python_tuf_parses(_snapshot_bytes(meta))
    if parsed is None:
        return
    ours, theirs = parsed
    assert signed_dict(ours.signed) == theirs.signed.to_dict()
    kept = ours.__dict__.get(_PARSED)
    assert kept is None or kept == encode_canonical(theirs.signed.to_dict()).encode()


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "note", "Z", "x1"]), _json, max_size=4))
def test_the_bytes_kept_from_a_parse_are_canonical_or_absent(extra: dict[str, Any]) -> None:
    """The parse refuses floats (and NaN, Infinity) itself and so keeps its canonical bytes unscanned: whatever
    a targets document carries, the kept bytes are the reference encoding of python-tuf's own parse, and a
    document the reference cannot encode (a float) keeps none and fails its check as not canonical."""
    from imagectl.catalogue.metadata import _PARSED, parse_metadata

    signed = {"_type": "targets", "spec_version": "1.0.31", "version": 2, "expires": "2030-01-01T00:00:00Z"}
    signed["targets"] = {"a/1/x86_64/a.qcow2": {"length": 9, "hashes": {"sha256": "ab" * 32}, "custom": extra}}
    data = json.dumps({"signatures": [], "signed": {**signed, **{f"x-{k}": v for k, v in extra.items()}}}).encode()
    theirs = Metadata.from_bytes(data)
    ours = parse_metadata(data, "metadata/2.image-a.json")
    kept = ours.__dict__.get(_PARSED)
    want = _reference(theirs.signed.to_dict())
    assert kept == want or (kept is None and want is not None)  # None: the general encoder makes them at the check
    if want is None:
        with pytest.raises(SerializationError):
            SERIALIZER.serialize(ours.signed)


def test_the_first_check_is_over_the_parsed_bytes_and_later_ones_over_the_document() -> None:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Key, Role, Root

    from imagectl.catalogue.metadata import _PARSED, parse_metadata, sign_with, signed_file_bytes, verify_signatures
    from imagectl.errors import UntrustedMetadataError

    signer = CryptoSigner.generate_ed25519()
    key: Key = signer.public_key
    roles = {r: Role([key.keyid], 1) for r in ("root", "timestamp", "snapshot", "targets")}
    root = Metadata(Root(keys={key.keyid: key}, roles=roles, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    snap = Metadata(Snapshot(version=4, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    snap.signed.meta["image-a.json"] = MetaFile(version=2)
    data = signed_file_bytes(snap, sign_with(snap, [signer]))
    md = parse_metadata(data, "metadata/4.snapshot.json", as_written=False)  # kept: the canonical form, made here
    assert _PARSED in md.__dict__
    verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")
    assert _PARSED not in md.__dict__  # used once
    verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")  # encoded afresh: still the same document
    md.signed.meta["image-a.json"] = MetaFile(version=3)  # changed after parsing: no longer what was signed
    with pytest.raises(UntrustedMetadataError, match="signature check failed"):
        verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")
    forged = json.loads(data)
    forged["signed"]["meta"]["image-a.json"]["version"] = 9
    with pytest.raises(UntrustedMetadataError, match="signature check failed"):
        verify_signatures(
            root, "snapshot", parse_metadata(json.dumps(forged).encode(), "m/4.snapshot.json"), "4.snapshot.json"
        )


@FUZZ
@given(_ENTRIES, st.sampled_from(["\n", ""]))
def test_a_file_in_imagectls_shape_parses_as_python_tufs_keeping_its_own_bytes(meta: dict[str, Any], end: str) -> None:
    """A file in the shape imagectl writes (``{"signatures":[…],"signed":PAYLOAD}``) is parsed in two parts:
    whatever the entries, the document is python-tuf's parse of the whole file (or both refuse), and the bytes
    kept for the first check are the file's own PAYLOAD."""
    from imagectl.catalogue.metadata import _AS_WRITTEN

    doc = json.loads(_snapshot_bytes(meta))
    payload = json.dumps(doc["signed"], separators=(",", ":"), ensure_ascii=False)
    parsed = _parsed_as_python_tuf_parses(
        ('{"signatures":[],"signed":' + payload + "}" + end).encode("utf-8", "surrogatepass")
    )
    if parsed is None:
        return
    kept = parsed[0].__dict__.get(_AS_WRITTEN)
    assert kept is None or kept == payload.encode("utf-8", "surrogatepass")


def _signed_root_and_snapshot() -> tuple[Any, Metadata[Any], Any]:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Key, Role, Root

    signer = CryptoSigner.generate_ed25519()
    key: Key = signer.public_key
    roles = {r: Role([key.keyid], 1) for r in ("root", "timestamp", "snapshot", "targets")}
    root = Metadata(Root(keys={key.keyid: key}, roles=roles, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    snap = Metadata(Snapshot(version=4, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    snap.signed.meta = {f"image-n{i}.json": MetaFile(version=i + 1) for i in range(50)}
    return root, snap, signer


def test_the_first_check_of_a_file_imagectl_wrote_needs_no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file signed_file_bytes wrote keeps its own signed bytes, and its first check is over them: no canonical
    encoding at all (the encoders are made to fail here). A later check encodes the document afresh."""
    from imagectl.catalogue import metadata
    from imagectl.catalogue.metadata import _AS_WRITTEN, parse_metadata, sign_with, signed_file_bytes

    root, snap, signer = _signed_root_and_snapshot()
    payload = sign_with(snap, [signer])
    md = parse_metadata(signed_file_bytes(snap, payload), "metadata/4.snapshot.json")
    assert md.__dict__[_AS_WRITTEN] == payload and md == snap

    def no_encoding(*_: object, **__: object) -> bytes:
        raise AssertionError("encoded")

    with monkeypatch.context() as patch:
        patch.setattr(metadata, "canonical_bytes", no_encoding)
        metadata.verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")
        assert _AS_WRITTEN not in md.__dict__  # used once
        with pytest.raises(AssertionError, match="encoded"):
            metadata.verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")
    metadata.verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")


def test_signed_bytes_spelled_otherwise_are_checked_in_canonical_form_and_forgeries_fail() -> None:
    """In imagectl's shape but spelled otherwise than signed (keys in another order: another writer): the own
    bytes do not verify, the canonical form of the document does, as python-tuf checks it. A changed version
    fails either way."""
    from imagectl.catalogue.metadata import parse_metadata, sign_with, verify_signatures
    from imagectl.errors import UntrustedMetadataError

    root, snap, signer = _signed_root_and_snapshot()
    sign_with(snap, [signer])
    sigs = json.dumps([s.to_dict() for s in snap.signatures.values()], separators=(",", ":"))
    signed = snap.signed.to_dict()
    reordered = json.dumps(dict(reversed(list(signed.items()))), separators=(",", ":"))
    data = ('{"signatures":' + sigs + ',"signed":' + reordered + "}\n").encode()
    verify_signatures(root, "snapshot", parse_metadata(data, "metadata/4.snapshot.json"), "4.snapshot.json")
    signed["meta"]["image-n3.json"]["version"] = 99
    forged = '{"signatures":' + sigs + ',"signed":' + json.dumps(signed, separators=(",", ":"), sort_keys=True) + "}"
    for as_written in (True, False):
        md = parse_metadata(forged.encode(), "metadata/4.snapshot.json", as_written=as_written)
        with pytest.raises(UntrustedMetadataError, match="signature check failed"):
            verify_signatures(root, "snapshot", md, "metadata/4.snapshot.json")


def test_catalogue_verifys_parse_accepts_only_what_python_tuf_accepts() -> None:
    """A signer that signed its own non-canonical spelling: the bytes as written verify (that key holder signed
    exactly them), python-tuf refuses (it checks the canonical form only). ``as_written=False``, what
    ``catalogue verify`` parses with to judge a catalogue as stock clients do, refuses as python-tuf does."""
    from imagectl.catalogue.metadata import parse_metadata, verify_signatures
    from imagectl.errors import UntrustedMetadataError

    root, snap, signer = _signed_root_and_snapshot()
    payload = json.dumps(snap.signed.to_dict(), separators=(",", ":")).encode()  # keys unsorted: not canonical
    assert payload != canonical_bytes(snap.signed)
    sig = signer.sign(payload)
    data = b'{"signatures":[' + json.dumps(sig.to_dict()).encode() + b'],"signed":' + payload + b"}"
    verify_signatures(root, "snapshot", parse_metadata(data, "metadata/4.snapshot.json"), "4.snapshot.json")
    with pytest.raises(UntrustedMetadataError, match="signature check failed"):
        verify_signatures(root, "snapshot", parse_metadata(data, "m/4.snapshot.json", as_written=False), "4")
    theirs = Metadata.from_bytes(data)
    with pytest.raises(UnsignedMetadataError, match="signed by 0/1 keys"):
        root.verify_delegate("snapshot", theirs)


def test_a_signed_marker_nested_in_the_signatures_is_not_the_split() -> None:
    """``],"signed":`` inside the signatures' array (a signature object with extra fields): that first occurrence
    does not split the file (its first part does not parse), which is then parsed whole, as python-tuf does."""
    from imagectl.catalogue.metadata import _AS_WRITTEN, parse_metadata

    signed = json.dumps(Snapshot(version=2).to_dict(), separators=(",", ":"), sort_keys=True)
    data = ('{"signatures":[{"keyid":"k","sig":"s","x":[],"signed":{}}],"signed":' + signed + "}").encode()
    md = parse_metadata(data, "metadata/2.snapshot.json")
    assert md == Metadata.from_bytes(data) and _AS_WRITTEN not in md.__dict__
    assert md.signed.version == 2


@settings(FUZZ, max_examples=500)
@given(
    st.dictionaries(_text, st.integers(min_value=1, max_value=2**70), max_size=8),
    st.sampled_from(["2030-01-01T00:00:00Z", 'a"b', "é"]),
)
def test_a_snapshot_is_encoded_as_the_reference_does(versions: dict[str, int], expires: str) -> None:
    """A snapshot's entries are joined rather than encoded as dicts (canonical.canonical_snapshot): for any role
    names (quotes, backslashes, control characters, surrogates, non-ASCII, odd sort orders) and versions, the
    bytes are the reference's, or both refuse; and parsing such a file keeps exactly those bytes."""
    from imagectl.catalogue.canonical import canonical_snapshot

    signed = {"_type": "snapshot", "spec_version": "1.0.31", "version": 3, "expires": expires}
    signed["meta"] = {path: {"version": v} for path, v in versions.items()}
    want = _reference(signed)
    fast = canonical_snapshot(signed, versions)
    assert fast is None or fast == want
    text = "".join(versions) + expires
    if not any(c in '"\\' or ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert fast is not None and fast == want  # plain names: the join is taken, and exact


def test_a_snapshot_of_plain_entries_never_reaches_the_general_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 roles (what a 2,000-name catalogue's snapshot lists) are encoded by the join, at signing and at
    parsing, byte for byte as the reference; an entry with hashes takes the general path, still exact."""
    from imagectl.catalogue.metadata import _PARSED, parse_metadata

    snap = Snapshot(version=9, expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    snap.meta = {f"image-name-{i:05d}.json": MetaFile(i + 1) for i in range(2000)} | {"targets.json": MetaFile(4)}
    want = encode_canonical(snap.to_dict()).encode()
    general: list[object] = []
    inner = canonical.canonical_dict
    monkeypatch.setattr(canonical, "canonical_dict", lambda d, **kw: general.append(d) or inner(d, **kw))
    assert canonical_bytes(snap) == want
    assert [len(d["meta"]) for d in general] == [0]  # only the five fields around the entries
    data = json.dumps({"signatures": [], "signed": snap.to_dict()}).encode()
    md = parse_metadata(data, "metadata/9.snapshot.json")
    assert md.__dict__[_PARSED] == want
    snap.meta["targets.json"] = MetaFile(4, length=10)
    assert canonical_bytes(snap) == encode_canonical(snap.to_dict()).encode()
