"""Errors a user can cause or meet, split by cause.

Every user-facing failure is an :class:`ImagectlError` subclass carrying a one-line message, an optional hint and a
distinct exit code. The CLI prints ``imagectl: error: <message>`` (and ``hint: <hint>``) and exits with the code.
Anything that is not an ``ImagectlError`` is a bug and keeps its traceback.

Exit codes (stable; documented in README.md):

==== ===============================================================
code cause
==== ===============================================================
2    command-line usage (argparse)
3    invalid input: bad name, version, arch, URL, config value
4    not found: unknown image, version, arch or channel
5    revoked: the version was revoked (message carries the reason)
6    conflict: a version is immutable and exists with other bytes
7    keys: missing, unreadable, insecure or wrong signing keys
8    untrusted metadata: bad or missing signatures, tampered metadata
9    rollback: metadata older than what the client already trusts
10   expired metadata (freeze attack or a catalogue nobody re-signed)
11   image bytes do not match signed length/hash (tampered, endless data)
12   wrong root: the pinned root does not match the catalogue
13   download/network failure (connection, HTTP status, timeout)
14   local I/O: unwritable destination, disk full, unreadable file
15   catalogue verify found problems
16   catalogue is read-only (HTTP) or not a catalogue / already one
17   mix-and-match: metadata versions that do not belong together
20   an external tool failed (disk-image-create, qemu-img, …): message names tool, exit code, log
21   an external tool is not installed
22   this host cannot build that architecture (message names the kind of host that can)
23   boot test failed: no login prompt (or marker) before the deadline
24   protected channel: a version with an arch lacking a passing boot test (message names the arches)
25   not reproducible: two builds of the same inputs differ (``build --check-reproducible``; names the files)
==== ===============================================================
"""

from __future__ import annotations

__all__ = [
    "BootTestError",
    "CatalogueStateError",
    "ConflictError",
    "DownloadError",
    "ExpiredError",
    "ImageMismatchError",
    "ImagectlError",
    "InvalidInputError",
    "KeyProblemError",
    "LocalIOError",
    "MixAndMatchError",
    "NotFoundError",
    "NotReproducibleError",
    "ProtectedChannelError",
    "RevokedError",
    "RollbackError",
    "ToolError",
    "ToolMissingError",
    "UnsupportedHostError",
    "UntrustedMetadataError",
    "VerifyFailedError",
    "WrongRootError",
    "escape",
    "printable",
    "report",
]


def printable(text: str) -> str:
    """``text`` as one printable line: whitespace runs become one space, and any other control or format
    character (an escape sequence, a bidi override) is shown escaped (``\\x1b``), never sent to a terminal.

    Messages quote names, reasons and paths from catalogues and mirrors, which may be hostile."""
    return escape(" ".join(text.split()))


def escape(text: str) -> str:
    """``text`` with every non-printable character but the space shown escaped (``\\x1b``, ``\\n``)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class ImagectlError(Exception):
    """Root of every error a user can see; ``str()`` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        # One printable line, always: a message with a newline would break `imagectl: error:` parsing in CI logs.
        self.message = printable(message)
        super().__init__(self.message)
        self.hint = printable(hint) if hint is not None else None


def report(err: ImagectlError) -> int:
    """Print ``imagectl: error: MESSAGE`` (and ``hint: HINT``) on stderr; return the error's exit code.

    The one way every entry point (the CLI, and the helpers DIB elements run) shows a user error.
    """
    import sys

    print(f"imagectl: error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    return err.exit_code


class InvalidInputError(ImagectlError):
    exit_code = 3


class NotFoundError(ImagectlError):
    exit_code = 4


class RevokedError(ImagectlError):
    exit_code = 5


class ConflictError(ImagectlError):
    exit_code = 6


class KeyProblemError(ImagectlError):
    exit_code = 7


class UntrustedMetadataError(ImagectlError):
    exit_code = 8


class RollbackError(UntrustedMetadataError):
    exit_code = 9


class ExpiredError(UntrustedMetadataError):
    exit_code = 10


class ImageMismatchError(ImagectlError):
    exit_code = 11


class WrongRootError(UntrustedMetadataError):
    exit_code = 12


class DownloadError(ImagectlError):
    exit_code = 13


class LocalIOError(ImagectlError):
    exit_code = 14

    @classmethod
    def from_os(cls, action: str, path: object, exc: OSError) -> LocalIOError:
        """``cannot ACTION PATH: reason``, with ENOSPC/EDQUOT said plainly as 'disk full'."""
        import errno

        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        return cls(f"cannot {action} {path}: {reason}")


class VerifyFailedError(ImagectlError):
    exit_code = 15


class CatalogueStateError(ImagectlError):
    exit_code = 16


class MixAndMatchError(UntrustedMetadataError):
    exit_code = 17


class ToolError(ImagectlError):
    """An external program failed; carries its exit code and log file."""

    exit_code = 20

    def __init__(
        self, message: str, hint: str | None = None, *, returncode: int | None = None, log_file: object = None
    ) -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.log_file = log_file


class ToolMissingError(ToolError):
    exit_code = 21


class UnsupportedHostError(ImagectlError):
    exit_code = 22


class BootTestError(ImagectlError):
    exit_code = 23


class ProtectedChannelError(ImagectlError):
    """A promote or publish into a protected channel of a version some arch of which has no passing boot test."""

    exit_code = 24


class NotReproducibleError(ImagectlError):
    """``build --check-reproducible``: two builds of the same recipe, DIB and epoch gave different bytes."""

    exit_code = 25
