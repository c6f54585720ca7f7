"""imagectl's initramfs cache (imagectl/imaging/initramfs.py): a kernel's initramfs made by one Debian build is
reused by a later build only when everything mkinitramfs reads is in the same state in its tree.

These tests use a small tree and a stand-in for update-initramfs that packs a gzip'd newc cpio of tree files (the
suite's cpio writer); the real build test (tests/test_build_integration.py) reuses a real one and boots it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError
from imagectl.imaging import initramfs
from imagectl.imaging.initramfs import Cache, provide
from tests.hostile_yum import DIR, REG, Member, newc

V = "6.1.0-99-amd64"


def _tree(root: Path) -> Path:
    """A merged-/usr tree with a kernel, a hook, a busybox and libc, as far as the cache looks."""
    files = {
        f"usr/lib/modules/{V}/kernel/virtio_blk.ko": b"module",
        f"usr/lib/modules/{V}/modules.dep": b"dep",
        f"boot/config-{V}": b"CONFIG_X=y",
        f"boot/vmlinuz-{V}": b"kernel",
        "usr/share/initramfs-tools/hooks/busybox": b"#!/bin/sh\ncopy_exec /bin/busybox\n",
        "usr/share/initramfs-tools/hook-functions": b"copy_exec() { :; }\n",
        "etc/initramfs-tools/initramfs.conf": b"MODULES=most\nCOMPRESS=gzip\n",
        "usr/bin/busybox": b"busybox 1.35",
        "usr/lib/x86_64-linux-gnu/libc.so.6": b"libc 2.36",
        "etc/fstab": b"LABEL=root / ext4 defaults 0 1\n",
        "usr/bin/tree": b"not read by mkinitramfs",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    return root


def _fake_update_initramfs(calls: list[str]) -> Callable[[Path, str, Callable[[str], None]], None]:
    """Stands in for update-initramfs in the chroot: packs busybox, libc, the module (reached through /lib and
    /bin, as hooks name them) and a generated file into /boot/initrd.img-VERSION."""

    def make(tree: Path, version: str, log: Callable[[str], None]) -> None:
        calls.append(version)
        members = [Member(".", DIR), Member("./conf", DIR), Member("./conf/conf.d", DIR)]
        for rel in ("bin/busybox", "lib/x86_64-linux-gnu/libc.so.6", f"lib/modules/{version}/kernel/virtio_blk.ko"):
            host = initramfs._resolve(str(tree), rel, follow=True)  # as a chroot sees it
            assert host is not None
            members.append(Member(f"./usr/{rel}", REG, Path(host).read_bytes()))
        members.append(Member("./conf/arch.conf", REG, b"DPKG_ARCH=amd64\n"))
        (tree / f"boot/initrd.img-{version}").write_bytes(gzip.compress(newc(members)))
        log(f"update-initramfs: Generating /boot/initrd.img-{version}")

    return make


def _provide(tree: Path, cache: Cache, calls: list[str]) -> dict[str, object]:
    return provide(tree, "amd64", V, cache, lambda _l: None, make=_fake_update_initramfs(calls))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Cache, list[str]]:
    tree = _tree(tmp_path / "tree")
    cache = Cache(tmp_path / "cache")
    calls: list[str] = []
    first = _provide(tree, cache, calls)
    assert first["reused"] is False and calls == [V] and "cached_as" in first
    return tree, cache, calls


def test_an_unchanged_tree_reuses_the_initramfs_byte_for_byte(setup, tmp_path):
    """A second build's tree in the same state (another tree: a new build) takes the cached file, made no more;
    a package that touches nothing mkinitramfs reads (tree's /usr/bin/tree) changes nothing."""
    tree, cache, calls = setup
    made = (tree / f"boot/initrd.img-{V}").read_bytes()
    other = _tree(tmp_path / "tree2")
    (other / "usr/bin/tree").write_bytes(b"tree 2.1, the package the recipe added")
    again = _provide(other, cache, calls)
    assert again["reused"] is True and calls == [V]
    target = other / f"boot/initrd.img-{V}"
    assert target.read_bytes() == made and stat.S_IMODE(target.stat().st_mode) == 0o644  # as it was made
    assert not [p for p in (other / "boot").iterdir() if p.name.startswith(".imagectl-initrd")]


@pytest.mark.parametrize(
    "change",
    [
        "hook edited",
        "hook added",
        "module added",
        "copied library changed",
        "copied binary now a symlink elsewhere",
        "configuration edited",
        "fstab edited",
        "kernel config edited",
        "firmware added",
        "file mode changed",
    ],
)
def test_any_change_to_what_mkinitramfs_reads_makes_it_again(setup, change):
    tree, cache, calls = setup
    edits: dict[str, Callable[[], object]] = {
        "hook edited": lambda: (tree / "usr/share/initramfs-tools/hooks/busybox").write_bytes(b"#!/bin/sh\n"),
        "hook added": lambda: (tree / "usr/share/initramfs-tools/hooks/lvm2").write_bytes(b"#!/bin/sh\n"),
        "module added": lambda: (tree / f"usr/lib/modules/{V}/kernel/new.ko").write_bytes(b"m"),
        "copied library changed": lambda: (tree / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"libc 2.37"),
        "copied binary now a symlink elsewhere": lambda: (
            (tree / "usr/bin/busybox").unlink(),
            (tree / "usr/bin/busybox").symlink_to("/usr/bin/tree"),
        ),
        "configuration edited": lambda: (tree / "etc/initramfs-tools/initramfs.conf").write_bytes(b"MODULES=dep\n"),
        "fstab edited": lambda: (tree / "etc/fstab").write_bytes(b"LABEL=root / xfs defaults 0 1\n"),
        "kernel config edited": lambda: (tree / f"boot/config-{V}").write_bytes(b"CONFIG_X=m"),
        "firmware added": lambda: (
            (tree / "usr/lib/firmware").mkdir(),
            (tree / "usr/lib/firmware/nic.bin").write_bytes(b"fw"),
        ),
        "file mode changed": lambda: os.chmod(tree / "usr/bin/busybox", 0o755),
    }
    edits[change]()
    again = _provide(tree, cache, calls)
    assert again["reused"] is False and calls == [V, V], change
    # and the state after the change is filed beside the first: both kept, each found for its own tree
    assert len(list((cache.root / "amd64" / V).iterdir())) == 2


def test_a_cached_file_whose_bytes_changed_is_not_used(setup, tmp_path):
    """The cache is checked as it is read: an initramfs that no longer has its recorded SHA-256 is passed over
    (made again), and no temp file is left in the tree's /boot."""
    _, cache, calls = setup
    [entry] = (cache.root / "amd64" / V).iterdir()
    data = (entry / "initrd.img").read_bytes()
    (entry / "initrd.img").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    other = _tree(tmp_path / "tree2")
    assert _provide(other, cache, calls)["reused"] is False and calls == [V, V]
    assert sorted(p.name for p in (other / "boot").iterdir()) == sorted(
        [f"config-{V}", f"vmlinuz-{V}", f"initrd.img-{V}"]
    )


def test_a_symlinked_cache_entry_is_never_followed(setup, tmp_path):
    """An entry's files are opened below the cache root without following a symlink: a planted link to a file
    elsewhere (same bytes, so a digest check alone would pass) is refused and the initramfs made again."""
    _, cache, calls = setup
    [entry] = (cache.root / "amd64" / V).iterdir()
    elsewhere = tmp_path / "elsewhere.img"
    os.replace(entry / "initrd.img", elsewhere)
    (entry / "initrd.img").symlink_to(elsewhere)
    assert _provide(_tree(tmp_path / "tree2"), cache, calls)["reused"] is False and calls == [V, V]


@pytest.mark.parametrize("junk", [b"", b"{", b"[]", b'{"format": 1}', b"x" * 10])
def test_a_malformed_state_file_is_passed_over(setup, tmp_path, junk):
    _, cache, calls = setup
    [entry] = (cache.root / "amd64" / V).iterdir()
    (entry / "state.json").write_bytes(junk)
    assert _provide(_tree(tmp_path / "tree2"), cache, calls)["reused"] is False and calls == [V, V]


def test_tree_symlinks_resolve_inside_the_tree_never_on_the_host(tmp_path):
    """An absolute symlink in the tree means the tree's file: /etc/fstab -> /etc/hostname is the tree's
    hostname, not the host's, and a link that climbs with .. stops at the tree's root."""
    tree = _tree(tmp_path / "tree")
    (tree / "etc/hostname").write_bytes(b"worker\n")
    (tree / "etc/fstab").unlink()
    (tree / "etc/fstab").symlink_to("/etc/hostname")
    (tree / "etc/crypttab").symlink_to("../../../../../../../etc/hostname")
    state = initramfs.members_state(tree, ["etc/fstab", "etc/crypttab", "etc/missing"])
    want = initramfs.members_state(tree, ["etc/hostname"])["etc/hostname"]
    assert state == {"etc/fstab": want, "etc/crypttab": want, "etc/missing": "-"}
    assert want.startswith("f 644 7 ")  # the tree's 7-byte file, not the host's /etc/hostname
    (tree / "etc/loop").symlink_to("/etc/loop")
    assert initramfs.members_state(tree, ["etc/loop"]) == {"etc/loop": "-"}


def test_inputs_record_directory_symlinks_without_following_them(tmp_path):
    tree = _tree(tmp_path / "tree")
    (tree / "usr/share/initramfs-tools/scripts").mkdir()
    (tree / "usr/share/initramfs-tools/scripts/outside").symlink_to("/")
    state = initramfs.inputs_state(tree, V)
    assert state["usr/share/initramfs-tools/scripts/outside"] == "l /"
    assert not any(k.startswith("usr/share/initramfs-tools/scripts/outside/") for k in state)
    assert state[f"lib/modules/{V}/kernel/virtio_blk.ko"].startswith("f ")  # through the tree's /lib -> usr/lib
    assert state["lib/firmware"] == "-" and state["etc/crypttab"] == "-"


def test_the_cache_keeps_a_bounded_number_of_entries(tmp_path):
    tree = _tree(tmp_path / "tree")
    cache = Cache(tmp_path / "cache")
    calls: list[str] = []
    for i in range(initramfs.KEEP_PER_KERNEL + 2):
        (tree / "etc/fstab").write_bytes(f"# {i}\n".encode())
        assert _provide(tree, cache, calls)["reused"] is False
    assert len(list((cache.root / "amd64" / V).iterdir())) == initramfs.KEEP_PER_KERNEL
    assert _provide(tree, cache, calls)["reused"] is True  # the newest is one of those kept


@pytest.mark.parametrize("name", ["../../etc", "6.1 evil", "", "-rf", "a/b"])
def test_a_kernel_version_that_is_not_one_is_refused(tmp_path, name):
    tree = _tree(tmp_path / "tree")
    with pytest.raises(InvalidInputError, match="not a kernel version"):
        provide(tree, "amd64", name, Cache(tmp_path / "cache"), lambda _l: None, make=_fake_update_initramfs([]))
    pending = tree / initramfs.PENDING
    pending.parent.mkdir(parents=True)
    pending.write_text(f"{V}\n{name or '../x'}\n")
    report = tmp_path / "report.json"
    assert initramfs.main([str(tree), str(tmp_path / "cache"), "amd64", str(report)]) == 1
    assert not report.exists() and not (tmp_path / "cache").exists()


def test_an_initramfs_that_is_not_one_cpio_is_used_but_not_cached(tmp_path):
    """An early-microcode initramfs (two archives) or another compressor: the image keeps what update-initramfs
    made; the cache files nothing and says why."""
    tree = _tree(tmp_path / "tree")
    cache = Cache(tmp_path / "cache")

    def make(t: Path, version: str, log: Callable[[str], None]) -> None:
        (t / f"boot/initrd.img-{version}").write_bytes(newc([Member("./kernel", DIR)]) + gzip.compress(b"x"))

    lines: list[str] = []
    result = provide(tree, "amd64", V, cache, lines.append, make=make)
    assert result["reused"] is False and "not a single gzip'd or zstd'd cpio" in str(result["not_cached"])
    assert (tree / f"boot/initrd.img-{V}").exists() and not (cache.root / "amd64" / V).exists()
    assert any("not cached" in line for line in lines)


def test_main_reads_the_pending_kernels_and_writes_the_report(tmp_path, monkeypatch):
    tree = _tree(tmp_path / "tree")
    pending = tree / initramfs.PENDING
    pending.parent.mkdir(parents=True)
    pending.write_text(f"{V}\n")
    calls: list[str] = []
    monkeypatch.setattr(initramfs, "_make_in_chroot", _fake_update_initramfs(calls))
    report = tmp_path / "report.json"
    assert initramfs.main([str(tree), str(tmp_path / "cache"), "amd64", str(report)]) == 0
    [k] = json.loads(report.read_text())["kernels"]
    assert (k["version"], k["reused"], calls) == (V, False, [V])
    assert not (tree / "var/lib/imagectl-initramfs").exists()


def test_filing_leaves_nothing_half_made_and_removes_what_a_killed_builder_left(tmp_path):
    """An entry appears whole (renamed from a staging directory) or not at all; a staging directory an hour old
    (its builder was killed mid-copy) is removed by the next filing, a fresh one (a live builder's) is not."""
    tree = _tree(tmp_path / "tree")
    cache = Cache(tmp_path / "cache")
    here = cache.root / "amd64" / V
    here.mkdir(parents=True)
    stale, live = here / f".{'a' * 64}.{'0' * 12}.tmp", here / f".{'b' * 64}.{'1' * 12}.tmp"
    for d in (stale, live):
        d.mkdir()
        (d / "initrd.img").write_bytes(b"half")
    os.utime(stale, (1, 1))
    assert _provide(tree, cache, [])["reused"] is False
    assert not stale.exists() and live.exists()
    [entry] = [p for p in here.iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entry.iterdir()) == ["initrd.img", "state.json"]
    doc = json.loads((entry / "state.json").read_text())
    assert doc["sha256"] == hashlib.sha256((entry / "initrd.img").read_bytes()).hexdigest()
    assert doc["members"]["usr/bin/busybox"].startswith("f 644 12 ") and "conf/arch.conf" in doc["members"]


def test_a_symlinked_boot_is_the_trees_own_directory(setup, tmp_path):
    """/boot -> /srv/boot in a tree means the tree's /srv/boot: the reused initramfs lands there, never in the
    host's /srv/boot."""
    _, cache, calls = setup
    other = _tree(tmp_path / "tree2")
    (other / "srv").mkdir()
    os.replace(other / "boot", other / "srv/boot")
    (other / "boot").symlink_to("/srv/boot")
    assert _provide(other, cache, calls)["reused"] is True
    assert (other / f"srv/boot/initrd.img-{V}").is_file() and not Path(f"/srv/boot/initrd.img-{V}").exists()


def test_the_cache_is_private_and_a_reused_file_keeps_the_mode_it_was_made_with(tmp_path):
    """An initramfs may hold secrets (a cryptsetup keyfile, dropbear's host key): every directory of the cache
    is 0700, and a reused one gets the mode update-initramfs gave it (here 0600, as with such a hook)."""
    tree = _tree(tmp_path / "tree")
    cache = Cache(tmp_path / "cache")
    make = _fake_update_initramfs([])

    def private(t: Path, version: str, log: Callable[[str], None]) -> None:
        make(t, version, log)
        os.chmod(t / f"boot/initrd.img-{version}", 0o600)

    assert provide(tree, "amd64", V, cache, lambda _l: None, make=private)["reused"] is False
    for d in (cache.root, cache.root / "amd64", cache.root / "amd64" / V):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    other = _tree(tmp_path / "tree2")
    assert _provide(other, cache, [])["reused"] is True
    assert stat.S_IMODE((other / f"boot/initrd.img-{V}").stat().st_mode) == 0o600
