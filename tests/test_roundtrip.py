"""publish -> list -> pull, on a directory catalogue and over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from imagectl.catalogue.model import target_file_key, target_path
from tests.conftest import Catalogue, CliResult, sha256
from tests.httpserver import TestHTTPServer


def test_publish_list_pull_directory(catalogue: Catalogue, cli: Callable[..., CliResult], make_image, tmp_path):
    img = make_image(300_000)
    r = cli(
        "publish",
        img,
        *catalogue.args(),
        "--name",
        "slc6-wn",
        "--arch",
        "x86_64",
        "--version",
        "6.1",
        "--os",
        "slc",
        "--os-version",
        "6",
        "--hypervisor",
        "xen-pv",
        "--json",
    )
    assert r.code == 0, r.err
    pub = json.loads(r.out)
    assert pub["created"] is True and pub["uploaded"] is True and pub["sha256"] == sha256(img)

    r = cli("catalogue", "list", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    assert r.code == 0, r.err
    [row] = json.loads(r.out)
    assert (row["name"], row["version"], row["arch"], row["os"], row["os_version"], row["hypervisor"]) == (
        "slc6-wn",
        "6.1",
        "x86_64",
        "slc",
        "6",
        "xen-pv",
    )

    out = tmp_path / "out.img"
    r = cli(
        "pull",
        "slc6-wn:6.1",
        "--catalogue",
        catalogue.dir,
        "--root",
        catalogue.root,
        "--arch",
        "x86_64",
        "-o",
        out,
        "--json",
    )
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["path"] == str(out) and res["sha256"] == sha256(img) and res["size"] == 300_000
    assert out.read_bytes() == img.read_bytes()
    assert not list(out.parent.glob(".out.img.*"))  # no temp files left beside the destination


@pytest.mark.http
def test_pull_over_http_then_cache(http_catalogue: tuple[Catalogue, TestHTTPServer], cli, make_image, tmp_path):
    catalogue, srv = http_catalogue
    img = make_image(2_000_000)
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    image = target_file_key(target_path("wn", rec["version"], "x86_64", rec["format"]), sha256(img))  # what pull reads
    out1, out2 = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    r = cli("pull", "wn", "--catalogue", srv.url, "--root", catalogue.root, "--arch", "x86_64", "-o", out1, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is False
    assert srv.served.bytes_for(image) == img.stat().st_size and srv.served.bytes_for(sha256(img)) == 0
    srv.clear()
    r = cli("pull", "wn", "--catalogue", srv.url, "--root", catalogue.root, "--arch", "x86_64", "-o", out2, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is True
    assert srv.served.bytes_for(image) == srv.served.bytes_for(sha256(img)) == 0  # no network for the image
    assert out1.read_bytes() == out2.read_bytes() == img.read_bytes()


def test_catalogue_files_are_world_readable(catalogue: Catalogue, cli: Callable[..., CliResult], make_image):
    """A web server runs as another user: every catalogue file must be readable by it (keys stay 0600)."""
    assert cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", "x86_64").code == 0
    files = [p for p in catalogue.dir.rglob("*") if p.is_file() and p.name != ".lock"]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {0o644}
    assert {p.stat().st_mode & 0o777 for p in catalogue.keys.glob("*.key")} == {0o600}


def test_demo_quick(tmp_path, cli):
    """`imagectl demo --quick`: the demo's catalogue half, without build tools."""
    r = cli("demo", "--workdir", tmp_path / "q", "--quick")
    assert r.code == 0, r.err
    assert "published demo-disk:" in r.out and r.out.rstrip().endswith("OK")
    assert len(list((tmp_path / "q" / "pulled").glob("demo-disk-*.raw"))) == 1
