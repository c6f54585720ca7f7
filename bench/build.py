#!/usr/bin/env python3
"""Benchmark ``imagectl build`` of the Debian demo recipe: cold, after adding one package, and cached.

Each round uses a new, empty cache directory and runs, for x86_64: (1) a **cold** build (no package cache, no cached
base system, no build cache), (2) the demo with **one package added** (a recipe that ``extends:`` the demo and adds
``--add-package``, default ``tree``: a new build key, so diskimage-builder runs again, now with the base system and
every package it needs but one from imagectl's package cache, and the kernel's initramfs from imagectl's initramfs
cache when nothing it is made from changed), (3) that same recipe again, three times (an **identical** build: a copy
from the build cache). Prints each build's wall time, split into diskimage-builder's phases read from its log
(bootstrap: root.d, i.e. debootstrap or the cached base and the base packages; package install: extra-data.d to
post-root.d, the initramfs included; image creation: from there to the qemu-img conversion; conversion; and
imagectl's own time around DIB), the ratio of (2) and (3) to (1) from the same round (targets: <= 0.6, and <= 2 s),
what the package cache served and downloaded and whether the initramfs was reused (from the build records).
``--rounds N``: N rounds, medians reported, every run's value kept. Needs root and the packages ci/host-setup.sh
installs. Never asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
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
PLUS_ONE_TARGET = 0.6  # rebuild after adding one package, as a fraction of the cold build
CACHED_TARGET_S = 2.0
PHASES = ("bootstrap", "package_install", "image_creation", "conversion", "imagectl")

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (.*)$")
_RUNNING = re.compile(r"dib-run-parts Running \S+/([a-z-]+\.d)/")
_INSTALL = ("extra-data.d", "pre-install.d", "install.d", "post-install.d", "post-root.d")  # post-root.d: initramfs


def phases(log_text: str, wall: float) -> dict[str, float]:
    """Seconds per phase from DIB's timestamped log: where the first extra-data.d script starts, where the first
    script of a later phase starts, and the qemu-img conversion line (DIB's, or the line imagectl stamps in the
    same format before it converts DIB's raw disk itself) split the run; the rest of ``wall`` is imagectl's own
    work before and after DIB (index check, proxy start, hashing and caching the image)."""
    marks: dict[str, dt.datetime] = {}
    first = last = None
    for line in log_text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        first, last = first or when, when
        text = m.group(2)
        if r := _RUNNING.search(text):
            if r.group(1) in _INSTALL:
                marks.setdefault("package_install", when)
            elif "package_install" in marks:
                marks.setdefault("image_creation", when)
        elif "Converting image using qemu-img convert" in text or text.startswith("imagectl: converting"):
            marks.setdefault("conversion", when)
    if first is None or last is None or len(marks) < 3:
        return {}
    edges = [first, marks["package_install"], marks["image_creation"], marks["conversion"], last]
    out = {name: (b - a).total_seconds() for name, a, b in zip(PHASES, edges, edges[1:], strict=False)}
    out["imagectl"] = wall - (last - first).total_seconds()
    return {k: round(v, 1) for k, v in out.items()}


def build(tmp: Path, recipe: Path, name: str) -> dict[str, object]:
    out = tmp / name
    cmd = [sys.executable, "-m", "imagectl", "build", str(recipe), "--arch", "x86_64", "--hypervisor", "hvm"]
    cmd += ["-o", str(out), "--json"]
    env = {**os.environ, "IMAGECTL_CACHE_DIR": str(tmp / "cache")}
    start = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"bench: {name} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
    [res] = json.loads(r.stdout)
    record = json.loads(Path(res["record"]).read_text())
    logf = out / "debian12-demo-x86_64.log"
    cache = record.get("package_cache") or {}
    return {
        "seconds": round(wall, 2),
        "cached": res["cached"],
        "phases": phases(logf.read_text(errors="replace"), wall) if not res["cached"] else {},
        "package_cache": {k: cache[k] for k in ("hits", "downloaded", "downloaded_packages") if k in cache}
        | ({"base_reused": cache["base"]["reused"]} if "base" in cache else {}),
        "initramfs_reused": [k["reused"] for k in (record.get("initramfs_cache") or {}).get("kernels", [])],
    }


def one_round(tmp: Path, r: int, extra: str) -> dict[str, object]:
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    cold = build(tmp, RECIPE, f"cold{r}")
    log(f"round {r + 1}: cold {cold['seconds']:.1f} s {cold['phases']}")
    plus = tmp / f"plus{r}.yaml"
    plus.write_text(f"extends: {RECIPE}\npackages: [{extra}]\n")
    plus_one = build(tmp, plus, f"plus{r}")
    log(
        f"round {r + 1}: +{extra} {plus_one['seconds']:.1f} s {plus_one['phases']} {plus_one['package_cache']}"
        f" initramfs reused: {plus_one['initramfs_reused']}"
    )
    cached = [build(tmp, plus, f"cached{r}-{i}") for i in range(3)]
    log(f"round {r + 1}: cached {[c['seconds'] for c in cached]} s")
    return {"cold": cold, "plus_one": plus_one, "cached": cached}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="rounds of cold + one more package + cached (~5 min each)")
    ap.add_argument("--add-package", default="tree", help="the package the second build adds (default: tree)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imagectl-bench-build."))
    try:
        rounds = [one_round(tmp, r, args.add_package) for r in range(args.rounds)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cold = [float(x["cold"]["seconds"]) for x in rounds]  # type: ignore[index]
    plus = [float(x["plus_one"]["seconds"]) for x in rounds]  # type: ignore[index]
    cached = [float(c["seconds"]) for x in rounds for c in x["cached"]]  # type: ignore[attr-defined]
    plus_ratio = [round(p / c, 3) for p, c in zip(plus, cold, strict=True)]
    cached_ratio = [round(float(c["seconds"]) / float(x["cold"]["seconds"]), 4) for x in rounds for c in x["cached"]]  # type: ignore
    res = {
        "recipe": str(RECIPE.relative_to(REPO)),
        "arch": "x86_64",
        "added_package": args.add_package,
        "rounds": rounds,
        "cold_s": cold,
        "plus_one_s": plus,
        "cached_s": cached,
        "plus_one_ratio": plus_ratio,
        "plus_one_ratio_median": statistics.median(plus_ratio),
        "plus_one_target": PLUS_ONE_TARGET,
        "cached_ratio": cached_ratio,
        "cached_median_s": statistics.median(cached),
        "cached_target_s": CACHED_TARGET_S,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    ok = {True: "ok", False: "OVER TARGET"}
    print(f"imagectl build (debian12-demo, x86_64), {args.rounds} round(s), each on an empty cache:")
    print(f"  {'build':<22}{'wall s':>8}  " + "".join(f"{p:>17}" for p in PHASES))
    for r, x in enumerate(rounds):
        for label, run in (("cold", x["cold"]), (f"+{args.add_package}", x["plus_one"])):
            ph = run["phases"]  # type: ignore[index]
            row = f"  r{r + 1} {label:<19}{run['seconds']:>8.1f}  " + "".join(  # type: ignore[index]
                f"{ph.get(p, float('nan')):>17.1f}" for p in PHASES
            )
            print(row)
        print(f"  r{r + 1} {'cached (3 runs)':<19}{', '.join(str(c['seconds']) for c in x['cached']):>8}")  # type: ignore
        pc = x["plus_one"]["package_cache"]  # type: ignore[index]
        print(f"     package cache on +{args.add_package}: {pc}")
        print(f"     initramfs reused on +{args.add_package}: {x['plus_one']['initramfs_reused']}")  # type: ignore
    m = res["plus_one_ratio_median"]
    print(
        f"  +1 package / cold: {plus_ratio} median {m:.3f}   (target <= {PLUS_ONE_TARGET}: {ok[m <= PLUS_ONE_TARGET]})"
    )
    c = res["cached_median_s"]
    print(
        f"  cached identical: {cached} s, median {c:.2f} s = {statistics.median(cached_ratio):.4f} x cold"
        f"   (target <= {CACHED_TARGET_S:.0f} s: {ok[c <= CACHED_TARGET_S]})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
