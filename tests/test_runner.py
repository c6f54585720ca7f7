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


def _state(pid: int) -> str | None:
    """The process state letter of ``pid`` (``Z`` for a zombie), or None once its pid is free."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def test_a_started_program_is_not_reaped_before_its_group_is_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI run lost a real build: a boot test's stop() sent SIGTERM to the process group of a qemu it had already
    reaped, the kernel had given that number to the build's disk-image-create (pids wrap at 32768 here), and
    the build died. poll() and wait() now see the exit without reaping, so the zombie keeps the group's id
    reserved until stop() has signalled it; once stop() has reaped the leader, nothing is signalled again."""
    from imagectl import runner

    started = runner.start(["sh", "-c", "exit 3"], log_file=tmp_path / "log")
    assert started.wait(30) == 3 and started.poll() == 3 and started.returncode == 3
    assert _state(started.pid) == "Z"  # seen exiting, still holding its pid (and so its group's id)
    signalled: list[tuple[int, int]] = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        signalled.append((pgid, sig))
        real_killpg(pgid, sig)

    monkeypatch.setattr(runner.os, "killpg", killpg)
    assert started.stop() == 3
    assert signalled and all(pgid == started.pid for pgid, _sig in signalled)  # while the zombie held the id
    assert _state(started.pid) != "Z"  # reaped now (the number may already belong to someone else)
    signalled.clear()
    with started:  # leaving the block stops it again: idempotent, and no signal to a number that is free
        pass
    assert started.stop() == 3 and signalled == []
