"""Stock TUF clients download images from an imagectl catalogue (issue 8, item 1).

Two clients nobody here wrote, unmodified: python-tuf's ``Updater`` with its default fetcher
(tests/stock_clients/tuf_download.py imports nothing of imagectl) and tuf-js (npm, pinned in
tests/stock_clients/tufjs/package-lock.json, installed by the session fixture). Each gets the catalogue's first root
as its trust anchor, ``CATALOGUE/metadata/`` and ``CATALOGUE/targets/`` from a real HTTP server on 127.0.0.1, and
asks for ``NAME/VERSION/ARCH/NAME-VERSION-ARCH.FORMAT``; with consistent snapshots both fetch
``targets/NAME/VERSION/ARCH/HEX.NAME-VERSION-ARCH.FORMAT``, which a publish now creates as a hard link of the blob.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl.catalogue import index
from imagectl.catalogue.model import target_file_key
from imagectl.errors import CatalogueStateError, LocalIOError
from imagectl.store import ObjectMissingError
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult, require_tools, sha256, unavailable
from tests.httpserver import TestHTTPServer
from tests.s3server import S3Server
from tests.test_s3_http import _init as s3_init

CLIENTS = Path(__file__).parent / "stock_clients"
ARCH = "x86_64"
TIMEOUT = 120  # seconds a stock client may take (npm's first start included)

Client = Callable[[str, Path, str, Path], dict[str, Any]]  # (catalogue URL, trusted root, target path, work dir)


@pytest.fixture(scope="session")
def tufjs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tuf-js as pinned by the lock file, installed with ``npm ci`` into a private directory; the client script."""
    require_tools("node", "npm", install="nodejs npm")
    where = tmp_path_factory.mktemp("tufjs")
    for f in ("package.json", "package-lock.json", "download.mjs"):
        shutil.copy(CLIENTS / "tufjs" / f, where / f)
    r = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if r.returncode != 0:
        unavailable(f"npm ci of tuf-js failed (needs the npm registry): {r.stderr.strip()[-300:]}")
    return where / "download.mjs"


def _run(argv: list[str], base: str, root: Path, target: str, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    args = [f"{base}metadata/", f"{base}targets/", str(root), target, str(work)]
    r = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    lines = r.stdout.strip().splitlines()
    assert lines, f"no output (exit {r.returncode}): {r.stderr[-2000:]}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert (r.returncode == 0) == out["ok"], (r.returncode, out, r.stderr[-2000:])
    return out


@pytest.fixture(params=["python-tuf", "tuf-js"])
def client(request: pytest.FixtureRequest) -> Client:
    """Run one stock client: ``client(catalogue URL, trusted root, target path, work dir)`` -> its JSON outcome."""
    if request.param == "python-tuf":
        argv = [sys.executable, "-I", str(CLIENTS / "tuf_download.py")]  # -I: no imagectl on sys.path
    else:
        argv = ["node", str(request.getfixturevalue("tufjs"))]
    return lambda base, root, target, work: _run(argv, base, root, target, work)


def publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, name: str, version: str) -> str:
    """Publish; return the TUF target path."""
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version, "--json")
    assert r.code == 0, r.err
    return f"{name}/{version}/{ARCH}/{name}-{version}-{ARCH}.qcow2"


@pytest.mark.http
@pytest.mark.network
def test_stock_clients_download_images_before_and_after_a_root_rotation(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    client: Client,
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    first = make_image(300_000, seed="one")
    path = publish(cli, cat, first, "slc6-wn", "6.1")
    got = client(srv.url, cat.root, path, tmp_path / "c1")
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(first)
    assert got["bytes"] == 300_000
    asked = [p for _m, p, _r in srv.served.requests if "/targets/" in p]
    assert asked == [f"/cat/targets/slc6-wn/6.1/{ARCH}/{sha256(first)}.slc6-wn-6.1-{ARCH}.qcow2"]

    for role in ("root", "targets", "timestamp"):
        r = cli("trust", "rotate", cat.dir, "--keys", cat.keys, "--role", role)
        assert r.code == 0, r.err
    second = make_image(200_000, seed="two")
    path2 = publish(cli, cat, second, "slc6-wn", "6.2")
    assert (cat.dir / "metadata" / "4.root.json").is_file()  # each rotation signs a new root
    # the same client state (it trusts root 1 and holds the old metadata) and a new client from root 1
    for work in (tmp_path / "c1", tmp_path / "c2"):
        got = client(srv.url, cat.root, path2, work)
        assert got["ok"], got
        assert sha256(Path(got["path"])) == sha256(second)
        assert json.loads((work / "metadata" / "root.json").read_text())["signed"]["version"] == 4


@pytest.mark.http
@pytest.mark.network
@pytest.mark.parametrize("how", ["blob-tampered", "target-file-replaced", "target-file-missing"])
def test_stock_clients_refuse_a_tampered_image(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    client: Client,
    tmp_path: Path,
    how: str,
) -> None:
    cat, srv = http_catalogue
    image = make_image(100_000, seed="t")
    path = publish(cli, cat, image, "wn", "1")
    digest = sha256(image)
    target = cat.dir / target_file_key(path, digest)
    if how == "blob-tampered":  # the blob and the target file are one inode: flipping a byte reaches both
        data = bytearray((cat.dir / "blobs" / "sha256" / digest).read_bytes())
        data[5000] ^= 1
        (cat.dir / "blobs" / "sha256" / digest).write_bytes(data)
        assert target.read_bytes() == data
    elif how == "target-file-replaced":  # same length, other bytes, no longer the blob's inode
        target.unlink()
        target.write_bytes(b"\0" * 100_000)
    else:
        target.unlink()
    got = client(srv.url, cat.root, path, tmp_path / "c")
    assert not got["ok"]
    assert not list((tmp_path / "c" / "targets").iterdir()), "a refused download left a file behind"
    expected = {
        "blob-tampered": {"LengthOrHashMismatchError", "DownloadHashMismatchError"},
        "target-file-replaced": {"LengthOrHashMismatchError", "DownloadHashMismatchError"},
        "target-file-missing": {"DownloadHTTPError", "DownloadError"},
    }[how]
    assert got["error"] in expected, got
    r = cli("catalogue", "verify", cat.dir)
    assert r.code == 15
    # a hard link is one file: verify names the blob; a separate target file is checked on its own
    assert (
        f"blob blobs/sha256/{digest}" if how == "blob-tampered" else f"target file {target_file_key(path, digest)}"
    ) in r.out


def _strip_target_files(cat: Catalogue) -> None:
    """What a catalogue written before target files existed looks like."""
    shutil.rmtree(cat.dir / "targets")


@pytest.mark.http
def test_an_old_catalogue_is_upgraded_in_place(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cat, srv = http_catalogue
    paths = [publish(cli, cat, make_image(50_000 + i, seed=str(i)), f"n{i}", "1") for i in range(3)]
    paths.append(publish(cli, cat, make_image(50_000, seed="0"), "n0", "2"))  # same bytes as n0:1
    _strip_target_files(cat)
    before = sorted(p.name for p in (cat.dir / "metadata").iterdir())

    r = cli("catalogue", "verify", cat.dir)
    assert r.code == 15
    assert r.out.count("target file targets/") == 4
    assert "4 images lack the target file stock TUF clients download" in r.err
    assert f"imagectl catalogue upgrade {LocalStore(cat.dir).shown}" in r.err
    r = cli("catalogue", "verify", cat.dir, "--json")
    assert json.loads(r.out)["needs_upgrade"] == 4

    r = cli("catalogue", "upgrade", cat.dir, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report == {
        "ok": True, "created": sorted(report["created"]), "present": 0, "problems": [], "pointers": [], "freed_bytes": 0
    }  # fmt: skip
    assert len(report["created"]) == 4
    assert sorted(p.name for p in (cat.dir / "metadata").iterdir()) == before, "upgrade signs nothing"
    for key in report["created"]:
        st = (cat.dir / key).stat()
        blob = cat.dir / "blobs" / "sha256" / key.rsplit("/", 1)[1].split(".", 1)[0]
        assert (st.st_ino, st.st_dev) == (blob.stat().st_ino, blob.stat().st_dev)  # a hard link, no copy
    assert cli("catalogue", "verify", cat.dir).code == 0
    r = cli("catalogue", "upgrade", cat.dir, "--json")  # idempotent
    assert json.loads(r.out)["created"] == [] and json.loads(r.out)["present"] == 4

    # over HTTP (read-only) verify sees the files; an upgrade there is refused with the usual one line
    assert cli("catalogue", "verify", srv.url, "--no-blobs").code == 0
    r = cli("catalogue", "upgrade", srv.url)
    assert r.code == 16
    assert r.err.splitlines()[0] == f"imagectl: error: catalogue {srv.url} is read-only over this protocol"


@pytest.mark.http
def test_the_next_publish_makes_its_own_target_file_and_upgrade_the_rest(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """An old-layout catalogue (blobs only): the next publish makes the target file of the image it publishes (a
    new version, and a no-op re-publish of an old one, which signs nothing), so a stock client downloads those at
    once; verify keeps naming the other images until ``catalogue upgrade`` makes their files (§6 "Upgrading")."""
    cat, srv = http_catalogue
    python_tuf = [sys.executable, "-I", str(CLIENTS / "tuf_download.py")]
    old = {f"n{i}": make_image(30_000 + i, seed=f"old{i}") for i in range(3)}
    paths = {name: publish(cli, cat, image, name, "1") for name, image in old.items()}
    _strip_target_files(cat)
    r = cli("catalogue", "verify", cat.dir, "--json")
    assert r.code == 15 and json.loads(r.out)["needs_upgrade"] == 3
    got = _run(python_tuf, srv.url, cat.root, paths["n0"], tmp_path / "c0")
    assert not got["ok"] and got["error"] in {"DownloadHTTPError", "DownloadError"}, got

    new = make_image(40_000, seed="new")
    new_path = publish(cli, cat, new, "n0", "2")  # a new version of an old name
    assert (cat.dir / target_file_key(new_path, sha256(new))).is_file()
    assert not (cat.dir / target_file_key(paths["n0"], sha256(old["n0"]))).exists(), "publish upgrades one image"
    got = _run(python_tuf, srv.url, cat.root, new_path, tmp_path / "c1")
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(new)
    r = cli("catalogue", "verify", cat.dir, "--json")
    assert r.code == 15
    report = json.loads(r.out)
    assert report["needs_upgrade"] == 3  # n0:1, n1:1, n2:1; not n0:2
    assert not [p for p in report["problems"] if new_path in p]
    r = cli("catalogue", "verify", cat.dir)
    assert "3 images lack the target file stock TUF clients download" in r.err
    assert f"imagectl catalogue upgrade {LocalStore(cat.dir).shown}" in r.err

    signed = sorted(p.name for p in (cat.dir / "metadata").iterdir())
    assert publish(cli, cat, old["n1"], "n1", "1") == paths["n1"]  # a no-op re-publish of an old image
    assert sorted(p.name for p in (cat.dir / "metadata").iterdir()) == signed, "a no-op re-publish signs nothing"
    key = target_file_key(paths["n1"], sha256(old["n1"]))
    blob = cat.dir / "blobs" / "sha256" / sha256(old["n1"])
    assert (cat.dir / key).stat().st_ino == blob.stat().st_ino
    assert json.loads(cli("catalogue", "verify", cat.dir, "--json").out)["needs_upgrade"] == 2

    r = cli("catalogue", "upgrade", cat.dir, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] == sorted(target_file_key(paths[n], sha256(old[n])) for n in ("n0", "n2"))
    assert json.loads(r.out)["present"] == 2
    r = cli("catalogue", "verify", cat.dir, "--json")
    assert r.code == 0 and json.loads(r.out)["needs_upgrade"] == 0
    got = _run(python_tuf, srv.url, cat.root, paths["n0"], tmp_path / "c0")  # the same client state as before
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(old["n0"])


def test_an_upgrade_reports_a_damaged_blob_and_goes_on(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    good = publish(cli, catalogue, make_image(40_000, seed="g"), "good", "1")
    bad = publish(cli, catalogue, make_image(40_000, seed="b"), "bad", "1")
    _strip_target_files(catalogue)
    bad_blob = catalogue.dir / "blobs" / "sha256" / sha256(make_image(40_000, seed="b"))
    bad_blob.write_bytes(b"short")
    r = cli("catalogue", "upgrade", catalogue.dir, "--json")
    assert r.code == 15
    report = json.loads(r.out)
    assert report["created"] == [target_file_key(good, sha256(make_image(40_000, seed="g")))]
    assert report["problems"] == [f"bad:1 {ARCH}: blobs/sha256/{bad_blob.name} has 5 bytes, signed length is 40000"]
    assert not (catalogue.dir / "targets" / "bad").exists()
    assert bad  # the bad image's target path was signed; only its file is missing


def test_gc_removes_the_target_files_of_revoked_versions_only(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    image = make_image(30_000, seed="r")
    kept = publish(cli, catalogue, image, "wn", "1")
    gone = publish(cli, catalogue, image, "wn", "2")  # same bytes: one blob, two target files
    assert cli("revoke", "wn:2", *catalogue.args(), "--reason", "bad build").code == 0
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    digest = sha256(image)
    assert target_file_key(gone, digest) in json.loads(r.out)["removed"]
    assert not (catalogue.dir / target_file_key(gone, digest)).exists()
    assert (catalogue.dir / target_file_key(kept, digest)).read_bytes() == image.read_bytes()
    assert (catalogue.dir / "blobs" / "sha256" / digest).exists()
    assert cli("catalogue", "verify", catalogue.dir).code == 0


# -- the directory store's hard links ---------------------------------------------------------------------------
BLOB = "blobs/sha256/" + "ab" * 32
KEY = "targets/n/1/x86_64/" + "ab" * 32 + ".n-1-x86_64.raw"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "cat")
    s.write_new(BLOB, b"x" * 1000)
    return s


def test_place_target_makes_one_hard_link_and_keeps_it(store: LocalStore) -> None:
    assert store.place_target(BLOB, KEY, 1000) is True
    a, b = (store.root / BLOB).stat(), (store.root / KEY).stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert store.same_object(BLOB, KEY)
    assert store.place_target(BLOB, KEY, 1000) is False
    assert not [p for p in (store.root / KEY).parent.iterdir() if p.name.startswith(".")], "a temp file is left"


def test_place_target_replaces_a_damaged_file_and_refuses_a_symlink(store: LocalStore, tmp_path: Path) -> None:
    (store.root / KEY).parent.mkdir(parents=True)
    (store.root / KEY).write_bytes(b"y" * 1000)  # same size, other bytes
    assert store.place_target(BLOB, KEY, 1000) is True
    assert store.same_object(BLOB, KEY)
    (store.root / KEY).unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (store.root / KEY).symlink_to(victim)
    with pytest.raises(LocalIOError, match=r": it is a symbolic link$"):
        store.place_target(BLOB, KEY, 1000)
    assert victim.read_bytes() == b"keep me" and (store.root / KEY).is_symlink()


def test_place_target_checks_the_blob(store: LocalStore) -> None:
    with pytest.raises(CatalogueStateError, match=r"has 1000 bytes, signed length is 999"):
        store.place_target(BLOB, KEY, 999)
    with pytest.raises(ObjectMissingError):
        store.place_target("blobs/sha256/" + "cd" * 32, KEY, 1000)
    assert not (store.root / "targets").exists() or not any((store.root / "targets").rglob("*.raw"))


def test_place_target_copies_where_hard_links_are_refused(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without hard links (or a blob on another mount): a copy, made atomically, still checked."""

    def no_links(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_links)
    assert store.place_target(BLOB, KEY, 1000) is True
    assert (store.root / KEY).read_bytes() == b"x" * 1000
    assert not store.same_object(BLOB, KEY)
    assert store.place_target(BLOB, KEY, 1000) is False  # a good copy is kept
    (store.root / KEY).write_bytes(b"z" * 1000)
    assert store.place_target(BLOB, KEY, 1000) is True  # a damaged one is replaced
    assert (store.root / KEY).read_bytes() == b"x" * 1000


@pytest.mark.http
def test_a_stock_python_tuf_lists_the_versions_of_a_name(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """catalogue/README.md §9.5: the recipe for listing a name's versions with a stock TUF library works."""
    cat, srv = http_catalogue
    for version in ("6.1", "6.2", "6.10"):
        publish(cli, cat, make_image(10_000, seed=version), "slc6-wn", version)
    publish(cli, cat, make_image(10_000, seed="other"), "other", "1")
    assert cli("promote", "slc6-wn:6.10", "stable", *cat.args()).code == 0
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            str(CLIENTS / "tuf_versions.py"),
            f"{srv.url}metadata/",
            str(cat.root),
            "slc6-wn",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)["images"]
    listed = json.loads(cli("catalogue", "list", "slc6-wn", "--catalogue", cat.dir, "--root", cat.root, "--json").out)
    assert sorted((i["version"], i["sha256"], i["length"], i["channels"]) for i in got) == sorted(
        (e["version"], e["sha256"], e["size"], e["channels"]) for e in listed
    )
    assert {i["version"] for i in got} == {"6.1", "6.2", "6.10"}


LIST_NAMES = r"""
import json, pathlib, sys
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater
metadata_url, root, work = sys.argv[1:4]
pathlib.Path(work).mkdir(parents=True, exist_ok=True)
Updater(metadata_dir=work, metadata_base_url=metadata_url, bootstrap=pathlib.Path(root).read_bytes()).refresh()
names = []
for role, d in Metadata.from_file(work + "/targets.json").signed.delegations.roles.items():
    if role.startswith("image-"):
        names.append(role[len("image-"):])
    elif role.startswith("names~b"):
        names += [p[: -len("/*/*/*")] for p in d.paths]
print(json.dumps({"roles": sorted(Metadata.from_file(work + "/targets.json").signed.delegations.roles),
                  "names": sorted(names), "files": sorted(p.name for p in pathlib.Path(work).iterdir())}))
"""


@pytest.mark.http
def test_a_stock_python_tuf_lists_the_names_of_a_plain_and_an_indexed_catalogue(
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """catalogue/README.md §9.5: the names are the image roles ``targets.json`` delegates, or, in an indexed
    catalogue, the path patterns of its index roles there; no index role is fetched to list them. (The index
    thresholds are lowered, as in tests/test_index.py, so that a handful of names is indexed.)"""
    cat, srv = http_catalogue

    def stock_names(work: str) -> dict[str, Any]:
        argv = [sys.executable, "-I", "-c", LIST_NAMES, f"{srv.url}metadata/", str(cat.root), str(tmp_path / work)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def listed() -> list[str]:
        r = cli("catalogue", "list", "--catalogue", cat.dir, "--root", cat.root, "--json")
        return sorted({e["name"] for e in json.loads(r.out)})

    for name in ("a1", "b2"):
        publish(cli, cat, make_image(5_000, seed=name), name, "1")
    got = stock_names("plain")
    assert got["roles"] == ["image-a1", "image-b2"] and got["names"] == listed() == ["a1", "b2"]

    monkeypatch.setattr(index, "INDEX_THRESHOLD", 3)
    monkeypatch.setattr(index, "INDEX_FILL", 2)
    monkeypatch.setattr(index, "INDEX_CROWDED", 4)
    for name in ("c3", "d4", "e5", "f6"):
        publish(cli, cat, make_image(5_000, seed=name), name, "1")
    got = stock_names("indexed")
    assert got["roles"] and all(index.is_index(r) for r in got["roles"]), got["roles"]
    assert got["names"] == listed() == ["a1", "b2", "c3", "d4", "e5", "f6"]
    assert not [f for f in got["files"] if f.startswith(("names~", "image-"))], "listing fetched no index role"


@pytest.mark.s3
@pytest.mark.network
def test_stock_clients_download_from_a_public_s3_bucket(
    aws_env: S3Server, cli: Callable[..., CliResult], make_image: Callable[..., Path], client: Client, tmp_path: Path
) -> None:
    """Published with the S3 API (the target file is a server-side copy), read with no credentials over plain
    HTTP by a stock client: the bucket's path-style URL is the whole catalogue."""
    cat = s3_init(aws_env, aws_env.public_bucket(), tmp_path, cli)
    image = make_image(700_001, seed="s3")
    r = cli(
        "publish", image, "--catalogue", cat.url, "--keys", cat.keys, "--name", "wn", "--arch", ARCH, "--version", "1"
    )
    assert r.code == 0, r.err
    got = client(cat.http, cat.root, f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2", tmp_path / "c")
    assert got["ok"], got
    assert sha256(Path(got["path"])) == sha256(image)
