"""Extended attributes (POSIX ACLs, file capabilities) of a cached Debian base system, kept across its tarball.

The package cache saves the base system a cold build made (root.d/76 of the ``imagectl-package-cache`` element)
and later builds untar it where diskimage-builder's ``debootstrap`` element would have bootstrapped. DIB untars
with plain ``tar -xzf``, which restores no extended attributes, so a build from the cached base lost what the base
carries in them: the ACLs systemd puts on ``/var/log/journal`` (group ``adm`` may read the journal) and any file
capability a base package sets (``security.capability``). The image differed from a cold build's (found by
``build --check-reproducible`` of a cold build against a warm one) and behaved differently.

So the base keeps them beside its files: :func:`dump` writes every extended attribute under the root (regular files
and directories; symlinks carry none that matter) into ``FILE`` inside the tree before it is archived, and, after
DIB has untarred a cached base, :func:`restore` puts them back and removes the file (the element's root.d/09).

The file comes from imagectl's own cache (verified by SHA-256 before use), but it is still read as input: at most
:data:`MAX_BYTES`, each path relative and made of plain components, each target reached without following a
symlink out of the root, each value at most 64 KiB.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FILE", "MAX_BYTES", "dump", "main", "restore"]

FILE = ".imagectl-base-xattrs.json"  # at the top of the saved tree, removed again once restored
MAX_BYTES = 16 << 20  # the dump of a base system is a few hundred bytes; anything near this is not ours
_VALUE_MAX = 64 << 10  # bytes: an xattr value on ext4 fits in a block


def dump(root: Path) -> dict[str, dict[str, str]]:
    """``relative path -> {name: base64 value}`` for every regular file and directory under ``root`` that has
    extended attributes (the directory walk never follows a symlink)."""
    out: dict[str, dict[str, str]] = {}
    for here, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(here, name)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue
            names = os.listxattr(path, follow_symlinks=False)
            if names:
                rel = os.path.relpath(path, root)
                out[rel] = {
                    n: base64.b64encode(os.getxattr(path, n, follow_symlinks=False)).decode() for n in sorted(names)
                }
    return dict(sorted(out.items()))


def _target(root: Path, rel: object) -> str | None:
    """The path ``rel`` names below ``root``, or None when it is not a plain relative path whose every directory is
    a real directory (no symlink) below ``root``, or when it does not exist there as a file or directory."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    path = str(root)
    for p in parts:
        path = os.path.join(path, p)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
    return path if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None


def restore(root: Path, data: bytes) -> tuple[int, int]:
    """Set the extended attributes ``data`` (a :func:`dump`, as JSON) names on the files under ``root``. Returns
    (attributes set, entries skipped: a path that is not plainly below ``root``, a value that is not what a dump
    holds). Raises ValueError for data that is not such a dump at all."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"{len(data)} bytes, more than the {MAX_BYTES} a dump may have")
    entries = json.loads(data)
    if not isinstance(entries, dict):
        raise ValueError("not a JSON object")
    done = skipped = 0
    for rel, attrs in entries.items():
        path = _target(root, rel)
        if path is None or not isinstance(attrs, dict):
            skipped += 1
            continue
        for name, value in attrs.items():
            try:
                raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
            except ValueError:
                raw = None
            if not isinstance(name, str) or "." not in name or raw is None or len(raw) > _VALUE_MAX:
                skipped += 1
                continue
            os.setxattr(path, name, raw, follow_symlinks=False)
            done += 1
    return done, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imagectl.imaging.xattrs dump|restore ROOT``: what the element's scripts run (as root)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("dump", "restore"):
        print("usage: python -m imagectl.imaging.xattrs dump|restore ROOT", file=sys.stderr)
        return 2
    root = Path(args[1])
    file = root / FILE
    if args[0] == "dump":
        entries = dump(root)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, sort_keys=True)
        print(f"imagectl-package-cache: extended attributes of {len(entries)} paths kept with the base system")
        return 0
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        print("imagectl-package-cache: the cached base system keeps no extended attributes (an older cache entry)")
        return 0
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    os.unlink(file)
    try:
        done, skipped = restore(root, data)
    except ValueError as e:
        print(f"imagectl: error: {FILE} of the cached base system is not readable: {e}", file=sys.stderr)
        return 1
    print(f"imagectl-package-cache: {done} extended attributes restored" + (f", {skipped} skipped" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
