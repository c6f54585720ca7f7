#!/usr/bin/env python3
"""Benchmark ``imagectl pull`` over HTTP against ``curl -o`` + ``openssl dgst -sha256``, and ``curl -o`` alone.

One run: makes sure nginx is installed, writes an N MiB image (default 1 GiB), creates a throwaway catalogue with
``imagectl catalogue init`` and ``imagectl publish``, serves it with nginx on 127.0.0.1 (sendfile, no access log), then
times, alternately, a full ``imagectl pull`` (fresh empty cache each run, so the blob really crosses HTTP) and ``curl -s
-o OUT BLOB_URL`` followed by ``openssl dgst -sha256 OUT`` (the strongest shell baseline for a verified download:
openssl hashes with the CPU's SHA extensions) and by ``sha256sum OUT`` (coreutils, no SHA-NI; kept for comparison with
older figures), and ``sync OUT`` after curl (coreutils: an fsync of OUT), timed apart: ``curl`` + ``sync`` is an
unverified download that leaves its file on disk as pull does (pull fsyncs before it names the destination; curl
never does), and ``curl`` + ``sync`` + ``openssl`` the same work as pull done one step after another (no targets).
Targets: pull <= 1.0x curl + openssl, <= 1.2x curl alone (the limit: an unverified download), peak RSS <= 64 MiB.
One warm-up of each comes first, so nginx serves from the page cache in every timed run. Each child is reaped with
``os.wait4``, whose rusage is that child's own: its ``ru_maxrss`` is the child's peak RSS.

This reports figures; it never asserts them. Everything it writes (GiB-sized files included) lives in one temp
directory that is removed at the end, and nginx is stopped in a ``finally``.

    python3 bench/pull.py                  # 1 GiB, 3 rounds
    python3 bench/pull.py --size-mib 16    # smoke check
    python3 bench/pull.py --json           # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ensure_tool, imagectl_cmd, log, write_random  # bench/ is on sys.path when a script runs

RATIO_TARGET = 1.0  # pull / (curl + openssl dgst -sha256)
CURL_RATIO_TARGET = 1.2  # pull / curl alone
RSS_TARGET_MIB = 64.0
PUBLISH_ARGS = ("--arch", "x86_64", "--version", "1", "--format", "raw")
SMALL_MIB = 1  # the second image: a pull of it is pull's fixed cost (start-up, TUF metadata, cache, link)


# -- setup ---------------------------------------------------------------------------------------------------
def ensure_nginx() -> str:
    return ensure_tool("nginx", ("nginx-light", "nginx"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-tmp/body;
    proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
    scgi_temp_path {tmp}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx_serving(nginx: str, tmp: Path, root: Path, probe_key: str) -> Any:
    """Run nginx in the foreground on a free 127.0.0.1 port serving ``root``; yield its base URL; always stop it."""
    (tmp / "nginx-tmp").mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    # As root, workers would drop to "nobody", who cannot read the 0600 metadata files publish writes.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, root=root))
    err = open(tmp / "nginx-stderr.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [nginx, "-p", f"{tmp}/", "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
        stdin=subprocess.DEVNULL,
        stdout=err,
        stderr=err,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {proc.returncode}: {_tail(tmp / 'nginx-stderr.log')}")
            try:
                with urllib.request.urlopen(base + probe_key, timeout=2) as resp:
                    resp.read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not answer on {base}: {_tail(tmp / 'nginx-error.log')}") from None
                time.sleep(0.05)
        log(f"nginx (pid {proc.pid}) serving {root} at {base}")
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.close()
        log(f"nginx (pid {proc.pid}) stopped")


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


# -- measuring -----------------------------------------------------------------------------------------------
# Peak RSS needs care. Python's subprocess starts children with vfork, and Linux folds the RSS high-water mark of
# the address space a process execs away from into its ru_maxrss: a child of this script would report at least this
# script's own peak. So every measured command runs under a tiny fork+exec launcher (``python3 -S -I``, about 6 MiB),
# which reaps it with wait4 and writes its wall time (fork to reap, so interpreter start-up is not counted) and its
# ru_maxrss (KiB on Linux) to a file. What remains is a floor of the launcher's RSS at fork, measured once on ``true``
# and reported: a peak at that floor means "at most this".
LAUNCHER = """\
import os, sys, time
res, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
seconds = time.perf_counter() - t0
with open(res, "w") as f:
    f.write(f"{seconds!r} {ru.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


@dataclass
class Child:
    seconds: float
    maxrss_mib: float
    stdout: str


def run_child(cmd: list[str], tmp: Path, env: dict[str, str] | None = None) -> Child:
    """Run ``cmd`` to completion under the launcher: its wall time and the peak RSS of exactly that command."""
    out_path, err_path, res_path = tmp / "child.out", tmp / "child.err", tmp / "child.res"
    res_path.unlink(missing_ok=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-I", "-c", LAUNCHER, str(res_path), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,  # its own process group, so an interrupt can stop the command too
        )
        try:
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}: {_tail(err_path)}")
    seconds, maxrss_kib = res_path.read_text().split()
    return Child(float(seconds), int(maxrss_kib) / 1024, out_path.read_text(errors="replace"))


def fresh(*paths: Path) -> None:
    """Remove earlier outputs and flush dirty pages, so no run pays for the previous run's writeback."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    os.sync()


@dataclass
class Bench:
    tmp: Path
    base: str
    root_json: Path
    sha256: str
    imagectl: list[str]

    def pull(self, name: str = "bench") -> Child:
        cache, out = self.tmp / "pull-cache", self.tmp / "pull.out"
        fresh(cache, out)
        # imagectl creates the cache itself, mode 0700 as any user's default cache: a cache others may read forces
        # a copy of each image (imagectl.pull._linkable), which is not what a user of the default cache pays.
        env = {**os.environ, "IMAGECTL_CACHE_DIR": str(cache), "IMAGECTL_CONFIG": str(self.tmp / "config.yaml")}
        cmd = [*self.imagectl, "pull", f"{name}:1", "--catalogue", self.base, "--root", str(self.root_json)]
        res = run_child([*cmd, "--arch", "x86_64", "-o", str(out), "--quiet"], self.tmp, env)
        fresh(cache, out)
        return res

    def curl_sha(self) -> tuple[Child, Child, Child, Child]:
        """curl, then ``sync FILE`` (coreutils: fsync of that file), then sha256sum (the baseline the target is set
        against), then openssl dgst on the same file.

        openssl uses the CPU's SHA extensions and hashes about 3x faster than coreutils' sha256sum here, so the
        second ratio says how pull compares with the fastest download-then-hash a shell can do. curl never fsyncs
        what it writes; pull does before it names the destination, so ``curl`` + ``sync FILE`` is the download that
        does the same disk work (the file on disk, not only in the page cache), timed apart so curl alone stays the
        limit the target is set against.
        """
        out = self.tmp / "curl.out"
        fresh(out)
        curl = run_child(["curl", "-s", "-f", "-o", str(out), f"{self.base}blobs/sha256/{self.sha256}"], self.tmp)
        synced = run_child(["sync", str(out)], self.tmp)
        sha = run_child(["sha256sum", str(out)], self.tmp)
        if sha.stdout.split()[0] != self.sha256:
            raise RuntimeError(f"curl fetched bytes with the wrong sha256: {sha.stdout.strip()}")
        ossl = run_child(["openssl", "dgst", "-sha256", "-r", str(out)], self.tmp)
        if ossl.stdout.split()[0] != self.sha256:
            raise RuntimeError(f"openssl disagrees about the sha256: {ossl.stdout.strip()}")
        fresh(out)
        return curl, synced, sha, ossl


def measure(b: Bench, rounds: int) -> dict[str, Any]:
    log("warm-up: one pull, one curl + hashes (brings the served blob into the page cache)")
    b.pull()
    b.curl_sha()
    b.pull("small")
    pulls: list[Child] = []
    smalls: list[Child] = []
    curls: list[tuple[Child, Child, Child, Child]] = []
    for r in range(rounds):
        order = ("pull", "curl") if r % 2 == 0 else ("curl", "pull")  # alternate, and alternate who goes first
        for what in order:
            if what == "pull":
                pulls.append(b.pull())
                smalls.append(b.pull("small"))
                log(
                    f"round {r + 1}: pull {pulls[-1].seconds:.3f} s, peak RSS {pulls[-1].maxrss_mib:.1f} MiB; "
                    f"pull of the {SMALL_MIB} MiB image {smalls[-1].seconds:.3f} s"
                )
            else:
                curls.append(b.curl_sha())
                c, y, s, o = curls[-1]
                log(
                    f"round {r + 1}: curl {c.seconds:.3f} s, sync FILE {y.seconds:.3f} s, "
                    f"sha256sum {s.seconds:.3f} s, openssl {o.seconds:.3f} s"
                )
    return {"pulls": pulls, "smalls": smalls, "curls": curls}


def series(seconds: list[float], size_mib: int, **extra: Any) -> dict[str, Any]:
    """One command's (or sequence's) runs: their median, every run, the throughput at the median, and ``extra``."""
    med = statistics.median(seconds)
    return {
        "median_s": round(med, 4),
        "runs_s": [round(x, 4) for x in seconds],
        "mib_per_s": round(size_mib / med, 1),
        **extra,
    }


def summarise(size_mib: int, rounds: int, base: str, runs: dict[str, Any], floor_mib: float) -> dict[str, Any]:
    pull_s = [c.seconds for c in runs["pulls"]]
    pull_rss = [c.maxrss_mib for c in runs["pulls"]]
    small_s = [c.seconds for c in runs["smalls"]]
    curl, synced, sha, ossl = ([child.seconds for child in steps] for steps in zip(*runs["curls"], strict=True))

    def then(*steps: list[float]) -> list[float]:  # run by run, the time of these steps one after another
        return [sum(xs) for xs in zip(*steps, strict=True)]

    baselines = {
        "curl": curl,
        "curl_openssl": then(curl, ossl),
        "curl_sha256sum": then(curl, sha),
        "curl_sync": then(curl, synced),  # the file on disk as pull leaves it
        "curl_sync_openssl": then(curl, synced, ossl),  # the same work as pull (on disk, verified), in sequence
    }
    pull_med, fixed_med = statistics.median(pull_s), statistics.median(small_s)
    ratio = {key: pull_med / statistics.median(runs_s) for key, runs_s in baselines.items()}

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 4)

    return {
        "size_mib": size_mib,
        "rounds": rounds,
        "server": base,
        "pull": series(
            pull_s,
            size_mib,
            peak_rss_mib=round(max(pull_rss), 1),
            peak_rss_runs_mib=[round(x, 1) for x in pull_rss],
        ),
        "curl_sha256sum": series(
            baselines["curl_sha256sum"],
            size_mib,
            curl_median_s=med(curl),
            sha256sum_median_s=med(sha),
            curl_peak_rss_mib=round(max(c.maxrss_mib for c, _, _, _ in runs["curls"]), 1),
            sha256sum_peak_rss_mib=round(max(s.maxrss_mib for _, _, s, _ in runs["curls"]), 1),
        ),
        "pull_small": {"size_mib": SMALL_MIB, "median_s": med(small_s), "runs_s": [round(x, 4) for x in small_s]},
        "curl_openssl": series(baselines["curl_openssl"], size_mib, openssl_median_s=med(ossl)),
        "curl": series(curl, size_mib),
        "curl_sync": series(baselines["curl_sync"], size_mib, sync_median_s=med(synced)),
        "curl_sync_openssl": series(baselines["curl_sync_openssl"], size_mib),
        "ratio_pull_over_curl_openssl": round(ratio["curl_openssl"], 3),
        "ratio_target": RATIO_TARGET,
        "ratio_within_target": ratio["curl_openssl"] <= RATIO_TARGET,
        "ratio_pull_over_curl": round(ratio["curl"], 3),
        "curl_ratio_target": CURL_RATIO_TARGET,
        "curl_ratio_within_target": ratio["curl"] <= CURL_RATIO_TARGET,
        "ratio_pull_over_curl_sha256sum": round(ratio["curl_sha256sum"], 3),
        # no targets: pull against an unverified download left on disk, and against all of pull's work in sequence
        "ratio_pull_over_curl_sync": round(ratio["curl_sync"], 3),
        "ratio_pull_over_curl_sync_openssl": round(ratio["curl_sync_openssl"], 3),
        # pull less its fixed cost, over curl: what the data path itself (receive, hash, write, fsync) costs
        "ratio_pull_data_path_over_curl": round((pull_med - fixed_med) / statistics.median(curl), 3),
        "rss_target_mib": RSS_TARGET_MIB,
        "rss_within_target": max(pull_rss) <= RSS_TARGET_MIB,
        "rss_floor_mib": round(floor_mib, 1),
    }


def report(s: dict[str, Any]) -> str:
    p, c = s["pull"], s["curl_sha256sum"]
    ok = {True: "ok", False: "OVER TARGET"}

    def row(label: str, d: dict[str, Any]) -> str:
        runs = ", ".join(f"{x:.3f}" for x in d["runs_s"])
        return f"  {label:<18} median {d['median_s']:7.3f} s  {d['mib_per_s']:8.1f} MiB/s   runs: {runs}"

    rss_runs = ", ".join(f"{x:.1f}" for x in p["peak_rss_runs_mib"])
    return "\n".join(
        [
            f"imagectl pull vs curl + openssl dgst: {s['size_mib']} MiB from nginx at {s['server']}, "
            f"{s['rounds']} rounds after one warm-up each",
            row("imagectl pull", p),
            row("curl + openssl", s["curl_openssl"])
            + f"   (openssl dgst -sha256 {s['curl_openssl']['openssl_median_s']:.3f} s)",
            row("curl alone", s["curl"]),
            row("curl + sha256sum", c) + f"   (sha256sum {c['sha256sum_median_s']:.3f} s)",
            row("curl + sync FILE", s["curl_sync"]) + f"   (sync {s['curl_sync']['sync_median_s']:.3f} s)",
            row("curl+sync+openssl", s["curl_sync_openssl"]) + "   (the same work as pull, one step after another)",
            f"  ratio pull / (curl + openssl):   {s['ratio_pull_over_curl_openssl']:.3f}"
            f"   (target <= {s['ratio_target']}: {ok[s['ratio_within_target']]})",
            f"  ratio pull / curl alone:         {s['ratio_pull_over_curl']:.3f}"
            f"   (target <= {s['curl_ratio_target']}: {ok[s['curl_ratio_within_target']]})",
            f"  ratio pull / (curl + sha256sum): {s['ratio_pull_over_curl_sha256sum']:.3f}   (no target)",
            f"  ratio pull / (curl + sync FILE): {s['ratio_pull_over_curl_sync']:.3f}"
            "   (no target: an unverified download on disk, as pull leaves its file)",
            f"  ratio pull / (curl + sync + openssl): {s['ratio_pull_over_curl_sync_openssl']:.3f}   (no target)",
            f"  pull's fixed cost (a pull of a {s['pull_small']['size_mib']} MiB image): "
            f"{s['pull_small']['median_s']:.3f} s   runs: {', '.join(f'{x:.3f}' for x in s['pull_small']['runs_s'])}",
            f"  ratio (pull - fixed cost) / curl alone: {s['ratio_pull_data_path_over_curl']:.3f}"
            "   (the data path: receive, hash, write, fsync; no target)",
            f"  pull peak RSS: {p['peak_rss_mib']:.1f} MiB   runs: {rss_runs}"
            f"   (target <= {s['rss_target_mib']:.0f} MiB: {ok[s['rss_within_target']]})",
            f"  (curl peak RSS {c['curl_peak_rss_mib']:.1f} MiB, sha256sum {c['sha256sum_peak_rss_mib']:.1f} MiB;"
            f" RSS measurement floor {s['rss_floor_mib']:.1f} MiB)",
        ]
    )


# -- main ----------------------------------------------------------------------------------------------------
def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each, after one warm-up (default 3)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--tmpdir", help="where the temp directory goes (default: the system's)")
    args = ap.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        ap.error("--size-mib and --rounds must be at least 1")
    for tool in ("curl", "sha256sum", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is required")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally blocks: nginx stopped, temp removed
        signal.signal(sig, _exit_on_signal)
    nginx = ensure_nginx()
    imagectl = imagectl_cmd()

    tmp = Path(tempfile.mkdtemp(prefix="imagectl-bench-pull.", dir=args.tmpdir)).resolve()
    try:
        (tmp / "config.yaml").write_text("")  # an empty config: no user or system config file leaks in
        env = {**os.environ, "IMAGECTL_CONFIG": str(tmp / "config.yaml")}
        image, cat, keys = tmp / "image.raw", tmp / "catalogue", tmp / "keys"
        floor_mib = run_child(["true"], tmp).maxrss_mib
        log(f"writing a {args.size_mib} MiB image in {tmp}")
        write_random(image, args.size_mib)
        write_random(tmp / "small.raw", SMALL_MIB)
        run_child([*imagectl, "catalogue", "init", str(cat), "--keys", str(keys)], tmp, env)
        sha256 = ""
        for name, path in (("bench", image), ("small", tmp / "small.raw")):
            where = ("--catalogue", str(cat), "--keys", str(keys), "--name", name)
            published = run_child([*imagectl, "publish", str(path), "--json", *where, *PUBLISH_ARGS], tmp, env)
            sha256 = sha256 or json.loads(published.stdout)["sha256"]
            path.unlink()  # the catalogue holds its own copy
        root_json = tmp / "root.json"
        shutil.copyfile(cat / "metadata" / "1.root.json", root_json)
        with nginx_serving(nginx, tmp, cat, "metadata/timestamp.json") as base:
            bench = Bench(tmp, base, root_json, sha256, imagectl)
            runs = measure(bench, args.rounds)
        summary = summarise(args.size_mib, args.rounds, base, runs, floor_mib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}")
    print(json.dumps(summary, indent=2) if args.json else report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
