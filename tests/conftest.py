from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagectl.cli import main
from imagectl.store.local import LocalStore
from tests import s3server
from tests.httpserver import TestHTTPServer

EXPIRY = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's config, cache or IMAGECTL_* variables."""
    for key in list(os.environ):
        if key.startswith("IMAGECTL_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("IMAGECTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IMAGECTL_RETRIES", "0")  # tests that want retries set them; failures stay fast


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``imagectl ARGS`` in-process; returns exit code, stdout, stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a deterministic pseudo-random file of ``size`` bytes (different ``seed`` -> different bytes)."""
    counter = iter(range(10**6))

    def make(size: int = 256 * 1024, seed: str = "a", name: str | None = None) -> Path:
        path = tmp_path / (name or f"image-{next(counter)}.qcow2")
        block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
        with path.open("wb") as f:
            left = size
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        return path

    return make


@dataclass
class Catalogue:
    dir: Path
    keys: Path
    root: Path  # 1.root.json, what a deployer pins
    store: LocalStore

    def args(self) -> list[str]:
        return ["--catalogue", str(self.dir), "--keys", str(self.keys)]


@pytest.fixture
def catalogue(tmp_path: Path, cli: Callable[..., CliResult]) -> Catalogue:
    d = tmp_path / "cat"
    keys = tmp_path / "keys"
    r = cli("catalogue", "init", d, "--keys", keys)
    assert r.code == 0, r.err
    return Catalogue(d, keys, d / "metadata" / "1.root.json", LocalStore(d))


@pytest.fixture
def http_catalogue(catalogue: Catalogue) -> Iterator[tuple[Catalogue, TestHTTPServer]]:
    """The catalogue fixture, also served read-only by a real HTTP server on 127.0.0.1."""
    with TestHTTPServer(catalogue.dir, prefix="cat") as srv:
        yield catalogue, srv


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


seaweedfs = pytest.fixture(scope="session")(s3server.seaweedfs)  # a real S3 server (SeaweedFS) on 127.0.0.1
