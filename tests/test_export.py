"""Exports, each read by the consumer it is for: sstream-query (python-simplestreams) with its own GnuPG keyring,
``openssl smime -verify`` and atrope's own list parser and downloader (atrope 2.0.0 from PyPI, in a venv of its
own: its oslo/glanceclient dependencies stay out of imagectl's environment), and nova's ``ImageMetaProps`` from
Debian's python3-nova (run with the system Python, where apt installs it).

The catalogues are real: published through the CLI (slc6-wn x86_64 xen-pv with a channel, a deprecated version
with a hostile reason and a revoked one; slc5-wn i386 hvm; slc5-ia64 ia64; debian12 with a channel).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagectl.catalogue.model import target_file_key, version_key
from imagectl.export.simplestreams import version_serial
from tests.conftest import Catalogue, CliResult, require_tools, unavailable
from tests.httpserver import TestHTTPServer

HOSTILE = "CVE $(touch pwned) `touch pwned2`; rm -rf / && echo 'x' \"y\" | tee | * ?"
ATROPE = "atrope==2.0.0"
ATROPE_VENV = Path("/var/tmp/imagectl-test-venvs/atrope-2.0.0")  # kept between runs: a venv per run is 20 s
DATES = ("dc:date:created", "dc:date:expires")  # of a HEPiX image list


@dataclass
class Published:
    cat: Catalogue
    images: dict[str, Path]  # "name:version" -> the published file


@pytest.fixture
def published(catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]) -> Published:
    cat = catalogue
    images = {}

    def pub(name: str, version: str, arch: str, *extra: str, size: int = 70_000, fmt: str = "qcow2") -> None:
        path = make_image(size, seed=f"{name}{version}{arch}", name=f"{name}-{version}-{arch}.{fmt}")
        r = cli("publish", path, *cat.args(), "--name", name, "--version", version, "--arch", arch, *extra)
        assert r.code == 0, r.err
        images[f"{name}:{version}"] = path

    pub("slc6-wn", "6.1", "x86_64", "--os", "slc", "--os-version", "6", "--hypervisor", "xen-pv", "--channel", "stable")
    pub("slc6-wn", "6.2", "x86_64", "--os", "slc", "--os-version", "6", "--hypervisor", "xen-pv")
    pub("slc6-wn", "6.3", "x86_64", "--os", "slc", "--os-version", "6", "--hypervisor", "xen-pv")
    pub("slc5-wn", "5.11", "i386", "--os", "slc", "--os-version", "5", fmt="raw")
    pub("slc5-ia64", "5.11", "ia64", "--os", "slc", "--os-version", "5")
    pub("debian12", "12.1", "x86_64", "--os", "debian", "--os-version", "12", "--channel", "testing")
    assert cli("deprecate", "slc6-wn:6.2", "--reason", HOSTILE, *cat.args()).code == 0
    assert cli("revoke", "slc6-wn:6.3", "--reason", "bad mirror", *cat.args()).code == 0
    return Published(cat, images)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- simplestreams ---------------------------------------------------------------------------------------------
@pytest.fixture
def gpg_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A throwaway GnuPG home with one signing key (no passphrase), GNUPGHOME set; yields (fingerprint, keyring).
    The keyring file holds only the public key: it is what a consumer is given."""
    require_tools("gpg", "gpgv", "gpgconf", install="gnupg")
    home = Path(tempfile.mkdtemp(prefix="gpg", dir="/tmp"))  # short: gpg-agent's socket path is limited
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gen = ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "imagectl test <t@example.org>", "ed25519"]
    subprocess.run([*gen, "sign", "never"], env=env, check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--with-colons", "--list-keys"], env=env, check=True, capture_output=True).stdout
    fpr = next(line.split(":")[9] for line in listing.decode().splitlines() if line.startswith("fpr:"))
    keyring = home / "consumer.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--export", fpr], env=env, check=True, capture_output=True).stdout)
    monkeypatch.setenv("GNUPGHOME", str(home))
    try:
        yield fpr, keyring
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def sstream_query(*args: str) -> subprocess.CompletedProcess[str]:
    require_tools("sstream-query", install="python-simplestreams (pip; pyproject test extras)")
    return subprocess.run(["sstream-query", *args], capture_output=True, text=True, timeout=120, check=False)


def query_json(*args: str) -> list[dict[str, str]]:
    p = sstream_query("--json", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def alias(a: str) -> str:
    return f"aliases~(^|,){a}(,|$)"


@pytest.mark.http
def test_simplestreams_signed_read_by_sstream_query(
    published: Published, cli: Callable[..., CliResult], gpg_home: tuple[str, Path]
) -> None:
    """Signed streams, served with the catalogue over HTTP, queried by arch, release and alias; a tampered .sjson
    fails verification; the unsigned index is readable without a keyring."""
    fpr, keyring = gpg_home
    cat, images = published.cat, published.images
    with TestHTTPServer(cat.dir, prefix="cat") as srv:
        r = cli("export", "simplestreams", cat.dir, "-o", cat.dir, "--gpg-key", fpr, "--public-url", srv.url)
        assert r.code == 0, r.err
        index = srv.url + "streams/v1/index.sjson"
        every = query_json("--keyring", str(keyring), index)
        assert {(i["imagectl_name"], i["imagectl_version"], i["arch"]) for i in every} == {
            ("slc6-wn", "6.1", "amd64"),
            ("slc6-wn", "6.2", "amd64"),  # deprecated: listed, supported False
            ("slc5-wn", "5.11", "i386"),
            ("slc5-ia64", "5.11", "ia64"),
            ("debian12", "12.1", "amd64"),
        }  # 6.3 was revoked: not there
        for item in every:
            path = images[f"{item['imagectl_name']}:{item['imagectl_version']}"]
            assert item["sha256"] == sha256(path) and int(item["size"]) == path.stat().st_size
            assert item["version_name"] == version_serial(item["imagectl_version"])
        # every item URL serves exactly the signed bytes (path is relative to the catalogue's base)
        for item in every:
            with urllib.request.urlopen(item["item_url"]) as resp:  # 127.0.0.1 test server
                assert hashlib.sha256(resp.read()).hexdigest() == item["sha256"]

        amd64 = query_json("--keyring", str(keyring), index, "arch=amd64", "os=scientificlinux")
        assert sorted(i["imagectl_version"] for i in amd64) == ["6.1", "6.2"]
        dep = next(i for i in amd64 if i["imagectl_version"] == "6.2")
        assert dep["supported"] == "False" and dep["deprecated_reason"] == HOSTILE
        assert next(i for i in amd64 if i["imagectl_version"] == "6.1")["supported"] == "True"
        assert [
            i["imagectl_version"] for i in query_json("--keyring", str(keyring), index, "release=5", "arch=ia64")
        ] == ["5.11"]
        stable = query_json("--keyring", str(keyring), index, alias("slc6-wn@stable"), "label~(^|,)stable(,|$)")
        assert [(i["imagectl_version"], i["ftype"]) for i in stable] == [("6.1", "disk1.img")]
        testing = query_json("--keyring", str(keyring), index, alias("debian12@testing"), "label~testing")
        assert [(i["imagectl_version"], i["os"], i["release"]) for i in testing] == [("12.1", "debian", "12")]
        newest = query_json("--keyring", str(keyring), "--max", "1", index, "arch=amd64", alias("slc6-wn"))
        assert [i["imagectl_version"] for i in newest] == ["6.2"]  # simplestreams' own "newest": string order

        # unsigned index.json: no keyring needed
        plain = query_json(srv.url + "streams/v1/index.json", "arch=i386")
        assert [(i["imagectl_name"], i["ftype"]) for i in plain] == [("slc5-wn", "raw")]

        # a tampered products .sjson (same signature, other bytes) is refused; --no-verify reads it
        signed = cat.dir / "streams/v1/org.imagectl:download.sjson"
        signed.write_text(signed.read_text().replace('"size": 70000', '"size": 70001', 1))
        bad = sstream_query("--json", "--keyring", str(keyring), index, "arch=amd64")
        assert bad.returncode != 0 and "'gpgv', '--keyring=" in bad.stderr and "non-zero exit status" in bad.stderr
        assert query_json("--no-verify", index, "arch=amd64")
        # an index signed by another key is refused too
        other = keyring.with_name("other.gpg")
        other.write_bytes(b"")
        assert sstream_query("--json", "--keyring", str(other), index).returncode != 0


def test_version_serial_sorts_like_versions() -> None:
    versions = ["1.0~rc1", "1.0", "1.00", "1.0.1", "1.0a", "1.9", "1.10", "2", "6.1", "20261125.1", "20261125.9"]
    versions += ["20261125.10", "B", "a", "1.0~~", "1.0~", "10", "9.99", "1-0", "0", "00", "1a~b", "1ab"]
    assert sorted(versions, key=version_serial) == sorted(versions, key=version_key)
    assert len({version_serial(v) for v in versions}) == len(versions)


def test_simplestreams_failed_signing_leaves_nothing(
    published: Published, cli: Callable[..., CliResult], gpg_home: tuple[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "streams-out"
    r = cli("export", "simplestreams", published.cat.dir, "-o", out, "--gpg-key", "nobody@example.org")
    assert r.code == 20 and r.err.count("imagectl: error:") == 1 and "gpg --clearsign failed" in r.err, r.err
    assert not out.exists() or not any(out.rglob("*"))  # no half-written file, no temp file
    r = cli("export", "simplestreams", published.cat.dir, "-o", out, "--gpg-key=--homedir=/etc")
    assert r.code == 3 and "not a GnuPG key id" in r.err


def test_outputs_that_are_symlinks_are_refused(
    published: Published, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "link").symlink_to(victim)
    r = cli("export", "simplestreams", published.cat.dir, "-o", tmp_path / "link")
    assert r.code == 14 and "symbolic link" in r.err, r.err
    out = tmp_path / "out"
    (out / "streams").mkdir(parents=True)
    (out / "streams" / "v1").symlink_to(victim)
    r = cli("export", "simplestreams", published.cat.dir, "-o", out)
    assert r.code == 14 and "not followed" in r.err, r.err
    (out / "streams" / "v1").unlink()
    (out / "streams" / "v1").mkdir()
    (out / "streams" / "v1" / "index.json").symlink_to(victim / "index.json")
    r = cli("export", "simplestreams", published.cat.dir, "-o", out)
    assert r.code == 14, r.err
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in (out / "streams" / "v1").iterdir()) == ["index.json"]  # no temp file left


# -- HEPiX -----------------------------------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    dn: str
    ca_dn: str


def openssl(*args: str | Path, input: bytes | None = None) -> bytes:
    p = subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True, check=False, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A self-signed CA and an endorser certificate it issued, made by openssl."""
    require_tools("openssl", install="openssl")
    d = tmp_path / "pki"
    d.mkdir()
    ca_subj, subj = (
        "/C=CH/O=imagectl test/CN=Test CA",
        "/C=CH/O=imagectl test/CN=Image Team/emailAddress=it@example.org",
    )
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        d / "ca.key",
        "-out",
        d / "ca.pem",
        "-days",
        "2",
        "-subj",
        ca_subj,
    )
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "it.key", "-out", d / "it.csr", "-subj", subj
    )
    ext = d / "ext.cnf"
    ext.write_text("keyUsage=digitalSignature\nextendedKeyUsage=emailProtection\n")
    openssl(
        "x509",
        "-req",
        "-in",
        d / "it.csr",
        "-CA",
        d / "ca.pem",
        "-CAkey",
        d / "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext,
        "-out",
        d / "it.pem",
    )
    (d / "it.key").chmod(0o600)
    return Pki(d / "ca.pem", d / "it.pem", d / "it.key", subj, ca_subj)


def hepix_list(published: Published, cli: Callable[..., CliResult], pki: Pki, out: Path, url: str, *extra: str) -> dict:  # type: ignore[type-arg]
    r = cli(
        "export",
        "hepix",
        published.cat.dir,
        "-o",
        out,
        "--cert",
        pki.cert,
        "--key",
        pki.key,
        "--public-url",
        url,
        "--json",
        *extra,
    )
    assert r.code == 0, r.err
    verified = openssl("smime", "-verify", "-CAfile", pki.ca, "-in", out)
    assert json.loads(verified) == json.loads(r.out)
    return json.loads(verified)  # type: ignore[no-any-return]


@pytest.mark.http
def test_hepix_list_verified_by_openssl(published: Published, cli: Callable[..., CliResult], pki: Pki) -> None:
    cat, images = published.cat, published.images
    out = cat.dir / "imagelist.smime"
    with TestHTTPServer(cat.dir, prefix="cat") as srv:
        doc = hepix_list(published, cli, pki, out, srv.url)["hv:imagelist"]
        assert doc["hv:endorser"]["hv:x509"] == {
            "dc:creator": "Image Team",
            "hv:ca": pki.ca_dn,
            "hv:dn": pki.dn,
            "hv:email": "it@example.org",
        }
        assert doc["hv:uri"] == srv.url + "imagelist.smime" and doc["dc:source"] == srv.url
        entries = {e["hv:image"]["dc:title"]: e["hv:image"] for e in doc["hv:images"]}
        assert set(entries) == {
            "slc6-wn (x86_64)",  # newest not deprecated: 6.1 (6.2 deprecated, 6.3 revoked)
            "slc6-wn@stable (x86_64)",
            "slc5-wn (i386)",
            "slc5-ia64 (ia64)",
            "debian12 (x86_64)",
            "debian12@testing (x86_64)",
        }
        vmcaster_required = ["dc:title", "dc:description", "hv:size", "sl:checksum:sha512", "sl:arch", "hv:uri"]
        vmcaster_required += ["dc:identifier", "sl:os", "sl:osversion", "sl:comments", "hv:hypervisor", "hv:version"]
        for title, e in entries.items():
            assert all(k in e for k in vmcaster_required), title
            ref = e["dc:title"].split(" ")[0].split("@")[0] + ":" + e["hv:version"]
            data = images[ref].read_bytes()
            assert e["sl:checksum:sha512"] == hashlib.sha512(data).hexdigest() and e["hv:size"] == len(data)
            with urllib.request.urlopen(e["hv:uri"]) as resp:  # 127.0.0.1 test server
                assert resp.read() == data
        slc6 = entries["slc6-wn (x86_64)"]
        assert (slc6["hv:version"], slc6["sl:osname"], slc6["sl:osversion"], slc6["hv:hypervisor"]) == (
            "6.1",
            "scientificlinux",
            "6",
            "Xen",
        )
        assert entries["slc5-wn (i386)"]["hv:format"] == "raw" and entries["debian12 (x86_64)"]["sl:osname"] == "debian"
        assert len({e["dc:identifier"] for e in entries.values()}) == 6
        # every image expires with the list (atrope reads the per-image dc:date:expires), 30 days by default
        created, expires = (dt.datetime.fromisoformat(doc[k].replace("Z", "+00:00")) for k in DATES)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["dc:date:expires"])
        assert abs(created - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=10)
        assert expires - created == dt.timedelta(days=30)
        assert {e["dc:date:expires"] for e in entries.values()} == {doc["dc:date:expires"]}
        week = hepix_list(published, cli, pki, cat.dir / "week.smime", srv.url, "--valid-days", "7")["hv:imagelist"]
        created, expires = (dt.datetime.fromisoformat(week[k].replace("Z", "+00:00")) for k in DATES)
        assert expires - created == dt.timedelta(days=7)
        assert {e["hv:image"]["dc:date:expires"] for e in week["hv:images"]} == {week["dc:date:expires"]}
        assert len(week["hv:images"]) == 6
        # tampered: the signature no longer verifies
        out.write_bytes(out.read_bytes().replace(b'"6.1"', b'"6.3"', 1))
        p = subprocess.run(
            ["openssl", "smime", "-verify", "-CAfile", pki.ca, "-in", out], capture_output=True, check=False
        )
        assert p.returncode != 0


ATROPE_CHECK = r"""
import json, sys
from atrope import smime, image
from atrope.image_list import hepix
from oslo_config import cfg
url, ca_path, dn, ca, state, dl = sys.argv[1:7]
cfg.CONF([], project="atrope")
cfg.CONF.set_override("ca_path", ca_path)
cfg.CONF.set_override("download_ca_file", state + "/bundle.pem")
src = hepix.HepixImageListSource("test", url=url, endorser={"dn": dn, "ca": ca})
src.fetch()
out = {"verified": src.verified, "trusted": src.trusted, "expired": src.expired, "images": []}
for img in src.image_list.get_images():
    img.download(dl)   # atrope's own download, checked against sl:checksum:sha512
    out["images"].append({"title": img.title, "arch": img.arch, "format": img.format, "osname": img.osname,
                          "version": img.version, "verified": img.verified})
print(json.dumps(out))
"""


def atrope_python() -> Path:
    """A Python with atrope 2.0.0 (PyPI) in a venv of its own, made once and kept."""
    python = ATROPE_VENV / "bin" / "python"
    ok = (
        python.exists()
        and subprocess.run([python, "-c", "import atrope.image_list.hepix"], check=False).returncode == 0
    )
    if not ok:
        shutil.rmtree(ATROPE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", ATROPE_VENV], check=True)
        p = subprocess.run([python, "-m", "pip", "install", "-q", ATROPE], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            unavailable(f"pip install {ATROPE} failed: {p.stderr.strip()[-300:]}")
    return python


@pytest.mark.http
@pytest.mark.network
@pytest.mark.slow
def test_hepix_list_read_by_atrope(
    published: Published, cli: Callable[..., CliResult], pki: Pki, tmp_path: Path
) -> None:
    """atrope's HepixImageListSource fetches the list over HTTP, verifies the S/MIME signature against a CA
    directory (``openssl smime -verify -CApath``, as atrope runs it), checks the endorser DN and CA and the
    expiry, parses every image with its required fields, and downloads each, checking its SHA-512."""
    python = atrope_python()
    cat = published.cat
    capath = tmp_path / "capath"
    capath.mkdir()
    shutil.copy(pki.ca, capath / "ca.pem")
    openssl("rehash", capath)
    (tmp_path / "state").mkdir()
    (tmp_path / "dl").mkdir()
    with TestHTTPServer(cat.dir, prefix="cat") as srv:
        hepix_list(published, cli, pki, cat.dir / "list.smime", srv.url)
        args = [srv.url + "list.smime", capath, pki.dn, pki.ca_dn, tmp_path / "state", tmp_path / "dl"]
        p = subprocess.run(
            [python, "-c", ATROPE_CHECK, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
        )
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["verified"] and got["trusted"] and got["expired"] is False
    assert len(got["images"]) == 6 and all(i["verified"] for i in got["images"])
    assert {(i["title"], i["arch"], i["format"], i["osname"], i["version"]) for i in got["images"]} >= {
        ("slc6-wn@stable (x86_64)", "x86_64", "qcow2", "scientificlinux", "6.1"),
        ("slc5-ia64 (ia64)", "ia64", "qcow2", "scientificlinux", "5.11"),
        ("debian12 (x86_64)", "x86_64", "qcow2", "debian", "12.1"),
    }


def test_hepix_bad_keys_leave_nothing(
    published: Published, cli: Callable[..., CliResult], pki: Pki, tmp_path: Path
) -> None:
    out = tmp_path / "list.smime"
    other = tmp_path / "other.key"
    openssl("genrsa", "-out", other, "2048")
    other.chmod(0o600)
    r = cli("export", "hepix", published.cat.dir, "-o", out, "--cert", pki.cert, "--key", other)
    assert r.code == 7 and "is not the private key of" in r.err
    pki.key.chmod(0o644)
    r = cli("export", "hepix", published.cat.dir, "-o", out, "--cert", pki.cert, "--key", pki.key)
    assert r.code == 7 and "readable or writable by others" in r.err
    pki.key.chmod(0o600)
    r = cli("export", "hepix", published.cat.dir, "-o", out)
    assert r.code == 7 and "IMAGECTL_HEPIX_CERT" in r.err
    assert list(tmp_path.glob("*.smime*")) == [] and list(tmp_path.glob(".list*")) == []
    victim = tmp_path / "victim"
    victim.write_text("keep")
    out.symlink_to(victim)
    r = cli("export", "hepix", published.cat.dir, "-o", out, "--cert", pki.cert, "--key", pki.key)
    assert r.code == 14 and "symbolic link" in r.err and victim.read_text() == "keep"


# -- Glance ----------------------------------------------------------------------------------------------------
NOVA_CHECK = r"""
import json, sys
from nova.objects import image_meta
image_meta.register_all() if hasattr(image_meta, "register_all") else None
from nova import objects
objects.register_all()
known = set(objects.ImageMetaProps.fields) | set(objects.ImageMetaProps._legacy_property_map)
out = []
for props in json.loads(sys.stdin.read()):
    p = objects.ImageMetaProps.from_dict(props)
    meta = objects.ImageMeta.from_dict({"disk_format": "qcow2", "container_format": "bare", "properties": props})
    out.append({
        "unknown": sorted(k for k in props if k not in known),
        "hw_architecture": p.get("hw_architecture"), "hw_vm_mode": p.get("hw_vm_mode"),
        "img_hv_type": p.get("img_hv_type"), "os_distro": p.get("os_distro"), "os_type": p.get("os_type"),
        "meta_arch": meta.properties.get("hw_architecture"),
    })
print(json.dumps(out))
"""


def nova(props: list[dict[str, str]]) -> list[dict[str, object]]:
    """nova's own reading of Glance properties (python3-nova, Debian: system Python)."""
    if subprocess.run(["/usr/bin/python3", "-c", "import nova.objects"], capture_output=True, check=False).returncode:
        unavailable("python3-nova not installed (apt-get install --no-install-recommends python3-nova)")
    p = subprocess.run(
        ["/usr/bin/python3", "-c", NOVA_CHECK],
        input=json.dumps(props),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_glance_properties_read_by_nova(published: Published, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    cat = published.cat
    cases = [("slc6-wn@stable", "x86_64"), ("slc5-wn", "i386"), ("slc5-ia64", "ia64"), ("debian12:12.1", "x86_64")]
    docs = []
    for ref, arch in cases:
        r = cli("export", "glance", ref, "--catalogue", cat.dir, "--arch", arch, "--json")
        assert r.code == 0, r.err
        docs.append(json.loads(r.out))
    got = nova([d["properties"] for d in docs])
    # nova reads every property but os_version (Glance's and libosinfo's, shown by Horizon) and our provenance
    for g, d in zip(got, docs, strict=True):
        assert g["unknown"] == sorted(k for k in d["properties"] if k == "os_version" or k.startswith("imagectl_"))
    slc6, slc5, ia64, deb = got
    assert (slc6["hw_architecture"], slc6["hw_vm_mode"], slc6["img_hv_type"]) == ("x86_64", "xen", "xen")
    assert (slc6["os_distro"], slc6["os_type"], docs[0]["properties"]["os_version"]) == (
        "scientificlinux",
        "linux",
        "6",
    )
    assert (slc5["hw_architecture"], slc5["hw_vm_mode"], slc5["img_hv_type"]) == ("i686", "hvm", None)
    assert ia64["hw_architecture"] == ia64["meta_arch"] == "ia64"
    assert (deb["os_distro"], docs[3]["properties"]["os_version"], deb["hw_vm_mode"]) == ("debian", "12", "hvm")
    d = docs[0]
    assert d["disk_format"] == "qcow2" and d["container_format"] == "bare" and d["min_disk"] == 1
    assert d["properties"]["imagectl_sha256"] == d["sha256"] == sha256(published.images["slc6-wn:6.1"])
    assert d["url"].endswith(f"/targets/slc6-wn/6.1/x86_64/{d['sha256']}.slc6-wn-6.1-x86_64.qcow2")
    assert docs[1]["disk_format"] == "raw"


def test_glance_command_quotes_hostile_text(
    published: Published, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The deprecation reason (free text from the catalogue) reaches `openstack` as one argument, nothing runs."""
    r = cli("export", "glance", "slc6-wn:6.2", "--catalogue", published.cat.dir, "--arch", "x86_64")
    assert r.code == 0, r.err
    pull_line, create_line = r.out.strip().split("\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("openstack", "imagectl"):
        (fake / tool).write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > "{tmp_path}/{tool}.argv"\n')
        (fake / tool).chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    subprocess.run(["bash", "-c", f"{pull_line} && {create_line}"], cwd=tmp_path, env=env, check=True)
    argv = (tmp_path / "openstack.argv").read_bytes().decode().split("\0")[:-1]
    assert argv == shlex.split(create_line)[1:]
    assert f"imagectl_deprecated={HOSTILE}" in " ".join(argv).replace("  ", " ") or any(HOSTILE in a for a in argv)
    assert not list(tmp_path.glob("pwned*"))
    r = cli("export", "glance", "slc6-wn:6.3", "--catalogue", published.cat.dir, "--arch", "x86_64")
    assert r.code == 5 and "bad mirror" in r.err  # revoked: refused, as pull refuses it


# -- the --export hook -----------------------------------------------------------------------------------------
def test_export_hook_on_publish(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams, hepix = tmp_path / "ss", tmp_path / "list.smime"
    monkeypatch.setenv("IMAGECTL_HEPIX_CERT", str(pki.cert))
    monkeypatch.setenv("IMAGECTL_HEPIX_KEY", str(pki.key))
    monkeypatch.setenv("IMAGECTL_PUBLIC_URL", "https://images.example.org/cat/")
    hook = ["--export", f"simplestreams={streams}", "--export", f"hepix={hepix}"]
    r = cli(
        "publish", make_image(seed="1"), *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--version", "1", *hook
    )
    assert r.code == 0, r.err
    r = cli(
        "publish", make_image(seed="2"), *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--version", "2", *hook
    )
    assert r.code == 0, r.err
    products = json.loads((streams / "streams/v1/org.imagectl:download.json").read_text())
    assert sorted(
        v["imagectl_version"] for v in products["products"]["org.imagectl:download:wn:amd64"]["versions"].values()
    ) == ["1", "2"]
    doc = json.loads(openssl("smime", "-verify", "-CAfile", pki.ca, "-in", hepix))["hv:imagelist"]
    assert [e["hv:image"]["hv:version"] for e in doc["hv:images"]] == ["2"]
    two = sha256(make_image(seed="2"))  # the same bytes as version 2's
    assert doc["hv:images"][0]["hv:image"]["hv:uri"] == "https://images.example.org/cat/" + target_file_key(
        "wn/2/x86_64/wn-2-x86_64.qcow2", two
    )
    r = cli("revoke", "wn:2", "--reason", "oops", *catalogue.args(), *hook)
    assert r.code == 0, r.err
    doc = json.loads(openssl("smime", "-verify", "-CAfile", pki.ca, "-in", hepix))["hv:imagelist"]
    assert [e["hv:image"]["hv:version"] for e in doc["hv:images"]] == ["1"]

    # a bad spec, or a HEPiX export without its key: refused before anything is signed
    r = cli("promote", "wn:1", "stable", *catalogue.args(), "--export", "glance=x")
    assert r.code == 3 and r.err.count("\n") == 1, r.err
    assert "--export takes KIND=PATH" in r.err
    monkeypatch.delenv("IMAGECTL_HEPIX_KEY")
    r = cli("deprecate", "wn:1", *catalogue.args(), *hook)
    assert r.code == 7 and "HEPiX export needs a signing certificate and key" in r.err, r.err
    shown = json.loads(cli("catalogue", "show", "wn", "--catalogue", catalogue.dir, "--json").out)
    assert "stable" not in shown["channels"] and shown["images"][0]["deprecated"] is None
    # an export that can only fail once it runs (its directory is a file): the change is committed, and said so
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    r = cli("promote", "wn:1", "stable", *catalogue.args(), "--export", f"simplestreams={blocked}")
    assert r.code == 14 and r.err.count("\n") == 1, r.err
    assert f"the change is published, but the export simplestreams={blocked} was NOT refreshed" in r.err
    data = json.loads(cli("catalogue", "show", "wn", "--catalogue", catalogue.dir, "--json").out)
    assert data["channels"]["stable"]["version"] == "1"
    assert "stable" not in (streams / "streams/v1/org.imagectl:download.json").read_text()  # not refreshed


@pytest.mark.parametrize(
    ("extra", "code", "line"),
    [
        (["--export", "tarball=out"], 3, "imagectl: error: --export takes KIND=PATH with KIND one of"),
        (["--export", "hepix=list.xml"], 7, "imagectl: error: a HEPiX export needs a signing certificate and key"),
        (["--site", "{foreign}"], 14, "imagectl: error: refusing to replace {foreign}: a non-empty directory"),
    ],
    ids=["unknown-kind", "hepix-without-cert", "foreign-site-dir"],
)
def test_a_hook_that_could_only_fail_is_refused_before_the_change(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    code: int,
    line: str,
) -> None:
    """A typo in --export or a --site directory that is not a site: refused (its own exit code), nothing signed."""
    monkeypatch.delenv("IMAGECTL_HEPIX_CERT", raising=False)
    monkeypatch.delenv("IMAGECTL_HEPIX_KEY", raising=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    extra = [e.format(foreign=foreign) for e in extra]
    before = sorted(p.name for p in (catalogue.dir / "metadata").iterdir())
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", "x86_64", *extra)
    assert r.code == code, r.err
    assert r.err.splitlines()[0].startswith(line.format(foreign=foreign))
    assert sorted(p.name for p in (catalogue.dir / "metadata").iterdir()) == before
    assert not (catalogue.dir / "blobs").exists() or not any((catalogue.dir / "blobs").rglob("*"))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_an_export_naming_a_missing_target_file_is_refused_until_upgraded(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Export URLs name target files: a catalogue written before they existed (here: one removed) is refused with
    the upgrade hint and nothing is written; after `catalogue upgrade` the export names the file, now there."""
    img = make_image(seed="old")
    r = cli("publish", img, *catalogue.args(), "--name", "wn", "--arch", "x86_64", "--version", "1")
    assert r.code == 0, r.err
    target = catalogue.dir / target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", sha256(img))
    target.unlink()
    out = tmp_path / "ss"
    hint = f"hint: run: imagectl catalogue upgrade {catalogue.dir.as_uri()}/"
    r = cli("export", "simplestreams", catalogue.dir, "-o", out, "--root", catalogue.root)
    assert r.code == 16, r.err
    assert r.err.splitlines() == [
        f"imagectl: error: 1 image(s) of {catalogue.dir.as_uri()}/ have no target file, the file an export's URLs name",
        hint,
    ]
    assert not out.exists()
    r = cli("export", "glance", "wn:1", "--catalogue", catalogue.dir, "--arch", "x86_64", "--root", catalogue.root)
    assert r.code == 16 and r.err.splitlines() == [
        f"imagectl: error: wn:1 (x86_64) has no target file in {catalogue.dir.as_uri()}/",
        hint,
    ], r.err
    assert cli("catalogue", "upgrade", catalogue.dir).code == 0
    r = cli("export", "simplestreams", catalogue.dir, "-o", out)
    assert r.code == 0, r.err
    products = json.loads((out / "streams/v1/org.imagectl:download.json").read_text())
    (item,) = [i for p in products["products"].values() for v in p["versions"].values() for i in v["items"].values()]
    assert item["path"] == target_file_key("wn/1/x86_64/wn-1-x86_64.qcow2", sha256(img))
    assert (catalogue.dir / item["path"]).read_bytes() == img.read_bytes()
