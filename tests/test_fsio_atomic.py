"""The one helper for atomic writes (:class:`imagectl.fsio.AtomicFile`) and the one for verified copies
(:func:`imagectl.fsio.copy_verified`): the destination holds the old bytes or the new ones, never a mix, and no
failure (ours, the disk's or the caller's) leaves a temp file behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagectl import fsio
from imagectl.errors import ImageMismatchError, LocalIOError
from imagectl.export.output import write_files
from imagectl.fsio import AtomicFile, SymlinkRefusedError, atomic_write, copy_verified, replacing
from imagectl.store.local import LocalStore


@pytest.fixture
def d(tmp_path: Path) -> Path:
    out = tmp_path / "d"
    out.mkdir()
    return out


@pytest.fixture
def dir_fd(d: Path) -> Iterator[int]:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


class Boom(Exception):
    pass


# -- AtomicFile ------------------------------------------------------------------------------------------------------
def test_a_clean_exit_replaces_the_destination_in_one_rename(d: Path) -> None:
    dest = d / "f"
    dest.write_bytes(b"old")
    old_inode = dest.stat().st_ino
    with AtomicFile(dest) as f:
        f.write(b"new ")
        f.write(b"bytes")
        assert dest.read_bytes() == b"old"  # readers see the old bytes until the rename
        assert names(d) == sorted(["f", Path(f.temp).name])
    assert f.created
    assert dest.read_bytes() == b"new bytes"
    assert dest.stat().st_ino != old_inode
    assert names(d) == ["f"]


def test_an_exception_raised_by_the_caller_mid_write_leaves_no_temp_file_and_the_old_bytes(d: Path) -> None:
    dest = d / "f"
    dest.write_bytes(b"old")
    with pytest.raises(Boom), AtomicFile(dest) as f:
        f.write(b"half of it")
        raise Boom
    assert dest.read_bytes() == b"old"
    assert names(d) == ["f"]


def test_an_interrupt_mid_write_leaves_no_temp_file(d: Path) -> None:
    with pytest.raises(KeyboardInterrupt), AtomicFile(d / "f") as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert names(d) == []


def test_exclusive_never_replaces_an_existing_file(d: Path) -> None:
    dest = d / "f"
    dest.write_bytes(b"first")
    with AtomicFile(dest, exclusive=True) as f:
        f.write(b"second")
    assert not f.created
    assert dest.read_bytes() == b"first"
    assert names(d) == ["f"]
    assert not atomic_write(dest, b"third", exclusive=True)
    assert dest.read_bytes() == b"first"
    assert atomic_write(d / "g", b"new", exclusive=True)
    assert (d / "g").read_bytes() == b"new"
    assert names(d) == ["f", "g"]


def test_exclusive_does_not_follow_a_dangling_symlink_at_the_destination(d: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (d / "f").symlink_to(victim)
    assert not atomic_write(d / "f", b"planted", exclusive=True)
    assert not victim.exists()
    assert (d / "f").is_symlink()
    assert names(d) == ["f"]


def test_a_symlink_at_the_destination_is_replaced_not_written_through(d: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    (d / "f").symlink_to(victim)
    atomic_write(d / "f", b"new")
    assert victim.read_bytes() == b"victim"
    assert not (d / "f").is_symlink()
    assert (d / "f").read_bytes() == b"new"


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o444, 0o640])
def test_the_mode_is_exact_whatever_the_umask(d: Path, mode: int) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(d / "f", b"x", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE((d / "f").stat().st_mode) == mode


def test_a_directory_at_the_destination_is_refused_in_one_line(d: Path) -> None:
    (d / "f").mkdir()
    with pytest.raises(LocalIOError) as e:
        atomic_write(d / "f", b"x")
    assert str(e.value) == f"cannot write {d / 'f'}: it is a directory"
    assert e.value.exit_code == 14
    assert names(d) == ["f"]


def test_works_relative_to_a_directory_descriptor(d: Path, tmp_path: Path, dir_fd: int) -> None:
    moved = tmp_path / "moved"
    d.rename(moved)  # the descriptor, not the path, says where the file goes
    with AtomicFile(Path("/shown/only/in/messages/f"), dir_fd=dir_fd, name="f", mode=0o600) as f:
        f.write(b"by descriptor")
    assert (moved / "f").read_bytes() == b"by descriptor"
    assert stat.S_IMODE((moved / "f").stat().st_mode) == 0o600
    assert names(moved) == ["f"]


def test_the_directory_descriptor_is_duplicated_so_the_caller_may_close_its_own(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    staged = AtomicFile(d / "f", dir_fd=fd)
    os.close(fd)
    staged.write(b"later")
    staged.seal()
    assert staged.commit()
    assert (d / "f").read_bytes() == b"later"


def test_relative_to_a_descriptor_a_symlink_at_the_name_is_replaced_never_followed(
    d: Path, tmp_path: Path, dir_fd: int
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    (d / "f").symlink_to(victim)
    with AtomicFile(d / "f", dir_fd=dir_fd) as f:
        f.write(b"new")
    assert victim.read_bytes() == b"victim"
    assert not (d / "f").is_symlink()
    (d / "g").symlink_to(victim)
    with AtomicFile(d / "g", dir_fd=dir_fd, exclusive=True) as f:
        f.write(b"new")
    assert not f.created
    assert victim.read_bytes() == b"victim"
    assert sorted(names(d)) == ["f", "g"]


def test_a_local_store_refuses_a_symlinked_directory_and_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "metadata").symlink_to(elsewhere)
    store = LocalStore(root)
    with pytest.raises(SymlinkRefusedError):
        store.write("metadata/root.json", b"{}")
    assert names(elsewhere) == []
    store.write("blobs/x", b"ok")
    assert store.write_new("blobs/x", b"other") is False
    assert (root / "blobs" / "x").read_bytes() == b"ok"
    assert names(root / "blobs") == ["x"]


def test_an_export_refuses_a_symlink_where_an_output_goes_and_renames_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    (out / "b.json").symlink_to(victim)
    with pytest.raises(SymlinkRefusedError):
        write_files(out, {"a.json": b"a", "b.json": b"b"})
    assert victim.read_bytes() == b"victim"
    assert names(out) == ["b.json"]  # a.json was staged, never renamed in; no temp file is left
    (out / "b.json").unlink()
    write_files(out, {"sub/a.json": b"a", "b.json": b"b"})
    assert names(out) == ["b.json", "sub"] and (out / "sub" / "a.json").read_bytes() == b"a"


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_becomes_a_one_line_local_io_error_and_no_temp_file(
    d: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    dest = d / "f"
    dest.write_bytes(b"old")
    if where == "write":
        with pytest.raises(LocalIOError) as e, AtomicFile(dest) as f:
            f.write(b"x")
            full()  # what a write to a full disk raises, from the caller's own code in the block
    else:
        monkeypatch.setattr(os, where, full)
        with pytest.raises(LocalIOError) as e:
            atomic_write(dest, b"new")
    assert str(e.value) == f"cannot write {dest}: disk full"
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert dest.read_bytes() == b"old"
    assert names(d) == ["f"]


def test_a_missing_directory_is_a_local_io_error(tmp_path: Path) -> None:
    with pytest.raises(LocalIOError, match=r"^cannot write .*/nope/f: No such file or directory$"):
        AtomicFile(tmp_path / "nope" / "f")


def test_seal_then_discard_leaves_nothing_and_commit_after_discard_does_nothing(d: Path) -> None:
    staged = AtomicFile(d / "f")
    staged.write(b"x")
    staged.seal()
    staged.discard()
    assert not staged.commit()
    assert names(d) == []


def test_a_hard_link_temp_shares_the_inode_and_keeps_its_mode(d: Path, dir_fd: int) -> None:
    (d / "blob").write_bytes(b"shared")
    (d / "blob").chmod(0o444)
    with AtomicFile(d / "target", dir_fd=dir_fd, mode=0o600, link=(dir_fd, "blob")):
        pass
    assert (d / "target").stat().st_ino == (d / "blob").stat().st_ino
    assert stat.S_IMODE((d / "blob").stat().st_mode) == 0o444
    assert names(d) == ["blob", "target"]


def test_a_refused_hard_link_raises_its_errno_unchanged_so_the_caller_can_copy(
    d: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    (d / "blob").write_bytes(b"shared")

    def cross_device(*_a: object, **_k: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(OSError) as e:
        AtomicFile(d / "target", dir_fd=dir_fd, link=(dir_fd, "blob"))
    assert e.value.errno == errno.EXDEV
    assert names(d) == ["blob"]


def test_replacing_hands_out_a_name_and_applies_the_mode(d: Path) -> None:
    with replacing(d / "f", mode=0o600) as tmp:
        Path(tmp).unlink()  # another program may make the file anew
        Path(tmp).write_bytes(b"by name")
    assert (d / "f").read_bytes() == b"by name"
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o600
    with pytest.raises(Boom), replacing(d / "f") as tmp:
        Path(tmp).write_bytes(b"half")
        raise Boom
    assert (d / "f").read_bytes() == b"by name"
    assert names(d) == ["f"]


# -- copy_verified ---------------------------------------------------------------------------------------------------
DATA = b"image bytes " * 1000
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.img"
    path.write_bytes(DATA)
    return path


def test_copy_verified_copies_matching_bytes(d: Path, src: Path) -> None:
    assert copy_verified(src, d / "out.img", sha256=SHA, size=len(DATA), mode=0o640) == len(DATA)
    assert (d / "out.img").read_bytes() == DATA
    assert stat.S_IMODE((d / "out.img").stat().st_mode) == 0o640
    assert copy_verified(io.BytesIO(DATA), d / "again.img", sha256=SHA) == len(DATA)
    assert names(d) == ["again.img", "out.img"]


@pytest.mark.parametrize(
    ("sha256", "size", "message"),
    [
        ("0" * 64, len(DATA), f"has sha256 {SHA}, not the expected {'0' * 64}"),
        ("0" * 64, None, f"has sha256 {SHA}, not the expected {'0' * 64}"),
        (SHA, len(DATA) + 1, f"holds {len(DATA)} bytes, not the expected {len(DATA) + 1}"),
        (SHA, len(DATA) - 1, f"holds more than {len(DATA) - 1} bytes, not the expected {len(DATA) - 1}"),
    ],
)
def test_copy_verified_refuses_other_bytes_leaving_no_destination_and_no_temp_file(
    d: Path, src: Path, sha256: str, size: int | None, message: str
) -> None:
    with pytest.raises(ImageMismatchError) as e:
        copy_verified(src, d / "out.img", sha256=sha256, size=size)
    assert str(e.value) == f"{src} {message}; {d / 'out.img'} not written"
    assert e.value.exit_code == 11
    assert names(d) == []


def test_copy_verified_leaves_an_existing_destination_alone_on_a_mismatch(d: Path, src: Path) -> None:
    (d / "out.img").write_bytes(b"previous")
    with pytest.raises(ImageMismatchError, match=r"^cached image has sha256"):
        copy_verified(src, d / "out.img", sha256="f" * 64, size=len(DATA), what="cached image")
    assert (d / "out.img").read_bytes() == b"previous"
    assert names(d) == ["out.img"]


def test_copy_verified_reads_an_endless_source_only_one_byte_past_the_size(d: Path) -> None:
    class Endless(io.RawIOBase):
        def __init__(self) -> None:
            self.given = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.given += n
            return b"z" * n

    endless = Endless()
    with pytest.raises(ImageMismatchError, match="holds more than 10 bytes"):
        copy_verified(endless, d / "out.img", sha256=SHA, size=10)  # type: ignore[arg-type]
    assert endless.given == 11
    assert names(d) == []


def test_copy_verified_an_unreadable_source_is_a_local_io_error(d: Path, tmp_path: Path) -> None:
    with pytest.raises(LocalIOError, match=r"^cannot read .*/missing: No such file or directory$"):
        copy_verified(tmp_path / "missing", d / "out.img", sha256=SHA)
    assert names(d) == []


def test_copy_verified_writes_later_blocks_on_another_thread_in_order(
    d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks after the first are written on a second thread while they are hashed; the file is the source's
    bytes in order, and a mismatch found after those writes still leaves nothing behind."""
    chunk = fsio._COPY_CHUNK
    data = b"".join(bytes([i]) * chunk for i in range(3)) + b"tail!"
    path = tmp_path / "big.img"
    path.write_bytes(data)
    threads: list[str] = []
    real_write = AtomicFile.write

    def write(self: AtomicFile, block: Any) -> int:
        threads.append(threading.current_thread().name)
        return real_write(self, block)

    monkeypatch.setattr(AtomicFile, "write", write)
    assert copy_verified(path, d / "out.img", sha256=hashlib.sha256(data).hexdigest(), size=len(data)) == len(data)
    assert (d / "out.img").read_bytes() == data
    assert threads[0] == threading.current_thread().name and len(threads) == 4
    assert all(t.startswith("copy") for t in threads[1:]), threads
    with pytest.raises(ImageMismatchError):
        copy_verified(path, d / "other.img", sha256="0" * 64, size=len(data))
    assert names(d) == ["out.img"]


def test_copy_verified_a_write_that_fails_on_the_writer_thread_is_the_callers_error(
    d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.img"
    path.write_bytes(b"x" * (3 * fsio._COPY_CHUNK))
    calls = []
    real_write = AtomicFile.write

    def write(self: AtomicFile, block: Any) -> int:
        calls.append(len(block))
        if len(calls) == 2:
            raise LocalIOError(f"cannot write {self.dest}: no space left on device")
        return real_write(self, block)

    monkeypatch.setattr(AtomicFile, "write", write)
    with pytest.raises(LocalIOError, match="no space left on device"):
        copy_verified(path, d / "out.img", sha256="0" * 64)
    assert names(d) == [] and len(calls) == 2  # nothing written after the failure, no temp file left
