"""Unpack one .rpm's payload under a target root that must never be left: the code that checks a name is the code
that writes it.

Build hosts run this as root against package mirrors they do not control, so every member of the cpio payload is
checked against the package's (signed) header and then created relative to an open directory file descriptor of
the target, never following a symlink on the way (``O_NOFOLLOW`` on every component, ``dir_fd`` on every call).
Nothing is handed to ``cpio``: a program that reads names its own way (``./lnk\\0/x`` is ``./lnk`` to C) is how
the old check-then-cpio unpacking could be made to write outside the target.

Two passes over the decompressed payload (a private temporary file):

1. *Check*, writing nothing: every member's name, type, mode, size, symlink target and content digest against
   the header's file list, and the path of its directory resolved against the target as it is plus what the
   archive itself creates before it. Any refusal raises :class:`UnsafeArchiveError` and leaves the target as it
   was.
2. *Write*: directories with mkdirat (an existing one is kept), regular files replaced (unlink, then
   ``O_CREAT|O_EXCL|O_NOFOLLOW``) as ``cpio -u`` would, symlinks with symlinkat, hard links with linkat; mode
   from the header (setuid/setgid only as the header declares), mtime, and ownership when running as root.
   Directory metadata is applied last, deepest first, so a read-only directory can still be filled.

Symlinks on the way to a member (chosen policy): a *relative* symlink that the target or the archive holds is
resolved inside the target, as rpm does (SLC packages install through ``/etc/init.d -> rc.d/init.d``); ``..``
never climbs above the target root and at most 40 links are followed. A path that goes through an *absolute*
symlink is refused: what ``/etc`` means depends on whose root, and a refused build that names the package and the
member is better than files placed where nobody looked. The last component of a path is never followed.

Refused (one line naming the package and the member): NUL bytes in a name, ``..`` components, absolute names
(``./`` is normal, ``/`` is not), components over 255 bytes, duplicates, members absent from the header's file
list or declared there as ``%ghost``, a type that differs from the header's, device nodes, FIFOs and sockets
(never needed in a seed; stage 2's rpm creates what later packages hold), setuid/setgid/sticky bits the header
does not declare, sizes, digests or symlink targets that differ from the header's, hard-link groups whose data is
not carried by their last member, and paths through symlinks that leave the root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagectl.errors import ImagectlError, LocalIOError
from imagectl.imaging.slc.rpmfile import (
    FILE_GHOST,
    MAX_NAME,
    CpioMember,
    FileEntry,
    cpio_members,
    digest_algo,
    file_entries,
    payload_limit,
    read_data,
    read_layout,
    write_payload,
)

__all__ = ["MAX_LINK_HOPS", "UnsafeArchiveError", "extract_rpm"]

MAX_LINK_HOPS = 40  # symlinks followed while resolving one path, as the kernel's MAXSYMLINKS
_NAME_MAX = 255  # bytes in one path component
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}
_REFUSED_KINDS = {
    stat.S_IFCHR: "a character device node",
    stat.S_IFBLK: "a block device node",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


class UnsafeArchiveError(ImagectlError):
    """A package's archive would write outside the target root, or holds what its header does not declare."""

    exit_code = 11  # the package's bytes are not acceptable, as for a checksum mismatch


class _Refused(Exception):
    """Raised below the member loop; turned into UnsafeArchiveError naming the package and the member (``member``
    when the culprit is not the member being looked at)."""

    def __init__(self, reason: str, member: CpioMember | None = None) -> None:
        super().__init__(reason)
        self.member = member


@dataclass(frozen=True)
class _Node:
    kind: str  # "dir", "link", "other", "missing"
    target: str = ""


_DIR, _MISSING, _OTHER = _Node("dir"), _Node("missing"), _Node("other")


@dataclass
class _Step:
    """What pass 2 does for one member."""

    member: CpioMember
    entry: FileEntry
    parent: tuple[str, ...]  # the member's directory, resolved: only real directories below the root
    leaf: str
    skip: bool = False  # the root itself, a directory kept as an existing symlink, or a deferred hard link
    links: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # hard links made to this file


class _Dirs:
    """Open directories below ``root_fd``, one chain at a time: the previous chain's common prefix is reused (rpm
    payloads are sorted by path). Every component is opened with O_NOFOLLOW; a missing one is created (0755)
    when ``create`` is set, else :meth:`open` returns None."""

    def __init__(self, root_fd: int, create: bool) -> None:
        self.root_fd = root_fd
        self.create = create
        self._names: list[str] = []
        self._fds: list[int] = []

    def open(self, parts: tuple[str, ...]) -> int | None:
        common = 0
        while common < min(len(parts), len(self._names)) and parts[common] == self._names[common]:
            common += 1
        while len(self._fds) > common:
            os.close(self._fds.pop())
            self._names.pop()
        for comp in parts[common:]:
            parent = self._fds[-1] if self._fds else self.root_fd
            try:
                fd = os.open(comp, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not self.create:
                    return None
                os.mkdir(comp, 0o755, dir_fd=parent)
                fd = os.open(comp, _DIR_FLAGS, dir_fd=parent)
                os.fchmod(fd, 0o755)  # not the umask's idea
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _Refused(f"/{'/'.join(parts)} changed while it was unpacked (not a directory now)") from None
                raise
            self._fds.append(fd)
            self._names.append(comp)
        return self._fds[-1] if parts else self.root_fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
        self._names.clear()


class _View:
    """Pass 1's picture of the target: the tree as it is (read through :class:`_Dirs`, never following a link)
    with what the archive has created so far on top."""

    def __init__(self, root_fd: int) -> None:
        self.dirs = _Dirs(root_fd, create=False)
        self.overlay: dict[tuple[str, ...], _Node] = {}
        self.fresh: set[tuple[str, ...]] = set()  # directories the archive creates: no real children

    def lookup(self, path: tuple[str, ...]) -> _Node:
        if path in self.overlay:
            return self.overlay[path]
        if path[:-1] in self.fresh:
            return _MISSING
        fd = self.dirs.open(path[:-1])
        if fd is None:
            return _MISSING
        try:
            st = os.lstat(path[-1], dir_fd=fd)
        except FileNotFoundError:
            return _MISSING
        if stat.S_ISDIR(st.st_mode):
            return _DIR
        if stat.S_ISLNK(st.st_mode):
            return _Node("link", os.readlink(path[-1], dir_fd=fd))
        return _OTHER

    def make_dir(self, path: tuple[str, ...]) -> None:
        self.overlay[path] = _DIR
        self.fresh.add(path)

    def replace(self, path: tuple[str, ...], node: _Node) -> None:
        """A file or symlink member takes ``path``; an empty directory there goes, a non-empty one is refused."""
        if self.lookup(path).kind == "dir":
            if any(p[: len(path)] == path and len(p) > len(path) for p in self.overlay):
                raise _Refused("it would replace a directory the archive has filled")
            if path not in self.fresh:
                fd = self.dirs.open(path)
                if fd is None or os.listdir(fd):  # noqa: PTH208 - a descriptor, not a path
                    raise _Refused(f"it would replace the non-empty directory /{'/'.join(path)}")
        self.fresh.discard(path)
        self.overlay[path] = node

    def close(self) -> None:
        self.dirs.close()


def _resolve(view: _View, parts: Iterable[str], *, create: bool) -> tuple[str, ...] | None:
    """The directory ``parts`` names, as real directories below the root, following relative symlinks inside the
    root (see the module docstring). Missing directories are created in ``view`` when ``create``, else None is
    returned. Raises _Refused for an absolute symlink on the way, ``..`` above the root, a non-directory on the
    way, or more than MAX_LINK_HOPS links."""
    cur: list[str] = []
    todo = list(reversed(list(parts)))
    hops = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not cur:
                raise _Refused("a symlink on its path climbs above the target root")
            cur.pop()
            continue
        path = (*cur, comp)
        node = view.lookup(path)
        if node.kind == "dir":
            cur.append(comp)
        elif node.kind == "missing":
            if not create:
                return None
            view.make_dir(path)
            cur.append(comp)
        elif node.kind == "link":
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _Refused(f"more than {MAX_LINK_HOPS} symlinks on its path")
            if node.target.startswith("/"):
                raise _Refused(
                    f"its path goes through the symlink /{'/'.join(path)} -> {node.target}: imagectl follows "
                    "only relative symlinks inside the target"
                )
            todo.extend(reversed(node.target.split("/")))
        else:
            raise _Refused(f"/{'/'.join(path)} on its path is not a directory")
    return tuple(cur)


def _split(m: CpioMember) -> tuple[str, ...]:
    """The member's path components below the root; raises _Refused for a name that is not a plain relative
    path (the one canonical spelling rpm writes: ``./`` + the header's name)."""
    if b"\0" in m.raw_name:
        raise _Refused("its name contains a NUL byte")
    name = m.name
    if name.startswith("/"):
        raise _Refused("it is an absolute path")
    rest = name[2:] if name.startswith("./") else ("" if name == "." else name)
    if not rest:
        return ()
    parts = tuple(rest.split("/"))
    if ".." in parts:
        raise _Refused("it has a '..' component")
    if any(p in ("", ".") for p in parts):
        raise _Refused("it has an empty or '.' component")
    if any(len(os.fsencode(p)) > _NAME_MAX for p in parts):
        raise _Refused(f"a component is longer than {_NAME_MAX} bytes")
    return parts


def _check_kind(m: CpioMember, e: FileEntry) -> int:
    """The member's file type, if it is one we create and the header agrees; raises _Refused otherwise."""
    kind = stat.S_IFMT(m.mode)
    if kind in _REFUSED_KINDS:
        raise _Refused(f"it is {_REFUSED_KINDS[kind]}")
    if kind not in _KINDS:
        raise _Refused(f"unknown file type {kind:o}")
    if stat.S_IFMT(e.mode) != kind:
        declared = _KINDS.get(stat.S_IFMT(e.mode), f"type {stat.S_IFMT(e.mode):o}")
        raise _Refused(f"it is a {_KINDS[kind]} in the archive but a {declared} in the header")
    extra = m.mode & 0o7000 & ~e.mode
    if extra:
        raise _Refused(
            f"its mode {m.mode & 0o7777:04o} sets setuid/setgid/sticky bits the header does not declare "
            f"(header: {e.mode & 0o7777:04o})"
        )
    return kind


def _check_data(m: CpioMember, e: FileEntry, archive: IO[bytes], algo: str, what: str) -> None:
    if m.size != e.size:
        raise _Refused(f"its size {m.size} differs from the header's {e.size}")
    if e.digest:
        h = hashlib.new(algo)
        for chunk in read_data(archive, m, what):
            h.update(chunk)
        if h.hexdigest() != e.digest:
            raise _Refused(f"its content does not match the header's {algo} digest")


def _check_link(m: CpioMember, e: FileEntry) -> None:
    target = m.link or ""
    # PATH_MAX counts the terminating NUL: the kernel takes at most MAX_NAME - 1 bytes (ENAMETOOLONG in pass 2)
    if not target or "\0" in target or len(os.fsencode(target)) >= MAX_NAME:
        raise _Refused("its symlink target is empty, too long or contains a NUL byte")
    if target != e.link:
        raise _Refused(f"its symlink target {target!r} differs from the header's {e.link!r}")


def _plan(
    members: list[CpioMember], files: dict[str, FileEntry], archive: IO[bytes], root_fd: int, what: str, algo: str
) -> list[_Step]:
    """Pass 1: check every member and resolve where it goes; writes nothing. Raises UnsafeArchiveError."""
    view = _View(root_fd)
    steps: list[_Step] = []
    seen: set[str] = set()
    placed: dict[tuple[str, ...], CpioMember] = {}  # where each member lands, after symlinks: no two may share one
    groups: dict[tuple[int, int, int], list[_Step]] = {}
    m: CpioMember | None = None
    try:
        for m in members:
            parts = _split(m)
            rel = "/".join(parts)
            if rel in seen:
                raise _Refused("it appears twice in the archive")
            seen.add(rel)
            entry = files.get(rel)
            if entry is None:
                raise _Refused("it is not in the package header's file list")
            if entry.flags & FILE_GHOST:
                raise _Refused("the header declares it %ghost (never in the payload)")
            kind = _check_kind(m, entry)
            if not parts:
                if kind != stat.S_IFDIR:
                    raise _Refused("the target root itself can only be a directory")
                steps.append(_Step(m, entry, (), "", skip=True))  # the root's own metadata is the caller's
                continue
            parent = _resolve(view, parts[:-1], create=True)
            assert parent is not None
            step = _Step(m, entry, parent, parts[-1])
            path = (*parent, parts[-1])
            if kind == stat.S_IFDIR:
                if m.size:
                    raise _Refused("a directory with data")
                _plan_dir(view, step, path)
            elif kind == stat.S_IFLNK:
                _check_link(m, entry)
                view.replace(path, _Node("link", m.link or ""))
            else:
                view.replace(path, _OTHER)
                if m.nlink > 1:
                    groups.setdefault((*m.dev, m.ino), []).append(step)
                else:
                    _check_data(m, entry, archive, algo, what)
            earlier = placed.setdefault(path, m)
            if earlier is not m and not (kind == stat.S_IFDIR and stat.S_IFMT(earlier.mode) == stat.S_IFDIR):
                raise _Refused(f"it lands on /{'/'.join(path)}, where the earlier member {earlier.name!r} went")
            steps.append(step)
        for group in groups.values():
            m = group[-1].member  # the carrier, unless the refusal names another member
            _plan_hardlinks(group, archive, algo, what)
    except _Refused as e:
        raise _unsafe(what, e.member or m, e) from None
    finally:
        view.close()
    return steps


def _plan_dir(view: _View, step: _Step, path: tuple[str, ...]) -> None:
    node = view.lookup(path)
    if node.kind == "dir":
        return  # an existing directory is kept (its metadata is set in pass 2)
    # rpm keeps a symlink where the package has a directory if it leads to one; so do we, inside the root. One
    # that leads nowhere yet is replaced by the directory.
    if node.kind == "link" and _resolve(view, path, create=False) is not None:
        step.skip = True
        return
    view.replace(path, _DIR)
    view.fresh.add(path)


def _plan_hardlinks(group: list[_Step], archive: IO[bytes], algo: str, what: str) -> None:
    """A newc hard-link group (same device and inode): the last member carries the data, the others are empty
    and become links to it, made once it is written: a link is only ever made to a file of this archive."""
    carrier = group[-1]
    m = carrier.member
    if len(group) > m.nlink:
        raise _Refused(f"its hard-link group has {len(group)} members but a link count of {m.nlink}", m)
    for s in group[:-1]:
        if s.member.size:
            raise _Refused("it is a hard link that carries data but is not the last of its group", s.member)
        if (s.entry.size, s.entry.digest) != (carrier.entry.size, carrier.entry.digest):
            raise _Refused(f"the header does not declare it the same file as its hard link {m.name!r}", s.member)
        s.skip = True
        carrier.links.append((s.parent, s.leaf))
    if m.size == 0 and carrier.entry.size:
        raise _Refused(
            f"no member of its hard-link group carries the {carrier.entry.size} bytes the header declares", m
        )
    _check_data(m, carrier.entry, archive, algo, what)


def _unsafe(what: str, member: CpioMember | None, reason: _Refused) -> UnsafeArchiveError:
    name = repr(member.name) if member is not None else "?"
    return UnsafeArchiveError(f"{what}: refusing archive member {name}: {reason}")


def _owner(step: _Step) -> tuple[int, int]:
    """Numeric owner: root when the header names root (whatever the cpio header says), else the cpio's ids."""
    e, m = step.entry, step.member
    return (0 if e.user == "root" else m.uid), (0 if e.group == "root" else m.gid)


def _mtime_ns(step: _Step) -> int:
    return (step.entry.mtime if step.entry.mtime is not None else step.member.mtime) * 1_000_000_000


def _remove(name: str, dir_fd: int) -> None:
    """Remove whatever is at ``name`` (never following it); an empty directory goes too."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        os.rmdir(name, dir_fd=dir_fd)


def _apply(steps: list[_Step], archive: IO[bytes], root_fd: int, what: str) -> None:
    """Pass 2: create every member as planned."""
    dirs = _Dirs(root_fd, create=True)
    as_root = os.geteuid() == 0
    made_dirs: list[_Step] = []
    step: _Step | None = None
    try:
        for step in steps:
            if step.skip:
                continue
            m = step.member
            pfd = dirs.open(step.parent)
            assert pfd is not None
            kind = stat.S_IFMT(m.mode)
            if kind == stat.S_IFDIR:
                try:
                    os.mkdir(step.leaf, 0o700, dir_fd=pfd)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(step.leaf, dir_fd=pfd).st_mode):
                        _remove(step.leaf, pfd)
                        os.mkdir(step.leaf, 0o700, dir_fd=pfd)
                made_dirs.append(step)
            elif kind == stat.S_IFLNK:
                _remove(step.leaf, pfd)
                os.symlink(m.link or "", step.leaf, dir_fd=pfd)
                if as_root:
                    os.chown(step.leaf, *_owner(step), dir_fd=pfd, follow_symlinks=False)
                t = _mtime_ns(step)
                os.utime(step.leaf, ns=(t, t), dir_fd=pfd, follow_symlinks=False)
            else:
                _write_file(step, archive, pfd, as_root, what)
                if step.links:
                    src = os.dup(pfd)
                    try:
                        for parent, leaf in step.links:
                            lfd = dirs.open(parent)
                            assert lfd is not None
                            _remove(leaf, lfd)
                            os.link(step.leaf, leaf, src_dir_fd=src, dst_dir_fd=lfd, follow_symlinks=False)
                    finally:
                        os.close(src)
        step = None
        for step in reversed(made_dirs):
            fd = dirs.open((*step.parent, step.leaf))
            assert fd is not None
            _set_meta(fd, step, as_root)
    except _Refused as e:
        raise _unsafe(what, e.member or (step.member if step else None), e) from None
    finally:
        dirs.close()


def _write_file(step: _Step, archive: IO[bytes], pfd: int, as_root: bool, what: str) -> None:
    _remove(step.leaf, pfd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(step.leaf, flags, 0o600, dir_fd=pfd)
    try:
        for chunk in read_data(archive, step.member, what):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        _set_meta(fd, step, as_root)
    finally:
        os.close(fd)


def _set_meta(fd: int, step: _Step, as_root: bool) -> None:
    # chown first: it clears setuid/setgid bits, which chmod then sets as the header declares.
    if as_root:
        os.fchown(fd, *_owner(step))
    os.fchmod(fd, step.entry.mode & 0o7777)
    t = _mtime_ns(step)
    os.utime(fd, ns=(t, t))


def extract_rpm(rpm: Path, root_fd: int, *, tmp_dir: Path | None = None) -> None:
    """Unpack the payload of ``rpm`` under the directory open as ``root_fd`` (see the module docstring).

    Raises UnsafeArchiveError (exit 11, one line naming the package file and the member) before anything is
    written for every refusal the archive alone decides; RpmFormatError for a file that is not an rpm or a
    payload larger than its header declares; LocalIOError if the target or the temporary directory cannot be
    written (then the package may be partly unpacked).
    """
    what = rpm.name
    try:
        with rpm.open("rb") as f:
            header = read_layout(f, what).header
        files = file_entries(header, what)
        algo = digest_algo(header, what)
        with tempfile.TemporaryFile(dir=tmp_dir, prefix="imagectl-payload-") as tmp:
            write_payload(rpm, tmp, limit=payload_limit(files))
            tmp.seek(0)
            members = list(cpio_members(tmp, what))
            steps = _plan(members, files, tmp, root_fd, what, algo)
            _apply(steps, tmp, root_fd, what)
    except OSError as e:
        raise LocalIOError(f"cannot unpack {what}: {e.strerror or e}") from None
