"""``imagectl diff`` and ``imagectl sbom``: from build-record files and from the signed record blobs of a catalogue."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Catalogue, CliResult, require_tools, write_pattern

DEB = [
    {"name": "bash", "version": "5.2.15-2", "arch": "amd64", "license": "GPL-3+"},
    {"name": "libc6", "version": "2.36-9", "arch": "amd64"},
    {"name": "openssl", "version": "3.0.11-1", "arch": "amd64"},
    {"name": "vim", "version": "2:9.0.1378-2", "arch": "amd64"},
]
DEB2 = [
    {"name": "bash", "version": "5.2.15-2", "arch": "amd64", "license": "GPL-3+"},
    {"name": "curl", "version": "7.88.1-10", "arch": "amd64"},
    {"name": "libc6", "version": "2.36-9+deb12u3", "arch": "amd64"},
    {"name": "openssl", "version": "3.0.13-1", "arch": "amd64"},
]
RECIPE = {"release": {"family": "debian", "release": "12"}, "elements": ["vm", "cloud-init"], "size": "4G"}
RECIPE2 = {"release": {"family": "debian", "release": "12"}, "elements": ["vm"], "size": "6G", "users": {"x": 1}}


def _build(d: Path, packages: list[dict[str, str]], recipe: dict[str, Any], size: int, seed: str) -> Path:
    """A build directory as `imagectl build` leaves it: one qcow2 image and its record."""
    d.mkdir(parents=True)
    image = write_pattern(d / "wn-x86_64.qcow2", size, seed=seed)
    record = {
        "format": 1,
        "target": {"name": "wn", "arch": "x86_64", "hypervisor": "hvm", "os": "debian", "os_version": "12"},
        "recipe": {"path": "wn.yaml", "digest": "sha256:" + "d" * 64, "merged": recipe},
        "finished": "2026-12-01T10:09:00Z",
        "packages": packages,
        "images": [
            {
                "file": image.name,
                "format": "qcow2",
                "size": size,
                "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
            }
        ],
    }
    path = d / "wn-x86_64.build.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def _two(tmp_path: Path) -> tuple[Path, Path]:
    return (
        _build(tmp_path / "b1", DEB, RECIPE, 8192, "one"),
        _build(tmp_path / "b2", DEB2, RECIPE2, 12288, "two"),
    )


def _publish(cli: Callable[..., CliResult], cat: Catalogue, record: Path, version: str) -> None:
    r = cli("publish", "--from-build", record, *cat.args(), "--version", version, "--channel", "stable", "--json")
    assert r.code == 0, r.err


def _expect_exact(diff: dict[str, Any]) -> None:
    assert diff["packages"] == {
        "added": [{"name": "curl", "version": "7.88.1-10", "arch": "amd64"}],
        "removed": [{"name": "vim", "version": "2:9.0.1378-2", "arch": "amd64"}],
        "changed": [
            {"name": "libc6", "arch": "amd64", "from": "2.36-9", "to": "2.36-9+deb12u3"},
            {"name": "openssl", "arch": "amd64", "from": "3.0.11-1", "to": "3.0.13-1"},
        ],
    }
    assert diff["recipe"] == {
        "elements": {"a": ["vm", "cloud-init"], "b": ["vm"]},
        "size": {"a": "4G", "b": "6G"},
        "users.x": {"a": None, "b": 1, "only": "b"},
    }
    assert diff["size"] == {"format": "qcow2", "a": 8192, "b": 12288, "change": 4096}


def test_diff_of_two_record_files(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    a, b = _two(tmp_path)
    r = cli("diff", a, b, "--json")
    assert r.code == 0, r.err
    _expect_exact(json.loads(r.out))
    r = cli("diff", a, b)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert "packages: 1 added, 1 removed, 2 changed" in lines
    assert "+ curl 7.88.1-10 amd64" in lines and "- vim 2:9.0.1378-2 amd64" in lines
    assert "~ openssl 3.0.11-1 -> 3.0.13-1 amd64" in lines
    assert "+ users.x: 1" in lines and '~ size: "4G" -> "6G"' in lines
    assert "size (qcow2): 8192 -> 12288 bytes (+4096)" in lines
    same = cli("diff", a, a, "--json")
    assert json.loads(same.out)["packages"] == {"added": [], "removed": [], "changed": []}


def test_diff_of_two_published_versions(catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    a, b = _two(tmp_path)
    _publish(cli, catalogue, a, "1")
    _publish(cli, catalogue, b, "2")
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    r = cli("diff", "wn:1", "wn@stable", *where, "--json")
    assert r.code == 0, r.err
    diff = json.loads(r.out)
    assert (diff["a"], diff["b"]) == ("wn:1 (x86_64)", "wn:2 (x86_64)")
    _expect_exact(diff)
    mixed = cli("diff", a, "wn:2", *where, "--json")  # a record file against a published image
    assert mixed.code == 0, mixed.err
    assert json.loads(mixed.out)["packages"] == diff["packages"]


def _blob_of(cli: Callable[..., CliResult], cat: Catalogue, ref: str) -> Path:
    r = cli("catalogue", "show", ref, "--arch", "x86_64", "--catalogue", cat.dir, "--root", cat.root, "--json")
    assert r.code == 0, r.err
    return cat.dir / "blobs" / "sha256" / json.loads(r.out)["build_record"]["sha256"]


def test_a_tampered_or_missing_record_blob_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    a, b = _two(tmp_path)
    _publish(cli, catalogue, a, "1")
    _publish(cli, catalogue, b, "2")
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    blob = _blob_of(cli, catalogue, "wn:2")
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b"curl", b"curk"))  # same size, other bytes
    r = cli("diff", "wn:1", "wn:2", *where)
    assert r.code == 11, r.err
    assert "wn:2 (x86_64): its build record does not match the signed size and SHA-256" in r.err
    assert len(r.err.strip().splitlines()) == 1 and r.out == ""
    blob.write_bytes(good + b" ")  # longer than signed
    assert cli("sbom", "wn:2", *where).code == 11
    blob.unlink()
    r = cli("sbom", "wn:2", *where)
    assert r.code == 11 and "is missing from the catalogue" in r.err


def test_errors_are_one_line_with_distinct_codes(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    a, _ = _two(tmp_path)
    missing = cli("diff", a, tmp_path / "nope.build.json")
    assert missing.code == 14 and "nope.build.json does not exist" in missing.err
    bad = tmp_path / "bad.build.json"
    bad.write_text("{not json")
    unreadable = cli("diff", a, bad)
    assert unreadable.code == 3 and "is not a readable build record" in unreadable.err
    bad.write_text('{"format": 2}')
    assert cli("sbom", bad).code == 3
    r = cli("publish", make_image(), *catalogue.args(), "--name", "plain", "--arch", "x86_64", "--version", "1")
    assert r.code == 0, r.err
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    norecord = cli("diff", "plain:1", a, *where)
    assert norecord.code == 4 and "plain:1 (x86_64) has no build record" in norecord.err
    for r in (missing, unreadable, norecord):
        assert r.err.startswith("imagectl: error: ") and r.out == ""
        assert len([line for line in r.err.splitlines() if not line.startswith("hint: ")]) == 1


def _validate(path: Path) -> None:
    """SPDX's own reader: pyspdxtools parses and validates the document (exit 0; its API finds no problem)."""
    require_tools("pyspdxtools", install="pip install spdx-tools")
    p = subprocess.run(["pyspdxtools", "-i", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "invalid" not in p.stderr, p.stdout + p.stderr  # it says only what is wrong
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    assert validate_full_spdx_document(parse_file(str(path))) == []


def test_sbom_of_a_record_file_is_valid_spdx(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    a, _ = _two(tmp_path)
    out = tmp_path / "wn.spdx.json"
    r = cli("sbom", a, "-o", out)
    assert r.code == 0, r.err
    _validate(out)
    doc = json.loads(out.read_text())
    assert doc["spdxVersion"] == "SPDX-2.3"
    image_sha = json.loads(a.read_text())["images"][0]["sha256"]
    assert doc["documentNamespace"].endswith(f"/wn/x86_64/sha256-{image_sha}")
    assert len(doc["packages"]) == 1 + len(DEB)
    [image] = [p for p in doc["packages"] if p["SPDXID"] == "SPDXRef-Image"]
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": image_sha}]
    assert {
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    } in doc["relationships"]
    purls = sorted(ref["referenceLocator"] for p in doc["packages"] for ref in p.get("externalRefs", []))
    assert purls == [
        "pkg:deb/debian/bash@5.2.15-2?arch=amd64",
        "pkg:deb/debian/libc6@2.36-9?arch=amd64",
        "pkg:deb/debian/openssl@3.0.11-1?arch=amd64",
        "pkg:deb/debian/vim@2%3A9.0.1378-2?arch=amd64",
    ]
    declared = {p["name"]: p["licenseDeclared"] for p in doc["packages"]}
    assert declared["libc6"] == "NOASSERTION" and declared["bash"].startswith("LicenseRef-GPL-3")
    assert doc["hasExtractedLicensingInfos"][0]["extractedText"] == "GPL-3+"
    broken = tmp_path / "broken.json"  # the check can fail: without its DESCRIBES relationship SPDX refuses it
    broken.write_text(json.dumps({**doc, "relationships": doc["relationships"][1:]}))
    p = subprocess.run(["pyspdxtools", "-i", str(broken)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "DESCRIBES" in p.stderr
    again = tmp_path / "again.json"
    assert cli("sbom", a, "-o", again).code == 0
    assert again.read_bytes() == out.read_bytes()  # deterministic: same image, same document


def test_sbom_of_a_published_image_matches_and_never_writes_through_a_symlink(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    a, _ = _two(tmp_path)
    _publish(cli, catalogue, a, "1")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    r = cli("sbom", "wn@stable", *where, "-o", link)
    assert r.code == 0, r.err
    assert victim.read_text() == "keep" and not link.is_symlink()
    _validate(link)
    published = json.loads(link.read_text())
    from_file = json.loads(cli("sbom", a).out)  # stdout without -o
    assert published["documentNamespace"] == from_file["documentNamespace"]
    assert published["packages"][1:] == from_file["packages"][1:]
    assert published["packages"][0]["versionInfo"] == "1"


def test_what_is_a_record_file_and_what_a_reference() -> None:
    from imagectl.records import is_record_path

    assert [is_record_path(t) for t in ("a.build.json", "./x", "d/wn.json", "wn:1.json", "wn@stable", "wn:2")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_publish_stores_the_sbom_signed_verified_kept_and_mirrored(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """publish --from-build stores the SPDX document content-addressed, referenced (sha256, size) from the signed
    build-record summary: `imagectl sbom REF` prints exactly those bytes, pyspdxtools accepts them, gc keeps
    them, a mirror copies them, and verify hashes them (a tampered copy is a problem)."""
    from imagectl.catalogue.state import load_state

    a, _b = _two(tmp_path)
    _publish(cli, catalogue, a, "1")
    [rec] = load_state(catalogue.store).images("wn")
    assert rec.build_record is not None
    ref = rec.build_record["sbom"]
    assert set(ref) == {"sha256", "size", "spdx"} and ref["spdx"] == "SPDX-2.3"
    blob = catalogue.dir / "blobs" / "sha256" / ref["sha256"]
    assert blob.stat().st_size == ref["size"] and hashlib.sha256(blob.read_bytes()).hexdigest() == ref["sha256"]
    out = tmp_path / "stored.spdx.json"
    where = ("--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64")
    r = cli("sbom", "wn:1", *where, "-o", out)
    assert r.code == 0, r.err
    assert out.read_bytes() == blob.read_bytes()
    _validate(out)
    assert json.loads(out.read_bytes())["packages"][0]["checksums"][0]["checksumValue"] == rec.sha256
    assert cli("catalogue", "gc", catalogue.dir, "--grace", "0").code == 0
    assert blob.exists()
    mirror = tmp_path / "mirror"
    r = cli("mirror", catalogue.dir, mirror, "--root", catalogue.root, "--json")
    assert r.code == 0, r.err
    assert (mirror / "blobs" / "sha256" / ref["sha256"]).read_bytes() == blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"bash", b"bosh"))
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    problems = json.loads(r.out)["problems"]
    assert r.code != 0 and any("(SBOM)" in p for p in problems), problems
    r = cli("sbom", "wn:1", *where)
    assert r.code == 11 and "its SBOM does not match the signed size and SHA-256" in r.err
