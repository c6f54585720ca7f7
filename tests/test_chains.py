"""tests/run.sh runs the suite in two xdist workers and keeps each chain of tests that shares a costly fixture in
one of them (``CHAINS`` in tests/conftest.py). A chain whose fixture was renamed or moved would match no test and
fall apart silently: its tests spread over both workers, each building the demo again."""

from __future__ import annotations

import importlib
import inspect

import pytest

from tests.conftest import CHAINS


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
