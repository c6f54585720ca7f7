"""A hostile yum mirror for tests: .rpm files written byte by byte with chosen cpio payloads, a repository made of
them, and a throwaway OpenPGP key that signs packages the way rpmsign does.

The rpm writer follows rpm's documented file format (lead, signature header, header, gzip payload; see rpm's
docs/manual/format_v4.md and format_header.md): both headers carry their immutable region tag (62/63) with its
trailer, integer data is aligned, index entries are sorted by tag, the signature header holds the SIZE, MD5, SHA1,
SHA256 and PAYLOADSIZE digests rpm writes, and the header lists its files the rpm 4 way (BASENAMES, DIRNAMES,
DIRINDEXES) or the rpm 3 way (OLDFILENAMES) with FILEMODES, FILESIZES, FILEDIGESTS (MD5), FILELINKTOS, FILEFLAGS,
owners and mtimes. ``test_writer_is_what_rpm_reads`` checks the result with rpm itself. What is hostile is only
what a test asks for: a member name, a mode, a link target, a link count, or a header entry left out or changed.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from tests.conftest import require_tools

MTIME = 1_262_304_000  # 2010-01-01, an SLC 5 era date
_BIN, _INT16, _INT32, _STRING, _STRING_ARRAY, _I18NSTRING = 7, 3, 4, 6, 8, 9
_HEADER_MAGIC = b"\x8e\xad\xe8\x01\0\0\0\0"
REG, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777


def need_tools(*tools: str) -> None:
    """Skip when a tool is missing, or fail where every test is required (tests/conftest.py)."""
    require_tools(*tools, install="rpm createrepo-c cpio gpg gpgv")


@dataclass(frozen=True)
class Member:
    """One cpio member, exactly as it goes into the archive."""

    name: str | bytes  # bytes for names no honest packager writes (a NUL inside)
    mode: int = REG
    data: bytes = b""  # file content, or the symlink target
    nlink: int = 1
    ino: int | None = None  # default: a fresh one; hard links share one
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)

    @property
    def raw(self) -> bytes:
        return self.name if isinstance(self.name, bytes) else self.name.encode()


@dataclass(frozen=True)
class Decl:
    """What the header declares about one file."""

    path: str  # "/usr/bin/yum"
    mode: int
    size: int = 0
    digest: str = ""
    link: str = ""
    flags: int = 0
    user: str = "root"
    group: str = "root"
    inode: int | None = None  # hard links share one (rpm finds them by device and inode in the header)


def declare(members: list[Member]) -> list[Decl]:
    """The honest header file list for ``members`` (hard-link groups share the carrier's size and digest)."""
    carriers: dict[int, Member] = {}
    for m in members:
        if m.ino is not None and m.nlink > 1:
            carriers[m.ino] = m  # the last one wins: it carries the data
    out = []
    for m in members:
        name = m.raw.decode()
        path = "/" + (name[2:] if name.startswith("./") else name).rstrip("/")
        if stat.S_ISREG(m.mode):
            data = carriers[m.ino].data if m.ino in carriers else m.data
            digest = hashlib.md5(data).hexdigest()
            out.append(Decl(path, m.mode, len(data), digest, inode=m.ino if m.ino in carriers else None))
        elif stat.S_ISLNK(m.mode):
            out.append(Decl(path, m.mode, len(m.data), link=m.data.decode()))
        else:
            out.append(Decl(path, m.mode))
    return out


def change(decls: list[Decl], path: str, **changes: object) -> list[Decl]:
    """``decls`` with the entry for ``path`` changed (or dropped when ``changes`` is empty)."""
    if not changes:
        return [d for d in decls if d.path != path]
    return [replace(d, **changes) if d.path == path else d for d in decls]  # type: ignore[arg-type]


def newc(members: list[Member]) -> bytes:
    """A "newc" cpio archive of ``members`` and its trailer, as rpm writes payloads (and the kernel reads an
    initramfs: tests/test_boottest.py builds one with it). The suite's one cpio writer."""
    out = bytearray()
    next_ino = 1000
    for m in [*members, Member("TRAILER!!!", 0)]:
        raw = m.raw + b"\0"
        ino = m.ino if m.ino is not None else next_ino
        next_ino += 1
        fields = [ino, m.mode, m.uid, m.gid, m.nlink, MTIME, len(m.data), 0, 0, *m.rdev, len(raw), 0]
        if m.raw == b"TRAILER!!!":
            fields = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * ((4 - (110 + len(raw)) % 4) % 4) + m.data + b"\0" * ((4 - len(m.data) % 4) % 4)
    return bytes(out)


def _value(typ: int, value: object) -> tuple[bytes, int]:
    def enc(s: object) -> bytes:
        return s if isinstance(s, bytes) else str(s).encode("utf-8", "surrogateescape")

    if typ == _STRING:
        return enc(value) + b"\0", 1
    if typ in (_STRING_ARRAY, _I18NSTRING):
        items = list(value)  # type: ignore[call-overload]
        return b"".join(enc(s) + b"\0" for s in items), len(items)
    if typ in (_INT16, _INT32):
        items = list(value)  # type: ignore[call-overload]
        return struct.pack(f">{len(items)}{'H' if typ == _INT16 else 'I'}", *items), len(items)
    data = bytes(value)  # type: ignore[call-overload]
    return data, len(data)


def header(tags: dict[int, tuple[int, object]], region: int) -> bytes:
    """One header structure: index sorted by tag behind the region tag, aligned data, the region trailer last."""
    index: list[tuple[int, int, int, int]] = []
    data = bytearray()
    for tag, (typ, value) in sorted(tags.items()):
        data += b"\0" * (-len(data) % {_INT16: 2, _INT32: 4}.get(typ, 1))
        blob, count = _value(typ, value)
        index.append((tag, typ, len(data), count))
        data += blob
    il = len(index) + 1
    trailer = len(data)
    data += struct.pack(">IIiI", region, _BIN, -il * 16, 16)
    entries = [struct.pack(">IIII", region, _BIN, trailer, 16)]
    entries += [struct.pack(">IIII", *e) for e in index]
    return _HEADER_MAGIC + struct.pack(">II", il, len(data)) + b"".join(entries) + bytes(data)


def write_rpm(
    directory: Path,
    name: str,
    members: list[Member],
    *,
    declared: list[Decl] | None = None,
    version: str = "1.0",
    release: str = "1",
    arch: str = "x86_64",
    old_filenames: bool = False,
) -> Path:
    """Write ``NAME-VERSION-RELEASE.ARCH.rpm`` into ``directory``: ``members`` as its payload, ``declared`` (default:
    the honest list) as its header's files. Returns the path."""
    decls = declare(members) if declared is None else declared
    payload = newc(members)
    tags: dict[int, tuple[int, object]] = {
        1000: (_STRING, name),
        1001: (_STRING, version),
        1002: (_STRING, release),
        1004: (_I18NSTRING, ["imagectl hostile test package"]),
        1005: (_I18NSTRING, ["crafted byte by byte by tests/hostile_yum.py"]),
        1006: (_INT32, [MTIME]),
        1009: (_INT32, [sum(d.size for d in decls)]),
        1014: (_STRING, "MIT"),
        1016: (_I18NSTRING, ["System Environment/Base"]),
        1021: (_STRING, "linux"),
        1022: (_STRING, arch),
        1044: (_STRING, f"{name}-{version}-{release}.src.rpm"),
        1064: (_STRING, "4.4.2.3"),
        1124: (_STRING, "cpio"),
        1125: (_STRING, "gzip"),
        1126: (_STRING, "9"),
    }
    if decls:
        tags |= {
            1028: (_INT32, [d.size for d in decls]),
            1030: (_INT16, [d.mode for d in decls]),
            1033: (_INT16, [0] * len(decls)),
            1034: (_INT32, [MTIME] * len(decls)),
            1035: (_STRING_ARRAY, [d.digest for d in decls]),
            1036: (_STRING_ARRAY, [d.link for d in decls]),
            1037: (_INT32, [d.flags for d in decls]),
            1039: (_STRING_ARRAY, [d.user for d in decls]),
            1040: (_STRING_ARRAY, [d.group for d in decls]),
            1045: (_INT32, [0xFFFFFFFF] * len(decls)),
            1095: (_INT32, [1] * len(decls)),
            1096: (_INT32, [d.inode if d.inode is not None else 100_000 + i for i, d in enumerate(decls)]),
            1097: (_STRING_ARRAY, [""] * len(decls)),
        }
        if old_filenames:
            tags[1027] = (_STRING_ARRAY, [d.path for d in decls])
        else:
            dirs: list[str] = []
            for d in decls:
                dn = d.path.rsplit("/", 1)[0] + "/"
                if dn not in dirs:
                    dirs.append(dn)
            tags[1116] = (_INT32, [dirs.index(d.path.rsplit("/", 1)[0] + "/") for d in decls])
            tags[1117] = (_STRING_ARRAY, [d.path.rsplit("/", 1)[1] for d in decls])
            tags[1118] = (_STRING_ARRAY, dirs)
    hdr = header(tags, 63)
    body = gzip.compress(payload, mtime=0)
    sig = header(
        {
            269: (_STRING, hashlib.sha1(hdr).hexdigest()),
            273: (_STRING, hashlib.sha256(hdr).hexdigest()),
            1000: (_INT32, [len(hdr) + len(body)]),
            1004: (_BIN, hashlib.md5(hdr + body).digest()),
            1007: (_INT32, [len(payload)]),
        },
        62,
    )
    sig += b"\0" * (-len(sig) % 8)
    nvr = f"{name}-{version}-{release}".encode()[:65]
    lead = b"\xed\xab\xee\xdb" + bytes([3, 0]) + struct.pack(">hh", 0, 1) + nvr.ljust(66, b"\0")
    lead += struct.pack(">hh", 1, 5) + b"\0" * 16
    path = directory / f"{name}-{version}-{release}.{arch}.rpm"
    path.write_bytes(lead + sig + hdr + body)
    return path


@dataclass
class GpgKey:
    """A throwaway OpenPGP key in its own GnuPG home; ``sign`` runs rpmsign with it."""

    home: Path
    uid: str
    public: Path  # the armoured public key, what a recipe pins

    @classmethod
    def generate(cls, home: Path, uid: str, algo: str = "rsa2048") -> GpgKey:
        home.mkdir(mode=0o700, parents=True)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", uid, algo, "sign", "never"], check=True, capture_output=True)
        public = home / "public.asc"
        subprocess.run([*gpg, "--armor", "--output", str(public), "--export", uid], check=True, capture_output=True)
        return cls(home, uid, public)

    def sign(self, *rpms: Path, digest: str = "sha256") -> None:
        argv = ["rpmsign", "--addsign", "--define", f"__gpg {shutil.which('gpg')}", "--define", f"_gpg_name {self.uid}"]
        argv += ["--define", f"_gpg_path {self.home}", "--define", f"_gpg_digest_algo {digest}"]
        r = subprocess.run([*argv, *map(str, rpms)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr

    def close(self) -> None:
        """Stop the gpg-agent that signing started in this home."""
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True)

    def revoked_public(self) -> Path:
        """The public key with its revocation certificate applied (what a key file looks like after a compromise)."""
        gpg = ["gpg", "--homedir", str(self.home), "--batch", "--yes"]
        (cert,) = (self.home / "openpgp-revocs.d").iterdir()
        armoured = cert.read_text().replace(":-----BEGIN PGP PUBLIC KEY BLOCK", "-----BEGIN PGP PUBLIC KEY BLOCK")
        (self.home / "revoke.asc").write_text(armoured)
        subprocess.run([*gpg, "--import", str(self.home / "revoke.asc")], check=True, capture_output=True)
        out = self.home / "revoked.asc"
        subprocess.run([*gpg, "--armor", "--output", str(out), "--export", self.uid], check=True, capture_output=True)
        return out


def _mpi(n: int) -> bytes:
    return struct.pack(">H", n.bit_length()) + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _packet(tag: int, body: bytes) -> bytes:
    """An old-format OpenPGP packet with a two-byte length, as GnuPG 1.x wrote them."""
    return bytes([0x80 | (tag << 2) | 1]) + struct.pack(">H", len(body)) + body


class OldDsaKey:
    """A DSA-1024 key whose signatures are *version 3* packets over SHA-1: what rpm of the SLC era made (its macros
    ran ``gpg --force-v3-sigs``), which no GnuPG of today can make any more. The OpenPGP packets are written here
    from RFC 4880 (sections 5.2.2, 5.2.3, 5.5.2, 12.2); the key itself comes from ``cryptography``."""

    def __init__(self, created: int = MTIME - 86400 * 365) -> None:
        from cryptography.hazmat.primitives.asymmetric import dsa

        self.key = dsa.generate_private_key(key_size=1024)
        pub = self.key.public_key().public_numbers()
        p = pub.parameter_numbers
        self.body = bytes([4]) + struct.pack(">I", created) + bytes([17]) + b"".join(map(_mpi, (p.p, p.q, p.g, pub.y)))
        self.keyid = hashlib.sha1(b"\x99" + struct.pack(">H", len(self.body)) + self.body).digest()[-8:]
        self.created = created

    def _sign(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import utils

        r, s = utils.decode_dss_signature(self.key.sign(digest, utils.Prehashed(hashes.SHA1())))
        return digest[:2] + _mpi(r) + _mpi(s)

    def public(self, path: Path, uid: bytes = b"SLC era signing key <slc@example.invalid>") -> Path:
        """Write the binary public key: key packet, user ID and a v4 SHA-1 positive certification of it."""
        sub = bytes([5, 2]) + struct.pack(">I", self.created) + bytes([2, 27, 0x03])  # creation time; certify+sign
        hashed = bytes([4, 0x13, 17, 2]) + struct.pack(">H", len(sub)) + sub
        material = b"\x99" + struct.pack(">H", len(self.body)) + self.body + b"\xb4" + struct.pack(">I", len(uid)) + uid
        digest = hashlib.sha1(material + hashed + b"\x04\xff" + struct.pack(">I", len(hashed))).digest()
        unhashed = bytes([9, 16]) + self.keyid  # issuer
        sig = hashed + struct.pack(">H", len(unhashed)) + unhashed + self._sign(digest)
        path.write_bytes(_packet(6, self.body) + _packet(13, uid) + _packet(2, sig))
        return path

    def v3_signature(self, data: bytes, when: int = MTIME) -> bytes:
        """A version 3 binary-document signature packet of ``data``."""
        digest = hashlib.sha1(data + b"\x00" + struct.pack(">I", when)).digest()
        return _packet(2, bytes([3, 5, 0]) + struct.pack(">I", when) + self.keyid + bytes([17, 2]) + self._sign(digest))

    def sign(self, rpm: Path) -> None:
        """Give ``rpm`` the signature header rpm 4.4 wrote with such a key: DSA over the header, GPG over header and
        payload, and the SIZE, MD5 and SHA1 digests."""
        raw = rpm.read_bytes()
        sig_count, sig_size = struct.unpack(">II", raw[96 + 8 : 96 + 16])
        start = 96 + 16 + sig_count * 16 + sig_size
        start += -start % 8
        hdr_count, hdr_size = struct.unpack(">II", raw[start + 8 : start + 16])
        hdr = raw[start : start + 16 + hdr_count * 16 + hdr_size]
        rest = raw[start:]
        sig = header(
            {
                267: (_BIN, self.v3_signature(hdr)),
                269: (_STRING, hashlib.sha1(hdr).hexdigest()),
                1000: (_INT32, [len(rest)]),
                1004: (_BIN, hashlib.md5(rest).digest()),
                1005: (_BIN, self.v3_signature(rest)),
            },
            62,
        )
        rpm.write_bytes(raw[:96] + sig + b"\0" * (-len(sig) % 8) + rest)


def make_repo(root: Path, rpms: list[Path], arch: str = "x86_64") -> Path:
    """A yum repository of ``rpms`` at ``root/ARCH/yum/os`` (the layout of an SLC release mirror); returns it."""
    repo = root / arch / "yum" / "os"
    (repo / "Packages").mkdir(parents=True)
    for f in rpms:
        shutil.copy(f, repo / "Packages" / f.name)
    r = subprocess.run(["createrepo_c", "--no-database", str(repo)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return repo
