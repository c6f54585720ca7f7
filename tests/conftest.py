from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from imagectl.cli import main
from imagectl.store import Store, open_store
from imagectl.store.local import LocalStore
from imagectl.store.s3 import S3Store
from tests import s3server
from tests.httpserver import TestHTTPServer

EXPIRY = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
REPO = Path(__file__).resolve().parents[1]  # the checkout under test

# `.ci/run` exports IMAGECTL_REQUIRE_ALL=1: on the CI machine every test must run. A test that would skip there
# (a tool missing, mount refused, a download failing) fails instead, with its reason, so nothing passes unrun.
REQUIRE_ALL = os.environ.get("IMAGECTL_REQUIRE_ALL") == "1"


def shipped_recipes() -> list[Path]:
    """Every recipe shipped in recipes/, abstract ones too (its elements/ holds DIB's own YAML, such as an
    element's package-installs.yaml, never a recipe)."""
    root = REPO / "recipes"
    return [p for p in sorted(root.glob("**/*.yaml")) if "elements" not in p.relative_to(root).parts]


def unavailable(reason: str) -> NoReturn:
    """Skip this test for ``reason``, or, where every test is required (``IMAGECTL_REQUIRE_ALL=1``), fail it."""
    if REQUIRE_ALL:
        pytest.fail(f"required here (IMAGECTL_REQUIRE_ALL=1) but cannot run: {reason}")
    pytest.skip(reason)


def require_tools(*tools: str, install: str = "") -> None:
    """:func:`unavailable` unless every program in ``tools`` is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed" + (f" (apt-get install {install})" if install else ""))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Where every test is required, a skip from anywhere (a skipif marker, a library's importorskip) is a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but IMAGECTL_REQUIRE_ALL=1 requires every test to run here: {reason}"


# tests/run.sh runs the suite in two pytest-xdist workers (`--dist loadgroup`). The tests that share one costly
# module fixture form a chain that must stay in one worker, or each worker would build the demo again: each
# chain is an xdist group. The chains go to the front of the queue, then the other slow tests, so the two workers
# end close together (a chain queued last would run alone at the end).
# Here the pipeline's chain takes ~490 s, the demo's ~900 s with its boots and child builds (one more package,
# xen-pv), the i386 build and boot ~340 s: one worker takes the demo's, the other the pipeline's and the i386's.
CHAINS = {  # module.fixture -> xdist group
    "tests.test_ci_templates.pipeline": "gitlab-pipeline",
    "tests.test_build_integration.built": "demo-x86_64",
    "tests.test_build_integration.built_i386": "demo-i386",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ranks = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # which fixture definitions the test uses, wherever requested
        defs = info.name2fixturedefs.values() if info else ()
        used = {f"{d.func.__module__}.{d.argname}" for ds in defs for d in ds}
        chain = next((i for i, fixture in enumerate(CHAINS) if fixture in used), None)
        if chain is not None:
            item.add_marker(pytest.mark.xdist_group(list(CHAINS.values())[chain]))
            ranks[item.nodeid] = chain
        else:
            ranks[item.nodeid] = len(CHAINS) + (0 if item.get_closest_marker("slow") else 1)
    items.sort(key=lambda item: ranks[item.nodeid])  # stable: a module's order is kept within each rank


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


def run_imagectl(
    *args: object,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
) -> CliResult:
    """``python -m imagectl ARGS`` in a fresh interpreter (this checkout's code, whatever is installed), stdout and
    stderr on pipes; the test fails, instead of hanging the suite, if it has not ended after ``timeout`` seconds.

    ``env`` replaces the environment (default: this one, with the checkout first on PYTHONPATH). The in-process
    twin is the ``cli`` fixture; use this one for what only a real process shows (console entry, FIFOs, limits).
    """
    if env is None:
        env = dict(os.environ)
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)}
    try:
        p = subprocess.run(
            [sys.executable, "-m", "imagectl", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd or REPO,
            timeout=timeout,
            check=False,
            preexec_fn=preexec_fn,  # resource limits for one child, set before exec
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"imagectl {' '.join(map(str, args))} still running after {timeout} s (a hang)")
    return CliResult(p.returncode, p.stdout, p.stderr)


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
        return write_pattern(tmp_path / (name or f"image-{next(counter)}.qcow2"), size, seed)

    return make


def write_pattern(path: Path, size: int, seed: str = "a") -> Path:
    """Write ``size`` deterministic bytes (a repeated SHA-256 of ``seed``) to ``path``; return it."""
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    with path.open("wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    return path


@dataclass
class Catalogue:
    dir: Path
    keys: Path
    root: Path  # 1.root.json, what a deployer pins
    store: LocalStore

    def args(self) -> list[str]:
        return ["--catalogue", str(self.dir), "--keys", str(self.keys)]

    def symlink_blobs(self, to: Path) -> Path:
        """Replace the (empty) blobs/sha256 prefix with a symlink to ``to``, which a hostile host might make."""
        blobs = self.dir / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        blobs.rmdir()
        blobs.symlink_to(to)
        return blobs


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


def clean_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS_* variable of the developer's reaches a test, and boto3 never waits for instance metadata."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_aws_env(monkeypatch)


@pytest.fixture
def aws_env(seaweedfs: s3server.S3Server, monkeypatch: pytest.MonkeyPatch) -> s3server.S3Server:
    """The one S3 environment of the suite: the standard AWS variables point at the test server, nothing else."""
    clean_aws_env(monkeypatch)
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    return seaweedfs


@pytest.fixture
def s3_store(aws_env: s3server.S3Server) -> S3Store:
    """A fresh prefix of the shared bucket, opened the way the CLI opens it: from an s3:// URL and the environment."""
    import uuid

    store = open_store(f"s3://{aws_env.shared_bucket()}/{uuid.uuid4().hex}/cat", retries=0, timeout=10)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each writable store kind in turn: a directory, and S3 on the test server."""
    if request.param == "local":
        return LocalStore(tmp_path / "cat")
    return request.getfixturevalue("s3_store")  # type: ignore[no-any-return]
