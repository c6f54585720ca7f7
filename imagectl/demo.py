"""``imagectl demo``: the embedded default job, end to end on a local-directory catalogue.

Creates (or reuses) a catalogue and keys under WORKDIR, generates a small raw disk image (an MBR partition table
and one Linux partition), publishes it, lists the catalogue, pulls the image back through the verified path
with the pinned root, and checks the catalogue. Until image builds land this stands in for a built image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import METADATA, ImageRef, host_arch
from imagectl.catalogue.publish import PublishRequest, init_catalogue, publish
from imagectl.catalogue.verify import verify_catalogue
from imagectl.config import Config
from imagectl.errors import VerifyFailedError
from imagectl.pull import pull
from imagectl.store.local import LocalStore

__all__ = ["make_disk_image", "run_demo"]

SECTOR = 512


def make_disk_image(path: Path, size_mib: int = 16, label: str = "imagectl-demo") -> None:
    """A raw disk: MBR with one bootable Linux (0x83) partition from 1 MiB to the end, filled deterministically."""
    sectors = size_mib * 1024 * 1024 // SECTOR
    start = 2048
    entry = struct.pack("<B3sB3sII", 0x80, b"\x00\x02\x00", 0x83, b"\xff\xff\xff", start, sectors - start)
    mbr = bytearray(SECTOR)
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    seed = hashlib.sha256(label.encode()).digest()
    with path.open("wb") as f:
        f.write(mbr)
        f.write(bytes((start - 1) * SECTOR))
        block = (seed * (1 << 15))[: 1 << 20]
        for _ in range((sectors - start) * SECTOR // len(block)):
            f.write(block)


def run_demo(workdir: Path, cfg: Config, say: Callable[[str], None]) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    catalogue, keydir = workdir / "catalogue", workdir / "keys"
    store = LocalStore(catalogue)
    if not store.exists(f"{METADATA}root.json"):
        res = init_catalogue(store, keydir, cfg.expiry_days())
        say(f"1. created catalogue {store.url} (root sha256 {res.root_sha256})")
    else:
        say(f"1. reusing catalogue {store.url}")
    image = workdir / "demo-disk.raw"
    make_disk_image(image)
    arch = host_arch()
    req = PublishRequest(
        file=str(image), name="demo-disk", arch=arch, format="raw", os="debian", os_version="12", channel="testing"
    )
    pub = publish(store, KeyRing(keydir), req, cfg.expiry_days())
    say(f"2. published demo-disk:{pub.record.version} ({arch}, {pub.record.size} bytes, sha256 {pub.record.sha256})")
    root = str(catalogue / "metadata" / "1.root.json")
    cfg = dataclasses.replace(cfg, root=root)
    out = workdir / "pulled"
    out.mkdir(exist_ok=True)
    with CatalogueReader(store, cfg.cache_path, cfg.root, lambda m: say(f"warning: {m}")) as reader:
        images = reader.images("demo-disk")
        say(f"3. catalogue lists {len(images)} demo-disk image(s); newest {images[-1].version}")
        got = pull(reader, ImageRef("demo-disk", channel="testing"), arch, str(out), cfg.cache_path, progress=False)
    say(f"4. pulled demo-disk@testing -> {got.path} (sha256 verified against the signed metadata)")
    report = verify_catalogue(store)
    if report.problems:
        raise VerifyFailedError(f"demo catalogue has problems: {'; '.join(report.problems)}")
    say(f"5. catalogue verify: {report.roles} metadata files, {report.images} images, OK")
    return 0
