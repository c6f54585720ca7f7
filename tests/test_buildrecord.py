"""imagectl/buildrecord.py: the build record written by ``imagectl build`` reads back as itself, matches
catalogue/schema/build-record.schema.json, and malformed records are refused with one line naming file and member."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl import buildrecord
from imagectl.buildrecord import BootTest, BuildRecord, NotJSONError, Target, parse
from imagectl.errors import InvalidInputError
from imagectl.imaging.bootrecord import open_record
from tests.conftest import CliResult
from tests.test_build_fake import DEMO, fake_dib  # noqa: F401  (the stand-in disk-image-create fixture)
from tests.test_schema import BOOT, HEX, assert_valid, validator

Doc = dict[str, Any]
TS = BOOT["at"]
BASE: Doc = {  # every member imagectl writes, shaped as `imagectl build` and `imagectl test --record` write them
    "format": 1,
    "imagectl": "0.1.0",
    "target": {
        "name": "wn",
        "recipe": "wn",
        "arch": "x86_64",
        "hypervisor": "hvm",
        "os": "debian",
        "os_version": "12",
        "version": None,
    },
    "recipe": {"path": "/r/wn.yaml", "digest": "sha256:" + HEX, "chain": ["/r/wn.yaml"], "merged": {"name": "wn"}},
    "dib": {
        "version": "3.43.0",
        "elements_digest": "sha256:" + HEX,
        "command": ["disk-image-create", "-a", "amd64"],
        "env": {"DIB_RELEASE": "bookworm"},
        "elements": ["vm"],
    },
    "build_key": HEX,
    "host": {"kernel": "6.1", "device_mapper": False, "hostcompat_partx_shims": True},
    "notes": [],
    "started": TS,
    "finished": "2026-12-01T10:03:28Z",
    "seconds": 208,
    "packages": [{"name": "bash", "version": "5.2.15-2", "arch": "amd64"}],
    "images": [{"file": "wn-x86_64.qcow2", "format": "qcow2", "size": 4100, "sha256": HEX}],
    "log": "wn-x86_64.log",
    "package_cache": {"hits": 3, "base": {"key": None, "reused": False}},
    "initramfs_cache": {  # as imagectl/imaging/initramfs.py reports: one made and filed, one reused
        "kernels": [
            {"version": "6.1.0-57-amd64", "reused": False, "seconds": 17.2, "cached_as": HEX},
            {"version": "6.1.0-58-amd64", "reused": True, "seconds": 0.9},
        ]
    },
    "source_date_epoch": 1795897038,  # build --reproducible
    "reproducible": True,
    "boot_test": BOOT,
}


def _built(cli: Callable[..., CliResult], out: Path) -> Path:
    r = cli("build", DEMO, "--arch", "x86_64", "--hypervisor", "hvm", "-o", out)
    assert r.code == 0, r.err
    return out / "debian12-demo-x86_64.build.json"


@pytest.mark.usefixtures("fake_dib")
def test_a_built_record_reads_back_as_itself_and_matches_the_schema(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    path = _built(cli, tmp_path / "out")
    data = path.read_bytes()
    record = parse(data, str(path))
    assert record.to_json().encode() == data  # byte for byte: what build wrote is what the type writes
    assert parse(record.to_json().encode(), "again") == record
    assert record.to_dict() == json.loads(data)
    assert record.target == Target("debian12-demo", "debian12-demo", "x86_64", "hvm", "debian", "12", None)
    assert [(p.name, p.version, p.arch) for p in record.packages or ()] == [("openssh-server", "1:9.2", "amd64")]
    assert record.images_by_format()["qcow2"] == record.image("debian12-demo-x86_64.qcow2")
    assert record.boot_test is None and "boot_test" not in json.loads(data)
    assert_valid("build-record", json.loads(data), str(path))
    # imagectl test --record adds the boot test through the same type: still itself, still valid
    image = path.with_name("debian12-demo-x86_64.qcow2")
    result = open_record(image).write(passed=True, marker="login:", accel="tcg", seconds=12.4)
    tested = parse(path.read_bytes(), str(path))
    assert tested.boot_test == BootTest(**result) and tested.boot_test.seconds == 12
    assert tested.to_json() == path.read_text() and tested.to_dict() == {**record.to_dict(), "boot_test": result}
    assert_valid("build-record", json.loads(path.read_bytes()), f"{path} with a boot test")


def test_every_member_round_trips_and_validates() -> None:
    record = buildrecord.from_dict(copy.deepcopy(BASE), "base")
    assert record.to_dict() == BASE and parse(record.to_json().encode(), "base") == record
    assert record.package_cache == BASE["package_cache"] and record.host == BASE["host"]
    assert record.initramfs_cache == BASE["initramfs_cache"]
    assert_valid("build-record", BASE)


@pytest.mark.parametrize(
    "doc",
    [
        {"format": 1, "target": {}},
        {"format": 1, "target": {"name": "wn"}, "packages": [{"name": "bash"}], "recipe": {"digest": "d"}},
        {"format": 1, "target": {"version": "7"}, "boot_test": None},
        {"format": 1, "target": {"name": "wn", "x-new": 1}, "sbom": {"spdx": "2.3"}, "images": []},
        {"format": 1, "target": {}, "packages": [{"name": "bash", "license": "GPL-3+", "licence": "GPL"}]},
    ],
    ids=["minimal", "some-members", "null-boot-test", "unknown-members", "licence"],
)
def test_a_record_with_fewer_or_unknown_members_is_written_back_unchanged(doc: Doc) -> None:
    """Hand-written and older records name fewer members, a newer imagectl may add some: publish stores (and signs)
    the record as read, so nothing is added, dropped or turned into null."""
    record = buildrecord.from_dict(copy.deepcopy(doc), "hand.build.json")
    assert record.to_dict() == doc
    assert json.dumps(record.to_dict(), sort_keys=True) == json.dumps(doc, sort_keys=True)


def test_unknown_members_are_kept_but_not_part_of_the_schema() -> None:
    doc = {**BASE, "sbom": {"spdx": "2.3"}}
    assert buildrecord.from_dict(doc, "newer").extra == {"sbom": {"spdx": "2.3"}}
    assert not validator("build-record").is_valid(doc)  # the schema says what imagectl writes


def test_to_dict_is_a_copy() -> None:
    record = buildrecord.from_dict(copy.deepcopy(BASE), "base")
    out = record.to_dict()
    out["recipe"]["merged"]["name"] = "changed"
    out["package_cache"]["hits"] = 0
    assert record.to_dict() == BASE


def test_redacted_removes_credentials() -> None:
    doc = copy.deepcopy(BASE)
    doc["dib"]["env"]["DIB_DISTRIBUTION_MIRROR"] = "http://user:secret@mirror.example/debian"
    record = buildrecord.from_dict(doc, "base").redacted()
    assert "secret" not in record.to_json() and record.dib is not None
    assert record.dib.env == {
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": "http://<hidden>@mirror.example/debian",
    }


def put(path: str, value: Any) -> Callable[[Doc], Doc]:
    """Set (or, with ``...``, delete) the member at a dotted path such as ``images.0.sha256``."""

    def change(doc: Doc) -> Doc:
        doc = copy.deepcopy(doc)
        *parents, last = path.split(".")
        where: Any = doc
        for p in parents:
            where = where[int(p)] if isinstance(where, list) else where[p]
        if value is ...:
            del where[last]
        elif isinstance(where, list):
            where[int(last)] = value
        else:
            where[last] = value
        return doc

    return change


F = "/b/wn.build.json"
BAD = [
    (put("target", ...), f"{F} is not an imagectl build record (format 1)"),
    (put("target", "wn"), f"{F} is not an imagectl build record (format 1)"),
    (put("format", 2), f"{F} is not an imagectl build record (format 1)"),
    (put("format", True), f"{F} is not an imagectl build record (format 1)"),
    (put("target.os", 12), f"{F}: target.os is missing or not a string"),
    (put("target.name", None), f"{F}: target.name is missing or not a string"),
    (put("target.version", 7), f"{F}: target.version must be a string or null"),
    (put("images", {"file": "x"}), f"{F}: images must be a list"),
    (put("images.0", "wn.qcow2"), f"{F}: images[] entries need a file name and a format"),
    (put("images.0.format", ...), f"{F}: images[] entries need a file name and a format"),
    (put("images.0.sha256", HEX.upper()), f"{F}: images[0].sha256 must be 64 lower-case hex digits"),
    (put("images.0.sha256", HEX[:63]), f"{F}: images[0].sha256 must be 64 lower-case hex digits"),
    (put("images.0.size", "4100"), f"{F}: images[0].size must be a whole number of bytes (0 or more)"),
    (put("images.0.size", -1), f"{F}: images[0].size must be a whole number of bytes (0 or more)"),
    (put("images.0.size", True), f"{F}: images[0].size must be a whole number of bytes (0 or more)"),
    (put("packages", None), f"{F}: packages must be a list"),
    (put("packages.0", ["bash"]), f"{F}: packages[0] must be an object"),
    (put("packages.0.name", ...), f"{F}: packages[0].name must be a string"),
    (put("packages.0.version", 5), f"{F}: packages[0].version must be a string"),
    (put("started", "2026-12-01 10:00:00"), f"{F}: started must be a UTC timestamp like 2026-11-25T15:02:03Z"),
    (put("seconds", 208.5), f"{F}: seconds must be a whole number of seconds (0 or more)"),
    (put("build_key", None), f"{F}: build_key must be a string"),
    (put("notes", "none"), f"{F}: notes must be a list of strings"),
    (put("recipe", []), f"{F}: recipe must be an object"),
    (put("recipe.merged", ["vm"]), f"{F}: recipe.merged must be an object"),
    (put("recipe.chain", [1]), f"{F}: recipe.chain must be a list of strings"),
    (put("dib.command", "disk-image-create -a amd64"), f"{F}: dib.command must be a list of strings"),
    (put("dib.env", {"DIB_RELEASE": 12}), f"{F}: dib.env must be an object of strings"),
    (put("host", {"kernel": 6}), f"{F}: host must be an object of strings and booleans"),
    (put("package_cache", "yes"), f"{F}: package_cache must be an object"),
    (put("source_date_epoch", "1795897038"), f"{F}: source_date_epoch must be a whole number of seconds (0 or more)"),
    (put("source_date_epoch", -1), f"{F}: source_date_epoch must be a whole number of seconds (0 or more)"),
    (put("reproducible", 1), f"{F}: reproducible must be true or false"),
    (put("reproducible", None), f"{F}: reproducible must be true or false"),
    (put("boot_test", []), f"build record {F}: boot_test is not an object"),
    (put("boot_test.seconds", 85.5), f"build record {F}: boot_test seconds must be a whole number, not 85.5"),
    (put("boot_test.accel", "hvf"), f"build record {F}: boot_test accel must be kvm or tcg, not 'hvf'"),
    (put("boot_test.extra", 1), f"build record {F}: boot_test has unknown member 'extra'"),
    (put("boot_test.at", TS[:10]), f"build record {F}: boot_test at must be a UTC timestamp like 2026-11-25T15:02:03Z"),
]


@pytest.mark.parametrize(("mutate", "message"), [pytest.param(m, msg, id=msg.split(": ", 1)[-1]) for m, msg in BAD])
def test_a_malformed_record_is_refused_with_one_line_naming_file_and_member(
    mutate: Callable[[Doc], Doc], message: str
) -> None:
    doc = mutate(BASE)
    with pytest.raises(InvalidInputError) as e:
        parse(json.dumps(doc).encode(), F)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert not validator("build-record").is_valid(doc)  # the schema refuses it too


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", f"{F} is not a readable build record: Expecting property name enclosed in double quotes"),
        (b'{"format": 1, "target": {}, "log": "\xff"}', f"{F} is not a readable build record: not UTF-8 (byte 36)"),
        (b"\xff\xfe{\x00}\x00", f"{F} is not a readable build record: not UTF-8 (byte 0)"),  # UTF-16 is not taken
        (b'{"format": 1, "target": {}, "seconds": NaN}', f"{F} is not a readable build record: NaN is not a JSON"),
        (b"[" * 100_000 + b"]" * 100_000, f"{F} is not a readable build record: maximum recursion depth"),
        (b"[]", f"{F} is not an imagectl build record (format 1)"),
    ],
    ids=["not-json", "not-utf8", "utf16", "nan", "deep", "not-an-object"],
)
def test_bytes_that_are_no_json_record_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        parse(data, F)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert isinstance(e.value, NotJSONError) == ("readable" in message)


def test_a_huge_record_is_refused_before_it_is_decoded() -> None:
    data = b'{"format": 1, "target": {}, "log": "' + b"x" * buildrecord.MAX_SIZE + b'"}'
    with pytest.raises(InvalidInputError) as e:
        parse(data, F)
    assert str(e.value) == f"{F} is {len(data)} bytes, more than the {buildrecord.MAX_SIZE} a build record may have"


def test_the_type_is_frozen_and_knows_what_publish_needs() -> None:
    record = buildrecord.from_dict({"format": 1, "target": {"name": "wn", "os": "slc"}}, "r")
    with pytest.raises(AttributeError):
        record.log = "x"  # type: ignore[misc]
    assert record.target.missing() == ("arch", "hypervisor", "os_version")
    assert BuildRecord(Target(name="wn")).to_dict() == {"format": 1, "target": {"name": "wn", "version": None}}


def test_the_module_imports_nothing_of_the_catalogue() -> None:
    probe = "import sys, imagectl.buildrecord; print(sorted(m for m in sys.modules if m.startswith('imagectl.')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "imagectl.catalogue" not in out.stdout and "imagectl.buildrecord" in out.stdout, out.stdout
