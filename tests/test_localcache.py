"""``imagectl cache show`` / ``imagectl cache prune`` (imagectl/localcache.py) on real files: what goes, what stays,
and the locks and marks that keep a running build or pull safe. The real pull and the real build's cache are
pruned in test_pull_http.py and test_build_integration.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl import localcache
from imagectl.imaging.pkgcache import BaseCache, PackageCache
from imagectl.localcache import IN_USE_S, parse_size, prune, scan
from imagectl.pull import _locked
from tests.conftest import CliResult
from tests.test_pull_http import tmpfs
from tests.test_schema import assert_valid, load_schema, validator

DAY = 86400


def _hex(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _age(path: Path, days: float) -> None:
    """Make ``path`` last used (and modified) ``days`` ago."""
    t = time.time() - days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


class Layout:
    """A cache directory with entries of each area, each used ``days`` ago and ``size`` bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image(self, seed: str, days: float, size: int = 1000, *, part: bool = False) -> Path:
        d = self.root / "blobs" / "sha256"
        d.mkdir(parents=True, exist_ok=True)
        p = d / (_hex(seed) + (".part" if part else ""))
        p.write_bytes(b"i" * size)
        (d / f".{_hex(seed)}.lock").touch()
        _age(p, days)
        return p

    def build(self, seed: str, days: float, size: int = 2000) -> Path:
        d = self.root / "builds" / _hex(seed)
        d.mkdir(parents=True)
        (d / "demo.qcow2").write_bytes(b"b" * size)
        (d / "build.json").write_text("{}")
        _age(d / "build.json", days)
        return d

    def package(self, seed: str, days: float, size: int = 300, family: str = "debian") -> Path:
        d = self.root / "packages" / family / "sha256"
        d.mkdir(parents=True, exist_ok=True)
        data = seed.encode() * (size // len(seed))
        p = d / hashlib.sha256(data).hexdigest()
        p.write_bytes(data)
        _age(p, days)
        return p

    def base(self, seed: str, days: float, size: int = 500) -> Path:
        d = self.root / "base" / "debian" / _hex(seed)
        d.mkdir(parents=True)
        (d / "base.tar.gz").write_bytes(b"t" * size)
        (d / "base.json").write_text("{}")
        _age(d / "base.tar.gz", days)
        return d

    def slc(self, seed: str, days: float, size: int = 400, kind: str = "packages") -> Path:
        """An SLC download as the bootstrap keeps it: a package directory per digest, a primary index file, or a
        yum 2.0 package's directory (its .rpm, .hdr and .sha256)."""
        if kind == "packages":
            d = self.root / "slc" / "packages" / "sha256" / _hex(seed)
            d.mkdir(parents=True)
            files = [d / f"{seed}-1.0-1.el6.x86_64.rpm"]
        elif kind == "repodata":
            d = self.root / "slc" / "repodata" / "sha1" / _hex(seed)[:40]
            d.parent.mkdir(parents=True, exist_ok=True)
            files = [d]
        else:
            d = self.root / "slc" / "headers" / f"{seed}-0-1.0-1.i386"
            d.mkdir(parents=True)
            files = [d / f"{seed}-1.0-1.i386.rpm", d / f"{seed}-0-1.0-1.i386.hdr", d / f"{seed}-1.0-1.i386.rpm.sha256"]
        for f in files:
            f.write_bytes(b"s" * (size // len(files)))
            _age(f, days)
        if d.is_dir():
            _age(d, days)
        return d


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "cache")


def test_unused_for_removes_the_old_entries_of_every_area_and_nothing_else(layout: Layout, tmp_path: Path) -> None:
    old = [layout.image("old", 40), layout.build("old", 40), layout.package("old", 40), layout.base("old", 40)]
    old.append(layout.image("torn", 45, part=True))
    new = [layout.image("new", 2), layout.build("new", 2), layout.package("new", 2), layout.base("new", 2)]
    trusted = layout.root / "tuf" / "cat" / "root.json"  # the metadata this host trusts: never pruned
    trusted.parent.mkdir(parents=True)
    trusted.write_text("{}")
    _age(trusted, 400)
    outside = tmp_path / "outside"
    outside.write_text("not the cache's")
    _age(outside, 400)
    planted = layout.root / "blobs" / "sha256" / _hex("planted")  # a symlink with an image's name
    planted.symlink_to(outside)
    stray = layout.root / "builds" / "notakey"
    stray.mkdir()
    _age(stray, 400)

    report = prune(layout.root, unused_for=30 * DAY)

    assert sorted(e.rel for e in report.removed) == sorted(str(p.relative_to(layout.root)) for p in old)
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in new)
    assert trusted.exists() and outside.read_text() == "not the cache's" and planted.is_symlink() and stray.is_dir()
    assert report.freed == 1000 + (2000 + 2) + 300 + (500 + 2) + 1000
    # the image's lock file went with it (pull takes a new one); the new image keeps its own
    assert not (layout.root / "blobs" / "sha256" / f".{_hex('old')}.lock").exists()
    assert (layout.root / "blobs" / "sha256" / f".{_hex('new')}.lock").exists()
    assert report.remaining_bytes == sum(e.size for e in scan(layout.root))
    # nothing left behind by the renames
    assert [p.name for p in (layout.root / "builds").iterdir() if p.name.startswith(".")] == []


def test_what_killed_writers_left_goes_once_a_day_old(layout: Layout, cli: Callable[..., CliResult]) -> None:
    """A build killed while filing its entry leaves builds/.KEY.tmp; a package download, .HEX.RANDOM.part; a base
    system, .KEY.PID.tmp; a prune, .NAME.prune-PID.tmp. Shown, and removed by any prune once a day old (a live
    writer renames its temp within seconds), whatever the options; young ones stay."""
    keep = layout.package("keep", 2)
    builds = layout.root / "builds"
    builds.mkdir()
    staging = builds / f".{_hex('killed')}.tmp"
    staging.mkdir()
    (staging / "demo.qcow2").write_bytes(b"x" * 700)
    pruning = builds / f".{_hex('pruning')}.prune-4242.tmp"
    pruning.mkdir()
    part = keep.parent / f".{_hex('dl')}.0123abcd.part"
    part.write_bytes(b"p" * 50)
    base = layout.root / "base" / "debian"
    base.mkdir(parents=True)
    base_staging = base / f".{_hex('base')}.977.tmp"
    base_staging.mkdir()
    young = builds / f".{_hex('running')}.tmp"
    young.mkdir()
    for p in (staging, pruning, part, base_staging):
        _age(p, 2)
    r = cli("cache", "show", "--cache-dir", layout.root, "--json")
    assert len(json.loads(r.out)["leftovers"]) == 5
    assert_valid("cache-show", json.loads(r.out), "cache show --json with leftovers")
    assert json.loads(r.out)["areas"]["builds"]["entries"] == 0
    report = prune(layout.root, unused_for=365 * DAY)
    assert sorted(e.rel for e in report.removed) == sorted(
        str(p.relative_to(layout.root)) for p in (staging, pruning, part, base_staging)
    )
    assert report.freed == 750 and keep.exists() and young.is_dir()
    assert sorted(p.name for p in builds.iterdir()) == [young.name]
    # the strictest options still leave a young temp alone (its writer may be alive), and take the rest
    _age(young, 0.5)
    report = prune(layout.root, unused_for=0, max_size=0)
    assert [e.rel for e in report.removed] == [str(keep.relative_to(layout.root))] and young.is_dir()


def test_max_size_removes_the_least_recently_used_first(layout: Layout) -> None:
    a = layout.image("a", 9, size=1000)
    b = layout.package("b", 5, size=1000)
    c = layout.image("c", 3, size=1000)
    d = layout.package("d", 1, size=1000)
    report = prune(layout.root, unused_for=None, max_size=2500)
    assert [e.rel for e in report.removed] == [str(p.relative_to(layout.root)) for p in (a, b)]
    assert c.exists() and d.exists() and not a.exists() and not b.exists()
    assert report.remaining_bytes == 2000


def test_an_entry_used_in_the_last_hour_is_kept_even_past_max_size(layout: Layout) -> None:
    old = layout.image("old", 3)
    recent = layout.image("recent", IN_USE_S / DAY / 2)
    report = prune(layout.root, unused_for=0, max_size=0)
    assert [e.rel for e in report.removed] == [str(old.relative_to(layout.root))]
    assert [e.rel for e in report.kept_in_use] == [str(recent.relative_to(layout.root))]
    assert recent.exists()


def test_dry_run_lists_and_removes_nothing(layout: Layout) -> None:
    paths = [layout.image("x", 40), layout.build("x", 40), layout.package("x", 40), layout.base("x", 40)]
    report = prune(layout.root, unused_for=30 * DAY, dry_run=True)
    assert len(report.removed) == 4 and all(p.exists() for p in paths)


def test_freed_counts_only_bytes_no_other_name_links(layout: Layout, tmp_path: Path) -> None:
    """A pulled image may be the user's file (a hard link); a build's images are its output's: removing the cache
    entry frees nothing then, and the user's file is untouched."""
    img = layout.image("linked", 40, size=4096)
    users = tmp_path / "mine.qcow2"
    os.link(img, users)
    build = layout.build("linked", 40, size=8192)
    os.link(build / "demo.qcow2", tmp_path / "out.qcow2")
    [e_img] = [e for e in scan(layout.root) if e.area == "images"]
    assert (e_img.size, e_img.freed) == (4096, 0)
    report = prune(layout.root, unused_for=DAY)
    assert len(report.removed) == 2 and report.freed == 2  # build.json alone
    assert users.read_bytes() == b"i" * 4096 and (tmp_path / "out.qcow2").stat().st_size == 8192


def test_an_image_a_pull_holds_is_kept(layout: Layout) -> None:
    img = layout.image("held", 40)
    with open(img.with_name(f".{img.name}.lock"), "r+b") as lock:  # what pull's _locked holds while it works
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        report = prune(layout.root, unused_for=DAY)
    assert report.removed == [] and [e.rel for e in report.kept_in_use] == [str(img.relative_to(layout.root))]
    assert img.exists()
    assert [e.rel for e in prune(layout.root, unused_for=DAY).removed] == [str(img.relative_to(layout.root))]


def test_an_entry_used_after_the_scan_is_kept(layout: Layout) -> None:
    """The last use is read again, under the lock, just before removing: a build that took a package after the
    scan keeps it."""
    pkg = layout.package("late", 40)
    [entry] = scan(layout.root)
    assert PackageCache(layout.root, "debian").get(pkg.name, pkg.stat().st_size) == pkg  # marks it used
    assert localcache._remove(layout.root, entry, time.time() - IN_USE_S) is False
    assert pkg.exists()


def test_pull_takes_its_lock_again_when_prune_removed_the_lock_file(tmp_path: Path) -> None:
    """Prune unlinks an image's lock file while holding it; a pull waiting on that file must not think it holds the
    lock (a third pull would lock the new file at the same time): it locks the file at the name now."""
    d = tmp_path / "blobs"
    d.mkdir()
    name = ".x.lock"
    holder = open(d / name, "w+b")  # noqa: SIM115 - held across the thread's start
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    holding, release = threading.Event(), threading.Event()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:

        def pull_side() -> None:
            with _locked(dfd, name):
                holding.set()
                release.wait(10)

        t = threading.Thread(target=pull_side)
        t.start()
        time.sleep(0.3)  # the pull waits on the file prune holds
        os.unlink(d / name)  # what prune does, still holding the lock
        holder.close()
        assert holding.wait(10)
        # a third pull, now: the pull above must hold the lock of the file at the name, so this one must wait
        with open(d / name, "a+b") as third, pytest.raises(BlockingIOError):
            fcntl.flock(third.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        release.set()
        t.join(10)
        assert not t.is_alive()
    finally:
        release.set()
        os.close(dfd)


def test_serving_marks_the_access_time_and_keeps_the_modification_time(layout: Layout) -> None:
    pkg = layout.package("mark", 40)
    before = pkg.stat()
    assert PackageCache(layout.root, "debian").get(pkg.name, before.st_size) == pkg
    after = pkg.stat()
    assert after.st_mtime_ns == before.st_mtime_ns and time.time() - after.st_atime < 60
    base = layout.base("mark", 40)
    meta = {"sha256": hashlib.sha256(b"t" * 500).hexdigest(), "size": 500}
    (base / "base.json").write_text(json.dumps(meta))
    mtime = (base / "base.tar.gz").stat().st_mtime_ns
    assert BaseCache(layout.root, "debian").find(base.name) == base / "base.tar.gz"
    st = (base / "base.tar.gz").stat()
    assert st.st_mtime_ns == mtime and time.time() - st.st_atime < 60
    assert {e.rel for e in prune(layout.root, unused_for=None, max_size=0).kept_in_use} == {
        str(pkg.relative_to(layout.root)),
        str(base.relative_to(layout.root)),
    }


@pytest.mark.parametrize("how", ["symlinked-area", "others-can-write"])
def test_a_cache_others_could_redirect_is_refused(
    layout: Layout, tmp_path: Path, cli: Callable[..., CliResult], how: str
) -> None:
    """Entries are removed by path: an area directory that is a symlink (or one others may replace with one) would
    send the removal elsewhere. Refused in one line, exit 14, nothing removed there."""
    elsewhere = tmp_path / "elsewhere"
    victim = elsewhere / _hex("victim")
    victim.mkdir(parents=True)
    (victim / "build.json").write_text("precious")
    _age(victim / "build.json", 400)
    old = layout.package("old", 40)
    if how == "symlinked-area":
        (layout.root / "builds").symlink_to(elsewhere)
        expected = f"imagectl: error: refusing to prune the cache: {layout.root / 'builds'} is not a directory"
    else:
        os.chmod(layout.root / "packages", 0o777)
        expected = f"imagectl: error: refusing to prune the cache: {layout.root / 'packages'} is writable by others"
    r = cli("cache", "prune", "--cache-dir", layout.root, "--unused-for", "1")
    assert r.code == 14 and r.err.splitlines()[0].startswith(expected), r.err
    assert (victim / "build.json").read_text() == "precious" and old.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("500M", 500 << 20), ("20G", 20 << 30), ("1.5T", int(1.5 * (1 << 40))), ("2GiB", 2 << 30)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_cli_show_and_prune(layout: Layout, cli: Callable[..., CliResult]) -> None:
    layout.image("old", 40, size=3000)
    layout.package("new", 2)
    r = cli("cache", "show", "--cache-dir", layout.root, "--json")
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    images = shown["areas"]["images"]
    assert (images["entries"], images["bytes"], images["bytes_freed_if_removed"]) == (1, 3000, 3000)
    assert abs(images["least_recently_used"] - (time.time() - 40 * DAY)) < 60
    assert shown["areas"]["packages"]["entries"] == 1 and shown["areas"]["builds"]["entries"] == 0
    assert_valid("cache-show", shown, "cache show --json")
    r = cli("cache", "prune", "--cache-dir", layout.root, "--max-size", "1", "--dry-run", "--json")
    assert r.code == 0, r.err
    dry = json.loads(r.out)
    assert_valid("cache-prune", dry, "cache prune --dry-run --json")
    assert [e["path"].split("/")[0] for e in dry["removed"]] == ["blobs", "packages"]  # least recently used first
    r = cli("cache", "prune", "--cache-dir", layout.root, "--unused-for", "30")
    assert r.code == 0, r.err
    assert f"removed: blobs/sha256/{_hex('old')}" in r.out
    assert "removed 1 entry, 2.9 KiB freed" in r.out.splitlines()[-1], r.out
    r = cli("cache", "show", "--cache-dir", layout.root)
    assert "images     0 entries, 0 B" in r.out and "packages   1 entry" in r.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say what to prune: --unused-for DAYS, --max-size SIZE, or both"),
        (("--max-size", "3X"), "--max-size takes a size such as 20G, 500M or 1.5T, got '3X'"),
        (("--unused-for", "-1"), "--unused-for must be a number at least 0 and at most 3650, got '-1'"),
        (("--unused-for", "nan"), "--unused-for must be a number at least 0 and at most 3650, got 'nan'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    layout: Layout, cli: Callable[..., CliResult], args: tuple[str, ...], message: str
) -> None:
    kept = layout.image("kept", 40)
    r = cli("cache", "prune", "--cache-dir", layout.root, *args)
    assert r.code == 3 and r.err.strip() == f"imagectl: error: {message}", r.err
    assert kept.exists()


def test_the_cache_schemas_say_what_the_code_writes_and_refuse_the_rest(layout: Layout) -> None:
    """The schemas' enums are localcache's areas and kept parts, an entry of each area validates, and each
    schema refuses malformed documents: a path outside its area or climbing out, a missing member, a stray one."""
    show, prune_schema = load_schema("cache-show"), load_schema("cache-prune")
    assert list(show["properties"]["areas"]["required"]) == list(localcache.AREAS)
    assert show["properties"]["kept"]["propertyNames"]["enum"] == list(localcache.KEPT)
    assert prune_schema["$defs"]["cache_entry"]["properties"]["area"]["enum"] == list(localcache.AREAS)
    for days, made in enumerate((layout.image("i", 40), layout.build("b", 40), layout.package("p", 40))):
        assert made.exists() and days >= 0
    layout.base("a", 40)
    layout.slc("s", 40, kind="headers")
    made = prune(layout.root, unused_for=30 * DAY, dry_run=True).as_json()
    assert {e["area"] for e in made["removed"]} == set(localcache.AREAS)
    assert_valid("cache-prune", made)
    check = validator("cache-prune")
    entry = made["removed"][0]
    bad = [
        {**made, "removed": [{**entry, "path": "../" + entry["path"]}]},
        {**made, "removed": [{**entry, "area": "base" if entry["area"] != "base" else "images"}]},
        {**made, "removed": [{**entry, "path": entry["path"] + "\n"}]},
        {**made, "removed": [{k: v for k, v in entry.items() if k != "bytes_freed"}]},
        {**made, "removed": [{**entry, "bytes": -1}]},
        {**made, "extra": 1},
        {k: v for k, v in made.items() if k != "remaining_bytes"},
    ]
    for doc in bad:
        assert not check.is_valid(doc), doc
    shown = validator("cache-show")
    good = {"cache_dir": str(layout.root), "areas": localcache.area_totals(scan(layout.root)), "leftovers": [],
            "kept": {"tuf": 0}}  # fmt: skip
    assert shown.is_valid(good)
    assert not shown.is_valid({**good, "kept": {"blobs": 1}})
    assert not shown.is_valid({**good, "leftovers": [{**entry, "area": "slc"}]})
    assert not shown.is_valid({**good, "areas": {k: v for k, v in good["areas"].items() if k != "base"}})


def test_slc_downloads_go_when_unused_and_never_under_a_running_bootstrap(layout: Layout) -> None:
    """The SLC bootstrap's downloads are an area: packages, primary indexes and yum 2.0 packages unused for long
    go (a directory by the latest use of its files), young ones stay; nothing is removed while a bootstrap holds
    the cache's lock shared (as stage 1 does until it has unpacked), and odd names and symlinks stay."""
    from imagectl.imaging.pkgcache import download_cache_lock, locked

    old = [layout.slc("bash", 40), layout.slc("primary", 40, kind="repodata"), layout.slc("glibc", 40, kind="headers")]
    touched = layout.slc("yum", 40)
    os.utime(next(touched.iterdir()), (time.time() - 2 * DAY, time.time() - 40 * DAY))  # its .rpm served 2 days ago
    stray = layout.root / "slc" / "packages" / "sha256" / "notadigest"
    stray.mkdir()
    _age(stray, 400)
    planted = layout.root / "slc" / "headers" / "evil-0-1-1.x86_64"
    planted.symlink_to(layout.root.parent)
    areas = localcache.area_totals(scan(layout.root))
    assert areas["slc"]["entries"] == 4 and areas["slc"]["bytes"] == 4 * 400 - 1  # 3 files of 133 bytes
    with locked(download_cache_lock(layout.root / "slc"), shared=True):
        report = prune(layout.root, unused_for=30 * DAY)
        assert report.removed == [] and len(report.kept_in_use) == 3 and all(p.exists() for p in old)
    report = prune(layout.root, unused_for=30 * DAY)
    assert sorted(e.rel for e in report.removed) == sorted(str(p.relative_to(layout.root)) for p in old)
    assert not any(p.exists() for p in old) and touched.is_dir() and stray.is_dir() and planted.is_symlink()
    assert report.freed == 3 * 400 - 1 and report.remaining_bytes == 400
    assert_valid("cache-prune", report.as_json())


def test_a_killed_index_download_is_a_leftover(layout: Layout) -> None:
    """An index download killed midway leaves ``.DIGEST.RANDOM.part`` beside the indexes: gone once a day old."""
    primary = layout.slc("primary", 2, kind="repodata")
    part = primary.with_name(f".{_hex('next')}.0a1b2c3d.part")
    part.write_bytes(b"p" * 10)
    _age(part, 2)
    [left] = [e for e in scan(layout.root) if e.leftover]
    assert (left.area, left.rel) == ("slc", str(part.relative_to(layout.root)))
    report = prune(layout.root, unused_for=30 * DAY)
    assert [e.rel for e in report.removed] == [left.rel] and primary.exists() and not part.exists()


def test_slc_digest_names_are_the_repository_readers(layout: Layout) -> None:
    from imagectl.imaging.slc import repo

    assert set(localcache.SLC_ALGOS) == set(repo._HASHES.values())


def _dead_pid() -> int:
    """The number of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_working_directory_of_a_killed_build_is_a_leftover(layout: Layout, cli: Callable[..., CliResult]) -> None:
    """``work/NAME.PID``: a build removes its own; one whose process is gone (killed) is a leftover of the builds
    area, removed once a day old. A live build's, a young one, and one with something mounted below it stay;
    ``cache show`` counts the leftover once (not also in work/'s kept bytes)."""
    work = layout.root / "work"
    killed, young, live = work / f"demo.{_dead_pid()}", work / f"slc6.{_dead_pid()}", work / f"demo.{os.getpid()}"
    for d in (killed, young, live):
        (d / "dib").mkdir(parents=True)
        (d / "dib" / "base.tar.gz").write_bytes(b"w" * 600)
    for d in (killed, live):
        _age(d, 2)
    _age(young, 0.5)
    r = cli("cache", "show", "--cache-dir", layout.root, "--json")
    shown = json.loads(r.out)
    assert_valid("cache-show", shown, "cache show --json with a killed build's work directory")
    assert sorted((e["area"], e["path"], e["bytes"]) for e in shown["leftovers"]) == [
        ("builds", f"work/{killed.name}", 600),
        ("builds", f"work/{young.name}", 600),
    ]
    assert shown["kept"]["work"] == 600  # the live build's
    report = prune(layout.root, unused_for=365 * DAY)
    assert [e.rel for e in report.removed] == [f"work/{killed.name}"] and report.freed == 600
    assert not killed.exists() and young.is_dir() and live.is_dir()
    assert_valid("cache-prune", report.as_json())


def test_a_tree_with_something_mounted_below_is_never_walked_into_or_removed(layout: Layout) -> None:
    """A killed build may leave a mount below its working directory: that directory is not a leftover (removing
    it would reach into the mounted filesystem), and sizes never count files across a mount point."""
    killed = layout.root / "work" / f"demo.{_dead_pid()}"
    inner = killed / "mnt"
    inner.mkdir(parents=True)
    (killed / "log").write_bytes(b"l" * 100)
    _age(killed, 2)
    with tmpfs("1M", at=inner):
        (inner / "mounted-file").write_bytes(b"m" * 5000)
        assert localcache._mounted_below(killed) and localcache._mounted_below(inner)
        assert not localcache._mounted_below(layout.root / "builds")
        assert localcache._tree_sizes(killed) == (100, 100)  # the tmpfs's file is not counted
        assert [e for e in scan(layout.root) if e.rel.startswith("work/")] == []
        report = prune(layout.root, unused_for=0, max_size=0)
        assert report.removed == [] and (inner / "mounted-file").read_bytes() == b"m" * 5000
    assert [e.rel for e in scan(layout.root) if e.leftover] == [f"work/{killed.name}"]  # unmounted: a leftover
