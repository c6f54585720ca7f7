"""Mutants of imagectl/catalogue/publish.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.errors import InvalidInputError
from tests.conftest import EXPIRY, Catalogue, CliResult, write_pattern

ARCH = "x86_64"


def error_line(r: CliResult) -> str:
    lines = [line for line in r.err.splitlines() if line.startswith("imagectl: error:")]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


def _metadata(cat: Catalogue) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cat.dir / "metadata").iterdir())}


def test_same_bytes_same_version_other_format_is_a_conflict(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Mutant: the immutability check without ``old.format != fmt``. The same bytes published again under the
    same version as another format would have been a silent no-op (exit 0, "created": false) that leaves the
    version's format what it was, while the publisher believes it published a raw image."""
    img = make_image(seed="fmt")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--format", "qcow2")
    assert r.code == 0, r.err
    before = _metadata(catalogue)
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--format", "raw")
    assert r.code == 6, r.err
    assert error_line(r).startswith("imagectl: error: wn:1 (x86_64) is already published with ")
    assert error_line(r).endswith("; versions are immutable")
    assert _metadata(catalogue) == before  # nothing signed


def test_a_format_conflict_does_not_claim_other_bytes(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """The refusal names what differs: the format, not the bytes (which are the same, sha256 and all)."""
    img = make_image(seed="fmt")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--format", "qcow2")
    assert r.code == 0, r.err
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--format", "raw")
    assert r.code == 6, r.err
    assert error_line(r) == (
        f"imagectl: error: wn:1 ({ARCH}) is already published with format qcow2 (these same bytes as raw); "
        "versions are immutable"
    )


# -- publish --from-build: what a build record puts into the signed metadata ------------------------------------------
def _record(arch: str, image: str, fmt: str, hypervisor: str = "hvm", **extra: object) -> dict[str, object]:
    # Keys deliberately out of order: the stored blob is the record with sorted keys.
    return {
        "target": {"os_version": "12", "os": "debian", "hypervisor": hypervisor, "arch": arch, "name": "wn"},
        "format": 1,
        "images": [{"format": "raw", "file": f"wn-{arch}.raw"}, {"format": fmt, "file": image}],
        **extra,
    }


def _build_dir(tmp_path: Path, records: dict[str, dict[str, object]]) -> Path:
    d = tmp_path / "build"
    d.mkdir(exist_ok=True)
    for name, record in records.items():
        for image in record["images"]:  # type: ignore[attr-defined]
            write_pattern(d / image["file"], 8192, seed=image["file"])
        (d / name).write_text(json.dumps(record))
    return d


def _show(cli: Callable[..., CliResult], cat: Catalogue, ref: str, arch: str) -> dict[str, object]:
    r = cli("catalogue", "show", ref, "--arch", arch, "--catalogue", cat.dir, "--root", cat.root, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)  # type: ignore[no-any-return]


def test_publish_from_build_signs_the_record_summary_and_shares_one_version(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutants of publish_build: every field of the signed build-record summary, the blob's sorted JSON, the chosen
    format (a file name whose extension says nothing), the channel, the recipe digest, and one automatic version
    shared by every record of the build."""
    digest = "sha256:" + "d" * 64
    packages = [{"name": "bash"}, {"name": "zsh"}, {"name": "vim"}]
    a = _record("x86_64", "wn-x86_64.img", "qcow2", recipe={"digest": digest, "path": "r.yaml"},
                dib={"version": "3.30.0"}, build_key="k1", started="2026-12-01T10:00:00Z",
                finished="2026-12-01T10:09:00Z", packages=packages)  # fmt: skip
    b = _record("i386", "wn-i386.img", "qcow2", hypervisor="xen-pv")
    d = _build_dir(tmp_path, {"a.build.json": a, "b.build.json": b})
    r = cli("publish", "--from-build", d, *catalogue.args(), "--format", "qcow2", "--channel", "stable", "--json")
    assert r.code == 0, r.err
    published = json.loads(r.out)
    assert [(p["arch"], p["format"]) for p in published] == [("x86_64", "qcow2"), ("i386", "qcow2")]
    version = published[0]["version"]
    assert published[1]["version"] == version  # one automatic version for the whole build
    shown = _show(cli, catalogue, "wn@stable", "x86_64")
    assert shown["version"] == version and shown["format"] == "qcow2"
    assert (shown["os"], shown["os_version"], shown["hypervisor"]) == ("debian", "12", "hvm")
    assert shown["recipe_digest"] == digest
    blob = json.dumps(json.loads((d / "a.build.json").read_text()), sort_keys=True).encode()
    assert shown["build_record"] == {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "build_key": "k1",
        "started": "2026-12-01T10:00:00Z",
        "finished": "2026-12-01T10:09:00Z",
        "dib_version": "3.30.0",
        "packages": 3,
    }
    assert (catalogue.dir / "blobs/sha256" / hashlib.sha256(blob).hexdigest()).read_bytes() == blob
    other = _show(cli, catalogue, f"wn:{version}", "i386")
    assert other["hypervisor"] == "xen-pv" and other["build_record"]["packages"] == 0 and "recipe_digest" not in other  # type: ignore[index]
    assert set(other["build_record"]) == {"sha256", "size", "packages"}  # type: ignore[arg-type]


def test_publish_from_build_under_a_given_version_and_from_one_record_file(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """``--version`` wins over the record's, for every record; a single ``*.build.json`` is a source too."""
    d = _build_dir(tmp_path, {"a.build.json": {**_record("x86_64", "wn.qcow2", "qcow2"), "target": {
        **_record("x86_64", "", "")["target"], "version": "from-record"}}})  # type: ignore[dict-item]  # fmt: skip
    r = cli("publish", "--from-build", d / "a.build.json", *catalogue.args(), "--version", "7", "--json")
    assert r.code == 0, r.err
    assert [(p["version"], p["format"]) for p in json.loads(r.out)] == [("7", "raw")]  # the first image
    r = cli("publish", "--from-build", d, *catalogue.args(), "--format", "qcow2", "--json")
    assert r.code == 0, r.err
    assert [(p["version"], p["format"]) for p in json.loads(r.out)] == [("from-record", "qcow2")]


def _refused(r: CliResult, code: int, *lines: str) -> None:
    assert r.code == code, (r.code, r.err)
    assert r.err.splitlines() == [f"imagectl: error: {lines[0]}", *(f"hint: {h}" for h in lines[1:])]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "{f} is not an imagectl build record (format 1)"),
        ({"format": 2, "target": {}}, "{f} is not an imagectl build record (format 1)"),
        ({"format": 1, "target": "wn"}, "{f} is not an imagectl build record (format 1)"),
        ({"format": 1, "target": {}, "images": {"file": "x"}}, "{f}: images must be a list"),
        ({"format": 1, "target": {}, "images": ["wn.qcow2"]}, "{f}: images[] entries need a file name and a format"),
        ({"format": 1, "target": {}, "images": [{"file": "wn.qcow2"}]},
         "{f}: images[] entries need a file name and a format"),
        ({"format": 1, "target": {}, "images": [{"file": "", "format": "raw"}]},
         "{f}: image file '' is not a plain file name in the build directory"),
        ({"format": 1, "target": {}, "images": [{"file": "a\0b", "format": "raw"}]},
         "{f}: image file 'a\\x00b' is not a plain file name in the build directory"),
        ({"format": 1, "target": {}, "images": [{"file": "gone.raw", "format": "raw"}]},
         "{f}: image file gone.raw is missing from {d}"),
        ({"format": 1, "target": {}, "images": [{"file": "x" * 300, "format": "raw"}]},
         "cannot read {d}/" + "x" * 300 + ": File name too long"),
        ({"format": 1, "target": {}, "images": [{"file": "wn.raw", "format": "raw"},
                                                {"file": "wn.vmdk", "format": "vmdk"}]},
         "{f} has no qcow2 image (formats: raw, vmdk)"),
        ({"format": 1, "target": {"name": "wn", "arch": "x86_64", "hypervisor": "hvm", "os": 12},
          "images": [{"file": "wn.raw", "format": "raw"}]}, "{f}: target.os is missing or not a string"),
    ],
    ids=["list", "format-2", "target-not-object", "images-not-list", "image-not-object", "image-without-format",
         "empty-file-name", "nul-in-file-name", "missing-file", "file-name-too-long", "no-such-format",
         "target-field-missing"],
)  # fmt: skip
def test_publish_from_build_refuses_a_bad_record_with_its_reason(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, record: object, message: str
) -> None:
    d = tmp_path / "build"
    d.mkdir()
    write_pattern(d / "wn.raw", 4096)
    write_pattern(d / "wn.vmdk", 4096)
    f = d / "wn.build.json"
    f.write_text(json.dumps(record))
    r = cli("publish", "--from-build", d, *catalogue.args(), "--format", "qcow2" if "qcow2" in message else "raw")
    code = 14 if "cannot read" in message else 4 if "missing from" in message or "has no" in message else 3
    _refused(r, code, message.format(f=f, d=d))
    assert not (catalogue.dir / "blobs").exists() or "target.os" in message  # the record blob goes first


def test_publish_from_build_refuses_unreadable_sources_with_their_reason(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(cli("publish", "--from-build", empty, *catalogue.args()), 4,
             f"no build records (*.build.json) in {empty}", "run imagectl build first")  # fmt: skip
    long = tmp_path / ("y" * 300)
    _refused(cli("publish", "--from-build", long, *catalogue.args()), 14, f"cannot read {long}: File name too long")
    (empty / "x.build.json").write_text("{not json")
    r = cli("publish", "--from-build", empty, *catalogue.args())
    _refused(r, 3, f"{empty / 'x.build.json'} is not a readable build record: "
             "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")  # fmt: skip
    (empty / "x.build.json").unlink()
    os.mkfifo(empty / "x.build.json")
    _refused(cli("publish", "--from-build", empty, *catalogue.args()), 3,
             f"build record {empty / 'x.build.json'} is a FIFO, not a regular file")  # fmt: skip


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({1: "one"}, "build record has a non-string key 1"),
        ({"a": {"b": [1, 2.5]}}, "build record contains a fractional number (2.5); store it as a string"),
        ({"a": [{"b": {1, 2}}]}, "build record contains a set, which JSON cannot hold"),
    ],
)
def test_a_build_record_json_cannot_hold_is_refused_before_any_upload(
    catalogue: Catalogue, make_image: Callable[..., Path], record: dict[object, object], message: str
) -> None:
    """Mutants of _check_canonical: its recursion into lists and dicts, and what each refusal says."""
    req = PublishRequest(file=str(make_image()), name="wn", arch=ARCH, build_record=record)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError) as e:
        publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert str(e.value) == message
    assert not (catalogue.dir / "blobs").exists()


# -- promote, deprecate, revoke: what they refuse and say -------------------------------------------------------------
def test_promote_deprecate_revoke_name_what_is_wrong(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    args = catalogue.args()
    _refused(cli("promote", "wn", "stable", *args), 3, "promote needs NAME:VERSION, got 'wn'")
    _refused(cli("deprecate", "wn@stable", *args), 3, "deprecate needs NAME:VERSION, got 'wn@stable'")
    _refused(cli("revoke", "wn", "--reason", "x", *args), 3, "revoke needs NAME:VERSION, got 'wn'")
    _refused(cli("revoke", "wn:1", "--reason", " \t", *args), 3,
             "revoke needs a non-empty --reason: deployers are shown it")  # fmt: skip
    _refused(cli("promote", "wn:1", "stable", *args), 4, "no image named 'wn' in the catalogue (images: none)")
    for v in ["9", "10", *(f"1.{i}" for i in range(10))]:
        r = cli("publish", make_image(seed=v), *args, "--name", "wn", "--arch", ARCH, "--version", v)
        assert r.code == 0, r.err
    assert cli("publish", make_image(seed="o"), *args, "--name", "other", "--arch", ARCH).code == 0
    _refused(cli("promote", "nope:1", "stable", *args), 4, "no image named 'nope' in the catalogue (images: other, wn)")
    newest_ten = "1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 9, 10"  # natural order: 10 after 9, 1.0 and 1.1 dropped
    _refused(cli("deprecate", "wn:8", *args), 4, f"wn has no version '8' (versions: {newest_ten})")
    r = cli("promote", "wn:9", "stable", *args, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"ref": "wn:9", "channel": "stable", "previous": None}
    r = cli("promote", "wn:10", "stable", *args)
    assert r.code == 0 and r.out.strip() == "stable -> wn:10 (was 9)", r.out
    assert cli("revoke", "wn:10", "--reason", "broken", *args).code == 0
    _refused(cli("promote", "wn:10", "stable", *args), 5,
             "wn:10 was revoked (broken); versions are never reused")  # fmt: skip
