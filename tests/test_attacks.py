"""Attacks on a catalogue served over real HTTP: every one is refused with its own exit code and one-line message,
and nothing (not even a temp file) appears at the destination.

Exit codes are those of imagectl/errors.py: 8 untrusted, 9 rollback, 10 expired, 11 image bytes mismatch,
12 wrong root, 17 mix-and-match.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from imagectl.catalogue.model import target_file_key
from tests.conftest import Catalogue, CliResult, sha256
from tests.httpserver import Fault, TestHTTPServer

SIZE = 100 * 1024  # bytes per test image: small keeps every attack fast
ARCH = "x86_64"


# -- helpers -------------------------------------------------------------------------------------------------
def publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, name: str = "wn", version: str = "1") -> None:
    r = cli("publish", image, *cat.args(), "--name", name, "--arch", ARCH, "--version", version)
    assert r.code == 0, r.err


def image_key(sha: str, name: str = "wn", version: str = "1") -> str:
    """Where pull downloads the image ``sha`` published by :func:`publish` from: its target file."""
    return target_file_key(f"{name}/{version}/{ARCH}/{name}-{version}-{ARCH}.qcow2", sha)


def image_requests(srv: TestHTTPServer) -> list[str]:
    """Request paths for image bytes (target files or blobs)."""
    return [p for _m, p, _r in srv.served.requests if "/blobs/" in p or "/targets/" in p]


def pull(cli: Callable[..., CliResult], url: str | Path, root: str | Path, dest: Path, ref: str = "wn") -> CliResult:
    return cli("pull", ref, "--catalogue", url, "--root", root, "--arch", ARCH, "-o", dest)


def meta(cat: Catalogue, name: str) -> Path:
    return cat.dir / "metadata" / name


def signed_version(path: Path) -> int:
    return int(json.loads(path.read_bytes())["signed"]["version"])


def current(cat: Catalogue, role: str) -> int:
    """The version of ``role`` the catalogue's current timestamp/snapshot point at."""
    ts = json.loads(meta(cat, "timestamp.json").read_bytes())["signed"]
    snap_v = int(ts["meta"]["snapshot.json"]["version"])
    if role == "snapshot":
        return snap_v
    snap = json.loads(meta(cat, f"{snap_v}.snapshot.json").read_bytes())["signed"]
    return int(snap["meta"][f"{role}.json"]["version"])


def tampered(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The same metadata document with its signed part changed and the signatures kept (no re-signing)."""
    doc = json.loads(data)
    change(doc["signed"])
    return json.dumps(doc, indent=1).encode()


def signers(keydir: Path) -> dict[str, CryptoSigner]:
    """Every private key in ``keydir``, by TUF key id (what a publisher holding the keys can sign with)."""
    out = {}
    for path in sorted(keydir.glob("*.key")):
        signer = CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))
        out[signer.public_key.keyid] = signer
    return out


def resigned(cat: Catalogue, data: bytes, role: str, change: Callable[[Any], None]) -> bytes:
    """``data`` changed and validly re-signed with the catalogue's own keys for ``role`` (top-level role name)."""
    md = Metadata.from_bytes(data)
    change(md.signed)
    root = Metadata.from_bytes(meta(cat, "root.json").read_bytes())
    keys = signers(cat.keys)
    md.signatures.clear()
    for keyid in root.signed.roles[role].keyids:
        md.sign(keys[keyid], append=True)
    return md.to_bytes()


def assert_refused(r: CliResult, code: int, text: str, dest: Path) -> None:
    """Exit ``code``, one ``imagectl: error:`` line containing ``text``, no traceback, nothing at ``dest``."""
    assert r.code == code, f"exit {r.code}, expected {code}; stderr:\n{r.err}"
    assert "Traceback" not in r.err and "Traceback" not in r.out
    errors = [line for line in r.err.splitlines() if line.startswith("imagectl: error:")]
    assert len(errors) == 1, r.err
    assert text in errors[0], r.err
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == [], "temp files left beside the destination"


def assert_nothing_cached(cache: Path) -> None:
    """No blob (and no partial blob) of refused bytes is kept in the client cache."""
    blobs = cache / "blobs" / "sha256"
    assert not blobs.exists() or [p.name for p in blobs.iterdir() if not p.name.startswith(".")] == []


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination file in a directory of its own, so a stray temp file beside it is noticed."""
    d = tmp_path / "dest"
    d.mkdir()
    return d / "image.qcow2"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"  # IMAGECTL_CACHE_DIR (conftest)


Served = tuple[Catalogue, TestHTTPServer]


# -- 1. tampered blob ----------------------------------------------------------------------------------------
@pytest.mark.http
def test_tampered_blob_over_http(http_catalogue: Served, cli, make_image, dest, cache):
    cat, srv = http_catalogue
    img = make_image(SIZE)
    publish(cli, cat, img)
    evil = make_image(SIZE, seed="evil")  # same length, other bytes
    srv.add_fault(Fault(image_key(sha256(img)), body=evil.read_bytes()))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 11, "tampered or corrupted blob", dest)
    assert_nothing_cached(cache)
    # The genuine bytes are still pullable once the server behaves: nothing bad was remembered.
    srv.clear()
    assert pull(cli, srv.url, cat.root, dest).code == 0
    assert dest.read_bytes() == img.read_bytes()


def test_tampered_blob_on_disk_directory_catalogue(catalogue: Catalogue, cli, make_image, dest, cache):
    img = make_image(SIZE)
    publish(cli, catalogue, img)
    blob = catalogue.dir / "blobs" / "sha256" / sha256(img)
    data = bytearray(blob.read_bytes())
    data[SIZE // 2] ^= 0xFF  # one flipped byte, same length
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = pull(cli, catalogue.dir, catalogue.root, dest)
    assert_refused(r, 11, "tampered or corrupted blob", dest)
    assert_nothing_cached(cache)


@pytest.mark.http
def test_longer_blob_is_refused(http_catalogue: Served, cli, make_image, dest, cache):
    """A blob with the right prefix but extra bytes appended (Content-Length says so) is refused as too long."""
    cat, srv = http_catalogue
    img = make_image(SIZE)
    publish(cli, cat, img)
    srv.add_fault(Fault(image_key(sha256(img)), body=img.read_bytes() + b"\0" * 4096))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 11, f"more than the signed {SIZE} bytes", dest)
    assert_nothing_cached(cache)


# -- 2. tampered metadata (not re-signed) --------------------------------------------------------------------
def _evil_target(img: Path, evil: Path, field: str) -> Callable[[dict[str, Any]], None]:
    def change(signed: dict[str, Any]) -> None:
        [target] = [t for t in signed["targets"].values() if t["hashes"]["sha256"] == sha256(img)]
        if field == "sha256":
            target["hashes"]["sha256"] = sha256(evil)
        else:
            target["length"] = evil.stat().st_size

    return change


@pytest.mark.http
@pytest.mark.parametrize("field", ["sha256", "length"])
def test_tampered_image_role(http_catalogue: Served, cli, make_image, dest, field):
    cat, srv = http_catalogue
    img = make_image(SIZE)
    publish(cli, cat, img)
    evil = make_image(SIZE if field == "sha256" else 2 * SIZE, seed="evil")
    # The attacker also plants the bytes the tampered entry names, so only the signature stands in the way.
    for planted in (f"blobs/sha256/{sha256(evil)}", image_key(sha256(evil))):
        srv.add_fault(Fault(planted, body=evil.read_bytes()))
    role = f"{current(cat, 'image-wn')}.image-wn.json"
    srv.add_fault(Fault(f"/{role}", body=tampered(meta(cat, role).read_bytes(), _evil_target(img, evil, field))))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 8, "not validly signed", dest)
    assert image_requests(srv) == [], "no image fetched on bad metadata"


@pytest.mark.http
def test_tampered_top_level_targets(http_catalogue: Served, cli, make_image, dest):
    """A target injected into N.targets.json would win the delegation walk (top-level targets come first)."""
    cat, srv = http_catalogue
    img = make_image(SIZE)
    publish(cli, cat, img)
    evil = make_image(SIZE, seed="evil")
    for planted in (f"blobs/sha256/{sha256(evil)}", image_key(sha256(evil))):
        srv.add_fault(Fault(planted, body=evil.read_bytes()))
    role = json.loads(meta(cat, f"{current(cat, 'image-wn')}.image-wn.json").read_bytes())["signed"]
    [(path, entry)] = role["targets"].items()

    def inject(signed: dict[str, Any]) -> None:
        signed["targets"][path] = {**entry, "hashes": {"sha256": sha256(evil)}}

    name = f"{current(cat, 'targets')}.targets.json"
    srv.add_fault(Fault(f"/{name}", body=tampered(meta(cat, name).read_bytes(), inject)))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 8, "not validly signed", dest)
    assert image_requests(srv) == []


@pytest.mark.http
def test_metadata_signed_by_attacker_key(http_catalogue: Served, cli, make_image, dest):
    """A timestamp signed (validly, but) by a key the root does not list is untrusted."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    md = Metadata.from_bytes(meta(cat, "timestamp.json").read_bytes())
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())
    srv.add_fault(Fault("/timestamp.json", body=md.to_bytes()))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 8, "not validly signed", dest)


@pytest.mark.http
def test_root_rotation_signed_by_attacker(http_catalogue: Served, cli, make_image, dest):
    """A forged 2.root.json (attacker's keys, not the trusted root's) is not followed."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    md = Metadata.from_bytes(cat.root.read_bytes())
    md.signed.version = 2
    attacker = CryptoSigner.generate_ed25519()
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(md.signed.roles[role].keyids):
            md.signed.revoke_key(keyid, role)
        md.signed.add_key(attacker.public_key, role)
    md.signatures.clear()
    md.sign(attacker)
    srv.add_fault(Fault("/2.root.json", body=md.to_bytes()))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 8, "not validly signed", dest)


# -- 3. rollback ---------------------------------------------------------------------------------------------
@pytest.mark.http
def test_rollback_timestamp(http_catalogue: Served, cli, make_image, tmp_path, dest):
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), version="1")
    old = meta(cat, "timestamp.json").read_bytes()  # copied aside before the next publish replaces it
    publish(cli, cat, make_image(SIZE, seed="2"), version="2")
    first = tmp_path / "first.qcow2"
    assert pull(cli, srv.url, cat.root, first).code == 0  # the client now trusts the newer timestamp
    assert signed_version(meta(cat, "timestamp.json")) > Metadata.from_bytes(old).signed.version
    srv.add_fault(Fault("/timestamp.json", body=old))
    r = pull(cli, srv.url, cat.root, dest, ref="wn:1")
    assert_refused(r, 9, "rollback refused", dest)
    assert "timestamp" in r.err


@pytest.mark.http
def test_replayed_snapshot_older_than_trusted_is_rollback(http_catalogue: Served, cli, make_image, tmp_path, dest):
    """The client trusts snapshot vK; the new timestamp names vK+1, but the server replays an older snapshot.

    Exit 9, not 17: before checking that the snapshot is the one the timestamp names, python-tuf compares it
    with the snapshot the client already trusts, and the replayed one lists an older image-wn version (a
    role rolled back, "Expected image-wn.json version ..."), which imagectl maps to RollbackError.
    """
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), version="1")
    old_snap = current(cat, "snapshot")
    publish(cli, cat, make_image(SIZE, seed="2"), version="2")
    assert pull(cli, srv.url, cat.root, tmp_path / "first.qcow2").code == 0  # trusts snapshot old_snap + 1
    publish(cli, cat, make_image(SIZE, seed="3"), version="3")
    new_snap = current(cat, "snapshot")
    assert new_snap == old_snap + 2
    srv.add_fault(Fault(f"/{new_snap}.snapshot.json", body=meta(cat, f"{old_snap}.snapshot.json").read_bytes()))
    r = pull(cli, srv.url, cat.root, dest, ref="wn:3")
    assert_refused(r, 9, "rollback refused", dest)
    assert "image-wn" in r.err


@pytest.mark.http
def test_replayed_snapshot_mismatching_timestamp_is_mix_and_match(
    http_catalogue: Served, cli, make_image, tmp_path, dest
):
    """The new timestamp names snapshot vK+1; the server serves the (validly signed) vK bytes at that URL.

    Exit 17, not 9: the client already trusts vK, so nothing in the replayed snapshot is older than what it
    trusts; what is wrong is that the snapshot's version does not match the one the timestamp names
    ("Expected snapshot version K+1, got K"), metadata versions that do not belong together: mix-and-match.
    """
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), version="1")
    old_snap = current(cat, "snapshot")
    assert pull(cli, srv.url, cat.root, tmp_path / "first.qcow2").code == 0  # trusts snapshot old_snap
    publish(cli, cat, make_image(SIZE, seed="2"), version="2")
    new_snap = current(cat, "snapshot")
    assert new_snap == old_snap + 1
    srv.add_fault(Fault(f"/{new_snap}.snapshot.json", body=meta(cat, f"{old_snap}.snapshot.json").read_bytes()))
    r = pull(cli, srv.url, cat.root, dest, ref="wn:2")
    assert_refused(r, 17, "inconsistent metadata versions", dest)
    assert f"snapshot version {new_snap}" in r.err


# -- 4. freeze -----------------------------------------------------------------------------------------------
def _in_the_past(signed: Any) -> None:
    signed.version += 1
    signed.expires = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


@pytest.mark.http
@pytest.mark.parametrize("pulled_before", [False, True], ids=["new-client", "client-with-trusted-metadata"])
def test_expired_timestamp(http_catalogue: Served, cli, make_image, tmp_path, dest, pulled_before):
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    if pulled_before:
        assert pull(cli, srv.url, cat.root, tmp_path / "first.qcow2").code == 0
    body = resigned(cat, meta(cat, "timestamp.json").read_bytes(), "timestamp", _in_the_past)
    srv.add_fault(Fault("/timestamp.json", body=body))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 10, "expired metadata", dest)
    assert "timestamp" in r.err
    assert "hint: the catalogue must be re-signed" in r.err


@pytest.mark.http
def test_freeze_client_clock_passes_expiry(http_catalogue: Served, cli, make_image, tmp_path, dest, monkeypatch):
    """Nobody re-signs: the server keeps serving the timestamp the client trusted, and the client's clock moves
    past its expiry (1 day). The client's clock is python-tuf's reference time, moved two days ahead."""
    from tuf.ngclient._internal import trusted_metadata_set

    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    assert pull(cli, srv.url, cat.root, tmp_path / "first.qcow2").code == 0  # trusted while valid

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return dt.datetime.now(tz) + dt.timedelta(days=2)

    class Clock:  # stands in for the datetime module inside TrustedMetadataSet
        datetime = Later
        timezone = dt.timezone

    monkeypatch.setattr(trusted_metadata_set, "datetime", Clock)
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 10, "expired metadata", dest)
    assert "timestamp" in r.err


@pytest.mark.http
def test_expired_snapshot(http_catalogue: Served, cli, make_image, dest):
    """A fresh timestamp naming a validly signed but expired snapshot: frozen below the timestamp."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    snap_v = current(cat, "snapshot")
    snap = resigned(cat, meta(cat, f"{snap_v}.snapshot.json").read_bytes(), "snapshot", _in_the_past)

    def point_at_new_snapshot(signed: Any) -> None:
        signed.version += 1
        signed.snapshot_meta.version = snap_v + 1

    ts = resigned(cat, meta(cat, "timestamp.json").read_bytes(), "timestamp", point_at_new_snapshot)
    srv.add_fault(Fault("/timestamp.json", body=ts))
    srv.add_fault(Fault(f"/{snap_v + 1}.snapshot.json", body=snap))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 10, "expired metadata", dest)
    assert "snapshot" in r.err


# -- 5. mix-and-match ----------------------------------------------------------------------------------------
@pytest.mark.http
def test_image_role_version_mismatch(http_catalogue: Served, cli, make_image, dest):
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE, seed="1"), version="1")
    publish(cli, cat, make_image(SIZE, seed="2"), version="2")
    n = current(cat, "image-wn")
    assert n == 2
    # Validly signed (it is the real version n-1), but not the version the snapshot lists.
    srv.add_fault(Fault(f"/{n}.image-wn.json", body=meta(cat, f"{n - 1}.image-wn.json").read_bytes()))
    r = pull(cli, srv.url, cat.root, dest, ref="wn:1")
    assert_refused(r, 17, "inconsistent metadata versions", dest)
    assert "image-wn" in r.err


# -- 6. endless data -----------------------------------------------------------------------------------------
ENDLESS = 256 << 20  # what the server is prepared to send: far more than any bound below


@pytest.mark.http
def test_endless_blob(http_catalogue: Served, cli, make_image, dest, cache):
    cat, srv = http_catalogue
    img = make_image(SIZE)
    publish(cli, cat, img)
    key = image_key(sha256(img))
    srv.add_fault(Fault(key, endless=True, endless_limit=ENDLESS))
    t0 = time.monotonic()
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 11, f"more than the signed {SIZE} bytes", dest)
    assert_nothing_cached(cache)
    # The client hangs up soon after the signed length: the server's write fails and it records what it sent
    # (the client's read chunk plus socket buffers), a small fraction of the endless stream.
    assert wait_for(lambda: srv.served.bytes_for(key) > 0), "the server never noticed the client hang up"
    assert SIZE < srv.served.bytes_for(key) < 32 << 20
    assert time.monotonic() - t0 < 120  # ends (the cap, not a timeout); 120 s: generous on a loaded machine


@pytest.mark.http
@pytest.mark.parametrize(
    "role", ["timestamp", "snapshot", "targets", "image-wn", "next-root", "pinned-root", "root-by-sha256"]
)
def test_endless_metadata(http_catalogue: Served, cli, make_image, dest, role):
    """Every metadata file the client reads is refused as untrusted (exit 8) once past its size cap."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    root: str | Path = cat.root
    body = None
    if role == "timestamp":
        suffix = "/timestamp.json"
    elif role == "next-root":  # the root the client looks for next while walking the rotation chain
        suffix, body = "/2.root.json", cat.root.read_bytes()
    elif role == "pinned-root":  # the server's copy of the pinned root file, compared before anything else
        suffix = "/1.root.json"
    elif role == "root-by-sha256":  # the root whose digest is pinned
        suffix, root = "/root.json", f"sha256:{sha256(cat.root)}"
    else:
        suffix = f"/{current(cat, role)}.{role}.json"
    srv.add_fault(Fault(suffix, body=body, endless=True, endless_limit=ENDLESS))
    r = pull(cli, srv.url, root, dest)
    assert_refused(r, 8, "too long", dest)
    assert wait_for(lambda: srv.served.bytes_for(suffix) > 0), "the client kept the connection open"
    assert srv.served.bytes_for(suffix) < 32 << 20


# -- 7. wrong root -------------------------------------------------------------------------------------------
@pytest.mark.http
def test_root_of_another_catalogue(http_catalogue: Served, cli, make_image, tmp_path, dest):
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    other = tmp_path / "other"
    assert cli("catalogue", "init", other, "--keys", tmp_path / "other-keys").code == 0
    r = pull(cli, srv.url, other / "metadata" / "1.root.json", dest)
    assert_refused(r, 12, "is not a root of", dest)


@pytest.mark.http
def test_root_sha256_mismatch(http_catalogue: Served, cli, make_image, dest):
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    wrong = hashlib.sha256(b"not the root").hexdigest()
    r = pull(cli, srv.url, f"sha256:{wrong}", dest)
    assert_refused(r, 12, "has the pinned SHA-256", dest)
    # ... while the right digest works, so the refusal is about the digest.
    right = hashlib.sha256(cat.root.read_bytes()).hexdigest()
    assert pull(cli, srv.url, f"sha256:{right}", dest).code == 0


@pytest.mark.http
def test_server_swaps_its_first_root(http_catalogue: Served, cli, make_image, tmp_path, dest):
    """The deployer pins the right root file, the server answers with another catalogue's 1.root.json."""
    cat, srv = http_catalogue
    publish(cli, cat, make_image(SIZE))
    other = tmp_path / "other"
    assert cli("catalogue", "init", other, "--keys", tmp_path / "other-keys").code == 0
    srv.add_fault(Fault("/1.root.json", body=(other / "metadata" / "1.root.json").read_bytes()))
    r = pull(cli, srv.url, cat.root, dest)
    assert_refused(r, 12, "is not a root of", dest)


# -- metadata proportional to one image ----------------------------------------------------------------------
@pytest.mark.http
def test_pull_reads_only_its_own_image_role(http_catalogue: Served, cli, make_image, dest):
    cat, srv = http_catalogue
    names = ["alpha", "beta", "gamma", "delta"]
    for i, name in enumerate(names):
        publish(cli, cat, make_image(SIZE, seed=name), name=name, version=str(i + 1))
    srv.clear()
    r = pull(cli, srv.url, cat.root, dest, ref="gamma")
    assert r.code == 0, r.err
    paths = [path for _method, path, _range in srv.served.requests]
    assert any(p.endswith(".image-gamma.json") for p in paths), paths
    for other in set(names) - {"gamma"}:
        assert not any(f"image-{other}.json" in p for p in paths), f"image-{other} fetched: {paths}"
    assert image_requests(srv) == ["/cat/" + image_key(sha256(make_image(SIZE, seed="gamma")), "gamma", "3")]
