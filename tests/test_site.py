"""``imagectl catalogue site`` and ``--site DIR``: the static browse site (issue 8, item 3).

Unit tests render a catalogue built through the CLI (and hand-made models) and check the files; the browser tests
drive the pages in headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no
websocket library needed), served by a real HTTP server on 127.0.0.1 and opened from file://. Screenshots are
kept in ``$IMAGECTL_ARTEFACTS`` (else ``artefacts/`` under pytest's basetemp) and their paths printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import ImageRecord, blob_key
from imagectl.catalogue.trust import resign
from imagectl.site import render_site
from imagectl.site.model import MetadataInfo, SiteImage, SiteModel, make_name
from imagectl.site.render import script_json
from tests.conftest import EXPIRY, Catalogue, CliResult, require_tools, write_pattern
from tests.httpserver import TestHTTPServer

ARTEFACTS = os.environ.get("IMAGECTL_ARTEFACTS")  # read at import: the autouse fixture drops IMAGECTL_* later
SCHEMA = Path(__file__).resolve().parent.parent / "catalogue" / "schema" / "site-feed.schema.json"
HOSTILE = "</script><img src=x onerror=alert(1)>"
PACKAGES_10 = [
    {"name": n, "version": v, "arch": "amd64"} for n, v in (("bash", "5.2.15"), ("curl", "7.88"), ("vim", "9.0"))
]
PACKAGES_11 = [
    {"name": n, "version": v, "arch": "amd64"}
    for n, v in (("bash", "5.2.21"), ("vim", "9.0"), ("slurm-client", "22.05"))
]


# -- a catalogue with a bit of everything ----------------------------------------------------------------------------
def _from_build(cli: Callable[..., CliResult], cat: Catalogue, d: Path, version: str, packages: list[Any]) -> None:
    d.mkdir()
    write_pattern(d / "debian12-x86_64.qcow2", 8192, seed=f"deb-{version}")
    record = {
        "format": 1,
        "target": {"name": "debian12", "arch": "x86_64", "hypervisor": "hvm", "os": "debian", "os_version": "12"},
        "images": [{"file": "debian12-x86_64.qcow2", "format": "qcow2"}],
        "build_key": f"key-{version}",
        "started": "2026-12-01T10:00:00Z",
        "finished": "2026-12-01T10:05:00Z",
        "dib": {"version": "3.30.0"},
        "packages": packages,
    }
    (d / "debian12-x86_64.build.json").write_text(json.dumps(record))
    r = cli("publish", "--from-build", d, *cat.args(), "--version", version, "--channel", "stable")
    assert r.code == 0, r.err


@pytest.fixture
def site_catalogue(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> Catalogue:
    """slc6-wn: 6.1 x86_64 (stable, deprecated), 6.2 x86_64 + i386 (testing), 6.3 revoked with a hostile reason;
    slc5-xen: 5.11 i386 xen-pv raw; debian12: 1.0 and 1.1 x86_64 from build records with package lists."""
    pubs = [
        ("slc6-wn", "6.1", "x86_64", "slc", "6", "hvm", "qcow2", "stable"),
        ("slc6-wn", "6.2", "x86_64", "slc", "6", "hvm", "qcow2", "testing"),
        ("slc6-wn", "6.2", "i386", "slc", "6", "hvm", "qcow2", None),
        ("slc6-wn", "6.3", "x86_64", "slc", "6", "hvm", "qcow2", None),
        ("slc5-xen", "5.11", "i386", "slc", "5", "xen-pv", "raw", None),
    ]
    for i, (name, version, arch, os_, osv, hv, fmt, channel) in enumerate(pubs):
        img = make_image(size=4096 + i, seed=f"{name}-{version}-{arch}")
        args = ["--name", name, "--version", version, "--arch", arch, "--os", os_, "--os-version", osv]
        args += ["--hypervisor", hv, "--format", fmt, *(["--channel", channel] if channel else [])]
        r = cli("publish", img, *catalogue.args(), *args)
        assert r.code == 0, r.err
    assert cli("deprecate", "slc6-wn:6.1", "--reason", "kernel CVE-2026-1234", *catalogue.args()).code == 0
    assert cli("revoke", "slc6-wn:6.3", "--reason", HOSTILE, *catalogue.args()).code == 0
    _from_build(cli, catalogue, tmp_path / "b10", "1.0", PACKAGES_10)
    _from_build(cli, catalogue, tmp_path / "b11", "1.1", PACKAGES_11)
    return catalogue


def site(cli: Callable[..., CliResult], cat: Catalogue, out: Path, *extra: object) -> CliResult:
    return cli("catalogue", "site", cat.dir, "-o", out, "--root", cat.root, *extra)


@pytest.fixture
def rendered(site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path) -> Path:
    out = tmp_path / "www" / "site"
    r = site(cli, site_catalogue, out, "--public-url", "https://images.example.org/cat/")
    assert r.code == 0, r.err
    return out


class _Rows(HTMLParser):
    """Rows of the index table and every tag seen (to prove no hostile tag got in)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr" and any(k == "data-status" for k, _ in attrs):
            self.rows.append({k.removeprefix("data-"): v or "" for k, v in attrs})


def parse(path: Path) -> _Rows:
    p = _Rows()
    p.feed(path.read_text())
    return p


# -- unit tests of the renderer ----------------------------------------------------------------------------------
def test_index_lists_every_image_and_revoked_version_with_filter_data(rendered: Path) -> None:
    rows = parse(rendered / "index.html").rows
    got = sorted((r["q"].split()[0], r["q"].split()[1], r["arch"], r["status"]) for r in rows)
    assert got == [
        ("debian12", "1.0", "x86_64", "current"),
        ("debian12", "1.1", "x86_64", "current"),
        ("slc5-xen", "5.11", "i386", "current"),
        ("slc6-wn", "6.1", "x86_64", "deprecated"),
        ("slc6-wn", "6.2", "i386", "current"),
        ("slc6-wn", "6.2", "x86_64", "current"),
        ("slc6-wn", "6.3", "", "revoked"),
    ]
    xen = next(r for r in rows if r["arch"] == "i386" and "slc5-xen" in r["q"])
    assert (xen["release"], xen["hypervisor"], xen["format"]) == ("slc 5", "xen-pv", "raw")
    assert next(r for r in rows if "6.1" in r["q"].split())["channels"] == " stable "
    for name in ("slc6-wn", "slc5-xen", "debian12"):
        assert (rendered / "images" / f"{name}.html").is_file()
    assert (rendered / "assets" / "site.css").is_file() and (rendered / "assets" / "site.js").is_file()


def test_name_page_history_newest_first_with_reasons_and_pull_commands(rendered: Path) -> None:
    page = (rendered / "images" / "slc6-wn.html").read_text()
    order = re.findall(r'<section class="version s-(\w+)" id="v-([^"]+)"', page)
    assert order == [("revoked", "6.3"), ("current", "6.2"), ("deprecated", "6.1")]
    assert "Deprecated on " in page and "kernel CVE-2026-1234" in page
    assert "imagectl pull slc6-wn:6.2 --arch i386 --catalogue https://images.example.org/cat/ --root sha256:" in page
    assert "No build record: this image was published without one." in page


def test_versions_sort_naturally_newest_first() -> None:
    recs = [_record("n", v, "x86_64") for v in ("1.9", "1.10", "1.0~rc1", "1.0", "20261125.1")]
    name = make_name("n", [SiteImage(r) for r in recs], {}, {"2.0": {"reason": "bad", "at": "t"}})
    assert [v.version for v in name.versions] == ["20261125.1", "2.0", "1.10", "1.9", "1.0", "1.0~rc1"]


def test_package_list_and_changes_against_the_previous_version(rendered: Path) -> None:
    page = (rendered / "images" / "debian12.html").read_text()
    assert "Packages (3)" in page and "<td>slurm-client</td><td>22.05</td>" in page
    assert "Changes since 1.0: 1 added, 1 removed, 1 changed" in page
    assert "+ slurm-client 22.05 amd64" in page and "− curl 7.88 amd64" in page and "bash 5.2.15 → 5.2.21" in page
    feed = json.loads((rendered / "index.json").read_text())
    [deb] = [n for n in feed["names"] if n["name"] == "debian12"]
    changes = deb["versions"][0]["images"][0]["package_changes"]
    assert changes["changed"] == [{"name": "bash", "arch": "amd64", "from": "5.2.15", "to": "5.2.21"}]
    summary = deb["versions"][0]["images"][0]["build_record"]["summary"]
    assert summary["packages"] == 3 and summary["build_key"] == "key-1.1" and summary["dib_version"] == "3.30.0"


def test_hostile_reason_renders_inert(rendered: Path) -> None:
    for page in [rendered / "index.html", *(rendered / "images").iterdir()]:
        text = page.read_text()
        assert "<img" not in text and "</script><" not in text, page
        assert "img" not in parse(page).tags
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in (rendered / "images" / "slc6-wn.html").read_text()
    embedded = script_json({"reason": HOSTILE, "sep": "\u2028\u2029", "amp": "&"})
    assert not set("<>&\u2028\u2029") & set(embedded)
    assert json.loads(embedded) == {"reason": HOSTILE, "sep": "\u2028\u2029", "amp": "&"}


def test_pages_load_nothing_from_elsewhere_and_run_no_inline_code(rendered: Path) -> None:
    for page in [rendered / "index.html", *(rendered / "images").iterdir()]:
        text = page.read_text()
        assert "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:" in text
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page
        assert " style=" not in text and " on" not in re.sub(r">[^<]*<", "><", text).replace(" one", "")
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", text, re.S)
        assert all(body == "" or 'type="application/json"' in attrs for attrs, body in scripts)


def test_feed_validates_against_its_schema(rendered: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    feed = json.loads((rendered / "index.json").read_text())
    Draft202012Validator(schema).validate(feed)
    assert feed["metadata"]["expired"] is False and feed["catalogue"] == "https://images.example.org/cat/"
    [slc6] = [n for n in feed["names"] if n["name"] == "slc6-wn"]
    assert slc6["versions"][0]["revoked"]["reason"] == HOSTILE
    broken = json.loads(json.dumps(feed))
    broken["names"][0]["versions"][0]["status"] = "gone"
    assert list(Draft202012Validator(schema).iter_errors(broken))


def test_same_metadata_gives_the_same_bytes(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], rendered: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert site(cli, site_catalogue, again, "--public-url", "https://images.example.org/cat/").code == 0
    files = sorted(p.relative_to(rendered) for p in rendered.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((rendered / f).read_bytes() == (again / f).read_bytes() for f in files)


@pytest.mark.parametrize("kind", ["symlink", "file", "foreign"])
def test_refuses_a_destination_it_did_not_write(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, kind: str
) -> None:
    dest = tmp_path / "dest"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        dest.symlink_to(tmp_path / "elsewhere")
    elif kind == "file":
        dest.write_text("precious")
    else:
        dest.mkdir()
        (dest / "precious.txt").write_text("precious")
    r = site(cli, site_catalogue, dest)
    assert r.code == 14, r.err
    [line, hint] = r.err.strip().splitlines()[-2:]
    assert line.startswith("imagectl: error: refusing to ") and str(dest) in line and hint.startswith("hint: ")
    if kind == "symlink":
        assert dest.is_symlink() and not any((tmp_path / "elsewhere").iterdir())
    else:
        assert (dest.read_text() if kind == "file" else (dest / "precious.txt").read_text()) == "precious"
    assert not list(tmp_path.glob(".dest.*"))


def test_an_empty_directory_or_an_earlier_site_is_replaced(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert site(cli, site_catalogue, dest).code == 0
    (dest / "stale.html").write_text("from an older render")
    r = site(cli, site_catalogue, dest, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["names"] == 3 and not (dest / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".empty")) == []


def test_a_failed_write_leaves_the_previous_site_intact(
    rendered: Path, site_catalogue: Catalogue, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p: p.read_bytes() for p in rendered.rglob("*") if p.is_file()}
    import imagectl.site.write as write

    real_fill = write._fill

    def fill_then_disk_full(tmp: Path, files: Any, marker: dict[str, Any]) -> None:
        real_fill(tmp, dict(list(files.items())[:2]), marker)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write, "_fill", fill_then_disk_full)
    r = site(cli, site_catalogue, rendered)
    assert r.code == 14 and r.err.strip().endswith("disk full"), r.err
    assert {p: p.read_bytes() for p in rendered.rglob("*") if p.is_file()} == before
    assert [p.name for p in rendered.parent.iterdir()] == ["site"]  # no temp directory left


def test_a_change_with_site_refreshes_it(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], rendered: Path
) -> None:
    r = cli("promote", "slc6-wn:6.2", "stable", *site_catalogue.args(), "--site", rendered)
    assert r.code == 0, r.err
    assert "imagectl: warning" not in r.err  # the publisher's own root, no trust-on-first-use notice
    page = (rendered / "images" / "slc6-wn.html").read_text()
    assert re.search(r'id="h-6\.2">6\.2 <span class="status s-current">current</span> <span class="chan">stable', page)
    assert "https://images.example.org/cat/" in page  # the public URL the site was made with is kept


def test_publish_and_deprecate_with_site_refresh_it(
    site_catalogue: Catalogue,
    cli: Callable[..., CliResult],
    rendered: Path,
    make_image: Callable[..., Path],
) -> None:
    """``--site DIR`` on the other two changers: the page shows the new version, then its deprecation."""
    assert "6.4" not in (rendered / "images" / "slc6-wn.html").read_text()
    img = make_image(size=5000, seed="slc6-wn-6.4")
    args = ["--name", "slc6-wn", "--version", "6.4", "--arch", "x86_64", "--os", "slc", "--os-version", "6"]
    r = cli("publish", img, *site_catalogue.args(), *args, "--channel", "testing", "--site", rendered)
    assert r.code == 0, r.err
    assert "imagectl: warning" not in r.err
    page = (rendered / "images" / "slc6-wn.html").read_text()
    order = re.findall(r'<section class="version s-(\w+)" id="v-([^"]+)"', page)
    assert order == [("current", "6.4"), ("revoked", "6.3"), ("current", "6.2"), ("deprecated", "6.1")]
    assert re.search(r'id="h-6\.4">6\.4 <span class="status s-current">current</span> <span class="chan">testing', page)
    assert "imagectl pull slc6-wn:6.4 --arch x86_64 --catalogue https://images.example.org/cat/" in page
    rows = [r for r in parse(rendered / "index.html").rows if r["q"].split()[:2] == ["slc6-wn", "6.4"]]
    assert [(r["arch"], r["status"]) for r in rows] == [("x86_64", "current")]
    feed = json.loads((rendered / "index.json").read_text())
    [slc6] = [n for n in feed["names"] if n["name"] == "slc6-wn"]
    assert slc6["versions"][0]["version"] == "6.4" and slc6["versions"][0]["status"] == "current"

    r = cli("deprecate", "slc6-wn:6.2", "--reason", "superseded by 6.4", *site_catalogue.args(), "--site", rendered)
    assert r.code == 0, r.err
    page = (rendered / "images" / "slc6-wn.html").read_text()
    order = re.findall(r'<section class="version s-(\w+)" id="v-([^"]+)"', page)
    assert order == [("current", "6.4"), ("revoked", "6.3"), ("deprecated", "6.2"), ("deprecated", "6.1")]
    assert "superseded by 6.4" in page
    rows = [r for r in parse(rendered / "index.html").rows if r["q"].split()[:2] == ["slc6-wn", "6.2"]]
    assert sorted((r["arch"], r["status"]) for r in rows) == [("i386", "deprecated"), ("x86_64", "deprecated")]
    feed = json.loads((rendered / "index.json").read_text())
    Draft202012Validator(json.loads(SCHEMA.read_text())).validate(feed)
    [slc6] = [n for n in feed["names"] if n["name"] == "slc6-wn"]
    [v62] = [v for v in slc6["versions"] if v["version"] == "6.2"]
    assert v62["status"] == "deprecated", v62


def test_a_site_dir_that_is_not_a_site_is_refused_before_the_change(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    not_a_site = tmp_path / "notes"
    not_a_site.mkdir()
    (not_a_site / "todo.txt").write_text("mine")
    r = cli("revoke", "slc6-wn:6.2", "--reason", "bad", *site_catalogue.args(), "--site", not_a_site)
    assert r.code == 14
    [line] = [x for x in r.err.splitlines() if x.startswith("imagectl: error:")]
    assert line.startswith(f"imagectl: error: refusing to replace {not_a_site}: a non-empty directory")
    shown = cli("catalogue", "show", "slc6-wn", "--catalogue", site_catalogue.dir, "--root", site_catalogue.root)
    assert "revoked: 6.2" not in shown.out  # nothing was signed
    assert (not_a_site / "todo.txt").read_text() == "mine"


def test_a_failed_refresh_says_the_change_is_published(
    rendered: Path, site_catalogue: Catalogue, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site directory is fine, but the disk fills while the site is written: the revoke stands, and the one
    error line says so."""
    before = {p: p.read_bytes() for p in rendered.rglob("*") if p.is_file()}
    import imagectl.site.write as write

    def disk_full(tmp: Path, files: Any, marker: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write, "_fill", disk_full)
    r = cli("revoke", "slc6-wn:6.2", "--reason", "bad", *site_catalogue.args(), "--site", rendered)
    assert r.code == 14
    [line] = [x for x in r.err.splitlines() if x.startswith("imagectl: error:")]
    assert line.startswith(f"imagectl: error: the change is published, but the site in {rendered} was NOT refreshed")
    assert line.endswith("disk full")
    assert "revoked slc6-wn:6.2" in r.out
    shown = cli("catalogue", "show", "slc6-wn", "--catalogue", site_catalogue.dir, "--root", site_catalogue.root)
    assert "revoked: 6.2: bad" in shown.out
    assert {p: p.read_bytes() for p in rendered.rglob("*") if p.is_file()} == before


def test_a_tampered_build_record_is_not_shown(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    feed = json.loads((_render(cli, site_catalogue, tmp_path / "a") / "index.json").read_text())
    [deb] = [n for n in feed["names"] if n["name"] == "debian12"]
    sha = deb["versions"][0]["images"][0]["build_record"]["summary"]["sha256"]
    blob = site_catalogue.dir / blob_key(sha)
    blob.write_bytes(blob.read_bytes().replace(b"slurm-client", b"evil-rootkit"))
    r = site(cli, site_catalogue, tmp_path / "b")
    assert r.code == 0 and "does not match its signed size and SHA-256" in r.err
    page = (tmp_path / "b" / "images" / "debian12.html").read_text()
    assert "evil-rootkit" not in page and "Package list not shown" in page


@pytest.mark.http
def test_renders_from_a_catalogue_served_over_http(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv = http_catalogue
    _from_build(cli, cat, tmp_path / "b10", "1.0", PACKAGES_10)
    _from_build(cli, cat, tmp_path / "b11", "1.1", PACKAGES_11)
    out = tmp_path / "from-http"
    r = cli("catalogue", "site", srv.url, "-o", out, "--root", cat.root)
    assert r.code == 0, r.err
    page = (out / "images" / "debian12.html").read_text()
    assert "Changes since 1.0: 1 added, 1 removed, 1 changed" in page  # build records fetched over HTTP, verified
    assert f"--catalogue {srv.url} --root sha256:" in page
    assert any("/blobs/sha256/" in path for _, path, _ in srv.served.requests)


def _render(cli: Callable[..., CliResult], cat: Catalogue, out: Path) -> Path:
    r = site(cli, cat, out)
    assert r.code == 0, r.err
    return out


def _expire(cat: Catalogue) -> None:
    """Re-sign everything with a timestamp that expired yesterday: what a catalogue nobody re-signs looks like."""
    resign(cat.store, KeyRing(cat.keys), {**EXPIRY, "timestamp": -1}, everything=True)


def test_an_expired_catalogue_is_rendered_red_from_signed_metadata(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    assert cli("catalogue", "list", "--catalogue", site_catalogue.dir, "--root", site_catalogue.root).code == 0
    _expire(site_catalogue)
    assert cli("catalogue", "list", "--catalogue", site_catalogue.dir, "--root", site_catalogue.root).code == 10
    out = tmp_path / "expired"
    r = site(cli, site_catalogue, out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["expired"] is True and "marked expired" in r.err
    index = (out / "index.html").read_text()
    assert 'class="expiry expired" data-state="expired"' in index and "EXPIRED on " in index
    feed = json.loads((out / "index.json").read_text())
    assert feed["metadata"]["expired"] is True and feed["metadata"]["expires_role"] == "timestamp"
    assert len(parse(out / "index.html").rows) == 7


def test_an_expired_catalogue_whose_signatures_fail_is_refused(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    _expire(site_catalogue)
    [role] = sorted((site_catalogue.dir / "metadata").glob("*.image-slc6-wn.json"))[-1:]
    role.write_bytes(role.read_bytes().replace(b"kernel CVE-2026-1234", b"all fine, nothing to see"))
    r = site(cli, site_catalogue, tmp_path / "out")
    assert r.code == 10 and "not rendered:" in r.err and "signature" in r.err, r.err
    assert not (tmp_path / "out").exists()


# -- headless Chromium -------------------------------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4, NUL-separated JSON)."""

    def __init__(self, profile: Path, timeout: float = 60) -> None:
        require_tools("chromium", install="chromium")
        self.timeout, self.n, self.buf = timeout, 0, b""
        self.events: list[dict[str, Any]] = []
        to_chrome, self.w = os.pipe()
        self.r, from_chrome = os.pipe()

        def fds() -> None:  # in the child: the protocol's fixed descriptors
            a, b = os.dup(to_chrome), os.dup(from_chrome)
            os.dup2(a, 3)
            os.dup2(b, 4)

        argv = ["chromium", "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-gpu", "--disable-extensions", "--no-default-browser-check",
                "--hide-scrollbars", "about:blank"]  # fmt: skip
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        self.proc = subprocess.Popen(
            argv, preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        os.close(to_chrome)
        os.close(from_chrome)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buf:
                raw, _, self.buf = self.buf.partition(b"\0")
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if want(msg):
                    return msg  # type: ignore[no-any-return]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                pytest.fail(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                pytest.fail("Chromium exited")
            self.buf += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self.n += 1
        msg: dict[str, Any] = {"id": self.n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        answer = self._read(lambda m: m.get("id") == msg["id"])
        assert "error" not in answer, answer
        return answer["result"]  # type: ignore[no-any-return]

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=True)  # fmt: skip
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        """Load ``url`` at this viewport and wait until site.js has run (it marks ``data-ready-ms``)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=True)
        self.call("Page.navigate", {"url": "about:blank"}, session=True)
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + self.timeout
        while not self.eval(
            "document.readyState === 'complete' && document.documentElement.hasAttribute('data-ready-ms')"
        ):
            assert time.monotonic() < deadline, f"{url}: site.js did not run"
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        import base64

        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        return path

    def problems(self) -> list[str]:
        """Console errors and CSP violations seen so far."""
        out = []
        for ev in self.events:
            entry = ev.get("params", {}).get("entry", {})
            if ev.get("method") == "Log.entryAdded" and entry.get("level") == "error":
                out.append(entry.get("text", ""))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.w)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(timeout=30)
        os.close(self.r)


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(ARTEFACTS) if ARTEFACTS else tmp_path_factory.getbasetemp() / "artefacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


VISIBLE = "document.querySelectorAll('#images tbody tr:not([hidden])').length"


def _filter_checks(b: Chromium, base: str) -> None:
    cases = {
        "": 7,
        "#os=slc": 4,
        "#os=slc&arch=i386": 2,
        "#release=slc%206&arch=i386": 1,
        "#hypervisor=xen-pv": 1,
        "#format=raw": 1,
        "#channel=stable": 2,
        "#status=revoked": 1,
        "#status=deprecated": 1,
        "#q=debian": 2,
        "#q=slc6%206.2": 2,
        "#arch=ppc64": 0,
    }
    for frag, want in cases.items():
        b.open(base + frag)
        assert b.eval(VISIBLE) == want, frag
        assert b.eval("document.getElementById('count').textContent") == f"Showing {want} of 7 rows"
        assert b.eval("document.getElementById('none').hidden") is (want != 0)


@pytest.mark.slow
@pytest.mark.http
def test_browser_over_http_filters_shows_reasons_and_pull_commands(
    rendered: Path, tmp_path: Path, artefacts: Path
) -> None:
    with TestHTTPServer(rendered.parent) as srv, chromium(tmp_path) as b:
        base = f"{srv.url}site/index.html"
        _filter_checks(b, base)
        b.open(base + "#os=slc")
        assert b.eval("document.getElementById('f-os').value") == "slc"  # the form shows the URL's state
        b.eval("document.getElementById('f-q').focus()")
        b.call("Input.insertText", {"text": "xen"}, session=True)
        assert b.eval(VISIBLE) == 1 and b.eval("location.hash") == "#q=xen&os=slc"
        assert b.eval("[...document.querySelectorAll('input,select')].every(e => e.labels.length === 1)")
        assert b.eval("document.getElementById('filters').hidden") is False
        b.screenshot(artefacts / "site-index-http.png")

        b.open(f"{srv.url}site/images/slc6-wn.html")
        assert b.eval("document.querySelector('#v-6\\\\.3 .reason').textContent") == HOSTILE
        assert b.eval("document.querySelectorAll('img').length") == 0
        pull = b.eval("document.getElementById('pull-6.2-i386').textContent")
        assert pull.startswith("imagectl pull slc6-wn:6.2 --arch i386 --catalogue https://images.example.org/cat/")
        assert b.eval("document.querySelector('button.copy').hidden") is False
        assert b.eval("document.getElementById('expiry').dataset.state") == "ok"
        assert "signed, expires in " in b.eval("document.querySelector('#expiry .expiry-text').textContent")
        b.screenshot(artefacts / "site-name-http.png")
        assert b.problems() == []  # no CSP violation, no script error


@pytest.mark.slow
def test_browser_from_a_directory_and_at_phone_width(rendered: Path, tmp_path: Path, artefacts: Path) -> None:
    with chromium(tmp_path) as b:
        _filter_checks(b, (rendered / "index.html").as_uri())
        for page in ("index.html", "images/slc6-wn.html", "images/debian12.html"):
            b.open((rendered / page).as_uri(), width=375, height=800)
            assert b.eval("document.documentElement.scrollWidth") <= 375, page
        b.screenshot(artefacts / "site-name-375px.png")
        b.open((rendered / "index.html").as_uri() + "#os=slc", width=375, height=800)
        b.screenshot(artefacts / "site-index-375px.png")
        assert b.problems() == []


@pytest.mark.slow
def test_browser_shows_expiry_in_red(
    site_catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path, artefacts: Path
) -> None:
    _expire(site_catalogue)
    out = _render(cli, site_catalogue, tmp_path / "expired")
    # A page rendered while the catalogue was fresh, viewed after the expiry, turns red by itself.
    model = _model(expires="2000-01-01T00:00:00Z", expired=False)
    fresh_then = tmp_path / "fresh-then"
    for rel, data in render_site(model).items():
        (fresh_then / rel).parent.mkdir(parents=True, exist_ok=True)
        (fresh_then / rel).write_bytes(data)
    assert 'data-state="ok"' in (fresh_then / "index.html").read_text()
    with chromium(tmp_path) as b:
        for index in (out / "index.html", fresh_then / "index.html"):
            b.open(index.as_uri())
            assert b.eval("document.getElementById('expiry').dataset.state") == "expired"
            assert b.eval("getComputedStyle(document.getElementById('expiry')).color") == "rgb(164, 14, 38)"
            assert b.eval("document.querySelector('#expiry .expiry-text').textContent").startswith("EXPIRED ")
        b.open((out / "index.html").as_uri())
        b.screenshot(artefacts / "site-expired.png")


# -- hand-made models ----------------------------------------------------------------------------------------------
def _record(name: str, version: str, arch: str) -> ImageRecord:
    return ImageRecord(name, version, arch, "qcow2", "hvm", "slc", "6", 1024, "a" * 64, "2026-12-01T00:00:00Z",
                       f"{name}/{version}/{arch}/{name}-{version}-{arch}.qcow2")  # fmt: skip


def _model(*, expires: str, expired: bool) -> SiteModel:
    meta = MetadataInfo(3, 3, expires, "timestamp", expired, "b" * 64)
    return SiteModel(
        "https://x.example/cat/", meta, (make_name("n", [SiteImage(_record("n", "1", "x86_64"))], {}, {}),)
    )


def test_render_is_a_pure_function_of_the_model() -> None:
    a = render_site(_model(expires="2030-01-01T00:00:00Z", expired=False))
    b = render_site(_model(expires="2030-01-01T00:00:00Z", expired=False))
    assert a == b and set(a) == {"index.html", "index.json", "images/n.html", "assets/site.css", "assets/site.js"}
    assert dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H") not in a["index.html"].decode()
