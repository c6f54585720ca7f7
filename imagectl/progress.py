"""A one-line progress bar on a terminal, fed by the bytes actually transferred; silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "human_size"]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class Progress:
    def __init__(self, label: str, total: int, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label, self.total, self.done = label, total, 0
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.2 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-6)
            pct = 100 * self.done / self.total if self.total else 100.0
            width = 30
            fill = int(width * pct / 100)
            self.stream.write(
                f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}% "
                f"{human_size(self.done)}/{human_size(self.total)} {human_size(rate)}/s "
            )
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
