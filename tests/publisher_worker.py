"""A publisher process for the concurrency and crash tests: ``python -m tests.publisher_worker CAT KEYS NAME N SEED``
publishes N distinct images under automatic versions, one after another, and prints each version it got.

Like ``imagectl publish``, it keeps an S3 catalogue's metadata in the publisher cache under ``IMAGECTL_CACHE_DIR``
when that is set (the tests set one per test, so the workers of one test share it, as publishers on one host do)."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import MetadataCache
from imagectl.catalogue.publish import PublishRequest, publish
from imagectl.store import open_store

EXPIRY = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}


def main() -> int:
    cat, keys, name, count, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    size = int(sys.argv[6]) if len(sys.argv) > 6 else 64 * 1024
    store, ring = open_store(cat), KeyRing(keys)
    cache_dir = os.environ.get("IMAGECTL_CACHE_DIR")
    meta_cache = MetadataCache(Path(cache_dir)) if cache_dir and store.cache_metadata else None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            image = Path(tmp) / f"{seed}-{i}.raw"
            block = hashlib.sha256(f"{seed}-{i}".encode()).digest() * 2048
            image.write_bytes((block * (size // len(block) + 1))[:size])
            req = PublishRequest(file=str(image), name=name, arch="x86_64")
            res = publish(store, ring, req, EXPIRY, meta_cache=meta_cache)
            print(res.record.version, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
