"""Partial mirrors: a verified subset with the signed metadata covering it, resumable, pulled with the same root."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from imagectl.catalogue.model import target_file_key
from tests.conftest import Catalogue, sha256
from tests.httpserver import Fault


def populate(cli, cat: Catalogue, make_image) -> dict[tuple[str, str, str], Path]:
    images = {}
    for name in ("wn", "db"):
        for arch in ("x86_64", "i386"):
            for v in ("1", "2", "3"):
                img = make_image(200_000, seed=f"{name}{arch}{v}")
                r = cli("publish", img, *cat.args(), "--name", name, "--arch", arch, "--version", v)
                assert r.code == 0, r.err
                images[(name, arch, v)] = img
    assert cli("promote", "wn:2", "stable", *cat.args()).code == 0
    return images


def pull(cli, url, root, ref, dest, arch="x86_64"):
    return cli("pull", ref, "--catalogue", url, "--root", root, "--arch", arch, "-o", dest, "--json")


@pytest.mark.http
def test_partial_mirror_from_http_resumes_and_serves(http_catalogue, cli, make_image, tmp_path):
    cat, srv = http_catalogue
    images = populate(cli, cat, make_image)
    mirror = tmp_path / "mirror"
    selected = {images[("wn", "x86_64", v)] for v in ("2", "3")}
    # interrupted: the source fails on one of the selected images (its target file), after others were copied
    failing = sha256(images[("wn", "x86_64", "3")])
    srv.add_fault(Fault(suffix=target_file_key("wn/3/x86_64/wn-3-x86_64.qcow2", failing), status=500))
    r = cli(
        "mirror",
        srv.url,
        mirror,
        "--root",
        cat.root,
        "--filter",
        "name=wn",
        "--filter",
        "arch=x86_64",
        "--max",
        "2",
        "--quiet",
    )
    assert r.code == 13 and re.search(r"HTTP 500 from http://127\.0\.0\.1:\d+/", r.err), r.err
    assert not (mirror / "metadata" / "timestamp.json").exists()  # nothing is served until a run completes
    copied_first = {p.name for p in (mirror / "blobs" / "sha256").iterdir()}
    assert copied_first and failing not in copied_first
    srv.clear()
    r = cli(
        "mirror",
        srv.url,
        mirror,
        "--root",
        cat.root,
        "--filter",
        "name=wn",
        "--filter",
        "arch=x86_64",
        "--max",
        "2",
        "--json",
    )
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["blobs_present"] == len(copied_first) and rep["blobs_copied"] == 2 - len(copied_first)
    for name in copied_first:
        assert srv.served.bytes_for(name) == 0  # resumed: what was there was not fetched again
    assert {p.name for p in (mirror / "blobs" / "sha256").iterdir()} == {sha256(p) for p in selected}
    assert not list((mirror / "metadata").glob("*.image-db.json"))  # db is not part of this mirror
    assert cli("catalogue", "verify", mirror).code == 0
    # a deployer pulls from the mirror with the root it already pins
    r = pull(cli, mirror, cat.root, "wn", tmp_path / "a.img")
    assert r.code == 0, r.err
    assert (
        json.loads(r.out)["version"] == "3"
        and (tmp_path / "a.img").read_bytes() == images[("wn", "x86_64", "3")].read_bytes()
    )
    r = pull(cli, mirror, cat.root, "wn@stable", tmp_path / "b.img")
    assert r.code == 0 and json.loads(r.out)["version"] == "2"
    r = pull(cli, mirror, cat.root, "db", tmp_path / "c.img")
    assert r.code == 4 and not (tmp_path / "c.img").exists()  # not mirrored: refused, nothing written
    r = pull(cli, mirror, cat.root, "wn:1", tmp_path / "d.img")
    assert r.code == 4 and not (tmp_path / "d.img").exists(), r.err  # filtered out by --max 2: not held here


def test_mirror_never_rolls_back_and_refuses_tampered_source(catalogue: Catalogue, cli, make_image, tmp_path):
    assert cli("publish", make_image(seed="a"), *catalogue.args(), "--name", "wn", "--arch", "x86_64").code == 0
    old = tmp_path / "old-copy"
    shutil.copytree(catalogue.dir, old)
    assert cli("publish", make_image(seed="b"), *catalogue.args(), "--name", "wn", "--arch", "x86_64").code == 0
    mirror = tmp_path / "mirror"
    assert cli("mirror", catalogue.dir, mirror, "--root", catalogue.root, "-q").code == 0
    r = cli("mirror", old, mirror, "--root", catalogue.root, "--cache-dir", tmp_path / "fresh-cache", "-q")
    assert r.code == 9 and "newer than the source" in r.err
    assert cli("catalogue", "verify", mirror).code == 0
    # a tampered image at the source (its target file, what a mirror reads) is refused, not mirrored
    tampered = tmp_path / "tampered"
    shutil.copytree(catalogue.dir, tampered)
    target = next((tampered / "targets").rglob("*.qcow2"))
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    r = cli("mirror", tampered, tmp_path / "m2", "--root", catalogue.root, "-q")
    assert r.code == 11 and "does not match" in r.err
    assert not (tmp_path / "m2" / "metadata" / "timestamp.json").exists()


def test_mirror_filters_are_checked(catalogue: Catalogue, cli, tmp_path):
    for bad, msg in (
        (["--filter", "colour=red"], "--filter takes"),
        (["--filter", "arch=sparc"], "unknown arch"),
        (["--max", "0"], "at least 1"),
        (["--filter", "name=nosuch"], "no image named 'nosuch'"),
    ):
        r = cli("mirror", catalogue.dir, tmp_path / "m", "--root", catalogue.root, *bad)
        assert r.code == 3 and msg in r.err, (bad, r.err)
