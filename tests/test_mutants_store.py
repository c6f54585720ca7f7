"""Mutants of imagectl/store/*.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagectl.errors import CatalogueStateError, DownloadError
from imagectl.http import make_session
from imagectl.store import ObjectTooLargeError, open_store
from imagectl.store.base import StatusError
from imagectl.store.digest import FileDigest, composite_checksum
from imagectl.store.http import HTTPStore
from tests.conftest import Catalogue, CliResult, write_pattern
from tests.httpserver import TestHTTPServer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HTTPStore, TestHTTPServer, Path]]:
    root = tmp_path / "srv"
    root.mkdir()
    with TestHTTPServer(root, prefix="cat") as srv:
        yield HTTPStore(srv.url, make_session(retries=0), timeout=10), srv, root


@pytest.mark.http
def test_http_read_returns_every_chunk_up_to_the_limit(served: tuple[HTTPStore, TestHTTPServer, Path]) -> None:
    """Mutants of HTTPStore.read: keeping only the last chunk of a body that arrives in several reads, and the
    limit (exactly ``max_length`` bytes are allowed, one more is refused naming the key and the limit)."""
    store, _, root = served
    data = write_pattern(root / "big.json", 5 << 20).read_bytes()  # 5 MiB: many socket reads
    assert hashlib.sha256(store.read("big.json", len(data))).digest() == hashlib.sha256(data).digest()
    with pytest.raises(ObjectTooLargeError) as e:
        store.read("big.json", len(data) - 1)
    assert str(e.value) == f"big.json is larger than the allowed {len(data) - 1} bytes"
    assert e.value.exit_code == 8


@pytest.mark.http
def test_http_store_cannot_list(served: tuple[HTTPStore, TestHTTPServer, Path]) -> None:
    store, srv, _ = served
    with pytest.raises(DownloadError) as e:
        list(store.list("blobs/"))
    assert str(e.value) == f"cannot list {srv.url}: HTTP catalogues are not listable"


@pytest.mark.http
def test_publishing_to_an_http_catalogue_is_refused_with_a_hint(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Mutants of Store._refuse: the hint that says where to publish instead."""
    cat, srv = http_catalogue
    r = cli("publish", make_image(), "--catalogue", srv.url, "--keys", cat.keys, "--name", "wn", "--arch", "x86_64")
    assert r.code == 16, r.err
    assert r.err.splitlines() == [
        f"imagectl: error: catalogue {srv.url} is read-only over this protocol",
        "hint: publish to the directory (or S3 bucket) the web server serves",
    ]


def test_a_store_that_cannot_write_says_so_for_every_write() -> None:
    store = open_store("http://127.0.0.1:9/cat")
    for write in (
        lambda: store.write("k", b""),
        lambda: store.write_new("k", b""),
        lambda: store.write_if_match("k", b"", "t"),
        lambda: store.upload_file("k", "/dev/null", FileDigest("0" * 64, 0)),
        lambda: store.delete("k"),
        lambda: store.lock(),
        lambda: list(store.list_entries("blobs/")),
    ):
        with pytest.raises(CatalogueStateError) as e:
            write()
        assert (str(e.value), e.value.hint) == (
            "catalogue http://127.0.0.1:9/cat/ is read-only over this protocol",
            "publish to the directory (or S3 bucket) the web server serves",
        )
    assert store.abort_stale_uploads(0) == ()


def test_status_error_keeps_its_hint_and_status() -> None:
    """Mutants of StatusError.__init__ (the HTTP status a caller may branch on, and the hint of its base)."""
    e = StatusError("HTTP 503 from x", "try later", status=503)
    assert (str(e), e.hint, e.status, e.exit_code) == ("HTTP 503 from x", "try later", 503, 13)
    assert StatusError("HTTP 500").status == 0


def test_s3_part_and_composite_checksums() -> None:
    """digest.py's S3 helpers (their only callers are S3 tests, which need SeaweedFS): fixed vectors."""
    parts = (hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest())
    assert composite_checksum(parts) == "5aAf7hTg7VxIcU8iGA8lrYNltT+XefedxKPX6Tlj+Uo=-2"
    digest = FileDigest(hashlib.sha256(b"ab").hexdigest(), 2, 1, parts)
    assert digest.part_b64(1) == "PiPoFgA5WUoziU9lZOGxNIu9egCI1CxKy3PurtWcAJ0="
    assert digest.part_b64(0) == "ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs="
    assert digest.sha256_b64 == "+44g/C5MPySMYMOb1lLzwTRymLuXe4tNWQO4UFViBgM="
