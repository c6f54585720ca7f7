"""The benchmarks still run: the ``bench/`` scripts that drive the catalogue code, at a smoke size.

The figures of issue 10 come from these scripts; a change to the code they drive (a new keyword of
``S3Store.store_image`` broke bench/publish.py's counting wrapper once, unnoticed until the next measurement) must
not leave them broken. Here they run as a user runs them, in a child process with ``--json``, and what they print
is checked for the figures the README quotes, with values that can only come from a real run (no timing is
judged: these are smoke sizes on a busy machine). bench/pull.py runs here too (nginx, from ci/host-setup.sh), and
bench/build.py for one round of real builds (a cold one, one with a package more, three identical: ~4 minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow]  # and each test's own: what it runs (SeaweedFS, nginx, real builds)


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.s3
def test_metadata_bench_runs_at_a_smoke_size() -> None:
    """600 versions (past the 512 of a plain role: binned), 30 names of 5: every figure is there, from a run. With
    ``--rtt-ms 50`` each request of a timed publish waits 50 ms first: a publish sends at least 9 rounds of requests
    (3 of reads, the image's 3 requests, 3 writes), so none takes under 9 x 50 ms (they take ~40 ms without)."""
    s = run_bench(
        "metadata.py", "--versions", "600", "--names", "30", "--per-name", "5", "--rounds", "2", "--rtt-ms", "50"
    )
    for part in ("versions", "names"):
        assert len(s[part]["baseline_s"]) == len(s[part]["measured_s"]) == 2
        assert s[part]["ratio"] > 0 and min(s[part]["measured_s"] + s[part]["baseline_s"]) >= 9 * 0.05
        # with the publisher cache warm the reads after the timestamp's round are the listing's only: 8 rounds
        cached = s[f"{part}_cached"]
        assert len(cached["baseline_s"]) == len(cached["measured_s"]) == 2
        assert cached["ratio"] > 0 and min(cached["measured_s"] + cached["baseline_s"]) >= 8 * 0.05
    # a promote: the first round, the name's roles (fresh host: then its version's bin) and 3 writes at least
    for part in ("promote_versions", "promote_names", "promote_versions_cached", "promote_names_cached"):
        assert len(s[part]["baseline_s"]) == len(s[part]["measured_s"]) == 2
        assert s[part]["ratio"] > 0 and min(s[part]["measured_s"] + s[part]["baseline_s"]) >= 4 * 0.05
    # into the binned name it re-signs the image role (its channels), the snapshot and the timestamp: no bin
    assert 0 < s["promote_versions"]["measured_metadata_bytes"][0] < 16 * 1024
    # the binned name's publish re-signs one bin, the snapshot (listing its 8 bins) and the timestamp
    assert s["big_name_catalogue"]["snapshot_entries"] == 2 + 8  # targets, the name's role, its bins
    assert 0 < s["versions"]["measured_metadata_bytes"][0] < 64 * 1024
    assert s["cold_pull_names"]["metadata_bytes"] > 0 and "snapshot.json" in s["cold_pull_names"]["roles_read"]
    # the newest version of the binned name: every one of its 8 bins read, more than a pull by version reads
    newest, by_version = s["cold_pull_newest_big_name"], s["cold_pull_big_name"]
    assert len([r for r in newest["roles_read"] if "~b" in r]) == 8
    assert newest["metadata_bytes"] > by_version["metadata_bytes"] and newest["seconds"] > 0
    assert s["list_one_name"]["roles_read"] == ["image-name-00011.json", "snapshot.json", "targets.json"]
    every = s["list_every_name"]["roles_read"]
    assert len([r for r in every if r.startswith("image-")]) == 30 and s["list_every_name"]["seconds"] > 0
    assert s["verify_quarter"]["rc"] == s["verify_all"]["rc"] == 0
    assert s["verify_all"]["peak_rss_mib"] > 0


@pytest.mark.s3
def test_targets_bench_runs_at_a_smoke_size() -> None:
    """A 4 MiB image: on a directory the target file is a link (no bytes), on S3 the second version a copy."""
    s = run_bench("targets.py", "--size-mib", "4", "--rounds", "1")
    d, s3 = s["directory"], s["s3"]
    assert d["blob_copy_s"] > 0 and d["target_link_s"] > 0
    assert d["bytes_held_over_image"] == 1.0  # the blob and its target file: one inode
    assert s3["first_upload_s"] > 0 and s3["second_version_copy_s"] > 0
    assert s3["bytes_held_per_target_file"] == 1.0  # two versions' target files, one full copy each; the pointer empty


@pytest.mark.http
def test_pull_bench_runs_at_a_smoke_size() -> None:
    """An 8 MiB image from nginx, one round: imagectl pull (which exits 0 only for verified bytes) and each
    baseline ran, curl's bytes had the published SHA-256 (the bench checks them with sha256sum and openssl), and
    every ratio is derived from the runs it reports (to the rounding of the medians it prints)."""
    s = run_bench("pull.py", "--size-mib", "8", "--rounds", "1")
    assert s["size_mib"] == 8 and s["server"].startswith("http://127.0.0.1:")
    pull, curl = s["pull"], s["curl"]
    assert len(pull["runs_s"]) == len(curl["runs_s"]) == len(s["curl_sync"]["runs_s"]) == 1
    assert pull["peak_rss_mib"] > s["rss_floor_mib"] > 0 and s["pull_small"]["median_s"] > 0
    assert s["curl_sync"]["sync_median_s"] > 0
    # each baseline adds a step to curl's own run: the sums hold run by run
    assert s["curl_sync"]["median_s"] > curl["median_s"] and s["curl_openssl"]["median_s"] > curl["median_s"]
    assert s["curl_sync_openssl"]["median_s"] > max(s["curl_sync"]["median_s"], s["curl_openssl"]["median_s"])
    for key, base in (("curl", curl), ("curl_openssl", s["curl_openssl"]), ("curl_sync", s["curl_sync"])):
        assert s[f"ratio_pull_over_{key}"] == pytest.approx(pull["median_s"] / base["median_s"], rel=5e-3)
    assert s["ratio_pull_over_curl_sync_openssl"] == pytest.approx(
        pull["median_s"] / s["curl_sync_openssl"]["median_s"], rel=5e-3
    )


@pytest.mark.build
@pytest.mark.root
@pytest.mark.network
def test_build_bench_runs_at_a_smoke_size() -> None:
    """One round of the build bench, as its figures are taken: a cold build on an empty cache, the demo with one
    package more, then that build three times over. What it reports can only come from real builds: every phase of
    the two diskimage-builder runs read from their logs, the second run's base system reused and only the added
    package downloaded, the three last ones served from the build cache."""
    s = run_bench("build.py", "--rounds", "1")
    [r] = s["rounds"]
    cold, plus = r["cold"], r["plus_one"]
    assert cold["cached"] is False and plus["cached"] is False
    for run in (cold, plus):
        assert set(run["phases"]) == {"bootstrap", "package_install", "image_creation", "conversion", "imagectl"}
        assert all(v > 0 for k, v in run["phases"].items() if k != "imagectl"), run["phases"]
    assert cold["package_cache"].get("hits", 0) == 0 < cold["package_cache"]["downloaded"]
    assert plus["package_cache"]["base_reused"] is True and plus["package_cache"]["hits"] > 0
    # tree needs nothing the demo lacks: its own .deb is the one download (apt names: NAME_VERSION_ARCH.deb)
    assert [p.split("_")[0] for p in plus["package_cache"]["downloaded_packages"]] == [s["added_package"]] == ["tree"]
    assert [c["cached"] for c in r["cached"]] == [True, True, True]
    assert s["plus_one_ratio"] == [round(plus["seconds"] / cold["seconds"], 3)]
    assert s["cached_median_s"] == sorted(c["seconds"] for c in r["cached"])[1]


@pytest.mark.s3
@pytest.mark.network
def test_publish_bench_runs_at_a_smoke_size(tmp_path: Path) -> None:
    """A 2 MiB image against ``aws s3 cp`` (with its default checksums and with SHA-256's) and ``s3cmd put``, a
    re-publish, and growth past a binned name's 512.

    awscli goes into a venv of its own (the bench would pip-install it into this interpreter, whose botocore boto3
    relies on); s3cmd comes from Debian (the bench installs it with apt-get when missing, as root)."""
    venv = tmp_path / "aws-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "awscli"], capture_output=True, text=True, timeout=600
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    args = ("--size-mib", "2", "--rounds", "1", "--versions", "600", "--growth-runs", "1", "--profile", "never")
    s = run_bench("publish.py", *args, env=env)
    up, rep, grow = s["upload"], s["republish"], s["growth"]
    assert up["publish_median_s"] > 0 and up["aws_median_s"] > 0 and up["s3cmd_median_s"] > 0
    assert up["remembered_median_s"] > 0 and up["ratio_remembered_over_aws"] > 0
    # the bench checked that aws stored a SHA-256 checksum when asked for one
    assert len(up["aws_sha256_runs_s"]) == 1 and up["ratio_publish_over_aws_sha256"] > 0
    cpu = up["cpu"]  # every command is a Python process (imagectl, awscli, s3cmd): each used CPU of its own
    for key in ("publish", "remembered", "aws", "aws_sha256", "s3cmd"):
        assert len(cpu[key]["runs_client_server_s"]) == 1 and cpu[key]["client_median_s"] > 0, cpu
    assert cpu["ratio_publish_client_over_aws"] > 0 and cpu["ratio_remembered_client_over_aws"] > 0
    assert s["one_copy"]["upgrade_median_s"] > 0 and s["one_copy"]["aws_read_median_s"] > 0
    assert rep["library"]["created"] is True and rep["library"]["uploaded"] is False  # a server-side copy
    assert rep["library"]["blob_bytes_sent"] == 0 and rep["library"]["metadata_bytes_sent"] > 0
    assert grow["many_versions"] == 600 and grow["many_median_s"] > 0 and grow["few_median_s"] > 0
