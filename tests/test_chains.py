"""tests/run.sh runs the suite in two xdist workers and keeps each chain of tests that shares a costly fixture in
one of them (``CHAINS`` in tests/conftest.py). A chain whose fixture was renamed or moved would match no test and
fall apart silently: its tests spread over both workers, each building the demo again. So would every chain if
conftest.py's hook stopped marking the chains' tests with their xdist groups, or if the installed pytest-xdist
stopped honouring the groups (what pytest 9.2 with pytest-xdist 3.8 did: pyproject.toml); the last test runs a
small suite in a child pytest, scheduled as tests/run.sh schedules the real one and grouped by the real hook."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHAINS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_each_chain_names_a_fixture_its_module_defines_and_its_tests_use(chain: str) -> None:
    module_name, fixture = chain.rsplit(".", 1)
    module = importlib.import_module(module_name)
    defined = vars(module).get(fixture)
    # a fixture: pytest >= 8.4 wraps it in a FixtureFunctionDefinition, earlier ones mark the function
    assert type(defined).__name__ == "FixtureFunctionDefinition" or hasattr(defined, "_pytestfixturefunction")
    users = [
        name
        for name, func in vars(module).items()
        if name.startswith("test_") and callable(func) and fixture in inspect.signature(func).parameters
    ]
    assert users, f"no test in {module_name} requests {fixture}"


def test_chain_groups_are_distinct() -> None:
    assert len(set(CHAINS.values())) == len(CHAINS)


CONFTEST = """
import os
import pytest
from tests import conftest as real

real.CHAINS = {"conftest.costly": "chain"}  # module.fixture -> group, as the real CHAINS are written
pytest_collection_modifyitems = real.pytest_collection_modifyitems  # the hook tests/run.sh's runs rely on


def _note(what):
    with open(os.environ["CHAIN_LOG"], "a") as f:
        f.write(f"{what} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")


@pytest.fixture(scope="module")
def costly():
    _note("setup")
    return 1
"""

TESTS = """
import time
from conftest import _note

{tests}
"""


def test_a_chain_runs_in_one_worker_with_its_fixture_set_up_once(tmp_path: Path) -> None:
    """Fails if conftest.py's hook no longer adds the chains' xdist groups, or if the installed pytest-xdist no
    longer honours them: 8 chain tests then land on both workers and the fixture is set up by each."""
    chained = "\n".join(f"def test_chain_{i}(costly):\n    _note('chain')\n    time.sleep(0.05)\n" for i in range(8))
    free = "\n".join(f"def test_free_{i}():\n    _note('free')\n    time.sleep(0.05)\n" for i in range(8))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(TESTS.format(tests=chained + "\n" + free))
    log = tmp_path / "log"
    env = {**os.environ, "CHAIN_LOG": str(log), "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    setups = [worker for what, worker in lines if what == "setup"]
    chain_workers = {worker for what, worker in lines if what == "chain"}
    assert len([1 for what, _ in lines if what == "chain"]) == 8
    assert len(chain_workers) == 1 and setups == list(chain_workers), (setups, chain_workers)
    # the other tests are shared out: the run really had two workers to spread a chain over
    assert {worker for what, worker in lines} == {"gw0", "gw1"}, lines
