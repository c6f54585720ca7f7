"""Check an .rpm's OpenPGP signatures against pinned public keys, before anything of the package is unpacked.

The repository metadata of an SLC mirror is unsigned, so a package's checksum only proves it is what the mirror
meant to serve; the signature proves who built it. rpm keeps its signatures in the signature header:
``RSAHEADER`` (268) and ``DSAHEADER`` (267) sign the header, ``PGP`` (1002) and ``GPG`` (1005) sign header and
payload. Each signature found is checked with GnuPG's ``gpgv`` against a keyring made (``gpg --import``, then
``--export``) from the pinned key files only, in a private temporary GnuPG home; every one must verify, and at
least one must be there. A key that its key file revokes counts for nothing; an expired one still counts (the
packages of an ended release were signed while it was valid). When only the header is signed, the payload is
bound to it through the header's ``PAYLOADDIGEST`` (rpm >= 4.14), checked here, or else through the header's
per-file digests, which :mod:`imagectl.imaging.slc.extract` checks for every file it writes.

Why gpgv rather than the host's ``rpmkeys --checksig``: an unsigned package passes ``rpmkeys -K`` ("digests OK"),
and newer rpm (the Sequoia backend) refuses SHA-1 signatures, which is what every SLC package carries. What was
verified (GnuPG 2.2.40, Debian 12; tests/test_slc_unpack.py): DSA-1024 keys with SHA-1 signatures made by
rpmsign (DSAHEADER + GPG), RSA keys with SHA-256 (RSAHEADER), *version 3* DSA-1024/SHA-1 signature packets over
header and header+payload with a key whose self-signature is SHA-1, as rpm of the SLC era wrote them with
``gpg --force-v3-sigs`` (crafted from RFC 4880, since no GnuPG of today makes them), and, once by hand, rpm's own
v3 RSA test package. Not verified: a real SLC package against the real CERN key (neither is reachable from where
this was written).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from imagectl.errors import ImageMismatchError, KeyProblemError
from imagectl.imaging.slc.rpmfile import (
    CHUNK,
    DIGEST_ALGOS,
    TAG_PAYLOADDIGEST,
    TAG_PAYLOADDIGESTALGO,
    RpmLayout,
    file_entries,
    read_layout,
)
from imagectl.runner import run

__all__ = ["KEY_MAX", "PinnedKeys", "SignatureError", "Verified"]

KEY_MAX = 1 << 20  # bytes: an armoured public key file is a few KiB
SIG_DSA, SIG_RSA, SIG_PGP, SIG_GPG = 267, 268, 1002, 1005
_SIGNATURES = {  # tag: (name, covers the payload too)
    SIG_RSA: ("RSA header", False),
    SIG_DSA: ("DSA header", False),
    SIG_PGP: ("PGP header+payload", True),
    SIG_GPG: ("GPG header+payload", True),
}
_GPG = ["gpg", "--batch", "--no-tty", "--no-autostart", "--no-permission-warning"]


class SignatureError(ImageMismatchError):
    """A package is unsigned, signed by a key that is not pinned, or its signature does not match its bytes."""


@dataclass(frozen=True)
class Verified:
    """The signing key (primary key fingerprint) and what the signatures cover."""

    fingerprint: str
    covers_payload: bool


class PinnedKeys:
    """A GnuPG keyring of the pinned public key files, in ``home`` (an empty private directory the caller owns and
    removes). Making it runs ``gpg`` once per file, so a bad key file is refused before any download.

    Raises KeyProblemError (exit 7) for a key file that is missing, not a regular file, larger than KEY_MAX or holds
    no OpenPGP public key; ToolMissingError if gpg or gpgv is not installed.
    """

    def __init__(self, key_files: list[Path], home: Path, *, log_file: Path | None = None) -> None:
        self.home = home
        self.keyring = home / "pinned.gpg"
        self.fingerprints: list[str] = []
        os.chmod(home, 0o700)
        for i, key in enumerate(key_files):
            copy = home / f"key{i}.asc"
            copy.write_bytes(_read_key(key))
            res = run(
                [*_GPG, "--homedir", home, "--import", copy], check=False, log_file=log_file, what=f"gpg --import {key}"
            )
            if res.returncode != 0:
                raise KeyProblemError(f"GPG key file {key}: no OpenPGP public key gpg can import from it")
        listing = run([*_GPG, "--homedir", home, "--with-colons", "--fingerprint", "--list-keys"], what="gpg")
        lines = [ln.split(":") for ln in listing.output.splitlines()]
        for prev, cur in itertools.pairwise(lines):
            if prev[0] == "pub" and cur[0] == "fpr":
                self.fingerprints.append(cur[9])
        if not self.fingerprints:
            raise KeyProblemError(f"no OpenPGP public key in {', '.join(map(str, key_files))}")
        run([*_GPG, "--homedir", home, "--output", self.keyring, "--export"], log_file=log_file, what="gpg --export")
        run(["gpgv", "--version"], what="gpgv")  # ToolMissingError now, not after the first download

    def describe(self) -> str:
        """The pinned keys, by 16-hex-digit key ID, for messages."""
        return ", ".join(fp[-16:] for fp in self.fingerprints)

    def verify(self, rpm: Path, what: str) -> Verified:
        """Check every OpenPGP signature of ``rpm`` against the pinned keys (and, when only the header is signed,
        the payload against the header's payload digest). ``what`` names the package in messages.

        Raises SignatureError (exit 11): "WHAT: no valid signature by the pinned key(s) IDS: REASON".
        """
        work = self.home / "work"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(mode=0o700)
        try:
            with rpm.open("rb") as f:
                layout = read_layout(f, what)
                sigs = {t: b for t in _SIGNATURES if (b := layout.signature.binary(t))}
                if not sigs:
                    self._fail(what, "it is not signed (no OpenPGP signature in its signature header)")
                f.seek(layout.header.start)
                header = f.read(layout.payload_start - layout.header.start)
                (work / "header").write_bytes(header)
                if any(_SIGNATURES[t][1] for t in sigs):
                    with (work / "all").open("wb") as out:
                        out.write(header)
                        shutil.copyfileobj(f, out, CHUNK)
            fingerprint = ""
            for tag, blob in sigs.items():
                name, whole = _SIGNATURES[tag]
                (work / "sig").write_bytes(blob)
                data = work / ("all" if whole else "header")
                res = run(
                    ["gpgv", "--homedir", self.home, "--keyring", self.keyring, "--status-fd", "1", work / "sig", data],
                    check=False,
                    what=f"gpgv ({what})",
                )
                status = [ln.split() for ln in res.output.splitlines() if ln.startswith("[GNUPG:] ")]
                valid = [w for w in status if w[1] == "VALIDSIG"]
                if res.returncode != 0 or not valid:
                    self._fail(what, _reason(name, res.output))
                if any(w[1] == "REVKEYSIG" for w in status):  # gpgv says "good" for a revoked key: we do not
                    self._fail(what, f"the key that made its {name} signature is revoked")
                fingerprint = valid[0][-1]
            covers = any(_SIGNATURES[t][1] for t in sigs)
            if not covers:
                self._check_payload(rpm, layout, what)
            return Verified(fingerprint, covers)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _check_payload(self, rpm: Path, layout: RpmLayout, what: str) -> None:
        digest = layout.header.strings(TAG_PAYLOADDIGEST)
        if digest:
            algo = DIGEST_ALGOS.get((layout.header.ints(TAG_PAYLOADDIGESTALGO) or (8,))[0])
            if algo is None:
                self._fail(what, "its payload digest uses an unknown algorithm")
            h = hashlib.new(algo)
            with rpm.open("rb") as f:
                f.seek(layout.payload_start)
                while block := f.read(CHUNK):
                    h.update(block)
            if h.hexdigest() != digest[0].lower():
                self._fail(what, "its payload does not match the digest its signed header declares (altered)")
            return
        files = file_entries(layout.header, what)
        if any(stat.S_ISREG(e.mode) and e.size and not e.digest for e in files.values()):
            self._fail(what, "only its header is signed, and the header has no payload or file digests")

    def _fail(self, what: str, reason: str) -> NoReturn:
        raise SignatureError(f"{what}: no valid signature by the pinned key(s) {self.describe()}: {reason}")


def _reason(name: str, status: str) -> str:
    """Why gpgv refused, in words, from its ``--status-fd`` lines."""
    for line in status.splitlines():
        words = line.split()
        if words[:2] == ["[GNUPG:]", "BADSIG"]:
            return f"the {name} signature is BAD (the package was altered after signing)"
        if words[:2] in (["[GNUPG:]", "NO_PUBKEY"], ["[GNUPG:]", "ERRSIG"]) and len(words) > 2:
            return f"its {name} signature is by key {words[2]}, which is not pinned"
    return f"gpgv could not verify its {name} signature"


def _read_key(path: Path) -> bytes:
    """The bytes of a pinned key file: a regular file of at most KEY_MAX bytes (symlinks followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise KeyProblemError(f"cannot read GPG key file {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeyProblemError(f"GPG key file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(KEY_MAX + 1)
    if len(data) > KEY_MAX:
        raise KeyProblemError(f"GPG key file {path} is larger than {KEY_MAX} bytes; not a public key")
    return data
