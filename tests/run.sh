#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, then lint, types and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install -q -e '.[test]'
echo "+ ruff check"; python3 -m ruff check imagectl tests bench
echo "+ ruff format --check"; python3 -m ruff format --check imagectl tests bench
echo "+ mypy --strict imagectl"; python3 -m mypy imagectl
echo "+ pytest"; exec python3 -m pytest "$@"
