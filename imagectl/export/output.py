"""Where exports land: a set of files written all-or-nothing, below a directory, never through a symlink.

Every file is first written in full to a temp file beside its final name (``O_EXCL | O_NOFOLLOW`` relative to the
directory's descriptor, fsynced); only when all of them are written are they renamed into place, in the order
given (callers put the file that refers to the others last, as TUF does with ``timestamp.json``). A failure before
the renames leaves the previous export untouched and no temp file behind. A symlink, or anything but a regular
file, where an output goes is refused (exit 14): exports are served to others, and a planted link must not turn a
refresh into a write elsewhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagectl.errors import LocalIOError
from imagectl.fsio import AtomicFile, Beneath, SymlinkRefusedError, describe_mode

__all__ = ["check_output_dir", "check_output_file", "write_files"]


def _check(path: Path, is_kind: Callable[[int], bool], what: str) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return  # made by the write
    except OSError as e:
        raise LocalIOError.from_os("open", path, e) from None
    if not is_kind(st.st_mode):
        raise SymlinkRefusedError(f"refusing output {path}: it is {describe_mode(st.st_mode)}, not {what}")


def check_output_dir(path: Path) -> None:
    """Refuse an output directory that is a symlink or not a directory (missing is fine: it will be made)."""
    _check(path, stat.S_ISDIR, "a directory")


def check_output_file(path: Path) -> None:
    """Refuse an output file that is a symlink, a directory or another non-regular file (missing is fine)."""
    _check(path, stat.S_ISREG, "a regular file")


def _existing_ok(tree: Beneath, d: int, rel: str, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise SymlinkRefusedError(f"refusing output {tree.root}/{rel}: it is {describe_mode(st.st_mode)}")


def write_files(root: Path, files: Mapping[str, bytes], *, remove: Sequence[str] = (), mode: int = 0o644) -> None:
    """Write ``files`` (``/``-separated paths below ``root`` -> bytes) all-or-nothing, then remove the regular
    files named in ``remove`` (stale outputs of an earlier run; missing is fine).

    Raises SymlinkRefusedError (exit 14) for a symlink or non-file on the way or at a destination, LocalIOError
    (disk full said plainly) for any other failure; in both cases nothing was renamed into place.
    """
    check_output_dir(root)
    tree = Beneath(root)
    staged: list[tuple[str, str, str, AtomicFile]] = []  # (parent, rel, final name, sealed temp file)
    try:
        for rel, data in files.items():
            parent, name = tree.split(rel)
            with tree.dir(parent, create=True) as d:
                _existing_ok(tree, d, rel, name)
                temp = AtomicFile(root / rel, mode=mode, dir_fd=d, name=name)
                staged.append((parent, rel, name, temp))
                temp.write(data)
                temp.seal()
        for parent, rel, name, temp in staged:
            with tree.dir(parent) as d:
                _existing_ok(tree, d, rel, name)
            temp.commit()
    finally:
        for *_, temp in staged:
            temp.discard()
    for rel in remove:
        parent, name = tree.split(rel)
        try:
            with tree.dir(parent) as d:
                _existing_ok(tree, d, rel, name)
                os.unlink(name, dir_fd=d)
        except FileNotFoundError:
            continue
        except SymlinkRefusedError:
            raise
        except OSError as e:
            raise LocalIOError.from_os("remove", root / rel, e) from None
