"""Boot-test results travel with the image: `test --record` → build record → `publish --from-build` → signed
`custom.boot_test`; protected channels take only versions every arch of which passed.

Fast and offline: builds use tests/test_build_fake.py's stand-in disk-image-create, boots tests/test_boottest.py's
fake qemu. The real build and boot are recorded and published once in tests/test_build_integration.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import ImageRecord, utcnow
from imagectl.catalogue.state import load_state
from imagectl.errors import InvalidInputError
from imagectl.imaging import boottest
from tests.conftest import EXPIRY, Catalogue, CliResult, sha256
from tests.test_boottest import FAKE_QEMU, GOOD
from tests.test_build_fake import DEMO, FAKE
from tests.test_schema import assert_valid

Cli = Callable[..., CliResult]
HINT = "(stable is protected; boot it with imagectl test --record, then publish --from-build)"
X86, I386 = "debian12-demo-x86_64", "debian12-demo-i386"


@dataclasses.dataclass
class Build:
    out: Path
    qemu: Path  # the fake qemu's directory: plan.json, calls.jsonl

    def image(self, base: str) -> Path:
        return self.out / f"{base}.qcow2"

    def record(self, base: str) -> Path:
        return self.out / f"{base}.build.json"

    def load(self, base: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.record(base).read_text())
        return data

    def boots(self) -> int:
        calls = self.qemu / "calls.jsonl"
        lines = calls.read_text().splitlines() if calls.exists() else []  # the fake DIB logs here too
        return sum('"argv0"' in line for line in lines)

    def plan(self, **per_accel: dict[str, Any]) -> None:
        (self.qemu / "plan.json").write_text(json.dumps(per_accel))


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli) -> Build:
    """The demo for x86_64 and i386, built by the fake disk-image-create into one directory; a fake qemu (both
    emulators) first on PATH that boots to a login prompt under TCG."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    scripts = {"disk-image-create": FAKE}
    scripts |= {name: f"#!{sys.executable}\n{FAKE_QEMU}" for name in ("qemu-system-x86_64", "qemu-system-i386")}
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(boottest, "POLL", 0.02)
    monkeypatch.setattr(boottest, "detect_format", lambda image: "qcow2")  # the fake images are not real qcow2
    out = tmp_path / "out"
    for arch in ("x86_64", "i386"):
        r = cli("build", DEMO, "--arch", arch, "--hypervisor", "hvm", "-o", out)
        assert r.code == 0, r.err
    b = Build(out, bindir)
    b.plan(tcg={"output": GOOD})
    return b


def boot(cli: Cli, b: Build, base: str, *extra: object) -> CliResult:
    arch = base.rsplit("-", 1)[1]
    return cli("test", b.image(base), "--arch", arch, "--accel", "tcg", "--timeout", "30", *extra)


def signed_role(cat: Catalogue, name: str = "debian12-demo") -> dict[str, Any]:
    state = load_state(cat.store)
    md = state.role(f"image-{name}")
    assert md is not None
    role: dict[str, Any] = md.signed.to_dict()
    return role


def timestamp(cat: Catalogue) -> bytes:
    return (cat.dir / "metadata" / "timestamp.json").read_bytes()


def blobs(cat: Catalogue) -> list[str]:
    d = cat.dir / "blobs" / "sha256"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# -- imagectl test --record -------------------------------------------------------------------------------------
def test_record_a_passing_boot(build: Build, cli: Cli) -> None:
    before = build.load(X86)
    mode = stat.S_IMODE(build.record(X86).stat().st_mode)
    start = utcnow()
    r = boot(cli, build, X86, "--record", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["passed"] is True and res["record"] == str(build.record(X86)) and res["accel"] == "tcg"
    after = build.load(X86)
    test = after.pop("boot_test")
    assert after == before  # nothing else in the record changed
    assert stat.S_IMODE(build.record(X86).stat().st_mode) == mode
    assert set(test) == {"passed", "marker", "accel", "seconds", "host", "at", "image_sha256"}
    assert (test["passed"], test["marker"], test["accel"]) == (True, "login:", "tcg")
    assert type(test["seconds"]) is int and 0 <= test["seconds"] < 60
    assert test["host"] == socket.gethostname()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", test["at"]) and test["at"] >= start.strftime("%FT%TZ")
    assert test["image_sha256"] == sha256(build.image(X86)) == before["images"][0]["sha256"]
    assert not list(build.out.glob(".*.tmp"))  # written through a temp file, none left
    # the human line says where it went; an explicit RECORD path works the same
    r = boot(cli, build, X86, "--marker", "debian login:", "--record", build.record(X86))
    assert r.code == 0 and r.out.rstrip().endswith(f"; recorded in {build.record(X86)}"), r.out
    assert build.load(X86)["boot_test"]["marker"] == "debian login:"
    assert build.boots() == 2


def test_record_a_failing_boot(build: Build, cli: Cli) -> None:
    build.plan(tcg={"output": [(0.05, "Linux version 6.1\r\nKernel panic - not syncing: VFS\r\n")], "exit": 0})
    r = boot(cli, build, I386, "--record")
    assert r.code == 23, r.err
    assert f"imagectl: the failed boot test is recorded in {build.record(I386)}\n" in r.err
    assert r.err.count("imagectl: error: boot test of debian12-demo-i386.qcow2 failed under tcg") == 1
    test = build.load(I386)["boot_test"]
    assert (test["passed"], test["accel"], test["image_sha256"]) == (False, "tcg", sha256(build.image(I386)))
    # without --record nothing is written
    del_record = build.load(X86)
    assert boot(cli, build, X86).code == 23 and build.load(X86) == del_record


def test_record_refusals_before_any_boot(build: Build, cli: Cli, tmp_path: Path) -> None:
    rec = build.record(X86)
    image = build.image(X86)
    # a symlink is refused, not followed
    rec.rename(tmp_path / "real.build.json")
    rec.symlink_to(tmp_path / "real.build.json")
    r = boot(cli, build, X86, "--record")
    assert (r.code, r.err) == (
        14,
        f"imagectl: error: refusing build record {rec}: it is a symbolic link (not followed)\n",
    )
    rec.unlink()
    # none at all
    r = boot(cli, build, X86, "--record")
    assert r.code == 4 and r.err.startswith(f"imagectl: error: no build record {rec} for {image.name}\n"), r.err
    # not JSON; JSON but not a build record
    rec.write_text("{not json")
    r = boot(cli, build, X86, "--record")
    assert r.code == 3 and r.err.startswith(f"imagectl: error: build record {rec} is not JSON: "), r.err
    rec.write_text('{"format": 2}')
    r = boot(cli, build, X86, "--record")
    assert (r.code, r.err) == (3, f"imagectl: error: {rec} is not an imagectl build record (format 1)\n")
    (tmp_path / "real.build.json").rename(rec)
    # another image's record
    r = boot(cli, build, X86, "--record", build.record(I386))
    assert r.code == 11, r.err
    assert r.err.startswith(
        f"imagectl: error: build record {build.record(I386)} is for debian12-demo-i386.qcow2, not {image.name}\n"
    )
    # a record of this file name, but in another directory: it describes another file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / rec.name).write_bytes(rec.read_bytes())
    r = boot(cli, build, X86, "--record", elsewhere / rec.name)
    assert (r.code, r.err) == (
        11,
        f"imagectl: error: build record {elsewhere / rec.name} describes {elsewhere / image.name}, not {image}\n",
    )
    # the image changed after the build
    recorded = build.load(X86)["images"][0]["sha256"]
    with image.open("ab") as f:
        f.write(b"tampered")
    r = boot(cli, build, X86, "--record")
    assert r.code == 11
    assert r.err.startswith(
        f"imagectl: error: {image} has sha256 {sha256(image)[:12]}…, its build record {rec} says {recorded[:12]}…: "
        "the image changed after the build\n"
    )
    assert build.boots() == 0 and "boot_test" not in build.load(X86)


# -- protected channels ------------------------------------------------------------------------------------------
def test_protect_command(catalogue: Catalogue, cli: Cli) -> None:
    w = catalogue.args()
    r = cli("catalogue", "protect", catalogue.dir, "stable", "production", *w[2:], "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"protected_channels": ["production", "stable"], "changed": True}
    targets = load_state(catalogue.store).targets.signed
    assert targets.unrecognized_fields["x-imagectl"] == {"protected_channels": ["production", "stable"]}
    assert_valid("targets-extension", targets.unrecognized_fields["x-imagectl"])
    before = timestamp(catalogue)
    r = cli("catalogue", "protect", catalogue.dir, "stable", *w[2:])
    assert (r.code, r.out) == (0, f"protected channels of {catalogue.store.shown}: production, stable (unchanged)\n")
    assert timestamp(catalogue) == before  # nothing signed
    r = cli("catalogue", "protect", catalogue.dir, "production", "--off", *w[2:])
    assert (r.code, r.out) == (0, f"protected channels of {catalogue.store.shown}: stable\n")
    r = cli("catalogue", "protect", catalogue.dir, "stable", "--off", *w[2:])
    assert (r.code, r.out) == (0, f"protected channels of {catalogue.store.shown}: none\n")
    assert "x-imagectl" not in load_state(catalogue.store).targets.signed.unrecognized_fields
    r = cli("catalogue", "protect", catalogue.dir, "Stable", *w[2:])
    assert r.code == 3 and "invalid channel 'Stable'" in r.err
    r = cli("catalogue", "protect", catalogue.dir, "stable")
    assert r.code == 3 and "no key directory given" in r.err
    r = cli("catalogue", "protect", catalogue.dir, "stable", "--keys", catalogue.dir.parent / "nokeys")
    assert r.code == 7, r.err
    assert cli("catalogue", "verify", catalogue.dir).code == 0


def test_publish_and_promote_into_a_protected_channel(build: Build, catalogue: Catalogue, cli: Cli) -> None:
    w = catalogue.args()
    assert cli("catalogue", "protect", catalogue.dir, "stable", *w[2:]).code == 0
    assert boot(cli, build, X86, "--record").code == 0
    # only x86_64 was booted: the whole build is refused before anything is stored or signed
    before = timestamp(catalogue)
    r = cli("publish", "--from-build", build.out, *w, "--channel", "stable")
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to publish debian12-demo to stable: no passing boot test for i386 {HINT}\n",
    )
    assert timestamp(catalogue) == before and blobs(catalogue) == []
    assert boot(cli, build, I386, "--record").code == 0
    r = cli("publish", "--from-build", build.out, *w, "--channel", "stable", "--json")
    assert r.code == 0, r.err
    [i386, x86] = json.loads(r.out)
    assert (i386["arch"], x86["arch"], i386["version"]) == ("i386", "x86_64", x86["version"])
    version = x86["version"]
    # in the signed metadata, exactly as recorded
    role = signed_role(catalogue)
    assert role["x-imagectl"]["channels"]["stable"]["version"] == version
    for base, arch in ((X86, "x86_64"), (I386, "i386")):
        custom = role["targets"][f"debian12-demo/{version}/{arch}/debian12-demo-{version}-{arch}.qcow2"]["custom"]
        assert custom["boot_test"] == build.load(base)["boot_test"]
        assert_valid("image-custom", custom)
    # shown to people and scripts
    read = ("--catalogue", catalogue.dir, "--root", catalogue.root)
    shown = json.loads(cli("catalogue", "show", "debian12-demo", *read, "--json").out)
    assert_valid("show", shown)
    assert [i["boot_test"]["passed"] for i in shown["images"]] == [True, True]
    text = cli("catalogue", "show", "debian12-demo", *read).out
    x86_test = build.load(X86)["boot_test"]
    assert (
        f"  {version} x86_64 qcow2 {build.image(X86).stat().st_size} bytes sha256:{x86_test['image_sha256']}; "
        f"boot test passed (tcg, {x86_test['seconds']} s, {x86_test['host']}, {x86_test['at']})"
    ) in text.splitlines()
    full = json.loads(cli("catalogue", "show", f"debian12-demo:{version}", *read, "--arch", "i386", "--json").out)
    assert_valid("show", full)
    assert full["boot_test"] == build.load(I386)["boot_test"]
    assert cli("catalogue", "verify", catalogue.dir).code == 0


def test_promote_refuses_untested_and_accepts_tested(build: Build, catalogue: Catalogue, cli: Cli) -> None:
    w = catalogue.args()
    r = cli("publish", "--from-build", build.out, *w, "--json")
    assert r.code == 0, r.err
    version = json.loads(r.out)[0]["version"]
    ref = f"debian12-demo:{version}"
    assert cli("catalogue", "protect", catalogue.dir, "stable", *w[2:]).code == 0
    before = timestamp(catalogue)
    r = cli("promote", ref, "stable", *w)
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to promote {ref} to stable: no passing boot test for i386, x86_64 {HINT}\n",
    )
    assert timestamp(catalogue) == before  # refused before anything was signed
    assert cli("promote", ref, "testing", *w).code == 0  # not protected
    # boot x86_64 only, publish the same build again under its version: the boot test joins the signed target
    assert boot(cli, build, X86, "--record").code == 0
    r = cli("publish", "--from-build", build.out, *w, "--version", version)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].startswith(f"already published: debian12-demo:{version} i386 ")
    assert r.out.splitlines()[1].startswith(f"boot test added: debian12-demo:{version} x86_64 ")
    r = cli("promote", ref, "stable", *w)
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to promote {ref} to stable: no passing boot test for i386 {HINT}\n",
    )
    # a failed boot is recorded, carried, and still refused
    build.plan(tcg={"output": [(0.05, "Linux version 6.1\r\n")], "exit": 1})
    assert boot(cli, build, I386, "--record").code == 23
    assert cli("publish", "--from-build", build.out, *w, "--version", version).code == 0
    custom = signed_role(catalogue)["targets"][f"debian12-demo/{version}/i386/debian12-demo-{version}-i386.qcow2"]
    assert custom["custom"]["boot_test"]["passed"] is False
    assert cli("promote", ref, "stable", *w).code == 24
    # booted again, passing: accepted
    build.plan(tcg={"output": GOOD})
    assert boot(cli, build, I386, "--record").code == 0
    assert cli("publish", "--from-build", build.out, *w, "--version", version).code == 0
    r = cli("promote", ref, "stable", *w)
    assert (r.code, r.out, r.err) == (0, f"stable -> {ref}\n", "")
    # a plain publish (no record, so no boot test) into the protected channel sends no bytes
    other = build.out / "other.qcow2"
    other.write_bytes(b"QFI\xfb" + os.urandom(4096))
    held = blobs(catalogue)
    r = cli(
        "publish", other, *w, "--name", "debian12-demo", "--arch", "x86_64", "--version", "99", "--channel", "stable"
    )
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to publish debian12-demo:99 to stable: no passing boot test for x86_64 {HINT}\n",
    )
    assert blobs(catalogue) == held
    # protection off: the same publish goes through
    assert cli("catalogue", "protect", catalogue.dir, "stable", "--off", *w[2:]).code == 0
    r = cli(
        "publish", other, *w, "--name", "debian12-demo", "--arch", "x86_64", "--version", "99", "--channel", "stable"
    )
    assert r.code == 0, r.err


# -- hostile input -----------------------------------------------------------------------------------------------
def _with_test(build: Build, base: str, **change: Any) -> None:
    data = build.load(base)
    test = {
        "passed": True,
        "marker": "login:",
        "accel": "tcg",
        "seconds": 85,
        "host": "builder01",
        "at": "2026-11-25T15:02:03Z",
        "image_sha256": data["images"][0]["sha256"],
        **change,
    }
    data["boot_test"] = {k: v for k, v in test.items() if v is not ...}
    build.record(base).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"seconds": 85.5}, 3, "boot_test seconds must be a whole number, not 85.5 (canonical JSON has no floats)"),
        ({"seconds": True}, 3, "boot_test seconds must be a whole number from 0 to 10000000, not 'True'"),
        ({"extra": 1}, 3, "boot_test has unknown member 'extra'"),
        ({"host": ...}, 3, "boot_test lacks 'host'"),
        ({"passed": "yes"}, 3, "boot_test passed must be true or false"),
        ({"accel": "hvf"}, 3, "boot_test accel must be kvm or tcg, not 'hvf'"),
        ({"marker": "login:\x1b[2J"}, 3, "boot_test marker must be 1-256 printable characters"),
        ({"at": "2026-11-25 15:02:03"}, 3, "boot_test at must be a UTC timestamp like 2026-11-25T15:02:03Z"),
        ({"image_sha256": "AB" * 32}, 3, "boot_test image_sha256 must be 64 lower-case hex digits"),
        ({"image_sha256": "ab" * 32}, 11, "its boot test booted other bytes (sha256 abababababab…) than"),
    ],
)
def test_hostile_boot_test_in_a_record_is_refused(
    build: Build, catalogue: Catalogue, cli: Cli, change: dict[str, Any], code: int, message: str
) -> None:
    _with_test(build, I386, **change)
    r = cli("publish", "--from-build", build.out, *catalogue.args())
    first, *hint = r.err.splitlines()
    assert r.code == code and first.startswith(f"imagectl: error: build record {build.record(I386)}: "), r.err
    assert message in first and hint == (
        ["hint: boot this image and record it: imagectl test IMAGE --record"] * (code == 11)
    )
    assert load_state(catalogue.store).names() == [] and blobs(catalogue) == []  # nothing of the build published


def test_a_boot_test_of_other_bytes_is_refused_at_publish(build: Build, catalogue: Catalogue, cli: Cli) -> None:
    """The record agrees with itself, but the image file beside it is not what was booted (replaced since)."""
    assert boot(cli, build, X86, "--record").code == 0
    image = build.image(X86)
    booted = sha256(image)
    data = build.load(X86)
    image.write_bytes(b"QFI\xfb" + os.urandom(4096))
    data["images"][0]["sha256"] = data["boot_test"]["image_sha256"] = booted
    build.record(X86).write_text(json.dumps(data))
    r = cli("publish", "--from-build", build.record(X86), *catalogue.args())
    assert (r.code, r.err.splitlines()[0]) == (
        11,
        f"imagectl: error: the boot test given for {image} booted other bytes (sha256 {booted[:12]}…, the file has "
        f"{sha256(image)[:12]}…): a record from another build",
    )
    assert load_state(catalogue.store).names() == []


def test_a_boot_test_in_a_record_that_names_no_image_sha256_is_checked_against_the_file(
    build: Build, catalogue: Catalogue, cli: Cli
) -> None:
    """A record's image entry may leave out its sha256: its boot test is then checked against the image file's own
    bytes, not refused as "(sha256 None…) a record from another build" whatever it booted."""
    assert boot(cli, build, X86, "--record").code == 0
    data = build.load(X86)
    del data["images"][0]["sha256"]
    build.record(X86).write_text(json.dumps(data))
    r = cli("publish", "--from-build", build.record(X86), *catalogue.args(), "--json")
    assert r.code == 0, r.err
    (image,) = load_state(catalogue.store).images(data["target"]["name"])
    assert image.boot_test is not None and image.boot_test["image_sha256"] == sha256(build.image(X86))


def test_a_refused_publish_from_build_stores_no_blob(build: Build, catalogue: Catalogue, cli: Cli) -> None:
    """The request made from a record is checked before its build record and SBOM are stored: a bad recipe digest
    leaves no orphan blob for gc to find."""
    data = build.load(X86)
    data["recipe"]["digest"] = "md5:0"
    build.record(X86).write_text(json.dumps(data))
    r = cli("publish", "--from-build", build.record(X86), *catalogue.args())
    assert (r.code, r.err) == (3, "imagectl: error: recipe digest must be sha256:<64 hex digits>, got 'md5:0'\n")
    assert blobs(catalogue) == [] and load_state(catalogue.store).names() == []


GOOD_TEST = {
    "passed": True,
    "marker": "login:",
    "accel": "kvm",
    "seconds": 12,
    "host": "h",
    "at": "2026-11-25T15:02:03Z",
    "image_sha256": "0" * 64,
}


@pytest.mark.parametrize(
    ("boot_test", "message"),
    [
        (None, "has a null boot_test (optional fields are omitted, never null)"),
        ([], "boot_test is not an object"),
        ({**GOOD_TEST, "seconds": 12.0}, "boot_test seconds must be a whole number, not 12.0"),
        ({**GOOD_TEST, "seconds": -1}, "boot_test seconds must be a whole number from 0 to 10000000, not '-1'"),
        ({**GOOD_TEST, "verified_by": "me"}, "boot_test has unknown member 'verified_by'"),
        ({**GOOD_TEST, "image_sha256": "1" * 64}, "has a boot_test of other bytes (sha256 111111111111…)"),
        ({**GOOD_TEST, "host": ""}, "boot_test host must be 1-255 printable characters"),
    ],
)
def test_reader_refuses_a_malformed_signed_boot_test(boot_test: Any, message: str) -> None:
    custom = {
        "name": "wn",
        "version": "1",
        "arch": "x86_64",
        "format": "qcow2",
        "hypervisor": "hvm",
        "size": 10,
        "created": "2026-11-25T15:02:03Z",
        "boot_test": boot_test,
    }
    path = "wn/1/x86_64/wn-1-x86_64.qcow2"
    ok = ImageRecord.from_target(path, 10, {"sha256": "0" * 64}, {**custom, "boot_test": GOOD_TEST})
    assert ok.boot_test == GOOD_TEST and ok.boot_passed and ok.custom()["boot_test"] == GOOD_TEST
    with pytest.raises(InvalidInputError) as e:
        ImageRecord.from_target(path, 10, {"sha256": "0" * 64}, custom)
    assert e.value.message.startswith(f"target {path}") and message in e.value.message, e.value.message


def test_client_refuses_a_catalogue_signed_with_a_malformed_boot_test(
    catalogue: Catalogue, cli: Cli, make_image: Callable[..., Path]
) -> None:
    """A publisher that signs a boot_test of another shape (not ours: ours refuses it) makes the name unreadable.
    (A float cannot even be signed: canonical JSON has none.)"""
    w = catalogue.args()
    assert cli("publish", make_image(), *w, "--name", "wn", "--arch", "x86_64", "--version", "1").code == 0
    with catalogue.store.lock():
        state = load_state(catalogue.store)
        [rec] = state.images("wn")
        bad = {**GOOD_TEST, "image_sha256": rec.sha256, "seconds": "85"}
        md = state.role_for_update("wn", utcnow().replace(year=utcnow().year + 1))
        state.add_target(md, dataclasses.replace(rec, boot_test=bad))
        state.commit(KeyRing(catalogue.keys), EXPIRY)
    r = cli("catalogue", "show", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root)
    assert r.code == 8
    assert r.err == (
        "imagectl: error: signed metadata of wn is malformed: target wn/1/x86_64/wn-1-x86_64.qcow2: "
        "boot_test seconds must be a whole number from 0 to 10000000, not '85'\n"
    )
