"""``imagectl demo``: the embedded default job, end to end on a local-directory catalogue.

Creates (or reuses) a catalogue and keys under WORKDIR, builds the Debian demo recipe for this host's arch with
diskimage-builder, boots it under qemu to its login prompt, publishes it to the ``testing`` channel, lists the
catalogue, pulls the image back through the verified path with the pinned root, and checks the catalogue.
``--quick`` replaces build and boot with a small generated disk image (an MBR and one Linux partition), for a
host without the build tools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import time
from collections.abc import Callable
from pathlib import Path

from imagectl.catalogue.client import CatalogueReader
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.model import METADATA, ImageRef, host_arch
from imagectl.catalogue.publish import PublishRequest, init_catalogue, publish, publish_build
from imagectl.catalogue.verify import verify_catalogue
from imagectl.config import Config
from imagectl.errors import InvalidInputError, VerifyFailedError
from imagectl.pull import pull
from imagectl.resources import recipes_dir
from imagectl.store.digest import MEMO_DIR
from imagectl.store.local import LocalStore
from imagectl.text import count

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


DEMO_RECIPE = recipes_dir() / "demo" / "debian12-demo.yaml"


def _built_image(
    workdir: Path, recipe_path: Path, cfg: Config, boot: bool, say: Callable[[str], None], epoch: int | None = None
) -> Path:
    """Build (or reuse from the build cache) the recipe's hvm image for this host's arch (reproducibly at ``epoch``
    when given), boot-test it; return the build dir."""
    from imagectl.imaging.boottest import boot_test
    from imagectl.imaging.builder import BuildOptions, build_recipe
    from imagectl.recipe.model import load_recipe

    if not recipe_path.is_file():
        raise InvalidInputError(f"no demo recipe at {recipe_path}", hint="pass --recipe PATH, or --quick")
    recipe = load_recipe(recipe_path)
    out = workdir / "build"
    last = [0.0]

    def progress(line: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 15 or "cache" in line:  # one line every 15 s keeps a log readable
            last[0] = now
            say(f"   {line}")

    [built] = build_recipe(
        recipe,
        BuildOptions(
            output=out,
            cache_dir=cfg.cache_path,
            arches=[host_arch()],
            hypervisors=["hvm"],  # the demo boots the fully virtualised image (xen-pv: imagectl test --hypervisor)
            formats=["qcow2"],
            progress=progress,
            source_date_epoch=epoch,
        ),
    )
    say(f"2. {'reused' if built.cached else 'built'} {built.images[0]} ({built.seconds:.0f} s; record {built.record})")
    if boot:
        res = boot_test(
            built.images[0],
            arch=host_arch(),
            marker=recipe.data["boot_test"]["marker"],
            timeout=recipe.data["boot_test"]["timeout"],
            log_path=workdir / "console.log",
            on_progress=lambda stage: say(f"   boot: {stage}"),
        )
        say(f"   booted to {recipe.data['boot_test']['marker']!r} in {res.seconds:.0f} s under {res.accel}")
    return out


def run_demo(
    workdir: Path,
    cfg: Config,
    say: Callable[[str], None],
    *,
    quick: bool = False,
    boot: bool = True,
    recipe: Path = DEMO_RECIPE,
    epoch: int | None = None,
) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    catalogue, keydir = workdir / "catalogue", workdir / "keys"
    store = LocalStore(catalogue)
    if not store.exists(f"{METADATA}root.json"):
        res = init_catalogue(store, keydir, cfg.expiry_days())
        say(f"1. created catalogue {store.shown} (root sha256 {res.root_sha256})")
    else:
        say(f"1. reusing catalogue {store.shown}")
    arch = host_arch()
    keys = KeyRing(keydir)
    if quick:
        image = workdir / "demo-disk.raw"
        make_disk_image(image)
        req = PublishRequest(
            file=str(image), name="demo-disk", arch=arch, format="raw", os="debian", os_version="12", channel="testing"
        )
        records = [publish(store, keys, req, cfg.expiry_days()).record]
    else:
        build_dir = _built_image(workdir, recipe, cfg, boot, say, epoch)
        memo = cfg.cache_path / MEMO_DIR  # where the build filed its image's digests
        records = [
            r.record
            for r in publish_build(store, keys, build_dir, cfg.expiry_days(), channel="testing", hash_memo=memo)
        ]
    rec = records[0]
    say(f"3. published {rec.name}:{rec.version} ({arch}, {rec.size} bytes, sha256 {rec.sha256}) to channel testing")
    root = str(catalogue / "metadata" / "1.root.json")
    cfg = dataclasses.replace(cfg, root=root)
    out = workdir / "pulled"
    out.mkdir(exist_ok=True)
    with CatalogueReader(
        store, cfg.cache_path, cfg.root, lambda m: say(f"warning: {m}"), retries=cfg.retries
    ) as reader:
        images = reader.images(rec.name)
        say(f"4. catalogue lists {count(len(images), rec.name + ' image')}; newest {images[-1].version}")
        got = pull(reader, ImageRef(rec.name, channel="testing"), arch, str(out), cfg.cache_path, progress=False)
    say(f"5. pulled {rec.name}@testing -> {got.path} (sha256 verified against the signed metadata)")
    report = verify_catalogue(store)
    if report.problems:
        raise VerifyFailedError(f"demo catalogue has problems: {'; '.join(report.problems)}")
    say(f"6. catalogue verify: {report.roles} metadata files, {report.images} images, OK")
    return 0
