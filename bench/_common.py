"""Helpers the bench scripts share: logging, the imagectl command, test data, Debian tools they compare against."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def imagectl_cmd() -> list[str]:
    """The imagectl console script of this interpreter (no pyenv shim in the timing), else ``python -m``."""
    script = Path(sys.executable).parent / "imagectl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "imagectl"]


def write_random(path: Path, size_mib: int) -> None:
    """``size_mib`` MiB of incompressible bytes: one random MiB, each copy stamped with its own counter."""
    block = bytearray(os.urandom(MIB))
    stamp = os.urandom(8)  # distinct files never share a MiB
    with open(path, "wb") as f:
        for i in range(size_mib):
            block[:16] = stamp + i.to_bytes(8, "little")
            f.write(block)


def ensure_tool(binary: str, packages: tuple[str, ...]) -> str:
    """Path of ``binary``, installing the first of ``packages`` apt-get can install if it is missing."""

    def find() -> str | None:
        sbin = f"/usr/sbin/{binary}"
        return shutil.which(binary) or (sbin if os.access(sbin, os.X_OK) else None)

    found = find()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"bench: {binary} is not installed and cannot be installed here (needs root and apt-get)")
    log(f"{binary} not found: installing {packages[0]} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
    for pkg in packages:
        if subprocess.run(["apt-get", "install", "-y", "-qq", pkg], env=env, stdout=sys.stderr).returncode == 0:
            break
    found = find()
    if not found:
        sys.exit(f"bench: apt-get could not install {binary}")
    return found
