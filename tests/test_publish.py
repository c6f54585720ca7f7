"""Publishing semantics: immutability, automatic versions, channels, deprecate, revoke, keys and bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue.model import auto_version, version_key
from tests.conftest import Catalogue, CliResult


def listing(cli: Callable[..., CliResult], cat: Catalogue, *extra: str) -> list[dict]:
    r = cli("catalogue", "list", *extra, "--catalogue", cat.dir, "--root", cat.root, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def metadata_snapshot(cat: Catalogue) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cat.dir / "metadata").iterdir())}


def pub(cli, cat: Catalogue, img: Path, *extra: str) -> CliResult:
    return cli("publish", img, *cat.args(), "--arch", "x86_64", *extra)


def test_versions_are_immutable(catalogue: Catalogue, cli, make_image):
    a, b = make_image(seed="a"), make_image(seed="b")
    assert pub(cli, catalogue, a, "--name", "wn", "--version", "1.0").code == 0
    before = metadata_snapshot(catalogue)
    r = pub(cli, catalogue, b, "--name", "wn", "--version", "1.0")
    assert r.code == 6
    assert "imagectl: error: wn:1.0 (x86_64) is already published with other bytes" in r.err
    assert "Traceback" not in r.err
    assert metadata_snapshot(catalogue) == before  # catalogue unchanged
    blobs = list((catalogue.dir / "blobs" / "sha256").iterdir())
    assert len(blobs) == 1  # the refused bytes were never uploaded

    # identical bytes: a no-op that writes no new metadata
    r = pub(cli, catalogue, a, "--name", "wn", "--version", "1.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] is False
    assert metadata_snapshot(catalogue) == before

    # same version, another arch: allowed
    r = cli("publish", b, *catalogue.args(), "--name", "wn", "--version", "1.0", "--arch", "i386")
    assert r.code == 0, r.err
    assert {(e["version"], e["arch"]) for e in listing(cli, catalogue)} == {("1.0", "x86_64"), ("1.0", "i386")}


def test_automatic_versions(catalogue: Catalogue, cli, make_image):
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    versions = []
    for seed in "abc":
        r = pub(cli, catalogue, make_image(seed=seed), "--name", "auto", "--json")
        assert r.code == 0, r.err
        versions.append(json.loads(r.out)["version"])
    assert versions == [f"{today}.1", f"{today}.2", f"{today}.3"]


def test_auto_version_and_ordering_units():
    day = dt.date(2026, 11, 25)
    assert auto_version([], day) == "20261125.1"
    assert auto_version(["20261125.9", "20261125.10", "20261124.30", "1.0"], day) == "20261125.11"
    assert sorted(["1.10", "1.9", "1.9a", "2"], key=version_key) == ["1.9", "1.9a", "1.10", "2"]
    assert sorted(["1.0", "1.0~rc1", "1.0.1"], key=version_key) == ["1.0~rc1", "1.0", "1.0.1"]
    assert sorted(["1.00", "1.0", "1-0"], key=version_key) == ["1-0", "1.0", "1.00"]  # ties broken by text


def test_newest_non_deprecated_and_channels(catalogue: Catalogue, cli, make_image, tmp_path):
    for v, seed in (("1", "a"), ("2", "b"), ("3", "c")):
        assert pub(cli, catalogue, make_image(seed=seed), "--name", "wn", "--version", v).code == 0
    pull = ["--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64", "--json"]

    def pulled(ref: str) -> CliResult:
        return cli("pull", ref, *pull, "-o", tmp_path / f"{ref.replace('@', '_').replace(':', '_')}.img")

    assert json.loads(pulled("wn").out)["version"] == "3"
    r = cli("deprecate", "wn:3", "--reason", "kernel panic on boot", *catalogue.args())
    assert r.code == 0, r.err
    r = pulled("wn")
    assert json.loads(r.out)["version"] == "2"  # newest that is not deprecated
    r = pulled("wn:3")  # still pullable by version, with a warning
    assert r.code == 0 and "deprecated" in r.err and "kernel panic on boot" in r.err

    assert cli("promote", "wn:1", "stable", *catalogue.args()).code == 0
    assert json.loads(pulled("wn@stable").out)["version"] == "1"
    r = cli("promote", "wn:2", "stable", *catalogue.args(), "--json")
    assert json.loads(r.out)["previous"] == "1"
    assert json.loads(pulled("wn@stable").out)["version"] == "2"
    r = pulled("wn@nightly")
    assert r.code == 4 and "no channel 'nightly'" in r.err and "stable" in r.err
    r = cli("promote", "wn:9", "stable", *catalogue.args())
    assert r.code == 4 and "versions: 1, 2, 3" in r.err


def test_publish_with_channel(catalogue: Catalogue, cli, make_image):
    r = pub(cli, catalogue, make_image(), "--name", "wn", "--version", "5", "--channel", "testing")
    assert r.code == 0, r.err
    [row] = listing(cli, catalogue)
    assert row["channels"] == ["testing"]


def test_revoke(catalogue: Catalogue, cli, make_image, tmp_path):
    assert pub(cli, catalogue, make_image(seed="a"), "--name", "wn", "--version", "1").code == 0
    assert pub(cli, catalogue, make_image(seed="b"), "--name", "wn", "--version", "2", "--channel", "stable").code == 0
    with pytest.raises(SystemExit) as exc:  # --reason is required: an argparse usage error
        cli("revoke", "wn:2", *catalogue.args())
    assert exc.value.code == 2
    r = cli("revoke", "wn:2", "--reason", "CVE-2026-0001 in openssh", *catalogue.args())
    assert r.code == 0, r.err
    assert "channel stable" in r.err  # the channel that pointed at it is dropped, loudly
    assert [e["version"] for e in listing(cli, catalogue)] == ["1"]  # gone from trusted metadata
    out = tmp_path / "x.img"
    r = cli("pull", "wn:2", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64", "-o", out)
    assert r.code == 5 and "revoked" in r.err and "CVE-2026-0001 in openssh" in r.err
    assert not out.exists()
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", "x86_64", "-o", out)
    assert r.code == 0, r.err  # newest remaining
    # a revoked version is never reused, not even with the same bytes
    r = pub(cli, catalogue, make_image(seed="b"), "--name", "wn", "--version", "2")
    assert r.code == 5 and "never reused" in r.err
    assert cli("catalogue", "verify", catalogue.dir).code == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--name", "../etc", "--arch", "x86_64"], 3, "path separators"),
        (["--name", "wn\x1b[2J", "--arch", "x86_64"], 3, "control characters"),
        (["--name", "wn", "--arch", "x86_64", "--version", "1/../../x"], 3, "path separators"),
        (["--name", "wn", "--arch", "x86_64", "--version", "1\n2"], 3, "control characters"),
        (["--name", "wn", "--arch", "sparc"], 3, "unknown arch 'sparc'"),
        (["--name", "wn", "--arch", "x86_64", "--format", "exe"], 3, "unknown format"),
        (["--name", "wn", "--arch", "x86_64", "--hypervisor", "kvm"], 3, "unknown hypervisor"),
        (["--name", "wn", "--arch", "x86_64", "--os", "slc"], 3, "error: --os and --os-version go together\n"),
        (["--name", "WN", "--arch", "x86_64"], 3, "invalid image name"),
    ],
)
def test_publish_bad_input(catalogue: Catalogue, cli, make_image, args, code, message):
    before = metadata_snapshot(catalogue)
    r = cli("publish", make_image(), "--catalogue", catalogue.dir, "--keys", catalogue.keys, *args)
    assert r.code == code
    assert r.err.startswith("imagectl: error: ") and message in r.err
    assert len(r.err.strip().splitlines()) <= 2  # the error line and at most a hint
    assert metadata_snapshot(catalogue) == before


def test_publish_missing_file_and_readonly_catalogue(catalogue: Catalogue, cli, tmp_path):
    r = cli("publish", tmp_path / "nope.qcow2", *catalogue.args(), "--name", "wn", "--arch", "x86_64")
    assert r.code == 14 and "is not a file" in r.err
    r = cli(
        "publish",
        tmp_path,
        "--catalogue",
        "http://127.0.0.1:9/cat",
        "--keys",
        catalogue.keys,
        "--name",
        "wn",
        "--arch",
        "x86_64",
    )
    assert r.code == 14  # a directory is not an image file; checked before any network
    img = tmp_path / "i.raw"
    img.write_bytes(b"x" * 1000)
    r = cli(
        "publish", img, "--catalogue", "ftp://host/cat", "--keys", catalogue.keys, "--name", "wn", "--arch", "x86_64"
    )
    assert r.code == 3 and "unsupported catalogue location" in r.err


def test_keys_missing_insecure_or_wrong(catalogue: Catalogue, cli, make_image, tmp_path):
    img = make_image()
    base = ["--catalogue", catalogue.dir, "--name", "wn", "--arch", "x86_64"]
    r = cli("publish", img, *base)
    assert r.code == 3 and "no key directory given" in r.err and "IMAGECTL_KEYS" in r.err
    r = cli("publish", img, *base, "--keys", tmp_path / "nokeys")
    assert r.code == 7 and "does not exist" in r.err
    key = next(catalogue.keys.glob("targets-*.key"))
    os.chmod(key, 0o644)
    r = cli("publish", img, *base, "--keys", catalogue.keys)
    assert r.code == 7 and "readable by group or others" in r.err and "chmod 600" in r.err
    os.chmod(key, 0o600)
    other = tmp_path / "otherkeys"
    assert cli("catalogue", "init", tmp_path / "other", "--keys", other).code == 0
    before = metadata_snapshot(catalogue)
    r = cli("publish", img, *base, "--keys", other)
    assert r.code == 7 and "need 1 targets key" in r.err
    assert metadata_snapshot(catalogue) == before


def test_init_twice_and_key_modes(catalogue: Catalogue, cli):
    r = cli("catalogue", "init", catalogue.dir, "--keys", catalogue.keys)
    assert r.code == 16 and "already a catalogue" in r.err
    modes = {p.name: p.stat().st_mode & 0o777 for p in catalogue.keys.glob("*.key")}
    assert sorted(modes) == ["root-1.key", "snapshot-1.key", "targets-1.key", "timestamp-1.key"]
    assert set(modes.values()) == {0o600}


def test_init_prints_root_to_pin(tmp_path, cli):
    r = cli("catalogue", "init", tmp_path / "c", "--keys", tmp_path / "k", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    import hashlib

    root = tmp_path / "c" / "metadata" / "1.root.json"
    assert info["root_sha256"] == hashlib.sha256(root.read_bytes()).hexdigest()
    r = cli("catalogue", "list", "--catalogue", tmp_path / "c", "--root", f"sha256:{info['root_sha256']}")
    assert r.code == 0 and "(no images)" in r.out


def test_show_and_search(catalogue: Catalogue, cli, make_image):
    assert (
        pub(
            cli,
            catalogue,
            make_image(seed="a"),
            "--name",
            "slc4-wn",
            "--version",
            "4.8",
            "--os",
            "slc",
            "--os-version",
            "4",
        ).code
        == 0
    )
    assert (
        cli(
            "publish",
            make_image(seed="b"),
            *catalogue.args(),
            "--name",
            "slc6-wn",
            "--version",
            "6.10",
            "--arch",
            "ia64",
            "--os",
            "slc",
            "--os-version",
            "6",
            "--hypervisor",
            "xen-pv",
        ).code
        == 0
    )
    read = ["--catalogue", catalogue.dir, "--root", catalogue.root]
    r = cli("catalogue", "search", "slc", "--hypervisor", "xen-pv", *read, "--json")
    assert [e["name"] for e in json.loads(r.out)] == ["slc6-wn"]
    r = cli("catalogue", "search", "slc", *read, "--json")
    assert {e["name"] for e in json.loads(r.out)} == {"slc4-wn", "slc6-wn"}
    r = cli("catalogue", "show", "slc6-wn:6.10", "--arch", "ia64", *read, "--json")
    shown = json.loads(r.out)
    assert shown["os"] == "slc" and shown["os_version"] == "6" and shown["arch"] == "ia64"
    r = cli("catalogue", "show", "slc6-wn", *read)
    assert r.code == 0 and "6.10 ia64" in r.out
    r = cli("catalogue", "show", "nosuch", *read)
    assert r.code == 4 and "no image named 'nosuch'" in r.err and "slc4-wn" in r.err


def test_verify_lists_each_problem(catalogue: Catalogue, cli, make_image):
    img = make_image(seed="a")
    assert pub(cli, catalogue, img, "--name", "wn", "--version", "1").code == 0
    assert pub(cli, catalogue, make_image(seed="b"), "--name", "db", "--version", "1").code == 0
    assert cli("catalogue", "verify", catalogue.dir).code == 0
    blobs = sorted((catalogue.dir / "blobs" / "sha256").iterdir())
    blobs[0].write_bytes(blobs[0].read_bytes()[:-1] + b"\0")  # corrupt one blob
    blobs[1].unlink()  # lose another
    role = sorted((catalogue.dir / "metadata").glob("*.image-wn.json"))[-1]
    doc = json.loads(role.read_text())
    doc["signed"]["expires"] = "2030-01-01T00:00:00Z"  # tamper: signature no longer matches
    role.write_text(json.dumps(doc))
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code == 15
    problems = json.loads(r.out)["problems"]
    assert any("bad signatures" in p and "image-wn" in p for p in problems)
    assert any("is missing" in p for p in problems)
    assert any("has sha256" in p for p in problems)
    assert len(problems) == 3


def test_init_default_keys_beside_and_never_inside(tmp_path, cli):
    r = cli("catalogue", "init", tmp_path / "pub", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["keys"] == str(tmp_path / "pub-keys")
    r = cli("catalogue", "init", tmp_path / "c2", "--keys", tmp_path / "c2" / "keys")
    assert r.code == 7 and "private keys would be published" in r.err
    assert not (tmp_path / "c2" / "keys").exists() and not (tmp_path / "c2" / "metadata").exists()


def test_same_bytes_other_metadata_is_a_conflict(catalogue: Catalogue, cli, make_image):
    img = make_image()
    assert pub(cli, catalogue, img, "--name", "wn", "--version", "1", "--hypervisor", "hvm").code == 0
    r = pub(cli, catalogue, img, "--name", "wn", "--version", "1", "--hypervisor", "xen-pv")
    assert r.code == 6, r.err
    assert "is already published with the same bytes but hypervisor hvm, not xen-pv; versions are immutable" in r.err


def test_build_record_must_be_canonical_json(catalogue: Catalogue, make_image):
    from imagectl.catalogue.keys import KeyRing
    from imagectl.catalogue.publish import PublishRequest, publish
    from imagectl.errors import InvalidInputError
    from tests.conftest import EXPIRY

    req = PublishRequest(file=str(make_image()), name="wn", arch="x86_64", build_record={"seconds": 12.5})
    with pytest.raises(InvalidInputError, match="fractional number"):
        publish(catalogue.store, KeyRing(catalogue.keys), req, EXPIRY)
    assert not (catalogue.dir / "blobs").exists()  # refused before any upload


def test_leftover_of_a_dead_publisher_is_overwritten(catalogue: Catalogue, cli, make_image):
    assert pub(cli, catalogue, make_image(seed="a"), "--name", "wn", "--version", "1").code == 0
    meta = catalogue.dir / "metadata"
    # What a publisher killed after writing its role and snapshot but before the timestamp leaves behind:
    (meta / "2.image-wn.json").write_text('{"half": "written by a dead publisher"}')
    (meta / "3.snapshot.json").write_text("garbage")
    assert cli("catalogue", "verify", catalogue.dir).code == 0  # unreferenced: readers never see them
    assert pub(cli, catalogue, make_image(seed="b"), "--name", "wn", "--version", "2").code == 0
    assert cli("catalogue", "verify", catalogue.dir).code == 0
    assert [e["version"] for e in listing(cli, catalogue)] == ["1", "2"]


def test_custom_fields_must_match_the_target(catalogue: Catalogue, cli, make_image):
    from imagectl.catalogue.model import ImageRecord
    from imagectl.errors import InvalidInputError

    custom = {
        "name": "wn",
        "version": "1",
        "arch": "x86_64",
        "format": "raw",
        "hypervisor": "hvm",
        "size": 10,
        "created": "2026-11-25T00:00:00Z",
    }
    ok = ImageRecord.from_target("wn/1/x86_64/wn-1-x86_64.raw", 10, {"sha256": "0" * 64}, custom)
    assert ok.version == "1"
    with pytest.raises(InvalidInputError, match="has custom fields of wn/2/x86_64"):
        ImageRecord.from_target("wn/1/x86_64/wn-1-x86_64.raw", 10, {"sha256": "0" * 64}, {**custom, "version": "2"})
    with pytest.raises(InvalidInputError, match="size 11 but length 10"):
        ImageRecord.from_target("wn/1/x86_64/wn-1-x86_64.raw", 10, {"sha256": "0" * 64}, {**custom, "size": 11})


@pytest.mark.parametrize("missing", ["snapshot", "timestamp"])
def test_publish_missing_online_key_writes_nothing(catalogue: Catalogue, cli, make_image, missing):
    assert pub(cli, catalogue, make_image(seed="a"), "--name", "wn", "--version", "1").code == 0
    before = metadata_snapshot(catalogue)
    next(catalogue.keys.glob(f"{missing}-*.key")).unlink()
    r = pub(cli, catalogue, make_image(seed="b"), "--name", "wn", "--version", "2")
    assert r.code == 7 and f"need 1 {missing} key" in r.err
    assert metadata_snapshot(catalogue) == before  # not one metadata file written


def test_republish_memo_never_hides_a_changed_file(catalogue: Catalogue, cli, make_image, tmp_path):
    img = make_image(100_000, seed="a")
    r = pub(cli, catalogue, img, "--name", "wn", "--version", "1", "--json")
    assert r.code == 0
    memos = list((tmp_path / "cache" / "file-digests").iterdir())
    assert len(memos) == 1 and memos[0].read_text().split()[0] == json.loads(r.out)["sha256"]
    # identical re-publish: answered from the memo, still a no-op
    r = pub(cli, catalogue, img, "--name", "wn", "--version", "1", "--json")
    assert r.code == 0 and json.loads(r.out)["created"] is False
    # the same file rewritten in place with other bytes of the same size: the memo must not be used
    data = bytearray(img.read_bytes())
    data[0] ^= 0xFF
    img.write_bytes(bytes(data))
    r = pub(cli, catalogue, img, "--name", "wn", "--version", "1")
    assert r.code == 6 and "already published with other bytes" in r.err
