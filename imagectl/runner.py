"""The one way imagectl runs an external program (disk-image-create, qemu, qemu-img, rpm2cpio, …).

Argument lists only (never a shell), the exact command logged as ``+ cmd`` with ``shlex.join``, a minimal
environment, stdin from /dev/null, output streamed to a log file (and to a line callback for live progress),
a missing program reported as "X not found", and a failure raised once as :class:`ToolError` naming the tool,
its exit code and the log file.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imagectl.errors import ToolError, ToolMissingError
from imagectl.urls import redact

__all__ = ["BASE_ENV", "Started", "ToolError", "ToolMissingError", "run", "start", "tool_version"]

log = logging.getLogger("imagectl.run")

# What a child gets by default; callers add exactly what the tool needs. HOME and PATH are needed by most tools;
# proxies are passed on so a site's package mirror behind a proxy keeps working.
_PASS = (
    "PATH",
    "HOME",
    "LANG",
    "TERM",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
BASE_ENV = {"LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class Result:
    returncode: int
    seconds: float
    output: str  # captured output when no log file was given (small commands only)


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(BASE_ENV)
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    check: bool = True,
    what: str | None = None,
) -> Result:
    """Run ``cmd``; stream its output to ``log_file`` (appending) and ``on_line``, or capture it if no log.

    ``env`` is added to a minimal environment, not to ours. Raises ToolMissingError if the program is not
    found, ToolError if it exits non-zero (with ``check``) or outlives ``timeout`` seconds (then it and its
    process group are killed).
    """
    argv = [os.fspath(c) for c in cmd]
    tool = what or Path(argv[0]).name
    full_env = minimal_env(env)
    if shutil.which(argv[0], path=full_env["PATH"]) is None:
        raise ToolMissingError(f"{argv[0]} not found", hint=f"install the package that provides {argv[0]}")
    line = redact("+ " + shlex.join(argv))
    log.info("%s", line)
    out: IO[str] | None = None
    captured: list[str] = []
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout

    def emit(text: str) -> None:
        text = redact(text)  # a tool may print the URL it was given, credentials and all
        if out is not None:
            out.write(text)
        else:
            captured.append(text)
        if on_line is not None:
            on_line(text.rstrip("\n"))

    try:
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            out = log_file.open("a", encoding="utf-8", errors="replace")
            out.write(line + "\n")
            if env:
                out.write(redact("+ env " + shlex.join(f"{k}={v}" for k, v in sorted(env.items()))) + "\n")
            out.flush()
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            _pump(proc, deadline, emit)
            rc = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            _kill(proc)
            raise
        finally:
            proc.stdout.close()
    except subprocess.TimeoutExpired:
        raise ToolError(
            f"{tool} did not finish within {timeout:.0f} s",
            log_file=log_file,
            hint=f"log: {log_file}" if log_file else None,
        ) from None
    except OSError as e:
        raise ToolError(f"cannot run {argv[0]}: {e.strerror}") from None
    finally:
        if out is not None:
            out.close()
    seconds = time.monotonic() - start
    if rc != 0 and check:
        tail = "" if log_file else " ".join("".join(captured).split()[-30:])
        where = f"; log: {log_file}" if log_file else (f": {tail}" if tail else "")
        raise ToolError(f"{tool} failed with exit code {rc}{where}", returncode=rc, log_file=log_file)
    return Result(rc, seconds, "".join(captured))


def _pump(proc: subprocess.Popen[bytes], deadline: float | None, emit: Callable[[str], None]) -> None:
    """Hand the child's output to ``emit`` line by line until it closes its end of the pipe.

    The pipe is watched with ``select`` against ``deadline``, so a child that prints nothing (or never finishes a
    line) still hits its timeout: a plain ``for line in proc.stdout`` would block in ``read`` until the child
    wrote, and check the clock only then. Raises subprocess.TimeoutExpired past the deadline.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            continue  # the loop head raises once the deadline has passed
        block = os.read(fd, 65536)
        pending += decoder.decode(block, final=not block)
        *lines, pending = pending.split("\n")
        for text in lines:
            emit(text + "\n")
        if not block:
            if pending:
                emit(pending)
            return


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child and everything it started (it leads its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def tool_version(argv: Sequence[str]) -> str:
    """First line of ``TOOL --version`` (or similar), or 'not found'; for build records."""
    try:
        res = run(argv, check=False, timeout=20)
    except ToolError:
        return "not found"
    first = res.output.strip().splitlines()
    return first[0].strip() if first else f"exit {res.returncode}"


class Started:
    """A program started by :func:`start` and still owned by us; use it as a context manager.

    It leads its own process group, so :meth:`stop` (also run on leaving the ``with`` block, whatever happens)
    ends it *and everything it started*. Its stdout and stderr go to the log file given to :func:`start`.

    The leader is never reaped before :meth:`stop` has signalled its group: :meth:`poll` and :meth:`wait` see it
    exit without reaping it (``waitid(WNOWAIT)``), so its zombie keeps the group's id reserved. Once a leader is
    reaped and its group empty, the kernel may hand that number to a new process group (pids wrap at 32768 here),
    and a late ``killpg`` would signal a stranger: that is how a boot test once SIGTERMed a build's
    disk-image-create that had been given the old qemu's pid.
    """

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str], log_file: Path | None) -> None:
        self._proc = proc
        self.argv = argv
        self.log_file = log_file
        self.started = time.monotonic()
        self._code: int | None = None  # seen exiting (the zombie may still be there)
        self._reaped = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._code

    def poll(self) -> int | None:
        """Exit code if it has exited (negative: killed by that signal), else None; never blocks, never reaps."""
        if self._code is None and not self._reaped:
            try:
                info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped elsewhere (it should not be): take Popen's word
                self._reaped = True
                self._code = self._proc.returncode
                return self._code
            if info is not None:
                self._code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return self._code

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for it to exit; its exit code, or None if it is still running."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(0.05, left))
        return self._code

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, then reap the leader; idempotent. Returns
        the exit code.

        The group is signalled even when the leader has already exited, so nothing it started is left behind; it
        is safe because the unreaped leader still holds the group's id. After the leader is reaped, never again.
        """
        if self._reaped:
            return self._code
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break  # the whole group is gone
            if sig == signal.SIGTERM:
                self.wait(grace)
        # After SIGKILL the leader dies promptly; reap it so no zombie is left.
        try:
            code = self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None
        self._reaped = True
        self._code = code
        return code

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str | None = None,
) -> Started:
    """Start ``cmd`` without waiting for it, for programs that are watched rather than awaited (qemu).

    Same rules as :func:`run`: argument list, ``+ cmd`` logged (and written to ``log_file``), minimal environment
    plus ``env``, stdin from /dev/null, ToolMissingError if the program is not found. stdout and stderr are
    appended to ``log_file`` (a file, not a pipe, so a chatty child can never block on a full pipe). The child
    leads a new session (so :meth:`Started.stop` reaches all it starts) and, on Linux, is sent SIGTERM if we
    die without stopping it (a killed ``imagectl`` must not leave a qemu spinning forever). Always use the result
    as a context manager, or call ``stop()`` in a ``finally``. (The kernel sends that SIGTERM when the *thread*
    that started the child ends, so start long-lived children from a thread that outlives them.)
    """
    argv = [os.fspath(c) for c in cmd]
    full_env = minimal_env(env)
    if shutil.which(argv[0], path=full_env["PATH"]) is None:
        raise ToolMissingError(f"{argv[0]} not found", hint=f"install the package that provides {argv[0]}")
    line = redact("+ " + shlex.join(argv))
    log.info("%s", line)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        out.write((line + "\n").encode())
        if env:
            out.write((redact("+ env " + shlex.join(f"{k}={v}" for k, v in sorted(env.items()))) + "\n").encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
            )
        except OSError as e:
            raise ToolError(f"cannot run {what or argv[0]}: {e.strerror}") from None
    return Started(proc, argv, log_file)


def _die_with_parent() -> Callable[[], None]:
    """A preexec function asking the kernel to SIGTERM the child when its parent dies (prctl PR_SET_PDEATHSIG).

    The libc function is looked up here, before fork, so the child only makes one plain call.
    """
    import ctypes  # only needed on this path

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def child() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return child
