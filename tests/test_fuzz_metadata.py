"""Property-based fuzzing of the metadata reader: what a deployer, a verifier and a publisher do with metadata bytes
before (and after) any signature says they are genuine (issue 7).

Every generated file must either be read or be refused with an ``ImagectlError`` whose message is one line and
whose exit code is that of untrusted metadata (8, or 9/10/12/17 for TUF's own refusals) or invalid input (3);
anything else (a parser's KeyError, a RecursionError, a MemoryError) is a bug. Each input is bounded
(``tests/fuzzbound.py``): at most 5 s of CPU time of this process, 60 s of wall time and 100 MiB of Python heap at
its peak (``tracemalloc``), the reader's part of the 150 MiB RSS bound a pull keeps on any input within the caps.

Three readers are driven: the bounded parser with the custom-field reader behind it (``parse_metadata``,
``ImageRecord.from_target``, channels), ``catalogue verify`` over a catalogue with one file replaced, and a real
client (``CatalogueReader``: tuf.ngclient through our fetcher) fetching a replaced image role. Derandomised
(the "imagectl-fuzz-metadata" profile): 4,600 inputs in all (3,000 + 1,000 + 600, as
``--hypothesis-show-statistics`` counts them), the same every run, plus explicit examples for what those miss;
``IMAGECTL_FUZZ_SCALE=N`` (1-10) runs N times as many inputs for the parser. ``-m fuzz`` alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metadata import MAX_JSON_VALUES, TARGETS_MAX, parse_metadata
from imagectl.catalogue.model import ImageRecord
from imagectl.catalogue.publish import PublishRequest, init_catalogue, publish
from imagectl.catalogue.verify import verify_catalogue
from imagectl.errors import ImagectlError, InvalidInputError
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, write_pattern
from tests.fuzzbound import bounded as within_bounds

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

settings.register_profile(
    "imagectl-fuzz-metadata",
    derandomize=True,
    deadline=None,  # our own per-input bound is below
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile("imagectl-fuzz-metadata")

MEMORY_LIMIT = 100 * 2**20  # bytes of Python heap per input
EXIT_CODES = {3, 8, 9, 10, 12, 13, 17}  # invalid input, untrusted metadata and its kinds (13: a fetch refused)
T = TypeVar("T")
_COUNT = iter(range(10**9))


def bounded(read: Callable[[], T]) -> T | ImagectlError:
    result = within_bounds(read, memory_limit=MEMORY_LIMIT)
    if isinstance(result, ImagectlError):
        assert result.message and "\n" not in result.message, repr(result.message)
        assert result.exit_code in EXIT_CODES, (type(result).__name__, result.message)
    return result


# -- what the reader is fed ---------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
AWKWARD_TEXT = st.sampled_from(
    ["", "x", "../../etc", "a/b/c/d", "wn/1/x86_64/wn-1-x86_64.qcow2", "\x1b[2J", "\u202e", "1" * 200, "0" * 64]
)
VALUE = st.one_of(JSON, AWKWARD_TEXT, st.integers(), st.just({}), st.just([]))


@st.composite
def custom_fields(draw: st.DrawFn) -> Any:
    """Custom fields of an image target: mostly right-shaped, with any field replaced by anything."""
    fields: dict[str, Any] = {
        "name": "wn",
        "version": "1",
        "arch": "x86_64",
        "format": "qcow2",
        "hypervisor": "hvm",
        "size": 10,
        "created": "2026-12-01T00:00:00Z",
    }
    for key in draw(st.lists(st.sampled_from([*fields, "os", "os_version", "build_record", "deprecated"]), max_size=4)):
        fields[key] = draw(VALUE)
    for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
        fields.pop(key, None)
    return draw(st.one_of(st.just(fields), VALUE)) if draw(st.booleans()) else fields


@st.composite
def targets_documents(draw: st.DrawFn) -> bytes:
    """An image role as bytes: a well-formed TUF envelope most of the time (so the custom-field reader behind the
    parser gets hostile targets to read), with one part of it broken now and then."""
    targets = {}
    for _ in range(draw(st.integers(0, 5))):
        path = draw(st.one_of(st.just("wn/1/x86_64/wn-1-x86_64.qcow2"), AWKWARD_TEXT, st.text(max_size=30)))
        target: Any = {
            "length": draw(st.one_of(st.just(10), st.integers(0, 2**40))),
            "hashes": {"sha256": draw(st.one_of(st.just("ab" * 32), AWKWARD_TEXT))},
            "custom": draw(custom_fields()),
        }
        if draw(st.integers(0, 7)) == 0:  # a broken target: TUF's own parser must refuse it in one line
            target[draw(st.sampled_from(["length", "hashes", "custom"]))] = draw(VALUE)
        targets[path] = target
    signed: dict[str, Any] = {
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": draw(st.integers(1, 10**6)),
        "expires": "2099-01-01T00:00:00Z",
        "targets": targets,
        "x-imagectl": {
            "channels": draw(st.dictionaries(st.sampled_from(["stable", "testing", "\x1b"]), VALUE, max_size=3)),
            "revoked": draw(st.dictionaries(AWKWARD_TEXT, VALUE, max_size=2)),
        },
    }
    if draw(st.integers(0, 4)) == 0:  # a broken envelope
        signed[draw(st.sampled_from(["_type", "spec_version", "version", "expires", "targets", "x-imagectl"]))] = draw(
            VALUE
        )
    doc: Any = {"signed": signed, "signatures": []}
    if draw(st.integers(0, 9)) == 0:
        doc = draw(VALUE)
    return json.dumps(doc, allow_nan=True).encode()


def dense(unit: bytes, n: int) -> bytes:
    """``n`` copies of a tiny JSON value in a list: the shape that explodes in a parser."""
    return b"[" + b",".join([unit] * max(n, 1)) + b"]"


DENSE = st.builds(
    dense,
    st.sampled_from([b"{}", b"[]", b'{"a":{}}', b'"ab"', b"1.5", b"null"]),
    st.sampled_from([1, 1000, MAX_JSON_VALUES // 2 - 5, MAX_JSON_VALUES - 5, MAX_JSON_VALUES + 5, TARGETS_MAX // 3]),
)
METADATA_BYTES = st.one_of(  # mostly well-formed roles: the readers behind the parser are what is under test
    targets_documents(), targets_documents(), targets_documents(), st.binary(max_size=400), DENSE
)


# -- 1. the parser and the custom-field reader ---------------------------------------------------------------------
def read_role(data: bytes) -> list[ImageRecord]:
    """What the client and the publisher do with an image role's bytes: parse within bounds, then read every target
    and the channels the way `list`, `show`, `pull` and `publish` do."""
    md = parse_metadata(data, "metadata/3.image-wn.json")
    records = []
    for path, t in getattr(md.signed, "targets", {}).items():
        try:
            records.append(ImageRecord.from_target(path, t.length, t.hashes, t.custom))
        except InvalidInputError:
            continue  # one malformed target is refused; the others are still read, as `verify` does
    for record in records:
        record.summary()
    return records


# A name with a control character, refused as such (model._check): the one branch the first 3,000 derandomised
# inputs did not reach that 9,000 did (branch coverage of imagectl, measured 2026-12-04). 3,000 inputs reach every
# other line and branch the 9,000 did, in a third of the time (the 9,000 cost ~225 s of one CI worker, 95 % of it
# Hypothesis generating inputs); IMAGECTL_FUZZ_SCALE=3 runs the 9,000 again.
CONTROL_CHARACTER_NAME = json.dumps(
    {
        "signed": {
            "_type": "targets",
            "spec_version": "1.0.31",
            "version": 1,
            "expires": "2099-01-01T00:00:00Z",
            "targets": {
                "w\x1bn/1/x86_64/w\x1bn-1-x86_64.qcow2": {
                    "length": 10,
                    "hashes": {"sha256": "ab" * 32},
                    "custom": {
                        "name": "w\x1bn",
                        "version": "1",
                        "arch": "x86_64",
                        "format": "qcow2",
                        "hypervisor": "hvm",
                        "created": "2026-01-01T00:00:00Z",
                    },
                }
            },
            "x-imagectl": {"channels": {}, "revoked": {}},
        },
        "signatures": [],
    }
).encode()
SCALE = max(1, min(10, int(os.environ.get("IMAGECTL_FUZZ_SCALE", "1") or 1)))


def test_a_name_with_a_control_character_is_refused_as_such() -> None:
    """The explicit input reaches the refusal it stands for (so the example below keeps covering it)."""
    with pytest.raises(InvalidInputError, match="control characters are not allowed"):
        ImageRecord.from_target(
            "w\x1bn/1/x86_64/w\x1bn-1-x86_64.qcow2",
            10,
            {"sha256": "ab" * 32},
            json.loads(CONTROL_CHARACTER_NAME)["signed"]["targets"]["w\x1bn/1/x86_64/w\x1bn-1-x86_64.qcow2"]["custom"],
        )
    assert read_role(CONTROL_CHARACTER_NAME) == []  # refused, the role still read


@given(METADATA_BYTES)
@example(CONTROL_CHARACTER_NAME)
@settings(FUZZ, max_examples=3000 * SCALE)
def test_parser_and_record_reader(data: bytes) -> None:
    result = bounded(lambda: read_role(data))
    if not isinstance(result, ImagectlError):
        for record in result:  # what was read is what the writer's rules allow
            stem = f"{record.name}-{record.version}-{record.arch}.{record.format}"
            assert record.path == f"{record.name}/{record.version}/{record.arch}/{stem}"


# -- 2. catalogue verify and 3. a real client, over a catalogue with one file replaced -------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue with one image, published once per module and copied for each input."""
    base = tmp_path_factory.mktemp("fuzz-cat")
    store = LocalStore(base / "cat")
    init_catalogue(store, base / "keys", EXPIRY)
    image = write_pattern(base / "img.raw", 1000)
    publish(
        store, KeyRing(base / "keys"), PublishRequest(file=str(image), name="wn", arch="x86_64", version="1"), EXPIRY
    )
    return base / "cat"


def _replaced(template: Path, tmp: Path, data: bytes, which: str) -> Iterator[Path]:
    import shutil

    cat = tmp / "cat"
    if cat.exists():
        shutil.rmtree(cat)
    shutil.copytree(template, cat)
    meta = cat / "metadata"
    if which == "role":
        victim = max(meta.glob("*.image-wn.json"), key=lambda p: int(p.name.split(".")[0]))
    elif which == "snapshot":
        victim = max(meta.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0]))
    else:
        victim = meta / "timestamp.json"
    victim.write_bytes(data)
    yield cat


@given(METADATA_BYTES, st.sampled_from(["role", "snapshot", "timestamp"]))
@settings(FUZZ, max_examples=1000)
def test_verify_over_a_replaced_file(template: Path, tmp_path: Path, data: bytes, which: str) -> None:
    for cat in _replaced(template, tmp_path, data, which):
        report = bounded(lambda cat=cat: verify_catalogue(LocalStore(cat), check_blobs=False))
        if not isinstance(report, ImagectlError):
            assert report.problems  # replaced, unsigned bytes never verify clean


@given(METADATA_BYTES)
@settings(FUZZ, max_examples=600)
def test_client_fetching_a_replaced_image_role(template: Path, tmp_path: Path, data: bytes) -> None:
    for cat in _replaced(template, tmp_path, data, "role"):
        root = str(cat / "metadata" / "1.root.json")
        cache = tmp_path / f"cache-{next(_COUNT)}"  # a deployer that has never seen this catalogue

        def read(cat: Path = cat, cache: Path = cache, root: str = root) -> Any:
            with CatalogueReader(LocalStore(cat), cache, root, lambda _m: None, retries=0) as reader:
                return reader.images("wn")

        result = bounded(read)
        assert isinstance(result, ImagectlError), "replaced, unsigned bytes were accepted"
