#!/usr/bin/env python3
"""What storing an image at its target file (``targets/…/HEX.NAME-VERSION-ARCH.FORMAT``, what every client
fetches) costs, per store, for a first version and for a second version of the same bytes (catalogue/README.md
§6), in one run, on an N MiB incompressible image (default 256 MiB):

- **directory**: the blob's copy into the catalogue (``LocalStore.upload_file``: read, hash, write, fsync) against
  the target file (``place_target``: a hard link, no bytes), and the bytes the directory holds afterwards;
- **S3 (SeaweedFS on 127.0.0.1)**: the first version (``S3Store.store_image``: one upload to the target file, with
  per-part SHA-256 checksums, and an empty pointer at the blob key) against ``aws s3 cp FILE s3://…`` (the
  baseline upload), then a second version of the same bytes (``store_image`` again: a server-side copy of the first
  target file, no byte through this machine) against ``aws s3 cp s3://a s3://b`` (the baseline server-side copy),
  and the bytes the bucket holds per target file afterwards.

Every figure is a median of ``--rounds`` runs, printed with its ratio to the baseline measured in the same run. It
reports; it never asserts. Everything lives in one temp directory removed at the end; SeaweedFS is stopped.

    python3 bench/targets.py                 # 256 MiB, 3 rounds
    python3 bench/targets.py --size-mib 32   # smoke check
    python3 bench/targets.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import log, write_random
from imagectl.catalogue.model import blob_key, target_file_key
from imagectl.store.digest import file_digest
from imagectl.store.local import LocalStore
from imagectl.store.s3 import S3Store
from tests.s3server import seaweedfs_server


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def directory(tmp: Path, image: Path, rounds: int) -> dict[str, Any]:
    copy, link = [], []
    for i in range(rounds):
        store = LocalStore(tmp / f"dir-{i}")
        digest = file_digest(str(image))
        blob = blob_key(digest.sha256)
        copy.append(timed(lambda s=store, d=digest, b=blob: s.upload_file(b, str(image), d)))  # type: ignore[misc]
        key = target_file_key(f"n/{i}/x86_64/n-{i}-x86_64.raw", digest.sha256)
        link.append(timed(lambda s=store, b=blob, k=key, n=digest.size: s.place_target(b, k, n)))  # type: ignore[misc]
        held = sum(
            {(p.stat().st_ino): p.stat().st_size for p in store.root.rglob("*") if p.is_file()}.values()
        )  # bytes on disk: one inode per hard-linked pair
        shutil.rmtree(store.root)
    return {
        "blob_copy_s": median(copy),
        "target_link_s": median(link),
        "link_over_copy": round(median(link) / median(copy), 5),
        "bytes_held_over_image": round(held / image.stat().st_size, 3),
    }


def s3(tmp: Path, image: Path, rounds: int) -> dict[str, Any]:
    aws = shutil.which("aws")
    with seaweedfs_server(tmp) as server:
        bucket = server.make_bucket("bench")
        env = {
            **os.environ,
            **server.env(),
            "AWS_CONFIG_FILE": str(tmp / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
        }
        os.environ.update(server.env())
        upload, base_up, copy, base_copy = [], [], [], []
        digest = file_digest(str(image), part_size=S3Store(bucket, "x", client=server.client()).part_size)
        for i in range(rounds):
            store = S3Store(bucket, f"r{i}", client=server.client())
            blob = blob_key(digest.sha256)
            first, second = (target_file_key(f"n/{v}/x86_64/n-{v}-x86_64.raw", digest.sha256) for v in ("1", "2"))
            upload.append(timed(lambda s=store, b=blob, k=first: s.store_image(b, k, str(image), digest)))  # type: ignore[misc]
            copy.append(timed(lambda s=store, b=blob, k=second: s.store_image(b, k, str(image), digest)))  # type: ignore[misc]
            if aws:
                dst = f"s3://{bucket}/aws{i}/blob"
                base_up.append(timed(lambda d=dst: run([aws, "s3", "cp", "--quiet", str(image), d], env)))  # type: ignore[misc]
                base_copy.append(
                    timed(lambda d=dst: run([aws, "s3", "cp", "--quiet", d, d + ".copy"], env))  # type: ignore[misc]
                )
        listed = server.client().list_objects_v2(Bucket=bucket, Prefix="r0/")
        held = sum(int(o["Size"]) for o in listed.get("Contents", []))
    out: dict[str, Any] = {
        "first_upload_s": median(upload),
        "second_version_copy_s": median(copy),
        "copy_over_upload": round(median(copy) / median(upload), 4),
        "bytes_held_per_target_file": round(held / 2 / image.stat().st_size, 3),
    }
    if aws:
        out.update(
            {
                "aws_cp_upload_s": median(base_up),
                "upload_over_aws_cp": round(median(upload) / median(base_up), 3),
                "aws_cp_server_copy_s": median(base_copy),
                "copy_over_aws_cp_copy": round(median(copy) / median(base_copy), 3),
            }
        )
    else:
        log("aws (awscli) not found: no aws s3 cp baseline")
    return out


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=3600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imagectl-bench-targets-"))
    try:
        image = tmp / "image.raw"
        log(f"writing a {args.size_mib} MiB image")
        write_random(image, args.size_mib)
        result = {
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "directory": directory(tmp, image, args.rounds),
            "s3": s3(tmp, image, args.rounds),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    d, s = result["directory"], result["s3"]
    print(f"target files, {args.size_mib} MiB image, median of {args.rounds}")
    print(
        f"  directory: blob copy {d['blob_copy_s']:.3f} s, target hard link {d['target_link_s'] * 1000:.2f} ms"
        f" ({d['link_over_copy']:.5f} x the copy); bytes held / image {d['bytes_held_over_image']}"
    )
    print(
        f"  S3: first version (upload to the target file) {s['first_upload_s']:.3f} s, second version of the same"
        f" bytes (server-side copy) {s['second_version_copy_s']:.3f} s ({s['copy_over_upload']:.3f} x the upload);"
        f" bytes held / target file {s['bytes_held_per_target_file']}"
    )
    if "aws_cp_upload_s" in s:
        print(
            f"  baselines: aws s3 cp upload {s['aws_cp_upload_s']:.3f} s (imagectl upload {s['upload_over_aws_cp']}"
            f" x), aws s3 cp server-side copy {s['aws_cp_server_copy_s']:.3f} s (imagectl copy"
            f" {s['copy_over_aws_cp_copy']} x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
