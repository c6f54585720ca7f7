"""Concurrent publishers and publishers killed mid-publish, on a directory catalogue (S3: tests/test_s3_catalogue.py).

8 processes x 5 publishes into one image name at the same time: every version present, the catalogue verifies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Catalogue

REPO = Path(__file__).parent.parent


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


def test_eight_publishers_five_each_directory(catalogue: Catalogue, cli):
    versions = run_publishers(str(catalogue.dir), catalogue.keys, workers=8, each=5)
    assert len(versions) == 40 and len(set(versions)) == 40  # every publish got its own version
    r = cli("catalogue", "list", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    import json

    listed = [e["version"] for e in json.loads(r.out)]
    assert sorted(listed) == sorted(versions)  # none lost
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 0, r.out


def test_publisher_killed_at_random_points(catalogue: Catalogue, cli, tmp_path):
    """20 publishers killed with SIGKILL at random moments: the catalogue verifies after each, gc removes the
    orphans they left, and the next publish succeeds."""
    import json
    import random
    import signal
    import time

    rng = random.Random(20261125)
    completed = 0
    for trial in range(20):
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.publisher_worker",
                str(catalogue.dir),
                str(catalogue.keys),
                "wn",
                "1",
                f"k{trial}",
                str(3 << 20),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0.0, 1.2))  # start-up is ~0.5 s; the publish itself is spread over the rest
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=60)
        completed += len(out.split())
        r = cli("catalogue", "verify", catalogue.dir)
        assert r.code == 0, f"trial {trial}: {r.out}"
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    blobs_left = (
        {p.name for p in (catalogue.dir / "blobs" / "sha256").iterdir()}
        if (catalogue.dir / "blobs" / "sha256").exists()
        else set()
    )
    r = cli("catalogue", "list", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--json")
    listed = json.loads(r.out) if r.code == 0 else []
    assert blobs_left == {e["sha256"] for e in listed}  # exactly the referenced blobs remain
    assert len(listed) >= completed  # nothing a finished publish reported was lost
    assert cli("catalogue", "verify", catalogue.dir).code == 0
    versions = run_publishers(str(catalogue.dir), catalogue.keys, workers=1, each=1)
    assert len(versions) == 1
    assert cli("catalogue", "verify", catalogue.dir).code == 0
    referenced = {e["sha256"] for e in listed}
    assert not [k for k in report["removed"] if k.rsplit("/", 1)[-1] in referenced]  # gc never took a live blob
