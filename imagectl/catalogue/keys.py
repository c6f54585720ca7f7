"""Signing keys on disk: ed25519, PEM/PKCS#8, one file per key, private files mode 0600.

Which role a key belongs to is decided by the signed metadata (root lists the top-level keys, targets lists the
keys of the image roles), not by file names: the key ring loads every ``*.key`` file in the directory and signs
with those the metadata asks for. File names (``root-1.key``) are only for people.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from imagectl.errors import KeyProblemError
from imagectl.fsio import read_regular
from imagectl.text import count

__all__ = ["KeyRing", "generate_key"]

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")


KEY_MAX = 64 << 10  # bytes: an ed25519 PEM is ~120; anything this large is not a key


def _check_dir(keydir: Path) -> None:
    if not keydir.exists():
        raise KeyProblemError(f"key directory {keydir} does not exist", hint="pass --keys DIR or set IMAGECTL_KEYS")
    if not keydir.is_dir():
        raise KeyProblemError(
            f"--keys names {keydir}, which is not a directory",
            hint="--keys takes the directory that holds the *.key files",
        )
    if not os.access(keydir, os.R_OK | os.X_OK):
        raise KeyProblemError(f"key directory {keydir} is not readable")


def generate_key(keydir: Path, role: str) -> CryptoSigner:
    """Create a new ed25519 key file ``ROLE-N.key`` (mode 0600, never overwriting) and return its signer."""
    keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer = CryptoSigner.generate_ed25519()
    n = 1
    while (keydir / f"{role}-{n}.key").exists():
        n += 1
    path = keydir / f"{role}-{n}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
    except OSError as e:
        raise KeyProblemError(f"cannot write key {path}: {e.strerror}") from None
    return signer


class KeyRing:
    """Every private key in one directory, indexed by TUF key id."""

    def __init__(self, keydir: str | Path) -> None:
        self.dir = Path(keydir)
        _check_dir(self.dir)
        self.signers: dict[str, CryptoSigner] = {}
        self.paths: dict[str, Path] = {}
        for path in sorted(self.dir.glob("*.key")):
            signer = self._load(path)
            self.signers[signer.public_key.keyid] = signer
            self.paths[signer.public_key.keyid] = path

    @staticmethod
    def _load(path: Path) -> CryptoSigner:
        """One private key file: a regular file (a FIFO or device is refused without blocking) that no group or
        other user may read, write or execute. Raises KeyProblemError."""

        def owner_only(st: os.stat_result) -> None:
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                how = "readable" if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) else "writable or executable"
                raise KeyProblemError(
                    f"private key {path} is {how} by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
                    hint=f"chmod 600 {path}",
                )

        data = read_regular(path, KEY_MAX, what="private key", error=KeyProblemError, check=owner_only)
        try:
            private = load_pem_private_key(data, password=None)
            return CryptoSigner(private)
        except (ValueError, TypeError) as e:
            raise KeyProblemError(f"{path} is not an unencrypted PEM private key: {e}") from None

    def signers_for(self, role: str, keyids: list[str], threshold: int) -> list[CryptoSigner]:
        """The signers for ``role``'s key ids; raises KeyProblemError unless at least ``threshold`` are here."""
        found = [self.signers[k] for k in keyids if k in self.signers]
        if len(found) < threshold:
            raise KeyProblemError(
                f"need {count(threshold, role + ' key')} to sign, found {len(found)} in {self.dir}",
                hint=f"the {role} key ids are {', '.join(k[:12] for k in keyids)}",
            )
        return found

    def public(self, keyid: str) -> SSlibKey:
        return self.signers[keyid].public_key
