#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, then lint, types and the test suite.
# Extra arguments go to pytest (e.g. `-m "not build"` to skip the real diskimage-builder build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/host-setup.sh
echo "+ ruff check"; python3 -m ruff check imagectl tests bench
echo "+ ruff format --check"; python3 -m ruff format --check imagectl tests bench
echo "+ mypy --strict imagectl"; python3 -m mypy imagectl
echo "+ lint-imports (the layering contracts in pyproject.toml)"; lint-imports
# Two pytest-xdist workers (IMAGECTL_TEST_WORKERS; 0 runs in this process): the real builds and boots keep about
# one core busy, so a second worker halves the wall time. --dist loadgroup keeps each chain of tests that shares a
# costly fixture in one worker (tests/conftest.py: CHAINS); the 25 slowest tests are listed at the end.
echo "+ pytest"
exec python3 -m pytest -n "${IMAGECTL_TEST_WORKERS:-2}" --dist loadgroup --durations=25 "$@"
