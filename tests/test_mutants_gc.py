"""Mutants of imagectl/catalogue/gc.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagectl.catalogue.gc import collect_garbage
from imagectl.store.base import ObjectEntry
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult, write_pattern

ARCH = "x86_64"


@pytest.fixture
def built(catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path) -> tuple[str, str]:
    """``wn:1`` published from a build directory (``publish --from-build``): returns (image sha256, build-record
    blob sha256), both blobs in the catalogue."""
    d = tmp_path / "build"
    d.mkdir()
    write_pattern(d / "wn-x86_64.qcow2", 4096, seed="built")
    record = {
        "format": 1,
        "target": {"name": "wn", "arch": ARCH, "hypervisor": "hvm", "os": "debian", "os_version": "12", "version": "1"},
        "images": [{"file": "wn-x86_64.qcow2", "format": "qcow2"}],
        "packages": [{"name": "bash", "version": "5.2"}],
    }
    (d / "wn-x86_64.build.json").write_text(json.dumps(record))
    r = cli("publish", "--from-build", d, *catalogue.args(), "--json")
    assert r.code == 0, r.err
    (published,) = json.loads(r.out)
    r = cli(
        "catalogue", "show", "wn:1", "--arch", ARCH, "--catalogue", catalogue.dir, "--root", catalogue.root, "--json"
    )
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    image_sha, record_sha = shown["sha256"], shown["build_record"]["sha256"]
    assert published["sha256"] == image_sha and shown["build_record"]["packages"] == 1
    blobs = catalogue.dir / "blobs" / "sha256"
    assert sorted(p.name for p in blobs.iterdir()) == sorted([image_sha, record_sha])
    return image_sha, record_sha


def test_gc_keeps_the_build_record_blob_of_a_published_image(
    catalogue: Catalogue, cli: Callable[..., CliResult], built: tuple[str, str]
) -> None:
    """Mutant: ``_referenced`` without the build-record keep. gc --grace 0 then deleted the record blob that the
    signed metadata of ``wn:1`` names (sha256 and size): a reference left dangling by gc itself."""
    image_sha, record_sha = built
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["removed"] == ["metadata/1.snapshot.json", "metadata/1.targets.json"]  # superseded by 2.*
    assert report["young"] == [] and report["skipped"] == []
    blobs = catalogue.dir / "blobs" / "sha256"
    assert sorted(p.name for p in blobs.iterdir()) == sorted([image_sha, record_sha])
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["problems"] == []


def test_gc_removes_a_build_record_blob_nothing_refers_to(
    catalogue: Catalogue, cli: Callable[..., CliResult], built: tuple[str, str]
) -> None:
    """The keep is by reference, not by kind: a record blob of a revoked version is an orphan like its image."""
    image_sha, record_sha = built
    assert cli("revoke", "wn:1", "--reason", "bad build", *catalogue.args()).code == 0
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["removed"]
    assert f"blobs/sha256/{image_sha}" in removed and f"blobs/sha256/{record_sha}" in removed
    assert list((catalogue.dir / "blobs" / "sha256").iterdir()) == []


@pytest.mark.parametrize("damage", ["missing", "tampered", "truncated"])
def test_verify_checks_the_build_record_blob(
    catalogue: Catalogue, cli: Callable[..., CliResult], built: tuple[str, str], damage: str
) -> None:
    """The signed metadata names the record blob (sha256, size): verify hashes it like an image blob."""
    _, record_sha = built
    blob = catalogue.dir / "blobs" / "sha256" / record_sha
    body = blob.read_bytes()
    tampered = body.replace(b'"', b"'", 1)
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code == 0 and json.loads(r.out)["blob_bytes_hashed"] > len(body), r.out  # image and record hashed
    blob.unlink()
    if damage == "tampered":
        blob.write_bytes(tampered)
    elif damage == "truncated":
        blob.write_bytes(body[:-1])
    r = cli("catalogue", "verify", catalogue.dir, "--json")
    assert r.code == 15, r.out
    [problem] = json.loads(r.out)["problems"]
    path = f"blobs/sha256/{record_sha}"
    assert (
        problem
        == {
            "missing": f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2 (build record): blob {path} is missing",
            "tampered": f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2 (build record): blob {path} has sha256 "
            f"{hashlib.sha256(tampered).hexdigest()}, signed is {record_sha}",
            "truncated": f"wn/1/{ARCH}/wn-1-{ARCH}.qcow2 (build record): blob {path} has {len(body) - 1} bytes, "
            f"signed length is {len(body)}",
        }[damage]
    )


class OrderedStore(LocalStore):
    """The catalogue's directory, listed in name order (a directory's own order is the file system's), with
    unfinished uploads to abort as an object store has them; records what gc asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.aborts: list[tuple[float, bool]] = []

    def list_entries(self, prefix: str, *, hidden: bool = False) -> Iterator[ObjectEntry]:
        return iter(sorted(super().list_entries(prefix, hidden=hidden), key=lambda e: e.key))

    def abort_stale_uploads(self, older_than: float, *, dry_run: bool = False) -> tuple[str, ...]:
        self.aborts.append((older_than, dry_run))
        return ("uploads/b", "uploads/a")


def _orphans(cat: Catalogue) -> Path:
    """In name order: a symlink, a young orphan, two old ones (5 and 7 bytes); the image blob is referenced."""
    blobs = cat.dir / "blobs" / "sha256"
    (blobs / "0-link").symlink_to("/etc/hostname")
    (blobs / "1-young").write_bytes(b"young")
    for name, data in (("2-old", b"12345"), ("3-old", b"1234567")):
        (blobs / name).write_bytes(data)
        os.utime(blobs / name, (time.time() - 7200, time.time() - 7200))
    return blobs


@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_reports_every_kind_of_entry_and_goes_on_after_each(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], dry_run: bool
) -> None:
    """Mutants of collect_garbage: each kind of entry (not a file, young, old) is reported and the listing goes on
    past it; the sizes add up; the counts, the dry run and the grace reach the report and the store."""
    assert cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH).code == 0
    blobs = _orphans(catalogue)
    store = OrderedStore(catalogue.dir)
    kwargs = {"dry_run": True} if dry_run else {}
    report = collect_garbage(store, grace=dt.timedelta(hours=1), **kwargs)
    assert report.as_json() == {
        "removed": ["blobs/sha256/2-old", "blobs/sha256/3-old"],
        "young": ["blobs/sha256/1-young", "metadata/1.snapshot.json", "metadata/1.targets.json"],  # just superseded
        "skipped": ["blobs/sha256/0-link: not a regular file; not followed, not removed"],
        "aborted_uploads": ["uploads/a", "uploads/b"],
        "referenced": 6,  # timestamp, snapshot, targets, image-wn, the image's blob and its target file
        "bytes_freed": 12,
        "dry_run": dry_run,
    }
    assert store.aborts == [(3600.0, dry_run)]
    assert (blobs / "2-old").exists() is dry_run and (blobs / "1-young").exists()


def test_gc_grace_zero_removes_orphans_whatever_their_time(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    """Mutant: ``age <= grace``. An orphan stamped in the future (a skewed clock) has age 0: grace 0 removes it."""
    assert cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH).code == 0
    orphan = catalogue.dir / "blobs" / "sha256" / "future"
    orphan.write_bytes(b"x")
    os.utime(orphan, (time.time() + 3600, time.time() + 3600))
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert "blobs/sha256/future" in json.loads(r.out)["removed"] and not orphan.exists()


def test_gc_reports_a_symlinked_blob_directory_by_its_prefix_and_goes_on(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """A symlinked blobs/sha256 is reported by its prefix and left alone, and gc goes on to the next prefix: an
    orphan target file is still removed (gc.collect_garbage__mutmut_20 of the third sample stopped there)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    catalogue.symlink_blobs(elsewhere)
    orphan = catalogue.dir / "targets" / "gone" / "1" / "x86_64" / "gone-1-x86_64.qcow2"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    r = cli("catalogue", "gc", catalogue.dir, "--grace", "0", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["skipped"] == ["blobs/sha256: a symlink or not a directory; not followed, nothing removed"]
    assert (elsewhere / "precious").read_text() == "keep"
    assert "targets/gone/1/x86_64/gone-1-x86_64.qcow2" in got["removed"] and not orphan.exists()
