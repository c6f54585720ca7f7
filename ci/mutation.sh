#!/usr/bin/env bash
# Mutation testing (issue 13): mutmut 3 changes one thing at a time in the catalogue, pull, store and SLC-unpacking
# code and runs the tests that call the changed function; a change no test notices is a surviving mutant.
# Configuration: [tool.mutmut] in pyproject.toml (which modules, which tests) and tests/test_mutants_plugin.py (test
# order, the time budget). Results stay in mutants/ (git ignores it): `mutmut results`, `mutmut show NAME`,
# `mutmut browse`; the survivors are accounted for in tests/MUTANTS.md. Not part of .ci/run: hours on 2 cores.
#
#   bash ci/mutation.sh                      # everything in scope; resumes where an earlier run stopped
#   bash ci/mutation.sh 'imagectl.pull.*'    # these mutants again, every test (names or globs, as mutmut prints)
#   MUTATION_JOBS=2 bash ci/mutation.sh      # parallel workers (default: 2 per core; the tests wait a lot)
#   MUTATION_BUDGET=0 bash ci/mutation.sh    # one pass with every test of every mutant (default: two passes)
#   MUTATION_FRESH=1 bash ci/mutation.sh     # forget earlier results (rm -rf mutants/) and start over
#   MUTATION_SAMPLE=tests/mutants-sample.txt bash ci/mutation.sh
#                                            # only the mutants named in that file (one per line): the uniform
#                                            # random sample of 1,000 that tests/MUTANTS.md reports on
#
# Two passes by default: the first runs each mutant's fastest tests only, up to MUTATION_BUDGET seconds (default 6)
# of their recorded durations; the second runs every test of each mutant that survived the first. A killed verdict
# needs one failing test; only a survivor needs them all, and survivors are few.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import mutmut" 2>/dev/null; then
    echo "+ pip install mutmut"
    python3 -m pip install -q "mutmut>=3.3,<4"
fi
if [[ "${MUTATION_FRESH:-0}" == 1 ]]; then
    rm -rf mutants
fi
jobs=${MUTATION_JOBS:-$((2 * $(nproc)))}
budget=${MUTATION_BUDGET:-6}

mutmut() {
    # `python -m mutmut` would import mutmut.__main__ twice; this is what the `mutmut` script does.
    python3 -c "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()" "$@"
}

survivors() {
    python3 - <<'EOF'
import json, pathlib
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if code == 0:
            print(name)
EOF
}

start=$(date +%s)
if [[ -n "${MUTATION_SAMPLE:-}" && $# -eq 0 ]]; then
    # mutmut generates every mutant first; the names of the sample exist only after that.
    mapfile -t sample < <(grep -v '^#' "$MUTATION_SAMPLE")
    echo "+ mutmut run (pass 1 over the ${#sample[@]} mutants of $MUTATION_SAMPLE, the fastest tests up to $budget s)"
    MUTATION_BUDGET=$budget mutmut run --max-children "$jobs" "${sample[@]}"
    mapfile -t again < <(survivors | grep -Fxf <(printf '%s\n' "${sample[@]}") || true)
    echo "survivors of pass 1 in the sample: ${#again[@]} (list them with: mutmut results)"
    echo "mutmut ran for $(($(date +%s) - start)) s"
    exit 0
fi
# mutmut's exit status says nothing about the score (0 with survivors too); a broken setup (clean tests failing, no
# test covering anything) exits non-zero and stops this script.
if [[ $# -gt 0 || "$budget" == 0 ]]; then
    echo "+ mutmut run $* (every test of each mutant)"
    MUTATION_BUDGET=0 mutmut run --max-children "$jobs" "$@"
else
    echo "+ mutmut run (pass 1: the fastest tests of each mutant, up to $budget s)"
    MUTATION_BUDGET=$budget mutmut run --max-children "$jobs"
    mapfile -t again < <(survivors)
    if [[ ${#again[@]} -gt 0 ]]; then
        echo "+ mutmut run (pass 2: every test of the ${#again[@]} survivors)"
        MUTATION_BUDGET=0 mutmut run --max-children "$jobs" "${again[@]}"
    fi
fi
echo "mutmut ran for $(($(date +%s) - start)) s"

python3 - <<'EOF'
"""The numbers of the run from mutmut's own records (mutants/**/*.py.meta), and the score."""
import collections
import json
import pathlib

from mutmut.stats import status_by_exit_code

by_status: collections.Counter[str] = collections.Counter()
left = []
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        status = status_by_exit_code[code]
        by_status[status] += 1
        if status not in ("killed", "caught by type check"):
            left.append(f"  {status:10} {name}")
total = sum(by_status.values())
detected = by_status["killed"] + by_status["caught by type check"]
print(f"mutants: {total}")
for status, n in sorted(by_status.items(), key=lambda kv: -kv[1]):
    print(f"  {status}: {n}")
print("not killed (tests/MUTANTS.md explains each equivalent one):")
print("\n".join(left) or "  none")
if total:
    print(f"raw score: {detected}/{total} = {100 * detected / total:.1f} % killed (before equivalents are set apart)")
EOF
