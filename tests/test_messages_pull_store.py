"""Every user-facing message of imagectl/pull.py and imagectl/store/ (``__init__``, base, digest, http, local; not
s3), pinned whole (issue 13: mutants that change a message's text survived tests that looked for one word of it).

Each test here makes one message happen the way a user meets it (the CLI, a misbehaving HTTP server from
tests/httpserver.py, or the store's public method) and compares the entire line, hint included, with ``==``; the
variable parts (paths, URLs, sizes, hashes) are computed, never wildcarded. Messages that another test already
pins whole are not repeated; they are:

- pull.py ``cannot check PATH: …`` (lstat, stat): test_mutants_pull.py (name too long, symlink loop)
- pull.py ``cannot write PATH: it is a directory``: test_mutants_sample3.py
- pull.py ``the catalogue's image file has N bytes, more/fewer than …``, ``server sent more than …``:
  test_hostile_pull.py::test_lying_lengths_and_huge_bodies, test_mutants_pull.py, test_hardening.py
- pull.py ``blob ended after …``, ``downloaded bytes have sha256 …``, ``cannot write the download cache: …``,
  ``cannot open cache entry …``, ``refusing the cache entry …: it is a FIFO``: test_mutants_pull.py
- store/__init__.py ``S3 location must be …``, ``unsupported catalogue location …`` (and hint): test_mutants_group4.py
- store/base.py ``…: too slow: …`` (and hint): test_mutants_group4.py, test_mutants_sample3.py;
  ``… is larger than the allowed …``: test_mutants_store.py; ``catalogue … is read-only over this protocol`` (and
  hint): test_mutants_store.py
- store/http.py ``cannot reach …: no answer within --timeout``: test_mutants_sample3.py; ``cannot reach …: SSLError``,
  ``refusing the redirect of …``: test_hostile_pull.py; ``… more than 5 redirects``: test_mutants_pull_store.py;
  ``cannot list …``: test_mutants_store.py
- store/local.py ``cannot read …`` (read, digest), ``cannot check …``: test_mutants_group4.py; ``cannot read SOURCE``
  (upload): test_mutants_sample2.py
- store/digest.py has no message of its own (FileChangedError's text is store/local.py's, pinned here).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imagectl.progress
from imagectl.catalogue.model import blob_key
from imagectl.errors import CatalogueStateError, LocalIOError
from imagectl.fsio import SymlinkRefusedError
from imagectl.progress import human_size
from imagectl.store import ObjectMissingError
from imagectl.store.digest import FileChangedError, file_digest
from imagectl.store.local import LocalStore
from tests.conftest import REPO, Catalogue, CliResult, write_pattern
from tests.httpserver import Fault
from tests.test_hostile_pull import ARCH, pull
from tests.test_mutants_pull import (  # noqa: F401  (served: a fixture)
    SIZE,
    Served,
    blobs,
    image_file,
    image_requests,
    served,
)
from tests.test_pull_http import NOBODY, as_unprivileged

BLOB = "blobs/sha256/" + "ab" * 32
KEY = "targets/wn/1/x86_64/wn-1-x86_64.qcow2"


def stderr_lines(r: CliResult) -> list[str]:
    assert "Traceback" not in r.err, r.err
    return r.err.splitlines()


# == imagectl/pull.py =================================================================================================
# -- the destination (refused before any byte is downloaded) ----------------------------------------------------------
@pytest.mark.http
@pytest.mark.parametrize("kind", ["into-missing-directory", "into-a-file", "parent-is-a-file", "parent-missing"])
def test_a_destination_whose_directory_is_not_there(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    kind: str,
) -> None:
    cat, srv, sha = served
    if kind == "into-missing-directory":
        out = f"{tmp_path}/missing/"
        line = f"cannot write into {out}: no such directory"
    elif kind == "into-a-file":  # -o FILE/: "no such directory" would mislead
        (tmp_path / "afile").write_bytes(b"x")
        out = f"{tmp_path}/afile/"
        line = f"cannot write into {out}: not a directory"
    elif kind == "parent-is-a-file":
        (tmp_path / "afile").write_bytes(b"x")
        out = str(tmp_path / "afile" / "out.qcow2")
        line = f"cannot write {out}: {tmp_path / 'afile'} is not a directory"
    else:
        out = str(tmp_path / "missing" / "out.qcow2")
        line = f"cannot write {out}: {tmp_path / 'missing'} does not exist"
    r = pull(cli, cat, srv.url, "-o", out)
    assert r.code == 14, r.err
    assert stderr_lines(r) == [f"imagectl: error: {line}"]
    assert image_requests(srv, sha) == []


@pytest.mark.http
@pytest.mark.parametrize(("kind", "what"), [("fifo", "a FIFO"), ("socket", "a socket")])
def test_a_destination_that_is_not_a_regular_file_and_its_hint(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    kind: str,
    what: str,
) -> None:
    cat, srv, _ = served
    node = tmp_path / "node"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(node))
    r = pull(cli, cat, srv.url, "-o", node)
    assert r.code == 14, r.err
    assert stderr_lines(r) == [
        f"imagectl: error: refusing to write {node}: it is {what}, and pull writes regular files only",
        "hint: name a file or a directory with -o",
    ]


@pytest.mark.http
def test_a_destination_directory_that_is_not_writable(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Run as uid 65534 when the tests run as root (root may write anywhere): tests/test_pull_http.py's helper."""
    cat, srv, sha = served
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cache = tmp_path / "cache-of-the-deployer"
    cache.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(cache, NOBODY, NOBODY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGECTL_CACHE_DIR": str(cache), "HOME": str(cache)}
    argv = ["pull", "wn", "--catalogue", srv.url, "--root", str(cat.root), "--arch", ARCH, "-o", str(ro / "x.qcow2")]
    try:
        p = as_unprivileged([sys.executable, "-m", "imagectl", *argv], env)
    finally:
        ro.chmod(0o755)
    assert p.returncode == 14, p.stderr
    assert p.stderr.splitlines() == [f"imagectl: error: cannot write {ro / 'x.qcow2'}: directory {ro} is not writable"]
    assert list(ro.iterdir()) == []
    assert image_requests(srv, sha) == []


# -- the download -----------------------------------------------------------------------------------------------------
@pytest.mark.http
def test_a_resumed_download_answered_from_another_offset(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """A .part of 100,000 good bytes in the cache: the pull asks for the rest, the server answers from byte 5."""
    cat, srv, sha = served
    blobs(tmp_path).mkdir(parents=True)
    (blobs(tmp_path) / f"{sha}.part").write_bytes((cat.dir / image_file(sha)).read_bytes()[:100_000])
    srv.add_fault(Fault(suffix=image_file(sha), content_range=f"bytes 5-{SIZE - 1}/{SIZE}"))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 13, r.err
    assert stderr_lines(r) == [
        f"imagectl: error: wn/1/{ARCH}/wn-1-{ARCH}.qcow2: asked for bytes from 100000, the server sent from 5"
    ]
    assert image_requests(srv, sha) == [(image_file(sha), "bytes=100000-")]


@pytest.mark.http
def test_a_changed_cache_entry_is_named_dropped_and_downloaded_again(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    cat, srv, sha = served
    assert pull(cli, cat, srv.url, "-o", tmp_path / "a.qcow2").code == 0
    entry = blobs(tmp_path) / sha
    data = bytearray(entry.read_bytes())
    data[1000] ^= 1
    entry.write_bytes(bytes(data))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "b.qcow2", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["cached"] is False
    assert stderr_lines(r) == [
        f"imagectl: warning: cached blob {sha[:16]}… does not match the signed hash; removed it and downloading again"
    ]


@pytest.mark.http
@pytest.mark.parametrize("entry", ["blob", "part", "lock"])
def test_a_symlink_planted_in_the_cache_is_refused_by_name(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    entry: str,
) -> None:
    cat, srv, sha = served
    name = {"blob": sha, "part": f"{sha}.part", "lock": f".{sha}.lock"}[entry]
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    blobs(tmp_path).mkdir(parents=True)
    (blobs(tmp_path) / name).symlink_to(victim)
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 14, r.err
    assert stderr_lines(r) == [f"imagectl: error: refusing the cache entry {name}: it is a symlink (not followed)"]
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("reason", ["use wn:2, it has the new kernel", None])
def test_pulling_a_deprecated_version_warns_with_its_date_and_reason(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    reason: str | None,
) -> None:
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    r = cli("deprecate", "wn:1", *catalogue.args(), *(["--reason", reason] if reason else []))
    assert r.code == 0, r.err
    r = cli("pull", "wn:1", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "--json",
            "-o", tmp_path / "x.qcow2")  # fmt: skip
    assert r.code == 0, r.err
    at = json.loads(r.out)["deprecated"]["at"]  # the signed date, as the catalogue's metadata has it
    assert at.startswith("20") and at.endswith("Z"), at
    assert stderr_lines(r) == [f"imagectl: warning: wn:1 is deprecated since {at}: {reason or 'no reason given'}"]


@pytest.mark.http
def test_the_progress_line_names_the_image_and_version(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal, pull draws a progress line labelled NAME:VERSION. The bar's clock stands still here, so it is
    drawn once, when the last byte is in (at 1e-6 s, the rate the bar computes for no elapsed time)."""
    cat, srv, _ = served
    with monkeypatch.context() as m:
        m.setattr(imagectl.progress, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))
        m.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 0, r.err
    size = human_size(SIZE)
    assert r.err == f"\rwn:1 [{'#' * 30}] 100.0% {size}/{size} {human_size(SIZE / 1e-6)}/s \n"


# == imagectl/store/http.py (through a pull from a misbehaving server) ===============================================
@pytest.mark.http
@pytest.mark.parametrize(
    ("status", "code", "line"),
    [
        *((s, 4, "imagectl: error: {key} not found at {url} (HTTP {status})") for s in (403, 404, 410)),
        *((s, 13, "imagectl: error: HTTP {status} from {url}{key}") for s in (400, 500, 503)),
    ],
)
def test_an_image_answered_with_an_error_status(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    status: int,
    code: int,
    line: str,
) -> None:
    """Both of the image's keys answered with ``status``. 403, 404 and 410 say the target file is not there: pull
    asks for the blob (a catalogue written before target files), and when that is not there either names the target
    file (exit 4). Any other error status is a network error (13) about the target file, and no fallback."""
    cat, srv, sha = served
    srv.add_fault(Fault(suffix=image_file(sha), status=status))
    srv.add_fault(Fault(suffix=blob_key(sha), status=status))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == code, r.err
    assert stderr_lines(r) == [line.format(key=image_file(sha), url=srv.url, status=status)]
    asked = [k for k, _rng in image_requests(srv, sha)]
    assert asked[0] == image_file(sha)
    assert set(asked) == ({image_file(sha), blob_key(sha)} if code == 4 else {image_file(sha)})


@pytest.mark.http
def test_a_connection_lost_mid_blob(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """The server closes the connection after 1,000 of the 300,000 bytes its Content-Length promised (no retries)."""
    cat, srv, sha = served
    srv.add_fault(Fault(suffix=image_file(sha), drop_after=1000))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 13, r.err
    assert stderr_lines(r) == [
        f"imagectl: error: connection lost while reading {srv.url}{image_file(sha)}: ProtocolError"
    ]
    assert (blobs(tmp_path) / f"{sha}.part").stat().st_size == 1000  # kept for the next pull to resume


@pytest.mark.http
@pytest.mark.parametrize("content_range", ["bytes */300000", "items 0-9/10", ""])
def test_an_unparseable_content_range(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
    content_range: str,
) -> None:
    cat, srv, sha = served
    srv.add_fault(Fault(suffix=image_file(sha), content_range=content_range))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 13, r.err
    assert stderr_lines(r) == [f"imagectl: error: unparseable Content-Range from {srv.url}{image_file(sha)}"]


@pytest.mark.http
def test_a_redirect_to_an_unparseable_location(
    served: Served,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """requests parses a redirect's Location itself (even with allow_redirects=False) and let its ValueError
    escape HTTPStore: pull ended in a traceback (found while pinning this message). Now one line, exit 13."""
    cat, srv, sha = served
    srv.add_fault(Fault(suffix=image_file(sha), redirect="http://[::1/x"))
    r = pull(cli, cat, srv.url, "-o", tmp_path / "x.qcow2")
    assert r.code == 13, r.err
    assert stderr_lines(r) == [f"imagectl: error: {srv.url}{image_file(sha)} redirects to an unparseable location"]
    assert not (tmp_path / "x.qcow2").exists()


# == imagectl/store/__init__.py: open_store ===========================================================================
@pytest.mark.parametrize(
    ("location", "line"),
    [
        ("/srv/cat\x01log", "catalogue location contains control characters"),
        ("http://h.example/cat\x7f", "catalogue location contains control characters"),
        ("file://files.example/srv/cat", "file URL with a host is not supported: file://files.example/srv/cat"),
    ],
    ids=["control-character", "delete-character", "file-url-with-a-host"],
)
def test_a_catalogue_location_imagectl_cannot_open(cli: Callable[..., CliResult], location: str, line: str) -> None:
    r = cli("catalogue", "verify", location)
    assert r.code == 3, r.err
    assert stderr_lines(r) == [f"imagectl: error: {line}"]


# == imagectl/store/local.py ==========================================================================================
@pytest.mark.parametrize("missing", ["target-file-and-blob", "target-file"])
def test_an_image_missing_from_a_directory_catalogue(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    missing: str,
) -> None:
    """Without its target file nor its blob, the image is not found, named by its target file (exit 4). Without
    only its target file (a catalogue written before target files), pull reads the blob."""
    image = make_image()
    r = cli("publish", image, *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1", "--json")
    assert r.code == 0, r.err
    sha = json.loads(r.out)["sha256"]
    (catalogue.dir / image_file(sha)).unlink()
    if missing == "target-file-and-blob":
        (catalogue.dir / blob_key(sha)).unlink()
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH,
            "-o", tmp_path / "x.qcow2")  # fmt: skip
    if missing == "target-file":
        assert r.code == 0, r.err
        assert stderr_lines(r) == []
        assert (tmp_path / "x.qcow2").read_bytes() == image.read_bytes()
        return
    assert r.code == 4, r.err
    assert stderr_lines(r) == [f"imagectl: error: {image_file(sha)} not found in {catalogue.dir.as_uri()}/"]
    assert not (tmp_path / "x.qcow2").exists()


@pytest.mark.parametrize("key", ["/etc/passwd", "blobs/../../etc/passwd", "blobs//x", "./x", "blobs/a\0b"])
def test_a_key_that_would_leave_the_catalogue(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "cat")
    with pytest.raises(ObjectMissingError) as e:
        store.read(key, 100)
    assert str(e.value) == f"invalid object key {key!r}"
    assert (e.value.hint, e.value.exit_code) == (None, 4)


@pytest.mark.parametrize("lock", [".lock", ".cas.lock"])
def test_a_symlink_planted_at_a_catalogue_lock_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path, lock: str
) -> None:
    """The writer lock (held by publish) and the compare-and-swap lock (taken to replace timestamp.json)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (catalogue.dir / lock).unlink(missing_ok=True)
    (catalogue.dir / lock).symlink_to(victim)
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 14, r.err
    root = catalogue.store.root
    assert stderr_lines(r) == [
        f"imagectl: error: refusing {root}/{lock}: a symlink or non-directory is in the way (not followed)"
    ]
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("change", ["rewritten", "truncated"])
def test_an_upload_of_a_file_that_changed_since_it_was_hashed(tmp_path: Path, change: str) -> None:
    image = write_pattern(tmp_path / "image.raw", 100_000)
    digest = file_digest(str(image))
    if change == "rewritten":
        write_pattern(image, 100_000, seed="other")
    else:
        os.truncate(image, 60_000)
    now = file_digest(str(image))
    store = LocalStore(tmp_path / "cat")
    with pytest.raises(FileChangedError) as e:
        store.upload_file(BLOB, str(image), digest)
    assert str(e.value) == (
        f"{image} changed while it was being published: hashed 100000 bytes with sha256 {digest.sha256[:16]}…, "
        f"then read {now.size} bytes with sha256 {now.sha256[:16]}…; nothing was stored"
    )
    assert e.value.hint == "publish a file nothing is writing to (wait for the build to finish)"
    assert e.value.exit_code == 14
    assert not store.exists(BLOB)


# -- place_target: the TUF target path of an image, a hard link of its blob -------------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "cat")
    store.write("metadata/root.json", b"{}")  # the catalogue directory exists, its blobs directory not yet
    return store


def test_place_target_of_a_blob_whose_directory_is_missing(local: LocalStore) -> None:
    with pytest.raises(ObjectMissingError) as e:
        local.place_target(BLOB, KEY, 5)
    assert str(e.value) == f"{BLOB} not found in {local.root.as_uri()}/"


def test_place_target_of_a_blob_that_is_not_there(local: LocalStore) -> None:
    (local.root / "blobs" / "sha256").mkdir(parents=True)
    with pytest.raises(ObjectMissingError) as e:
        local.place_target(BLOB, KEY, 5)
    assert str(e.value) == f"{BLOB} not found in {local.root.as_uri()}/"
    assert e.value.exit_code == 4


@pytest.mark.parametrize(
    ("kind", "what"), [("directory", "a directory"), ("fifo", "a FIFO"), ("link", "a symbolic link")]
)
def test_place_target_of_a_blob_that_is_no_regular_file(local: LocalStore, kind: str, what: str) -> None:
    """Named for what it is, as every other refusal of a non-file (it was "not found", exit 4)."""
    (local.root / "blobs" / "sha256").mkdir(parents=True)
    blob = local.root / BLOB
    {"directory": blob.mkdir, "fifo": lambda: os.mkfifo(blob), "link": lambda: blob.symlink_to("/etc/hostname")}[kind]()
    with pytest.raises(SymlinkRefusedError) as e:
        local.place_target(BLOB, KEY, 5)
    assert str(e.value) == f"refusing {local.root}/{BLOB}: it is {what}"
    assert not (local.root / KEY).exists()


def test_place_target_of_a_blob_of_another_length(local: LocalStore) -> None:
    local.write(BLOB, b"12345")
    with pytest.raises(CatalogueStateError) as e:
        local.place_target(BLOB, KEY, 6)
    assert (str(e.value), e.value.hint) == (
        f"{BLOB} has 5 bytes, signed length is 6",
        f"run: imagectl catalogue verify {local.root.as_uri()}/",
    )
    assert e.value.exit_code == 16
    assert not (local.root / KEY).exists()


@pytest.mark.parametrize(("kind", "what"), [("symlink", "a symbolic link"), ("directory", "a directory"),
                                            ("fifo", "a FIFO")])  # fmt: skip
def test_place_target_over_something_that_is_not_a_file(
    local: LocalStore, tmp_path: Path, kind: str, what: str
) -> None:
    local.write(BLOB, b"12345")
    target = local.root / KEY
    target.parent.mkdir(parents=True)
    if kind == "symlink":
        target.symlink_to(local.root / BLOB)
    elif kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    with pytest.raises(LocalIOError) as e:
        local.place_target(BLOB, KEY, 5)
    assert str(e.value) == f"refusing {local.root}/{KEY}: it is {what}"
    assert e.value.exit_code == 14


def test_place_target_of_a_blob_cut_short_while_it_is_copied(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses hard links (the copy path), and a blob truncated by someone else meanwhile."""
    local.write(BLOB, b"0123456789")

    def no_link(*_a: Any, **_k: Any) -> None:
        os.truncate(local.root / BLOB, 4)  # someone truncates the blob between its size check and the copy
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(CatalogueStateError) as e:
        local.place_target(BLOB, KEY, 10)
    assert str(e.value) == f"{BLOB} got shorter while it was copied to {KEY}"
    assert (e.value.hint, e.value.exit_code) == (None, 16)
    assert not (local.root / KEY).exists()
