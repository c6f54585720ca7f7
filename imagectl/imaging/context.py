"""``imagectl context``: a node's context as a small ISO9660 disk labelled CONTEXT, for ``imagectl-context``.

One worker image becomes many nodes: what differs between them (hostname, SSH keys, batch server, anything a
site script wants) is written to ``context.sh`` on a CD-ROM image the deployer attaches, the convention of
OpenNebula's contextualisation. ``context.sh`` holds ``KEY='value'`` lines with ``'`` written as ``'\\''``; the
image's ``imagectl-context`` parses them (never executes the file) at every boot.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from imagectl.errors import InvalidInputError
from imagectl.fsio import read_regular, replacing
from imagectl.runner import run

__all__ = ["KNOWN_KEYS", "context_script", "make_context_iso", "parse_assignments"]

KNOWN_KEYS = (
    "HOSTNAME",
    "SSH_PUBLIC_KEY",
    "USERNAME",
    "BATCH_SERVER",
    "BATCH_CLUSTER",
    "BATCH_START",
    "NTP_SERVERS",
    "MUNGE_KEY",
)
_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
VALUE_MAX = 64 << 10  # characters of one value (a few SSH keys, not a file system)
LABEL = "CONTEXT"  # the volume label imagectl-context (and OpenNebula's one-context) looks for


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments (``KEY=@FILE`` reads the value from a file, e.g. an SSH public key) as a dict.

    Raises InvalidInputError (exit 3) for a malformed key, a value with control characters other than newlines
    and tabs, a value over 64 KiB, or a file that is not a small regular file.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise InvalidInputError(
                f"context takes KEY=VALUE with KEY of A-Z 0-9 _ (e.g. HOSTNAME=node1), got {item!r}"
            )
        if value.startswith("@"):
            data = read_regular(Path(value[1:]).expanduser(), VALUE_MAX, what=f"{key} file", error=InvalidInputError)
            try:
                value = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InvalidInputError(f"{key} file {value[1:]} is not UTF-8 text") from None
        if len(value) > VALUE_MAX:
            raise InvalidInputError(f"{key}: value longer than {VALUE_MAX} characters")
        if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in value):
            raise InvalidInputError(f"{key}: value contains control characters")
        if key in out:
            raise InvalidInputError(f"{key} is given twice")
        out[key] = value
    if not out:
        raise InvalidInputError("context needs at least one KEY=VALUE", hint=f"keys: {', '.join(KNOWN_KEYS)}")
    return out


def context_script(values: dict[str, str]) -> str:
    """The text of ``context.sh``: one ``KEY='value'`` assignment per key, ``'`` written as ``'\\''``."""
    lines = ["# Context of one node, made by imagectl context; read by imagectl-context at boot."]
    lines += [f"{k}='{v.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def make_context_iso(values: dict[str, str], out: Path) -> Path:
    """Write an ISO9660 image labelled CONTEXT holding ``context.sh`` to ``out`` (atomically: the path holds the
    whole image or what it held before). Raises ToolMissingError without xorriso, ToolError if it fails,
    LocalIOError if ``out`` cannot be written."""
    with tempfile.TemporaryDirectory(prefix="imagectl-context-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        (tree / "context.sh").write_text(context_script(values), encoding="utf-8")
        with replacing(out, mode=0o600, suffix=".iso") as dest:  # it may hold keys a site wants kept private
            run(
                ["xorriso", "-as", "mkisofs", "-quiet", "-V", LABEL, "-J", "-R", "-o", dest, str(tree)],
                what="xorriso (making the context ISO)",
            )
    return out
