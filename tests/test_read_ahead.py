"""Reads that must cover many metadata files send several at once (issue 10).

A pull of NAME alone (the newest version) and ``catalogue list NAME`` must read every bin of a binned name: only
all of them tell which versions exist. A listing of every name (``catalogue list``, exports, the browse site, a
mirror) reads every name's role. The Updater asks for those files one after another, a round trip each (512 bins
of a 50,000-version name; 2,000 roles); the client now reads the ones it lacks ``store.concurrent_requests`` at a
time (4 over HTTP, 8 on S3) and hands each to the Updater when it asks, which verifies it as any download. What
must hold: the listing is the same as one read file by file; each file is read once, several at once but never
more than the store's limit; a client that holds the files reads only those that changed; a pull of one name
reads no other name's role; a tampered bin is refused (exit 8) and its bytes are never written to the client's
cache; a read that fails or passes its cap is not kept; a cached role file is never followed through a symlink.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import SuccinctRoles

from imagectl.catalogue import bins
from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.fetcher import StoreFetcher
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metadata import TARGETS_MAX
from imagectl.catalogue.model import METADATA, parse_ref
from imagectl.catalogue.state import load_state
from imagectl.catalogue.upgrade import rebin_catalogue
from imagectl.errors import UntrustedMetadataError
from imagectl.fsio import SymlinkRefusedError
from imagectl.store import Store, open_store
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult
from tests.httpserver import TestHTTPServer
from tests.test_bins import ARCH, EXPIRY
from tests.test_bins import small_bins as small_bins  # a fixture: bins past 4 targets

VERSIONS = 16  # re-binned into 8 bins: two rounds of the HTTP store's 4


def publish(cli: Callable[..., CliResult], cat: Catalogue, make_image: Callable[..., Path], version: str) -> None:
    image = make_image(4096, seed=f"wn{version}")
    r = cli("publish", image, *cat.args(), "--name", "wn", "--arch", ARCH, "--version", version, "--json")
    assert r.code == 0, r.err


@pytest.fixture
def served(
    small_bins: None,  # the fixture patches the bin sizes
    http_catalogue: tuple[Catalogue, TestHTTPServer],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
) -> tuple[Catalogue, TestHTTPServer, list[str]]:
    """``wn`` with VERSIONS versions over real HTTP; its bin roles."""
    cat, srv = http_catalogue
    for i in range(VERSIONS):
        publish(cli, cat, make_image, f"1.{i}")
    rebin_catalogue(cat.store, KeyRing(cat.keys), EXPIRY, ["wn"], bits=3)
    roles = load_state(cat.store).bin_roles("wn")
    assert len(roles) == 8
    return cat, srv, roles


class Watched:
    """Wraps a store's ranged reads (what the Updater and the prefetch use): the keys read, and how many were in
    flight at once at most. Each read is held open a little, so reads sent at once are seen at once."""

    def __init__(self, store: Store) -> None:
        self.keys: list[str] = []
        self.peak, self._now, self._lock = 0, 0, threading.Lock()
        inner = store.open_range

        @contextlib.contextmanager
        def open_range(key: str, offset: int = 0) -> Iterator[Any]:
            with self._lock:
                self.keys.append(key)
                self._now += 1
                self.peak = max(self.peak, self._now)
            try:
                time.sleep(0.05)
                with inner(key, offset) as stream:
                    yield stream
            finally:
                with self._lock:
                    self._now -= 1

        store.open_range = open_range  # type: ignore[method-assign]

    def bins(self) -> list[str]:
        return sorted(k for k in self.keys if "~b" in k)


def listing(store: Store, cache: Path, root: Path) -> list[tuple[str, str, str]]:
    with CatalogueReader(store, cache, str(root), lambda _m: None) as r:
        return [(i.version, i.arch, i.sha256) for i in r.images("wn")]


@pytest.mark.http
def test_a_listing_reads_the_bins_at_once_each_once_and_a_warm_one_only_what_changed(
    served: tuple[Catalogue, TestHTTPServer, list[str]],
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cat, srv, roles = served
    store = open_store(srv.url)
    assert store.concurrent_requests == 4
    watched = Watched(store)
    got = listing(store, tmp_path / "client", cat.root)
    assert got == listing(LocalStore(cat.dir), tmp_path / "one-by-one", cat.root)  # the same as bin by bin
    assert len(got) == VERSIONS
    read = watched.bins()
    assert len(read) == len(set(read)) == len(roles)  # every bin once: nothing read twice, by prefetch and Updater
    assert 2 <= watched.peak <= 4, watched.peak  # several at once, never past the store's limit
    # one publish later, a client holding the bins reads only the bin the new version went into
    publish(cli, cat, make_image, "2.0")
    state = load_state(cat.store)
    succinct = state.succinct(state.role("image-wn"))  # type: ignore[arg-type]
    assert succinct is not None
    changed = bins.bin_role_for(succinct, f"wn/2.0/{ARCH}/wn-2.0-{ARCH}.qcow2")
    watched = Watched(store := open_store(srv.url))
    assert len(listing(store, tmp_path / "client", cat.root)) == VERSIONS + 1
    assert [k.split(".", 1)[1] for k in watched.bins()] == [f"{changed}.json"]


@pytest.mark.http
def test_a_tampered_bin_is_refused_and_its_bytes_never_reach_the_cache(
    served: tuple[Catalogue, TestHTTPServer, list[str]], cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cat, srv, roles = served
    state = load_state(cat.store)
    victim = next(r for r in roles[4:] if state.role(r).signed.targets)  # type: ignore[union-attr]  # 2nd round
    key = f"{METADATA}{state.snapshot.signed.meta[f'{victim}.json'].version}.{victim}.json"
    path = cat.dir / key
    data = path.read_bytes()
    tampered = data.replace(b'"length":4096', b'"length":4097', 1)
    assert tampered != data
    path.write_bytes(tampered)
    cache = tmp_path / "client"
    r = cli("catalogue", "list", "wn", "--catalogue", srv.url, "--root", cat.root, "--cache-dir", cache)
    assert r.code == 8, (r.code, r.err)
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) <= 2
    held = [p for p in cache.rglob("*") if p.is_file() and tampered in p.read_bytes()]
    assert held == []


def test_the_prefetch_keeps_only_whole_reads_within_the_cap_and_hands_each_over_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cat")
    store.concurrent_requests = 2  # type: ignore[misc]
    store.write("metadata/1.a.json", b'{"a":1}')
    store.write("metadata/1.big.json", b"[" + b"1," * 100 + b"1]")
    fetcher = StoreFetcher(store, retries=0)
    reads: list[str] = []
    inner = store.open_range

    def counted(key: str, offset: int = 0) -> Any:
        reads.append(key)
        return inner(key, offset)

    store.open_range = counted  # type: ignore[method-assign]
    fetcher.prefetch(["metadata/1.a.json", "metadata/1.missing.json", "metadata/1.big.json"], cap=64)
    assert set(reads) == {"metadata/1.a.json", "metadata/1.missing.json", "metadata/1.big.json"}
    assert list(fetcher._ahead) == ["metadata/1.a.json"]  # the missing and the oversized one are not kept
    url = store.url + "metadata/1.a.json"
    assert b"".join(fetcher.fetch(url)) == b'{"a":1}'
    assert reads.count("metadata/1.a.json") == 1  # handed over from memory, not read again
    assert b"".join(fetcher.fetch(url)) == b'{"a":1}' and reads.count("metadata/1.a.json") == 2  # once only
    fetcher.prefetch(["metadata/1.a.json"], cap=64)
    fetcher.forget()
    assert fetcher._ahead == {}


def test_cached_role_files_are_read_bounded_and_never_through_a_symlink(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """What the reader reads back from the Updater's metadata directory (the version at a role file's end, which
    says whether to fetch it; the snapshot, targets.json and roles it has just verified) is opened without
    following a symlink: a symlink is refused (one line, exit 14), or read as "not held"."""
    r = cli("publish", make_image(4096, seed="x"), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    with CatalogueReader(LocalStore(catalogue.dir), tmp_path / "client", str(catalogue.root), lambda _m: None) as rd:
        assert [i.version for i in rd.images("wn")] == ["1"]
        held = rd.dir / "image-wn.json"
        version = load_state(catalogue.store).snapshot.signed.meta["image-wn.json"].version
        assert rd._held_version("image-wn.json") == version
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_bytes(held.read_bytes())
        held.unlink()
        held.symlink_to(elsewhere)
        assert rd._held_version("image-wn.json") is None
        with pytest.raises(SymlinkRefusedError):
            rd.trusted_bytes("image-wn.json")
        held.unlink()
        held.write_bytes(b'{"version":7} trailing')
        assert rd._held_version("image-wn.json") is None
        held.write_bytes(b"x" * (TARGETS_MAX + 1))
        with pytest.raises(UntrustedMetadataError, match="cap"):
            rd.trusted_bytes("image-wn.json")
        assert rd._held_version("absent.json") is None


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_the_probes_of_every_bin_at_once_are_each_bins_own_probe(bits: int) -> None:
    succinct = SuccinctRoles([], 1, bits, bins.bin_prefix("wn", bits))
    every = bins.probe_paths("wn", succinct)
    assert list(every) != [] and sorted(every) == sorted(succinct.get_roles())
    assert every == {role: bins.probe_path("wn", succinct, role) for role in succinct.get_roles()}
    assert all(succinct.get_role_for_target(path) == role for role, path in every.items())


@pytest.fixture
def many_names(
    http_catalogue: tuple[Catalogue, TestHTTPServer], cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> tuple[Catalogue, TestHTTPServer, list[str]]:
    """Ten names of one version each, over real HTTP."""
    cat, srv = http_catalogue
    names = [f"n{i:02d}" for i in range(10)]
    for name in names:
        r = cli("publish", make_image(4096, seed=name), *cat.args(), "--name", name, "--arch", ARCH, "--version", "1.0")
        assert r.code == 0, r.err
    return cat, srv, names


def roles_read(watched: Watched) -> list[str]:
    return sorted(k.split(".", 1)[1].removesuffix(".json") for k in watched.keys if ".image-" in k)


@pytest.mark.http
def test_a_listing_of_every_name_reads_their_roles_at_once_and_a_pull_only_its_own(
    many_names: tuple[Catalogue, TestHTTPServer, list[str]], tmp_path: Path
) -> None:
    cat, srv, names = many_names

    def list_all(store: Store, cache: Path) -> list[tuple[str, str]]:
        with CatalogueReader(store, cache, str(cat.root), lambda _m: None) as r:
            return [(i.name, i.sha256) for n in r.names() for i in r.images(n)]

    watched = Watched(store := open_store(srv.url))
    got = list_all(store, tmp_path / "client")
    assert got == list_all(LocalStore(cat.dir), tmp_path / "one-by-one") and len(got) == len(names)
    assert roles_read(watched) == [f"image-{n}" for n in names]  # each once
    assert 2 <= watched.peak <= 4, watched.peak
    watched = Watched(store := open_store(srv.url))
    assert list_all(store, tmp_path / "client") == got
    assert roles_read(watched) == []  # the client holds them all: nothing read again
    # a pull of one name reads that name's role only, not the names after it
    watched = Watched(store := open_store(srv.url))
    with CatalogueReader(store, tmp_path / "pull", str(cat.root), lambda _m: None) as r:
        assert r.resolve(parse_ref("n03"), ARCH).record.name == "n03"
    assert roles_read(watched) == ["image-n03"]
