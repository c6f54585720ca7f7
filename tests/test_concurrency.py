"""Concurrent publishers and publishers killed mid-publish, on a directory catalogue (S3: tests/test_s3_catalogue.py).

8 processes x 5 publishes into one image name at the same time: every version present, the catalogue verifies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Catalogue


def run_publishers(cat: str, keys: Path, workers: int, each: int, name: str = "wn") -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.publisher_worker", cat, str(keys), name, str(each), f"w{w}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    versions: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        versions += out.split()
    return versions


@pytest.mark.slow
def test_eight_publishers_five_each_directory(catalogue: Catalogue, cli):
    versions = run_publishers(str(catalogue.dir), catalogue.keys, workers=8, each=5)
    assert len(versions) == 40 and len(set(versions)) == 40  # every publish got its own version
    r = cli("catalogue", "list", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    import json

    listed = [e["version"] for e in json.loads(r.out)]
    assert sorted(listed) == sorted(versions)  # none lost
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 0, r.out


# Runs tests.publisher_worker unchanged, counting its file-system steps: every os.write, os.link, os.replace and
# os.rename prints "STEP N CALL NAME" to stderr. With IMAGECTL_TEST_KILL_AT=N it SIGKILLs itself at step N: a write
# is cut in half first (a torn temp file), a link/replace/rename never happens. So a kill lands exactly where the
# test chose, and says so ("KILL N ...").
_TRACED_WORKER = r"""
import os, runpy, signal, sys
kill_at = int(os.environ.get("IMAGECTL_TEST_KILL_AT", "-1"))
step = [0]
real = {name: getattr(os, name) for name in ("write", "link", "replace", "rename")}

def traced(name):
    def call(*args, **kwargs):
        n, step[0] = step[0], step[0] + 1
        what = args[1] if name == "write" else args[0]
        label = f"{len(what)} bytes" if name == "write" else str(what)
        print("STEP", n, name, label, file=sys.stderr, flush=True)
        if n == kill_at:
            if name == "write" and len(args[1]) > 1:
                real["write"](args[0], bytes(args[1])[: len(args[1]) // 2])
            print("KILL", n, name, label, file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real[name](*args, **kwargs)
    return call

for name in real:
    setattr(os, name, traced(name))
sys.argv = ["tests.publisher_worker", *sys.argv[1:]]
runpy.run_module("tests.publisher_worker", run_name="__main__", alter_sys=True)
"""


def _traced_publish(cat: str, keys: Path, seed: str, kill_at: int = -1) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGECTL_TEST_KILL_AT": str(kill_at)}
    argv = [sys.executable, "-c", _TRACED_WORKER, cat, str(keys), "wn", "1", seed, str(3 << 20)]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_publisher_killed_at_every_step(catalogue: Catalogue, cli, tmp_path):
    """A publisher SIGKILLed at each of its file-system steps in turn (twice over, the second time finding what the
    first left): the catalogue verifies after each kill, gc removes exactly the orphans (torn temp files
    included), nothing a finished publish reported is lost, and the next publish succeeds.

    The kill points are the steps a publish really takes, counted in a run that is not killed; each kill is shown
    to have landed at its step, so the test never passes by killing too early or too late."""
    import json
    import signal

    dry = _traced_publish(str(catalogue.dir), catalogue.keys, "dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    steps = [line for line in dry.stderr.splitlines() if line.startswith("STEP ")]
    assert any(" link " in s for s in steps) and any(" replace " in s for s in steps), steps  # blob, metadata, ts
    outcomes = []
    for trial in range(2 * len(steps)):
        kill_at = trial % len(steps)
        before = (catalogue.dir / "metadata" / "timestamp.json").read_bytes()
        p = _traced_publish(str(catalogue.dir), catalogue.keys, f"k{kill_at}", kill_at)
        assert p.returncode == -signal.SIGKILL, f"step {kill_at}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert p.stderr.strip().splitlines()[-1].startswith(f"KILL {kill_at} "), p.stderr[-2000:]
        r = cli("catalogue", "verify", catalogue.dir)
        assert r.code == 0, f"killed at step {kill_at} ({steps[kill_at]}): {r.out}"
        committed = (catalogue.dir / "metadata" / "timestamp.json").read_bytes() != before
        outcomes.append("committed" if committed else "not committed")
    # The timestamp swap is the last step and the commit point: a kill at any step, that one included, commits
    # nothing, so only the dry run's version is listed.
    assert "timestamp.json" in steps[-1] and " replace " in steps[-1], steps[-1]
    assert set(outcomes) == {"not committed"}, outcomes
    r = cli("catalogue", "list", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    assert r.code == 0, r.err
    listed = json.loads(r.out)
    assert [e["version"] for e in listed] == dry.stdout.split()
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    left = sorted(p.name for p in (catalogue.dir / "blobs" / "sha256").iterdir())
    assert left == sorted({e["sha256"] for e in listed}), "exactly the referenced blobs remain (no torn temp file)"
    hidden = [p for p in (catalogue.dir / "metadata").iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden
    referenced = {e["sha256"] for e in listed}
    assert not [k for k in report["removed"] if k.rsplit("/", 1)[-1] in referenced]  # gc never took a live blob
    assert cli("catalogue", "verify", catalogue.dir).code == 0
    versions = run_publishers(str(catalogue.dir), catalogue.keys, workers=1, each=1)
    assert len(versions) == 1
    assert cli("catalogue", "verify", catalogue.dir).code == 0
