"""Put a rendered site in place: built in a temp directory beside the destination, then swapped in.

A web server serving the destination sees the old site or the new one, never a half-written one; a failure
before the swap leaves the old site as it was. Files are not fsynced: a site is derived data, rendered again from
the catalogue at any time, and a thousand fsyncs cost seconds on a busy disk (bench/site.py); after a power cut
the next render puts it right. The destination must be new, empty, or a site this module wrote
(it carries :data:`MARKER`): a symlink, a file, or a directory of anything else is refused, so a typo in ``-o``
can never wipe someone's directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imagectl.errors import LocalIOError
from imagectl.fsio import describe_mode

__all__ = ["GENERATOR", "MARKER", "existing_site", "site_lock", "write_site"]

MARKER = ".imagectl-site"  # JSON: {"generator": GENERATOR, "public_url": …}
GENERATOR = "imagectl catalogue site"
_MARKER_MAX = 4096  # bytes
_HINT = "give -o/--site a new or empty directory, or one `imagectl catalogue site` wrote"


def _empty(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _marker(dest: Path) -> dict[str, Any] | None:
    """The marker of a site directory, or None when it has none (or one that is not ours)."""
    try:
        fd = os.open(dest / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(_MARKER_MAX + 1)
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == GENERATOR else None


def existing_site(dest: Path) -> dict[str, Any] | None:
    """What is at ``dest`` now: None (nothing, or an empty directory) or the marker of a site written here.

    Raises LocalIOError (exit 14) for a symlink, anything but a directory, or a non-empty directory that is not
    a site."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LocalIOError.from_os("inspect the site directory", dest, e) from None
    if stat.S_ISLNK(st.st_mode):
        raise LocalIOError(f"refusing to write the site to {dest}: it is a symbolic link", hint=_HINT)
    if not stat.S_ISDIR(st.st_mode):
        raise LocalIOError(f"refusing to write the site to {dest}: it is {describe_mode(st.st_mode)}", hint=_HINT)
    marker = _marker(dest)
    if marker is None:
        try:
            empty = _empty(dest)
        except OSError as e:
            raise LocalIOError.from_os("list the site directory", dest, e) from None
        if not empty:
            raise LocalIOError(
                f"refusing to replace {dest}: a non-empty directory that `imagectl catalogue site` did not write "
                f"(no {MARKER})",
                hint=_HINT,
            )
    return marker


@contextlib.contextmanager
def site_lock(dest: Path) -> Iterator[None]:
    """Held while a site is read, rendered and swapped in: two writers of one site take turns, so the site that
    stays is the one rendered last (from the newest metadata). An ``flock`` on the parent directory."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LocalIOError.from_os("create the directory of", dest, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fill(tmp: Path, files: Mapping[str, bytes], marker: dict[str, Any]) -> None:
    """Write ``files`` (relative paths of plain components) into the fresh directory ``tmp``, marker first, so a
    directory left by a killed run is recognisably ours."""
    items = [(MARKER, (json.dumps(marker, sort_keys=True) + "\n").encode()), *sorted(files.items())]
    for rel, data in items:
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise LocalIOError(f"refusing to write a site file with the path {rel!r}")
        path = tmp.joinpath(*parts)
        path.parent.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp made it 0700; a web server must read the site


def _remove_ours(path: Path) -> None:
    """Remove a directory this module made (a previous site after the swap, or a temp dir): only if it is a site
    or empty, never through a symlink."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and (_marker(path) is not None or _empty(path)):
            shutil.rmtree(path)


def write_site(files: Mapping[str, bytes], dest: Path, marker: dict[str, Any]) -> None:
    """Make ``dest`` hold exactly ``files`` (and the marker), replacing the site there in one rename.

    Call under :func:`site_lock`. Raises LocalIOError for a destination :func:`existing_site` refuses and for any
    failure to write (disk full said plainly); then ``dest`` is as it was.
    """
    dest = dest.absolute()
    existing_site(dest)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by a run that was killed
        _remove_ours(stale)
    try:
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    except OSError as e:
        raise LocalIOError.from_os("write the site next to", dest, e) from None
    try:
        _fill(tmp, files, {**marker, "generator": GENERATOR})
        if existing_site(dest) is None and not dest.exists():
            os.rename(tmp, dest)
        elif not _exchange(tmp, dest):
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
            os.rename(dest, old)  # replaces the empty ``old``; dest is absent until the next rename
            os.rename(tmp, dest)
            tmp = old
    except OSError as e:
        raise LocalIOError.from_os("write the site to", dest, e) from None
    finally:
        _remove_ours(tmp)  # the old site after a swap, or the unfinished new one
