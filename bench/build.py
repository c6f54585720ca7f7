#!/usr/bin/env python3
"""Benchmark ``imagectl build`` of the Debian demo recipe against the same ``disk-image-create`` run by hand.

In one run: (1) ``imagectl build recipes/demo/debian12-demo.yaml --arch x86_64 --rebuild`` (a real build, not
from the cache), (2) the exact ``disk-image-create`` command and environment that build recorded, run by hand
(same elements path, same generated configuration, same host-compatibility PATH), (3) ``imagectl build`` again
without ``--rebuild`` (a cached rebuild). Prints wall times, the ratio imagectl/by-hand (target <= 1.05) and the
cached rebuild time (target <= 2 s). ``--rounds N`` alternates N pairs; medians are reported. Needs root and
the packages ci/host-setup.sh installs. Never asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import log  # bench/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo" / "debian12-demo.yaml"
RATIO_TARGET = 1.05
CACHED_TARGET_S = 2.0


def timed(cmd: list[str], env: dict[str, str], out: Path) -> float:
    start = time.monotonic()
    with out.open("w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    return time.monotonic() - start


def imagectl(tmp: Path, name: str, *extra: str) -> float:
    out = tmp / name
    cmd = [sys.executable, "-m", "imagectl", "build", str(RECIPE), "--arch", "x86_64", "-o", str(out), "-q", *extra]
    env = {**os.environ, "IMAGECTL_CACHE_DIR": str(tmp / "cache")}
    return timed(cmd, env, tmp / f"{name}.out")


def by_hand(tmp: Path, record_dir: Path, name: str) -> float:
    """disk-image-create exactly as imagectl ran it (argv and environment from the build record)."""
    rec = json.loads(next(record_dir.glob("*.build.json")).read_text())
    out = tmp / name
    out.mkdir()
    argv = list(rec["dib"]["command"])
    argv[argv.index("-o") + 1] = str(out / "image")
    env = {**os.environ, **rec["dib"]["env"]}
    # the generated per-image configuration and the host-compatibility shims, as imagectl prepared them
    cfg = tmp / f"{name}-config"
    shutil.copytree(tmp / "keep-config", cfg)
    env["IMAGECTL_CONFIG_DIR"] = str(cfg)
    if rec["host"].get("hostcompat_partx_shims"):
        from imagectl.build.hostcompat import prepare_shims

        env["PATH"] = f"{prepare_shims(tmp / f'{name}-work')}:{env['PATH']}"
    return timed(argv, env, tmp / f"{name}.out")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="pairs of full builds (each ~3 minutes; default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imagectl-bench-build."))
    try:
        from imagectl.build.configscript import write_config
        from imagectl.recipe.model import load_recipe

        write_config(load_recipe(RECIPE), tmp / "keep-config")
        ours, hand = [], []
        for r in range(args.rounds):
            pair = ("imagectl", "hand") if r % 2 == 0 else ("hand", "imagectl")
            for what in pair:
                if what == "imagectl":
                    ours.append(imagectl(tmp, f"ours{r}", "--rebuild"))
                    log(f"round {r + 1}: imagectl build {ours[-1]:.1f} s")
                else:  # round 1 builds with imagectl first, so its record exists for every hand run
                    hand.append(by_hand(tmp, tmp / "ours0", f"hand{r}"))
                    log(f"round {r + 1}: disk-image-create by hand {hand[-1]:.1f} s")
        cached = [imagectl(tmp, f"cached{i}") for i in range(3)]
        log(f"cached rebuilds: {', '.join(f'{c:.2f}' for c in cached)} s")
        res = {
            "imagectl_build_s": [round(x, 1) for x in ours],
            "disk_image_create_s": [round(x, 1) for x in hand],
            "ratio": round(statistics.median(ours) / statistics.median(hand), 3),
            "ratio_target": RATIO_TARGET,
            "cached_rebuild_s": [round(x, 2) for x in cached],
            "cached_rebuild_median_s": round(statistics.median(cached), 2),
            "cached_target_s": CACHED_TARGET_S,
        }
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            ok = {True: "ok", False: "OVER TARGET"}
            print(f"imagectl build (debian12-demo, x86_64) vs disk-image-create by hand, {args.rounds} round(s):")
            for label, runs in (("imagectl build", ours), ("disk-image-create", hand)):
                print(f"  {label:<18} median {statistics.median(runs):7.1f} s   runs: {[round(x, 1) for x in runs]}")
            print(
                f"  ratio imagectl / by hand: {res['ratio']:.3f}   (target <= {RATIO_TARGET}: "
                f"{ok[res['ratio'] <= RATIO_TARGET]})"
            )
            print(
                f"  cached rebuild: median {res['cached_rebuild_median_s']:.2f} s   runs: {res['cached_rebuild_s']}"
                f"   (target <= {CACHED_TARGET_S:.0f} s: {ok[res['cached_rebuild_median_s'] <= CACHED_TARGET_S]})"
            )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
