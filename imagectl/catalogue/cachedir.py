"""The user's cache directory for catalogue files, checked before anything in it is trusted (shared by the
deployer's reader, ``tuf/`` in :mod:`imagectl.catalogue.client`, and the publisher's cache of immutable metadata,
``publisher/`` in :mod:`imagectl.catalogue.metacache`, which must not import the reader: python-tuf's client and
its HTTP stack cost a publish ~0.2 s to import); the name of one catalogue's directory in the reader's part; and
the names of the pulled images and their locks, which pull writes and takes and ``imagectl cache prune``
(:mod:`imagectl.localcache`, which must not import pull either) removes and takes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from imagectl.errors import LocalIOError
from imagectl.fsio import Beneath
from imagectl.urls import safe_url

__all__ = ["IMAGES_DIR", "cache_key", "client_cache", "image_lock_name"]

IMAGES_DIR = "blobs/sha256"  # pulled images, below the cache: HEX (verified), HEX.part (an interrupted pull)


def image_lock_name(sha256: str) -> str:
    """The lock file, beside it in :data:`IMAGES_DIR`, that a pull of the image ``sha256`` holds while it
    fetches, checks or links it, and that prune takes (without waiting) before removing it."""
    return f".{sha256}.lock"


def client_cache(path: Path) -> Beneath:
    """The client cache at ``path`` (created mode 0700), checked before anything in it is trusted.

    Trusted metadata and verified blobs live there, so nobody else may be able to write to it: the directory
    must be owned by the user running imagectl and not writable by group or others. Inside it, every entry is
    reached without following symlinks (:class:`Beneath`). Raises LocalIOError otherwise.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something that is not a directory: said below
    except OSError as e:
        raise LocalIOError.from_os("create the client cache", path, e) from None
    try:
        st = os.stat(path)
    except OSError as e:
        raise LocalIOError.from_os("check the client cache", path, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LocalIOError(f"the client cache {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise LocalIOError(
            f"refusing the client cache {path}: it belongs to uid {st.st_uid}, not to this user ({os.geteuid()})",
            hint="use a cache of your own: --cache-dir DIR or IMAGECTL_CACHE_DIR",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        raise LocalIOError(
            f"refusing the client cache {path}: it is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}), "
            "so someone else could plant trusted metadata in it",
            hint=f"chmod go-w {path}",
        )
    return Beneath(path.resolve())


def cache_key(url: str) -> str:
    """The cache directory name of a catalogue: its URL without credentials, query or fragment, hashed. A password
    change does not lose the trusted metadata, and no credential ever reaches a file name or a file."""
    return hashlib.sha256(safe_url(url, keep_query=False).encode()).hexdigest()[:16]
