"""Our documents against catalogue/schema/*.schema.json, on a catalogue built through the CLI.

Every image target's ``custom`` object, every image role's ``x-imagectl`` object, ``pull --json`` and
``catalogue list --json`` must validate; each schema must also refuse malformed documents (so none is vacuous) and
agree with the identifier rules of ``imagectl.catalogue.model``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from imagectl.catalogue import model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.errors import InvalidInputError
from tests.conftest import EXPIRY, Catalogue, CliResult, sha256

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "catalogue" / "schema"
SCHEMAS = (
    "image-custom",
    "image-role-extension",
    "pull-result",
    "list-entry",
    "show",
    "plan",
    "targets-extension",
    "build-record",  # validated against real records in tests/test_buildrecord.py
    "upgrade-result",  # with pointers made on S3: tests/test_s3_catalogue.py
    "cache-show",  # on real caches: tests/test_localcache.py
    "cache-prune",
)
Doc = dict[str, Any]


def load_schema(name: str) -> Doc:
    schema: Doc = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return schema


def registry() -> Registry:
    """Every schema of catalogue/schema by its ``$id`` (cache-show refers to cache-prune's entry by its URN)."""
    docs = [json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.schema.json"))]
    return Registry().with_resources((doc["$id"], DRAFT202012.create_resource(doc)) for doc in docs)


def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry())


def assert_valid(name: str, doc: Any, where: str = "") -> None:
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator(name).iter_errors(doc)]
    assert not problems, f"{where or name}: {problems}"


def ok(cli: Callable[..., CliResult], *args: Any) -> CliResult:
    r = cli(*args)
    assert r.code == 0, r.err
    return r


# -- a catalogue with every kind of entry ------------------------------------------------------------------------
@dataclass
class Populated:
    cat: Catalogue
    auto: str  # slc6-wn's automatic version (x86_64), the newest live one
    debian: str  # debian12's automatic version, deprecated without a reason
    images: dict[str, Path]


@pytest.fixture
def populated(catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]) -> Populated:
    a = make_image(300_000, seed="a")
    b = make_image(200_000, seed="b")
    c = make_image(100_000, seed="c", name="disk.raw")
    w = catalogue.args()
    slc = ("--name", "slc6-wn", "--os", "slc", "--os-version", "6")
    stable = ("--arch", "x86_64", "--version", "6.1", "--hypervisor", "xen-pv", "--channel", "stable")
    ok(cli, "publish", a, *w, *slc, *stable)
    ok(cli, "publish", a, *w, *slc, "--arch", "i386", "--version", "6.1")  # same bytes: one blob for both arches
    auto = json.loads(ok(cli, "publish", b, *w, *slc, "--arch", "x86_64", "--hypervisor", "xen-pv", "--json").out)
    debian = json.loads(ok(cli, "publish", c, *w, "--name", "debian12", "--arch", "aarch64", "--json").out)
    assert debian["format"] == "raw" and debian["os"] is None
    ok(cli, "publish", b, *w, *slc, "--arch", "x86_64", "--version", "6.3", "--channel", "testing")
    ok(cli, "deprecate", "slc6-wn:6.1", *w, "--reason", "kernel CVE-2026-1234")
    ok(cli, "deprecate", f"debian12:{debian['version']}", *w)  # no reason: deprecated.reason is ""
    r = ok(cli, "revoke", "slc6-wn:6.3", *w, "--reason", "  built from\na bad   mirror ")
    assert "channel testing" in r.err  # the channel that pointed at 6.3 was dropped
    ok(cli, "promote", f"slc6-wn:{auto['version']}", "testing", *w)
    # recipe_digest, parent and build_record have no CLI flags yet: publish them through the library
    publish(
        catalogue.store,
        KeyRing(catalogue.keys),
        PublishRequest(
            file=str(make_image(150_000, seed="d")),
            name="cvmfs-wn",
            arch="x86_64",
            os="slc",
            os_version="6",
            channel="stable",
            recipe_digest="sha256:" + "0" * 64,
            parent="slc6-wn@stable",
            build_record={"builder": "diskimage-builder", "elements": ["vm", "slc"], "seconds": 412, "boot_test": None},
        ),
        EXPIRY,
    )
    return Populated(catalogue, auto["version"], debian["version"], {"a": a, "b": b, "c": c})


def role_files(cat: Catalogue) -> list[tuple[str, Doc]]:
    """Every image role file ever written (every version), as (role name, signed part)."""
    out = []
    for path in sorted((cat.dir / "metadata").glob("*.image-*.json")):
        role = path.name.split(".", 1)[1].removesuffix(".json")
        out.append((role, json.loads(path.read_text())["signed"]))
    assert out
    return out


def current_role(cat: Catalogue, name: str) -> Doc:
    """The signed part of the image role the current timestamp -> snapshot chain points at."""
    meta = cat.dir / "metadata"
    ts = json.loads((meta / "timestamp.json").read_text())["signed"]
    snap = json.loads((meta / f"{ts['meta']['snapshot.json']['version']}.snapshot.json").read_text())["signed"]
    version = snap["meta"][f"image-{name}.json"]["version"]
    signed: Doc = json.loads((meta / f"{version}.image-{name}.json").read_text())["signed"]
    return signed


# -- the schemas themselves --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for shape in schema.get("oneOf", [schema]):  # show: a name, or one image in full
        assert shape["additionalProperties"] is False


def test_shared_definitions_do_not_drift_apart() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for name in SCHEMAS:
        for key, value in load_schema(name)["$defs"].items():
            if key in seen:
                assert value == seen[key][1], f"$defs/{key} differs between {seen[key][0]} and {name}"
            seen[key] = (name, value)


def test_enums_are_model_values() -> None:
    defs = load_schema("list-entry")["$defs"]
    assert defs["arch"]["enum"] == list(model.ARCHES)
    assert defs["format"]["enum"] == list(model.FORMATS)
    assert defs["hypervisor"]["enum"] == list(model.HYPERVISORS)


SAMPLES = [
    "a", "A", "0", "x", "slc6-wn", "Slc6", "6.1", "6.10", "20261125.1", "1.0~rc1+b2", "v1_2-3", "a.b", "a..b",
    "1..0", "-a", ".a", "_a", "~a", "a/b", "a:b", "a@b", "a b", "a\n", "a\t", "\na", "", "é", "x" * 32, "x" * 33,
    "x" * 64, "x" * 65, "slc6-wn:6.1", "slc6-wn@stable", "slc6-wn@Stable", "slc6-wn:6..1", "n:v@c", "n@c:v", "a:",
    "@c", "slc6-wn:" + "9" * 64, "slc6-wn:" + "9" * 65,
]  # fmt: skip


@pytest.mark.parametrize(
    ("definition", "check"),
    [
        ("name", model.check_name),
        ("version", model.check_version),
        ("channel", model.check_channel),
        ("os", model.check_os),
        ("os_version", model.check_os_version),
        ("ref", model.parse_ref),
    ],
)
def test_identifier_patterns_agree_with_model(definition: str, check: Callable[[str], object]) -> None:
    defs: Doc = {}
    for name in SCHEMAS:
        defs.update(load_schema(name)["$defs"])
    schema = Draft202012Validator(defs[definition])
    for sample in SAMPLES:
        try:
            check(sample)
            accepted = True
        except InvalidInputError:
            accepted = False
        assert schema.is_valid(sample) == accepted, f"$defs/{definition} and model disagree on {sample!r}"


# -- real documents validate -------------------------------------------------------------------------------------
def test_every_image_target_custom_validates(populated: Populated) -> None:
    seen_fields: set[str] = set()
    n = 0
    for role, signed in role_files(populated.cat):
        for path, target in signed["targets"].items():
            custom = target["custom"]
            assert_valid("image-custom", custom, f"{role} {path}")
            # what the spec says a target is, beyond the schema
            assert role == model.role_for(custom["name"])
            assert path == model.target_path(custom["name"], custom["version"], custom["arch"], custom["format"])
            assert custom["size"] == target["length"]
            assert set(target["hashes"]) == {"sha256"}
            seen_fields |= set(custom)
            n += 1
    assert n >= 10
    # every optional field occurred at least once, so the schema saw each of them
    assert {"os", "os_version", "deprecated", "recipe_digest", "parent", "build_record"} <= seen_fields


def test_every_image_role_extension_validates(populated: Populated) -> None:
    with_ext = 0
    for role, signed in role_files(populated.cat):
        ext = signed.get(model_ext := "x-imagectl")
        if ext is None:  # never had a channel or a revocation: read as empty
            ext = {"channels": {}, "revoked": {}}
        else:
            with_ext += 1
        assert_valid("image-role-extension", ext, f"{role} v{signed['version']} {model_ext}")
    assert with_ext >= 3

    ext = current_role(populated.cat, "slc6-wn")["x-imagectl"]
    assert {c: p["version"] for c, p in ext["channels"].items()} == {"stable": "6.1", "testing": populated.auto}
    assert list(ext["revoked"]) == ["6.3"]
    assert ext["revoked"]["6.3"]["reason"] == "built from a bad mirror"
    assert ext["revoked"]["6.3"]["sha256"] == [sha256(populated.images["b"])]


def test_pull_json_validates(populated: Populated, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    cat = populated.cat
    reader = ("--catalogue", cat.dir, "--root", cat.root, "--json")
    out = tmp_path / "out"
    out.mkdir()
    results = {}
    for ref, arch in (
        ("slc6-wn", "x86_64"),  # newest live: 6.3 is revoked, 6.1 deprecated
        ("slc6-wn@stable", "x86_64"),  # deprecated 6.1, with its reason
        ("slc6-wn:6.1", "i386"),  # the same bytes as 6.1 x86_64: from the cache
        (f"debian12:{populated.debian}", "aarch64"),  # deprecated without a reason
        ("cvmfs-wn@stable", "x86_64"),
    ):
        r = ok(cli, "pull", ref, *reader, "--arch", arch, "-o", out)
        doc = json.loads(r.out)
        assert_valid("pull-result", doc, ref)
        results[ref] = doc
    assert results["slc6-wn"]["version"] == populated.auto and results["slc6-wn"]["deprecated"] is None
    assert results["slc6-wn@stable"]["deprecated"]["reason"] == "kernel CVE-2026-1234"
    assert results["slc6-wn@stable"]["cached"] is False and results["slc6-wn:6.1"]["cached"] is True
    assert results[f"debian12:{populated.debian}"]["deprecated"]["reason"] == ""
    assert Path(results["slc6-wn"]["path"]).read_bytes() == populated.images["b"].read_bytes()


def test_list_and_search_json_validate(populated: Populated, cli: Callable[..., CliResult]) -> None:
    cat = populated.cat
    reader = ("--catalogue", cat.dir, "--root", cat.root, "--json")
    rows = json.loads(ok(cli, "catalogue", "list", *reader).out)
    assert isinstance(rows, list)
    for row in rows:
        assert_valid("list-entry", row, f"{row.get('name')}:{row.get('version')} {row.get('arch')}")
    got = {(r["name"], r["version"], r["arch"]) for r in rows}
    assert got == {
        ("cvmfs-wn", rows[0]["version"], "x86_64"),
        ("debian12", populated.debian, "aarch64"),
        ("slc6-wn", "6.1", "i386"),
        ("slc6-wn", "6.1", "x86_64"),
        ("slc6-wn", populated.auto, "x86_64"),
    }
    by_key = {(r["name"], r["version"], r["arch"]): r for r in rows}
    assert by_key[("slc6-wn", populated.auto, "x86_64")]["channels"] == ["testing"]
    assert by_key[("debian12", populated.debian, "aarch64")]["os"] is None
    for args in (("catalogue", "list", "slc6-wn", "--arch", "i386"), ("catalogue", "search", "slc", "--os", "slc")):
        subset = json.loads(ok(cli, *args, *reader).out)
        assert subset
        for row in subset:
            assert_valid("list-entry", row, " ".join(args))


def test_show_json_validates(populated: Populated, cli: Callable[..., CliResult]) -> None:
    cat = populated.cat
    reader = ("--catalogue", cat.dir, "--root", cat.root, "--json")
    name = json.loads(ok(cli, "catalogue", "show", "slc6-wn", *reader).out)
    assert_valid("show", name, "show slc6-wn")
    assert list(name["revoked"]) == ["6.3"] and name["channels"]["stable"]["version"] == "6.1"
    assert {(i["version"], i["arch"]) for i in name["images"]} == {
        ("6.1", "i386"),
        ("6.1", "x86_64"),
        (populated.auto, "x86_64"),
    }
    for ref, arch in (
        ("slc6-wn@stable", "x86_64"),
        ("slc6-wn:6.1", "i386"),
        (f"debian12:{populated.debian}", "aarch64"),
    ):
        full = json.loads(ok(cli, "catalogue", "show", ref, *reader, "--arch", arch).out)
        assert_valid("show", full, f"show {ref}")
        assert full["path"] == model.target_path(full["name"], full["version"], arch, full["format"])
    # the two shapes are told apart: a name summary is not an image, and the other way round
    assert not validator("show").is_valid({**name, "sha256": HEX})
    assert not validator("show").is_valid({**full, "images": []})


def test_plan_json_validates(cli: Callable[..., CliResult]) -> None:
    doc = json.loads(ok(cli, "plan", "debian12-demo", "slc3-worker", "slc6-worker", "--json").out)
    assert_valid("plan", doc, "imagectl plan")
    reproducible = json.loads(ok(cli, "plan", "debian12-demo", "--source-date-epoch", "1700000000", "--json").out)
    assert_valid("plan", reproducible, "imagectl plan --source-date-epoch")
    assert len(doc["entries"]) == 4 + 4 + 4 and {e["runner"]["tags"][1] for e in doc["entries"]} == {"x86_64", "ia64"}
    assert not validator("plan").is_valid({"entries": [{**doc["entries"][0], "job": "Debian12"}]})


def test_upgrade_json_validates(populated: Populated, cli: Callable[..., CliResult]) -> None:
    """catalogue upgrade --json of a catalogue from before target files: files made, one image whose blob is
    gone reported (exit 15), and the run after, which finds them present."""
    cat = populated.cat
    targets = sorted(p for p in (cat.dir / "targets").rglob("*") if p.is_file())
    for p in targets:
        p.unlink()
    lost = targets[0].name.split(".", 1)[0]
    (cat.dir / "blobs" / "sha256" / lost).unlink()
    r = cli("catalogue", "upgrade", cat.dir, "--one-copy", "--json")
    assert r.code == 15, r.err
    doc = json.loads(r.out)
    assert_valid("upgrade-result", doc, "catalogue upgrade (problems)")
    assert doc["ok"] is False and doc["problems"] and doc["created"] and doc["pointers"] == []
    again = json.loads(cli("catalogue", "upgrade", cat.dir, "--json").out)
    assert_valid("upgrade-result", again, "catalogue upgrade (again)")
    assert again["created"] == [] and again["present"] == len(doc["created"])


def test_the_json_examples_of_the_spec_validate() -> None:
    """catalogue/README.md §11 shows an example of each CLI document: each one validates against the schema its
    paragraph links (an array against its element schema, element by element)."""
    text = (SCHEMA_DIR.parent / "README.md").read_text()
    section = text[text.index("\n## 11. ") : text.index("\n## 12. ")]
    link, block = r"\(schema/([a-z-]+)\.schema\.json\)", r"(?:(?!\(schema/).)*?```json\n(.*?)\n```"
    found = re.findall(link + block, section, flags=re.S)
    assert [name for name, _ in found] == ["pull-result", "list-entry", "show", "upgrade-result", "cache-prune"]
    for name, body in found:
        doc = json.loads(body)
        for one in doc if isinstance(doc, list) else [doc]:
            assert_valid(name, one, f"catalogue/README.md §11, {name}")


# -- malformed documents are refused -----------------------------------------------------------------------------
TS = "2026-11-25T15:02:03Z"
HEX = "ec829685b10d28841f98cae7a11fed92cb7cfab018b06efb23faec015c87fd8b"
CUSTOM: Doc = {
    "name": "slc6-wn",
    "version": "6.1",
    "arch": "x86_64",
    "format": "qcow2",
    "hypervisor": "xen-pv",
    "size": 300_000,
    "created": TS,
    "os": "slc",
    "os_version": "6",
    "parent": "slc5-wn@stable",
    "deprecated": {"at": TS, "reason": "kernel CVE-2026-1234"},
}
EXT: Doc = {
    "channels": {"stable": {"version": "6.1", "updated": TS}},
    "revoked": {"6.3": {"reason": "built from a bad mirror", "at": TS, "sha256": [HEX]}},
}
PULL: Doc = {
    "path": "/var/lib/images/slc6-wn-6.1-x86_64.qcow2",
    "name": "slc6-wn",
    "version": "6.1",
    "arch": "x86_64",
    "sha256": HEX,
    "size": 300_000,
    "format": "qcow2",
    "cached": False,
    "deprecated": None,
}
ENTRY: Doc = {
    "name": "debian12",
    "version": "20261125.1",
    "arch": "aarch64",
    "os": None,
    "os_version": None,
    "hypervisor": "hvm",
    "format": "raw",
    "size": 100_000,
    "sha256": HEX,
    "created": TS,
    "deprecated": None,
    "channels": ["stable", "testing"],
}

SHOW_NAME: Doc = {
    "name": "debian12",
    "channels": {},
    "revoked": EXT["revoked"],
    "images": [{k: v for k, v in ENTRY.items() if k != "channels"}],
}
SHOW_FULL: Doc = {**CUSTOM, "sha256": HEX, "path": "slc6-wn/6.1/x86_64/slc6-wn-6.1-x86_64.qcow2"}
BOOT: Doc = {
    "passed": True,
    "marker": "login:",
    "accel": "tcg",
    "seconds": 85,
    "host": "b1",
    "at": TS,
    "image_sha256": HEX,
}
TESTED: Doc = {**CUSTOM, "boot_test": BOOT}
PLAN_ENTRY: Doc = {
    "job": "slc3-worker-ia64-xen-pv",
    "recipe": "recipes/slc/slc3-worker.yaml",
    "name": "slc3-worker-xen",
    "arch": "ia64",
    "hypervisor": "xen-pv",
    "formats": ["qcow2", "raw"],
    "os": "slc",
    "os_version": "3",
    "build_key": HEX,
    "source_date_epoch": 1700000000,
    "cached": False,
    "runner": {"arch": "ia64", "kvm": False, "tags": ["imagectl", "ia64"], "buildable_here": False, "why": "Itanium"},
}
PLAN: Doc = {"entries": [PLAN_ENTRY]}
PROTECTED: Doc = {"protected_channels": ["production", "stable"]}


def put(key: str, value: Any) -> Callable[[Doc], Doc]:
    return lambda d: {**d, key: value}


def drop(key: str) -> Callable[[Doc], Doc]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def boot(**fields: Any) -> Callable[[Doc], Doc]:
    return lambda d: {**d, "boot_test": {k: v for k, v in {**d["boot_test"], **fields}.items() if v is not ...}}


def entry(**fields: Any) -> Callable[[Doc], Doc]:
    return lambda d: {"entries": [{k: v for k, v in {**d["entries"][0], **fields}.items() if v is not ...}]}


def runner(**fields: Any) -> Callable[[Doc], Doc]:
    return lambda d: entry(runner={**d["entries"][0]["runner"], **fields})(d)


def revoked(**fields: Any) -> Callable[[Doc], Doc]:
    return lambda d: {**d, "revoked": {"6.3": {**d["revoked"]["6.3"], **fields}}}


UPGRADE: Doc = {
    "ok": True,
    "created": [f"targets/slc6-wn/6.1/x86_64/{HEX}.slc6-wn-6.1-x86_64.qcow2"],
    "present": 2,
    "problems": [],
    "pointers": [f"blobs/sha256/{HEX}"],
    "freed_bytes": 300_000,
}


def upgrade(**fields: Any) -> Callable[[Doc], Doc]:
    return lambda d: {k: v for k, v in {**d, **fields}.items() if v is not ...}


BAD = [
    ("upgrade-result", UPGRADE, upgrade(ok=...), "without ok"),
    ("upgrade-result", UPGRADE, upgrade(freed_bytes=-1), "negative bytes"),
    ("upgrade-result", UPGRADE, upgrade(present="2"), "count as a string"),
    ("upgrade-result", UPGRADE, upgrade(created=[f"blobs/sha256/{HEX}"]), "a blob among target files"),
    ("upgrade-result", UPGRADE, upgrade(pointers=[f"blobs/sha256/{HEX[:-1]}"]), "a short blob key"),
    ("upgrade-result", UPGRADE, upgrade(problems=["two\nlines"]), "a problem on two lines"),
    ("upgrade-result", UPGRADE, upgrade(extra=1), "unknown member"),
    ("image-custom", CUSTOM, put("arch", "sparc64"), "unknown arch"),
    ("image-custom", CUSTOM, put("format", "ova"), "unknown format"),
    ("image-custom", CUSTOM, put("hypervisor", "kvm"), "unknown hypervisor"),
    ("image-custom", CUSTOM, drop("created"), "missing created"),
    ("image-custom", CUSTOM, drop("hypervisor"), "missing hypervisor"),
    ("image-custom", CUSTOM, put("sha256", HEX), "unknown field (the hash lives in hashes)"),
    ("image-custom", CUSTOM, put("name", "SLC6"), "upper-case name"),
    ("image-custom", CUSTOM, put("name", "slc6-wn\n"), "trailing newline in name"),
    ("image-custom", CUSTOM, put("version", "6..1"), "'..' in version"),
    ("image-custom", CUSTOM, put("version", "6/1"), "'/' in version"),
    ("image-custom", CUSTOM, drop("os_version"), "os without os_version"),
    ("image-custom", CUSTOM, put("size", 0), "empty image"),
    ("image-custom", CUSTOM, put("size", "300000"), "size as a string"),
    ("image-custom", CUSTOM, put("created", "2026-11-25 15:02:03"), "timestamp without T and Z"),
    ("image-custom", CUSTOM, put("deprecated", {"at": TS}), "deprecated without reason"),
    ("image-custom", CUSTOM, put("parent", "slc5-wn@Stable"), "parent with a bad channel"),
    ("image-custom", CUSTOM, put("build_record", ["not", "an", "object"]), "build_record not an object"),
    ("image-custom", CUSTOM, put("build_record", {"log": {"seconds": 412.5}}), "float in build_record"),
    ("image-role-extension", EXT, drop("revoked"), "missing revoked"),
    ("image-role-extension", EXT, put("aliases", {}), "unknown member"),
    ("image-role-extension", EXT, put("channels", {"Stable": {"version": "6.1", "updated": TS}}), "bad channel"),
    ("image-role-extension", EXT, put("channels", {"stable": {"version": "6.1"}}), "channel without updated"),
    ("image-role-extension", EXT, put("channels", {"stable": "6.1"}), "channel as a bare version"),
    ("image-role-extension", EXT, put("revoked", {"6..3": EXT["revoked"]["6.3"]}), "bad revoked version"),
    ("image-role-extension", EXT, revoked(reason=""), "empty reason"),
    ("image-role-extension", EXT, revoked(reason="built  from\ta mirror"), "reason not whitespace-collapsed"),
    ("image-role-extension", EXT, revoked(sha256=[]), "no digests"),
    ("image-role-extension", EXT, revoked(sha256=[HEX, HEX]), "repeated digest"),
    ("image-role-extension", EXT, revoked(sha256=[HEX.upper()]), "upper-case digest"),
    ("pull-result", PULL, put("arch", "amd64"), "unknown arch"),
    ("pull-result", PULL, drop("cached"), "missing cached"),
    ("pull-result", PULL, put("cached", "no"), "cached not a boolean"),
    ("pull-result", PULL, put("deprecated", ""), "deprecated neither null nor an object"),
    ("pull-result", PULL, put("sha256", HEX[:63]), "short digest"),
    ("pull-result", PULL, put("os", "slc"), "unknown field"),
    ("list-entry", ENTRY, drop("channels"), "missing channels"),
    ("list-entry", ENTRY, drop("os"), "missing os (null when absent)"),
    ("list-entry", ENTRY, put("os", "debian"), "os without os_version"),
    ("list-entry", ENTRY, put("channels", ["stable", "stable"]), "repeated channel"),
    ("list-entry", ENTRY, put("channels", ["Stable"]), "bad channel"),
    ("list-entry", ENTRY, put("arch", "sparc64"), "unknown arch"),
    ("list-entry", ENTRY, put("path", "x"), "unknown field"),
    ("show", SHOW_NAME, drop("revoked"), "name without revoked"),
    ("show", SHOW_NAME, put("images", [{**ENTRY}]), "image summary with channels"),
    ("show", SHOW_NAME, put("channels", {"stable": "6.1"}), "channel as a bare version"),
    ("show", SHOW_FULL, drop("path"), "image without its path"),
    ("show", SHOW_FULL, drop("sha256"), "image without its digest"),
    ("show", SHOW_FULL, put("path", "../etc/passwd"), "path with '..'"),
    ("show", SHOW_FULL, put("channels", ["stable"]), "unknown field"),
    ("image-custom", TESTED, boot(seconds=85.5), "float seconds in boot_test"),
    ("image-custom", TESTED, boot(seconds="85"), "seconds as a string"),
    ("image-custom", TESTED, boot(extra=1), "unknown member of boot_test"),
    ("image-custom", TESTED, boot(host=...), "boot_test without host"),
    ("image-custom", TESTED, boot(accel="hvf"), "unknown accelerator"),
    ("image-custom", TESTED, boot(passed="yes"), "passed not a boolean"),
    ("image-custom", TESTED, boot(marker="login:\x1b[2J"), "control character in marker"),
    ("image-custom", TESTED, boot(image_sha256=HEX.upper()), "upper-case digest"),
    ("image-custom", TESTED, put("boot_test", None), "null boot_test (optional fields are omitted)"),
    ("show", {**SHOW_FULL, "boot_test": BOOT}, boot(at="2026-11-25"), "boot_test at without a time"),
    ("targets-extension", PROTECTED, put("protected_channels", []), "empty (the member is omitted instead)"),
    ("targets-extension", PROTECTED, put("protected_channels", ["stable", "stable"]), "repeated channel"),
    ("targets-extension", PROTECTED, put("protected_channels", ["Stable"]), "bad channel"),
    ("targets-extension", PROTECTED, put("aliases", {}), "unknown member"),
    ("plan", PLAN, drop("entries"), "no entries"),
    ("plan", PLAN, entry(job="slc3.worker-ia64"), "job with a dot"),
    ("plan", PLAN, entry(build_key=HEX[:12]), "short build key"),
    ("plan", PLAN, entry(cached=...), "entry without cached"),
    ("plan", PLAN, entry(source_date_epoch=...), "entry without source_date_epoch"),
    ("plan", PLAN, entry(source_date_epoch="1700000000"), "epoch as a string"),
    ("plan", PLAN, entry(formats=[]), "no formats"),
    ("plan", PLAN, entry(arch="sparc64"), "unknown arch"),
    ("plan", PLAN, entry(extra=1), "unknown entry member"),
    ("plan", PLAN, runner(tags=["imagectl", "x86_64", "kvm"]), "a third tag"),
    ("plan", PLAN, runner(tags=["ia64"]), "tags without imagectl"),
    ("plan", PLAN, runner(kvm="yes"), "kvm not a boolean"),
    ("plan", PLAN, runner(why="two\nlines"), "why on two lines"),
    ("plan", PLAN, runner(buildable_here=...), "runner without buildable_here"),
]


@pytest.mark.parametrize(("schema", "base", "mutate"), [pytest.param(s, b, m, id=f"{s}: {i}") for s, b, m, i in BAD])
def test_schema_refuses_malformed_document(schema: str, base: Doc, mutate: Callable[[Doc], Doc]) -> None:
    assert_valid(schema, base)  # the well-formed document passes, so what fails is the mutation
    assert not validator(schema).is_valid(mutate(base))


def test_non_object_documents_are_refused() -> None:
    for name in SCHEMAS:
        non_objects: tuple[Any, ...] = (None, [], "x", 1)
        for doc in non_objects:
            assert not validator(name).is_valid(doc), name
