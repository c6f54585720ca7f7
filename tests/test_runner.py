"""The one subprocess wrapper (imagectl/runner.py): timeouts hold even for a silent child (issue 7, item 12)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imagectl.errors import ToolError, ToolMissingError
from imagectl.runner import run


def test_timeout_holds_for_a_child_that_prints_nothing() -> None:
    """Finding: run(["sleep", "4"], timeout=1) returned 0 after 4 s: the clock was read only when a line came."""
    t0 = time.monotonic()
    with pytest.raises(ToolError, match="did not finish within 1 s"):
        run(["sleep", "120"], timeout=1)
    assert time.monotonic() - t0 < 60  # long before the child would have ended (60 s: generous when loaded)


def test_timeout_holds_for_a_child_that_never_ends_a_line(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="did not finish within 1 s"):
        run(["sh", "-c", "printf partial; sleep 5"], timeout=1, log_file=tmp_path / "log")
    assert (tmp_path / "log").read_text().startswith("+ sh -c")  # the command is logged before it runs


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(ToolError):
        run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=1)
    pid = int(pidfile.read_text())
    for _ in range(50):  # the kill is delivered at once; reaping by init may take a moment
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild outlived the timeout")


def test_output_lines_and_partial_last_line_are_kept() -> None:
    lines: list[str] = []
    res = run(["sh", "-c", "echo one; echo two; printf three"], on_line=lines.append)
    assert lines == ["one", "two", "three"] and res.output == "one\ntwo\nthree"


def test_invalid_utf8_output_is_replaced_not_fatal() -> None:
    res = run(["printf", "\\377\\376ok\\n"])
    assert res.output.endswith("ok\n")


def test_failure_and_missing_tool() -> None:
    with pytest.raises(ToolError, match="failed with exit code 3") as e:
        run(["sh", "-c", "exit 3"])
    assert e.value.returncode == 3 and e.value.exit_code == 20
    with pytest.raises(ToolMissingError, match="no-such-tool-here not found"):
        run(["no-such-tool-here"])
