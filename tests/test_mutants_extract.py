"""Mutants of imagectl/imaging/slc/extract.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md).

Each hostile package is refused with its exact one-line message (exit 11), leaves the target as it was and the
sentinel beside it untouched; each honest one lands where rpm would put it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from imagectl.errors import LocalIOError
from imagectl.imaging.slc import extract
from imagectl.imaging.slc.extract import UnsafeArchiveError
from imagectl.imaging.slc.seed import unpack
from tests import hostile_yum
from tests.hostile_yum import DIR, LNK, MTIME, REG, Decl, Member, change, declare, write_rpm
from tests.test_slc_unpack import snapshot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp/scene/target`` (empty) beside ``tmp/scene/outside/passwd``: what an escape would reach."""
    (tmp_path / "scene/target").mkdir(parents=True)
    (tmp_path / "scene/outside").mkdir()
    (tmp_path / "scene/outside/passwd").write_text("sentinel\n")
    return tmp_path / "scene/target"


def refused(root: Path, members: list[Member]) -> str:
    """Unpack a package of ``members`` (honest header) into ``root``; return the refusal after checking that
    nothing changed, inside or beside the target."""
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir(exist_ok=True)
    rpm = write_rpm(pkgs, "evil", members)
    scene = root.parent
    before = snapshot(scene), _meta(scene), _meta(root)
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([rpm], root)
    assert e.value.exit_code == 11
    assert (snapshot(scene), _meta(scene), _meta(root)) == before
    return str(e.value)


def _meta(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mode, st.st_mtime_ns


def refusal(member: str, reason: str) -> str:
    return f"evil-1.0-1.x86_64.rpm: refusing archive member {member!r}: {reason}"


@pytest.mark.parametrize(
    "members",
    [
        [Member("..", DIR)],  # the parent of the target itself: its mode and mtime would be set
        [Member("./usr/..", DIR)],
        [Member("./..", DIR)],
        [Member("./usr/../passwd", REG, b"x")],
    ],
    ids=["dotdot", "usr-dotdot", "dot-slash-dotdot", "dotdot-inside"],
)
def test_a_dotdot_component_is_refused_by_name(root: Path, members: list[Member]) -> None:
    """Mutant: ``_split`` without its ``..`` check. ``..`` and ``./usr/..`` are a directory rpm would create
    (``/..`` is ``/``), which pass 2 would then chmod and utime: the directory above the target."""
    name = members[0].name
    assert refused(root, members) == refusal(str(name), "it has a '..' component")


def test_a_link_to_dotdot_at_the_root_is_refused_by_the_containment_check(root: Path) -> None:
    """``./x -> ..`` then ``./x/escape``: the only check that stops it is the one in ``_resolve`` (``..`` above the
    root); the name check passes (no ``..`` in the names) and the link target is relative."""
    members = [Member("./x", LNK, b".."), Member("./x/escape", REG, b"x")]
    assert refused(root, members) == refusal("./x/escape", "a symlink on its path climbs above the target root")
    assert not (root.parent / "escape").exists()


def test_a_link_that_climbs_out_from_below_is_refused_by_the_containment_check(root: Path) -> None:
    members = [Member("./d", DIR), Member("./d/e", DIR), Member("./d/e/up", LNK, b"../../.."),
               Member("./d/e/up/outside/passwd", REG, b"owned\n")]  # fmt: skip
    reason = "a symlink on its path climbs above the target root"
    assert refused(root, members) == refusal("./d/e/up/outside/passwd", reason)
    assert (root.parent / "outside/passwd").read_text() == "sentinel\n"


def test_a_link_with_dotdot_that_stays_inside_is_followed(root: Path) -> None:
    """The containment check refuses only a climb above the root: ``../b`` from ``/a`` is ``/b``."""
    members = [Member("./a", DIR), Member("./b", DIR), Member("./a/up", LNK, b"../b"),
               Member("./a/up/file", REG, b"data\n")]  # fmt: skip
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir()
    unpack([write_rpm(pkgs, "honest", members)], root)
    assert (root / "b/file").read_bytes() == b"data\n"
    assert os.readlink(root / "a/up") == "../b"
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("target", ["/", "/tmp", "//", "/."])
def test_a_path_through_an_absolute_link_is_refused(root: Path, target: str) -> None:
    """Mutant: ``_resolve`` without its absolute-target check: ``/x -> /`` would be resolved as the target root
    (``/`` splits into empty components) and ``./x/escape`` written there, unrefused."""
    members = [Member("./x", LNK, target.encode()), Member("./x/escape", REG, b"x")]
    reason = (
        f"its path goes through the symlink /x -> {target}: imagectl follows only relative symlinks inside the target"
    )
    assert refused(root, members) == refusal("./x/escape", reason)


def _unpack(root: Path, members: list[Member], declared: list[Decl] | None = None, name: str = "honest") -> None:
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir(exist_ok=True)
    unpack([write_rpm(pkgs, name, members, declared=declared)], root)


def _refused_with(root: Path, members: list[Member], declared: list[Decl]) -> str:
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir(exist_ok=True)
    before = snapshot(root.parent)
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([write_rpm(pkgs, "evil", members, declared=declared)], root)
    assert snapshot(root.parent) == before
    return str(e.value)


# -- directory members over what the target already has --------------------------------------------------------------
def test_a_directory_member_keeps_an_existing_non_empty_directory(root: Path) -> None:
    """Mutants: ``_plan_dir``'s early return for an existing directory (without it, ``/etc`` with files in it
    would be refused as 'the non-empty directory /etc')."""
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    _unpack(root, [Member("./etc", DIR), Member("./etc/motd", REG, b"hi\n")])
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n" and (root / "etc/motd").read_bytes() == b"hi\n"
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755


@pytest.mark.parametrize("kind", ["file", "dangling-link"])
def test_a_directory_member_replaces_a_file_or_a_dangling_link_and_is_filled(root: Path, kind: str) -> None:
    """Mutants: ``_plan_dir`` following what is not a link, resolving with create=True, and forgetting that the
    directory it plans is new (its members would then be looked up on disk, through the file or the link)."""
    if kind == "file":
        (root / "x").write_text("old\n")
    else:
        (root / "x").symlink_to("nowhere")
    _unpack(root, [Member("./x", DIR), Member("./x/f", REG, b"new\n")])
    assert not (root / "x").is_symlink() and (root / "x").is_dir()
    assert (root / "x/f").read_bytes() == b"new\n"
    assert sorted(p.name for p in root.iterdir()) == ["x"]  # no "nowhere" made through the old link


@pytest.mark.parametrize("kind", ["none", "file"])
def test_a_directory_stays_private_until_its_packaged_mode_is_set(
    root: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every directory the archive makes is 0700 while it is filled, whatever the umask, new or replacing a file:
    its packaged mode is set only at the end, by _set_meta. Observed at that seam, just before the mode is set
    (sample 3's _apply__mutmut_41 made a directory that replaces a file with the umask's mode)."""
    if kind == "file":
        (root / "x").write_text("old\n")
    seen: dict[int, int] = {}
    set_meta = extract._set_meta

    def observe(fd: int, step: object, as_root: bool) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            seen[st.st_ino] = stat.S_IMODE(st.st_mode)
        set_meta(fd, step, as_root)  # type: ignore[arg-type]

    monkeypatch.setattr(extract, "_set_meta", observe)
    old = os.umask(0o022)
    try:
        _unpack(root, [Member("./x", DIR), Member("./x/f", REG, b"new\n")])
    finally:
        os.umask(old)
    assert seen == {(root / "x").stat().st_ino: 0o700}
    assert stat.S_IMODE((root / "x").stat().st_mode) == 0o755 and (root / "x/f").read_bytes() == b"new\n"


# -- symlink members -------------------------------------------------------------------------------------------------
def test_an_empty_symlink_target_is_refused(root: Path) -> None:
    """Mutants: ``_check_link``'s empty-target case (as "", or replaced by a made-up target)."""
    members = [Member("./lnk", LNK, b"")]
    message = _refused_with(root, members, [Decl("/lnk", LNK, 0, link="")])
    assert message == refusal("./lnk", "its symlink target is empty, too long or contains a NUL byte")


def test_a_symlink_target_with_a_nul_byte_is_refused(root: Path) -> None:
    members = [Member("./lnk", LNK, b"etc\0passwd")]
    message = _refused_with(root, members, [Decl("/lnk", LNK, 10, link="etc")])
    assert message == refusal("./lnk", "its symlink target is empty, too long or contains a NUL byte")


def test_a_symlink_target_of_4095_bytes_is_made(root: Path) -> None:
    target = "a/" * 2047 + "b"  # 4095 bytes: the longest the kernel takes
    _unpack(root, [Member("./lnk", LNK, target.encode())])
    assert os.readlink(root / "lnk") == target


def test_a_symlink_target_of_4096_bytes_is_refused_before_anything_is_written(root: Path) -> None:
    target = "a/" * 2047 + "bc"  # 4096 bytes: PATH_MAX counts the terminating NUL, so no symlink can hold it
    members = [Member("./first", REG, b"written first\n"), Member("./lnk", LNK, target.encode())]
    declared = [
        Decl("/first", REG, 14, hashlib.md5(b"written first\n").hexdigest()),
        Decl("/lnk", LNK, 4096, link=target),
    ]
    message = _refused_with(root, members, declared)
    assert message == refusal("./lnk", "its symlink target is empty, too long or contains a NUL byte")


# -- hard links ----------------------------------------------------------------------------------------------------
def test_a_hard_link_the_header_declares_as_another_file_is_named(root: Path) -> None:
    """Mutants: which member the refusal names: the link the header disagrees about, not the carrier."""
    members = [Member("./a", REG, b"", nlink=2, ino=7), Member("./b", REG, b"data\n", nlink=2, ino=7)]
    data = hashlib.md5(b"data\n").hexdigest()
    declared = [Decl("/a", REG, 5, hashlib.md5(b"other\n").hexdigest(), inode=7), Decl("/b", REG, 5, data, inode=7)]
    message = _refused_with(root, members, declared)
    assert message == refusal("./a", "the header does not declare it the same file as its hard link './b'")


# -- owners and times ----------------------------------------------------------------------------------------------
def _other_cpio_mtime(monkeypatch: pytest.MonkeyPatch, mtime: int) -> None:
    """Write the cpio headers with ``mtime`` while the rpm header keeps hostile_yum's MTIME."""
    real = hostile_yum.newc

    def newc(members: list[Member]) -> bytes:
        with monkeypatch.context() as m:
            m.setattr(hostile_yum, "MTIME", mtime)
            return real(members)

    monkeypatch.setattr(hostile_yum, "newc", newc)


def test_the_header_mtime_wins_over_the_cpio_one(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants of ``_mtime_ns``: the signed header's time is the file's, the payload's only when it has none."""
    _other_cpio_mtime(monkeypatch, MTIME + 86400)
    _unpack(root, [Member("./d", DIR), Member("./d/f", REG, b"x"), Member("./d/l", LNK, b"f")])
    assert {p: os.lstat(root / p).st_mtime for p in ("d", "d/f", "d/l")} == dict.fromkeys(("d", "d/f", "d/l"), MTIME)


def test_without_header_mtimes_the_cpio_mtime_is_used(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = hostile_yum.header

    def header(tags: dict[int, tuple[int, object]], region: int) -> bytes:
        return real({k: v for k, v in tags.items() if k != 1034}, region)  # no FILEMTIMES

    monkeypatch.setattr(hostile_yum, "header", header)
    _other_cpio_mtime(monkeypatch, MTIME + 86400)
    _unpack(root, [Member("./f", REG, b"x")])
    assert (root / "f").stat().st_mtime == MTIME + 86400


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owners_root_by_name_else_the_cpio_ids(root: Path) -> None:
    """Mutants of ``_owner``: a header naming root gives 0 whatever the cpio says; any other name keeps the ids."""
    members = [Member("./a", REG, b"a", uid=7, gid=8), Member("./b", REG, b"b", uid=7, gid=8),
               Member("./d", DIR, uid=7, gid=8), Member("./l", LNK, b"a", uid=7, gid=8)]  # fmt: skip
    declared = declare(members)
    for path in ("/b", "/d", "/l"):
        declared = change(declared, path, user="games", group="games")
    _unpack(root, members, change(declared, "/a", user="root", group="root"))
    owners = [(os.lstat(root / n).st_uid, os.lstat(root / n).st_gid) for n in ("a", "b", "d", "l")]
    assert owners == [(0, 0), (7, 8), (7, 8), (7, 8)]


def test_a_hard_link_replaces_what_the_target_has_at_its_name(root: Path) -> None:
    """Mutant: the hard link's old entry removed relative to the working directory instead of its own."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/zcat").write_text("old zcat\n")
    members = [
        Member("./usr/bin/zcat", REG, b"", nlink=2, ino=42),
        Member("./usr/bin/gzip", REG, b"gz\n", nlink=2, ino=42),
    ]
    _unpack(root, members)
    assert (root / "usr/bin/zcat").read_bytes() == b"gz\n"
    assert (root / "usr/bin/zcat").stat().st_ino == (root / "usr/bin/gzip").stat().st_ino


def test_a_file_is_never_written_through_a_symlink_planted_after_the_check(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants of ``_write_file``'s open flags: whatever appears at the name between the removal of the old entry
    and the open (another process, as root, on a shared target) is not followed: O_CREAT|O_EXCL|O_NOFOLLOW."""
    sentinel = root.parent / "outside/passwd"
    real_remove = extract._remove

    def remove_then_plant(name: str, dir_fd: int) -> None:
        real_remove(name, dir_fd)
        if name == "passwd":
            os.symlink(sentinel, name, dir_fd=dir_fd)

    monkeypatch.setattr(extract, "_remove", remove_then_plant)
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir()
    with pytest.raises(LocalIOError) as e:
        unpack([write_rpm(pkgs, "setup", [Member("./passwd", REG, b"root:x:0:0::/root:/bin/sh\n")])], root)
    assert str(e.value) == "cannot unpack setup-1.0-1.x86_64.rpm: File exists"
    assert sentinel.read_text() == "sentinel\n"


def test_a_file_member_cannot_replace_a_directory_the_archive_filled(root: Path) -> None:
    """``./x -> .`` makes ``./x/d`` another name of ``./d``, which the archive has filled: refused in pass 1."""
    members = [Member("./d", DIR), Member("./d/f", REG, b"f"), Member("./x", LNK, b"."), Member("./x/d", REG, b"x")]
    message = _refused_with(root, members, declare(members))
    assert message == refusal("./x/d", "it would replace a directory the archive has filled")


def test_a_file_member_replaces_an_empty_directory_beside_what_the_archive_filled(root: Path) -> None:
    """Mutants of the filled-directory test: it is about entries below the replaced path only."""
    (root / "e").mkdir()
    _unpack(root, [Member("./a/b/c", REG, b"c"), Member("./e", REG, b"e\n")])
    assert (root / "e").read_bytes() == b"e\n" and (root / "a/b/c").read_bytes() == b"c"


def test_a_directory_changed_by_someone_else_between_the_passes_is_refused_by_name(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants of pass 2's refusal: a directory the archive made that is a file when its metadata is set
    (another process on a shared target) names the package, the member and the path."""
    real_write = extract._write_file

    def write_then_swap(step: object, archive: object, pfd: int, as_root: bool, what: str) -> None:
        real_write(step, archive, pfd, as_root, what)  # type: ignore[arg-type]
        (root / "a/b").rmdir()
        (root / "a/b").write_text("someone else's\n")

    monkeypatch.setattr(extract, "_write_file", write_then_swap)
    pkgs = root.parent.parent / "pkgs"
    pkgs.mkdir()
    with pytest.raises(UnsafeArchiveError) as e:
        unpack([write_rpm(pkgs, "pkg", [Member("./a/b", DIR), Member("./c/f", REG, b"f")])], root)
    assert str(e.value) == (
        "pkg-1.0-1.x86_64.rpm: refusing archive member './a/b': /a/b changed while it was unpacked (not a directory "
        "now)"
    )
    assert (root / "a/b").read_text() == "someone else's\n"


def test_a_file_replacing_a_directory_of_the_same_archive_is_refused_before_anything_is_written(root: Path) -> None:
    members = [Member("./e", DIR), Member("./x", LNK, b"."), Member("./x/e", REG, b"x")]
    message = _refused_with(root, members, declare(members))  # checks that nothing changed
    assert message == refusal("./x/e", "it lands on /e, where the earlier member './e' went")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Member("./a", REG, b"one\n"), Member("./x/a", REG, b"two\n")),
        (Member("./a", REG, b"1"), Member("./x/a", LNK, b"b")),
    ],
)
def test_two_members_landing_on_one_file_through_a_symlink_are_refused(
    root: Path, first: Member, second: Member
) -> None:
    """Names differ (./a, ./x/a), places do not (x -> .): the later member would silently replace the earlier."""
    members = [first, Member("./x", LNK, b"."), second]
    message = _refused_with(root, members, declare(members))
    assert message == refusal("./x/a", "it lands on /a, where the earlier member './a' went")


def test_a_directory_reached_twice_through_a_symlink_is_kept(root: Path) -> None:
    _unpack(root, [Member("./d", DIR), Member("./x", LNK, b"."), Member("./x/d", DIR), Member("./x/d/f", REG, b"f\n")])
    assert (root / "d" / "f").read_text() == "f\n" and os.readlink(root / "x") == "."


# -- resolving a member's directory ------------------------------------------------------------------------------------
def _chain(n: int) -> list[Member]:
    """``./l1 -> l2 -> … -> lN -> d``: N symlinks to cross to reach the directory ``./d``."""
    links = [Member(f"./l{i}", LNK, (f"l{i + 1}" if i < n else "d").encode()) for i in range(n, 0, -1)]
    return [Member("./d", DIR), *links, Member("./l1/f", REG, b"f")]


def test_forty_symlinks_on_a_path_are_followed(root: Path) -> None:
    """Mutants of the hop count (start, step, comparison): MAX_LINK_HOPS (40, the kernel's MAXSYMLINKS) exactly."""
    _unpack(root, _chain(40))
    assert (root / "d/f").read_bytes() == b"f"


def test_forty_one_symlinks_on_a_path_are_refused(root: Path) -> None:
    members = _chain(41)
    assert _refused_with(root, members, declare(members)) == refusal("./l1/f", "more than 40 symlinks on its path")


@pytest.mark.parametrize("target", ["./d", "d/", ".//d/."])
def test_dot_and_empty_components_of_a_link_target_are_skipped(root: Path, target: str) -> None:
    _unpack(root, [Member("./d", DIR), Member("./x", LNK, target.encode()), Member("./x/f", REG, b"f")])
    assert (root / "d/f").read_bytes() == b"f"
    assert sorted(p.name for p in root.iterdir()) == ["d", "x"]


def test_a_dot_does_not_hide_a_climb_above_the_root(root: Path) -> None:
    members = [Member("./x", LNK, b"./.."), Member("./x/escape", REG, b"x")]
    assert refused(root, members) == refusal("./x/escape", "a symlink on its path climbs above the target root")


def test_a_nested_path_through_an_absolute_link_is_named_in_full(root: Path) -> None:
    members = [Member("./a", DIR), Member("./a/x", LNK, b"/etc"), Member("./a/x/passwd", REG, b"x")]
    reason = "its path goes through the symlink /a/x -> /etc: imagectl follows only relative symlinks inside the target"
    assert refused(root, members) == refusal("./a/x/passwd", reason)


@pytest.mark.parametrize(("name", "culprit"), [("./f/g", "/f"), ("./d/f/g", "/d/f")])
def test_a_file_on_the_way_is_refused_by_its_path(root: Path, name: str, culprit: str) -> None:
    members = [Member("./d", DIR), Member("./d/f", REG, b"f"), Member("./f", REG, b"f"), Member(name, REG, b"g")]
    assert refused(root, members) == refusal(name, f"{culprit} on its path is not a directory")


def test_directories_made_on_the_way_are_0755_whatever_the_umask(root: Path) -> None:
    """Mutant: the mode of directories no member declares (made for ``./a/b/f``): 0755, as rpm makes them."""
    old = os.umask(0o077)
    try:
        _unpack(root, [Member("./a/b/f", REG, b"f")])
    finally:
        os.umask(old)
    assert [stat.S_IMODE((root / p).stat().st_mode) for p in ("a", "a/b")] == [0o755, 0o755]


# -- file types and modes ------------------------------------------------------------------------------------------
def test_an_unknown_file_type_is_refused_by_its_octal_type(root: Path) -> None:
    members = [Member("./w", 0o160000 | 0o644)]
    assert refused(root, members) == refusal("./w", "unknown file type 160000")


def test_a_header_type_imagectl_does_not_know_is_named_by_its_octal_type(root: Path) -> None:
    members = [Member("./f", REG, b"f")]
    declared = change(declare(members), "/f", mode=0o160000 | 0o644)
    message = _refused_with(root, members, declared)
    assert message == refusal("./f", "it is a regular file in the archive but a type 160000 in the header")


def test_permission_bits_come_from_the_header_only_special_bits_are_checked(root: Path) -> None:
    """Mutant: the special-bits mask (0o7000) widened to other-execute: a payload mode that differs from the
    header's only in permission bits is no refusal; the header's mode is what the file gets."""
    members = [Member("./f", stat.S_IFREG | 0o755, b"#!/bin/sh\n")]
    _unpack(root, members, change(declare(members), "/f", mode=stat.S_IFREG | 0o754))
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o754
