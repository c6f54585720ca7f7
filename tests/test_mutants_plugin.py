"""A pytest plugin for mutation runs (``-p tests.test_mutants_plugin``, set in pyproject's [tool.mutmut]); no tests.

Outside a mutmut run (``MUTANT_UNDER_TEST`` unset) it does nothing.

- The stats run: mutmut first runs the suite once with ``MUTANT_UNDER_TEST=stats`` to learn which tests call which
  function. A test that starts ``python -m imagectl`` in a directory of its own passes that variable on, and the
  child's trampolines then look for mutmut's configuration (pyproject.toml) in the child's working directory, do
  not find it, and crash the child. A child's calls are not recorded anyway (mutmut counts in-process calls only),
  so the variable goes; the trampolines of this process fall back on mutmut's process-local copy of it. While
  mutants are tested the variable names the mutant and stays: children run the mutant too.
- Each mutant: mutmut runs the tests that call the mutated function with ``-x``, in no particular order. Here they
  run fastest first (the stats run's durations), so a killed mutant is killed by its cheapest test, and without
  the tests that mostly wait (SLOW_TESTS): they would dominate the run and kill nothing the others do not.
- ``MUTATION_BUDGET=SECONDS`` (ci/mutation.sh): only the fastest tests of a mutant, up to that many seconds of
  their recorded durations. A first pass over thousands of mutants then takes hours less; what survives it is
  run again without a budget (the default), so no verdict rests on a test left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Seconds each, every one of them spent waiting: a publisher killed at 40 random points, a server that drips.
SLOW_TESTS = (
    "tests/test_concurrency.py::test_publisher_killed_at_random_points",
    "tests/test_hostile_pull.py::test_drip_fed_download_fails_in_bounded_time",
)
_NOT_A_MUTANT = ("", "stats", "fail", "list_all_tests", "mutant_generation")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        del os.environ["MUTANT_UNDER_TEST"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MUTANT_UNDER_TEST", "") in _NOT_A_MUTANT:
        return
    slow = [item for item in items if item.nodeid.startswith(SLOW_TESTS)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
    stats = Path("mutmut-stats.json")  # mutmut runs the tests in mutants/, where it keeps its records
    durations = json.loads(stats.read_text())["duration_by_test"] if stats.exists() else {}
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
    budget = float(os.environ.get("MUTATION_BUDGET") or 0)
    if budget > 0:
        spent, kept = 0.0, 0
        for item in items:
            spent += durations.get(item.nodeid, 0.0)
            if kept and spent > budget:
                break
            kept += 1
        if kept < len(items):
            config.hook.pytest_deselected(items=items[kept:])
            del items[kept:]
