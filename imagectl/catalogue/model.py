"""What an image entry is: identifiers, their validation, ordering of versions and the catalogue's layout.

Everything here is pure and offline; it is shared by the publishing side, the pulling side and the verifier.
"""

from __future__ import annotations

import datetime as dt
import platform
import re
from dataclasses import dataclass
from typing import Any

from imagectl.buildrecord import check_boot_test
from imagectl.errors import InvalidInputError

__all__ = [
    "ARCHES",
    "EXT",
    "FORMATS",
    "HYPERVISORS",
    "ImageRecord",
    "ImageRef",
    "auto_version",
    "blob_key",
    "check_arch",
    "check_boot_test",
    "check_channel",
    "check_name",
    "check_version",
    "host_arch",
    "image_keys",
    "layout_of",
    "parse_ref",
    "role_for",
    "side_blobs",
    "target_file_key",
    "target_path",
    "version_key",
]

ARCHES = ("x86_64", "i386", "i686", "ia64", "aarch64", "armv7l", "ppc64le", "ppc64", "s390x", "riscv64")
FORMATS = ("qcow2", "raw", "vmdk", "vhd", "vhdx", "vdi", "tar", "tgz", "iso", "squashfs")
HYPERVISORS = ("hvm", "xen-pv")

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}")
_CHANNEL = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_OS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_OS_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,31}")
_TOKEN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}")  # arch, format, hypervisor, os as read from a catalogue

ROLE_PREFIX = "image-"
EXT = "x-imagectl"  # signed, catalogue-specific fields of an image role: channels and revocations
METADATA = "metadata/"
BLOBS = "blobs/sha256/"
TARGETS = "targets/"  # a stock TUF client's target base: consistent-snapshot target files (hard links of blobs)


REASON_MAX = 500  # characters of a revoke or deprecate reason


def clean_reason(text: str | None) -> str:
    """A reason as it is signed: one line, no control or format characters, at most REASON_MAX characters.

    Reasons are shown to every deployer that asks for the version; what a publisher types (or pastes) must not
    carry terminal escape sequences into their terminals."""
    words = " ".join((text or "").split())
    kept = "".join(ch for ch in words if ch.isprintable())
    return kept[:REASON_MAX]


def _describe(value: str) -> str:
    """A printable rendering of untrusted text for an error message (control characters escaped)."""
    return repr(value)


def _check(kind: str, value: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        if isinstance(value, str) and any(not c.isprintable() for c in value):
            raise InvalidInputError(f"invalid {kind} {_describe(value)}: control characters are not allowed")
        if isinstance(value, str) and ("/" in value or ".." in value):
            raise InvalidInputError(f"invalid {kind} {_describe(value)}: path separators and '..' are not allowed")
        raise InvalidInputError(f"invalid {kind} {_describe(str(value))}: {rule}")
    return value


def check_name(name: str) -> str:
    return _check("image name", name, _NAME, "use 1-64 of a-z 0-9 . _ - starting with a letter or digit")


def check_version(version: str) -> str:
    return _check("version", version, _VERSION, "use 1-64 of A-Z a-z 0-9 . _ + ~ - starting with a letter or digit")


def check_channel(channel: str) -> str:
    return _check("channel", channel, _CHANNEL, "use 1-32 of a-z 0-9 _ - starting with a letter")


def check_os(os_name: str) -> str:
    return _check("os", os_name, _OS, "use 1-32 of a-z 0-9 _ - starting with a letter (e.g. slc, debian)")


def check_os_version(os_version: str) -> str:
    return _check("os version", os_version, _OS_VERSION, "use 1-32 of A-Z a-z 0-9 . _ - (e.g. 6, 12)")


def _one_of(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidInputError(f"unknown {kind} {_describe(value)}: expected one of {', '.join(allowed)}")
    return value


def check_arch(arch: str) -> str:
    return _one_of("arch", arch, ARCHES)


def check_format(fmt: str) -> str:
    return _one_of("format", fmt, FORMATS)


def check_hypervisor(hv: str) -> str:
    return _one_of("hypervisor", hv, HYPERVISORS)


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: ``20261125.10`` after ``20261125.9``; ``1.0`` before ``1.0.1`` and ``1.0a``.

    As in Debian, ``~`` sorts before everything, even the end: ``1.0~rc1`` comes before ``1.0``. Versions that
    compare equal by their parts (``1.0``, ``1.00``, ``1-0``) are ordered by their text, so "newest" is never
    decided by the order entries happen to have in a file.
    """
    parts: list[tuple[int, int | str]] = []
    for p in re.findall(r"\d+|[A-Za-z]+|~", version):
        parts.append((-2, "") if p == "~" else (0, int(p)) if p.isdigit() else (1, p))
    return (*parts, (-1, ""), (2, version))


def auto_version(existing: list[str], today: dt.date) -> str:
    """``YYYYMMDD.N``, N one more than the highest N already used today (any arch)."""
    stem = today.strftime("%Y%m%d")
    used = [int(v.split(".", 1)[1]) for v in existing if re.fullmatch(stem + r"\.\d+", v)]
    return f"{stem}.{max(used, default=0) + 1}"


def role_for(name: str) -> str:
    """The delegated TUF role that holds every version of one image name."""
    return ROLE_PREFIX + name


def target_path(name: str, version: str, arch: str, fmt: str) -> str:
    return f"{name}/{version}/{arch}/{name}-{version}-{arch}.{fmt}"


def layout_of(path: str) -> str | None:
    """``ARCH/FORMAT`` of an image's target path ``NAME/VERSION/ARCH/NAME-VERSION-ARCH.FORMAT`` (:func:`target_path`),
    or None for a path of any other shape."""
    parts = path.split("/")
    if len(parts) != 4:
        return None
    fmt = parts[3].rpartition(".")[2]
    return f"{parts[2]}/{fmt}" if parts[2] in ARCHES and fmt in FORMATS else None


def target_file_key(path: str, sha256: str) -> str:
    """Where a stock TUF client (consistent snapshots: ``prefix_targets_with_hash``) fetches the target ``path``
    with this SHA-256: ``targets/NAME/VERSION/ARCH/HEX.NAME-VERSION-ARCH.FORMAT``. Same bytes as the blob; on a
    directory the same file (a hard link)."""
    parent, _, base = path.rpartition("/")
    return f"{TARGETS}{parent}/{sha256}.{base}" if parent else f"{TARGETS}{sha256}.{base}"


def image_keys(path: str, sha256: str) -> list[str]:
    """Where a reader finds the bytes of target ``path``, in the order to try: its target file (on S3 the one
    copy), then its blob (a catalogue written before target files). For :meth:`Store.open_first`."""
    return [target_file_key(path, sha256), blob_key(sha256)]


def blob_key(sha256: str) -> str:
    """Blobs are content-addressed: the same bytes are stored once whatever names and versions point at them."""
    return BLOBS + sha256


@dataclass(frozen=True)
class ImageRef:
    """What a user asks for: ``NAME``, ``NAME:VERSION`` or ``NAME@CHANNEL``."""

    name: str
    version: str | None = None
    channel: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}:{self.version}"
        if self.channel:
            return f"{self.name}@{self.channel}"
        return self.name


def parse_ref(text: str) -> ImageRef:
    if "@" in text:
        name, channel = text.split("@", 1)
        return ImageRef(check_name(name), channel=check_channel(channel))
    if ":" in text:
        name, version = text.split(":", 1)
        return ImageRef(check_name(name), version=check_version(version))
    return ImageRef(check_name(text))


def _parent_image(value: Any, where: str) -> dict[str, Any]:
    """A target's ``parent_image``, checked as the writer writes it (it names what deployers are shown)."""
    if not isinstance(value, dict) or set(value) - {"name", "version", "sha256", "channel"}:
        raise InvalidInputError(f"{where}: parent_image is not an object of name, version, sha256 (and channel)")
    name, version = value.get("name"), value.get("version")
    check_name(name if isinstance(name, str) else "")
    check_version(version if isinstance(version, str) else "")
    if not isinstance(value.get("sha256"), str) or not _SHA256.fullmatch(value["sha256"]):
        raise InvalidInputError(f"{where}: parent_image has no valid sha256")
    if "channel" in value:
        check_channel(value["channel"] if isinstance(value["channel"], str) else "")
    return dict(value)


def side_blobs(build_record: Any) -> list[tuple[str, str, Any]]:
    """The blobs an image's signed ``build_record`` summary references, as (what, sha256, size) — the build record
    itself and, inside it, the SBOM ``publish --from-build`` stored (``"sbom": {"sha256", "size"}``). Values are as
    signed (``size`` unchecked): gc keeps them, verify hashes them, mirror copies them."""
    out: list[tuple[str, str, Any]] = []
    if not isinstance(build_record, dict):
        return out
    for what, summary in (("build record", build_record), ("SBOM", build_record.get("sbom"))):
        if isinstance(summary, dict) and "sha256" in summary:
            out.append((what, summary.get("sha256"), summary.get("size")))  # type: ignore[arg-type]
    return out


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageRecord:
    """One published image (name, version, arch) as the signed metadata describes it."""

    name: str
    version: str
    arch: str
    format: str
    hypervisor: str
    os: str | None
    os_version: str | None
    size: int
    sha256: str
    created: str
    path: str  # TUF target path
    recipe_digest: str | None = None
    parent: str | None = None
    parent_image: dict[str, Any] | None = None  # {name, version, sha256[, channel]} of the image it was built from
    build_record: dict[str, Any] | None = None
    deprecated: dict[str, str] | None = None
    boot_test: dict[str, Any] | None = None

    @property
    def boot_passed(self) -> bool:
        """Whether a boot test of exactly these bytes passed (what a protected channel asks of every arch)."""
        return bool(
            self.boot_test and self.boot_test["passed"] is True and self.boot_test["image_sha256"] == self.sha256
        )

    def custom(self) -> dict[str, Any]:
        """The target's custom fields (catalogue/schema/image-custom.schema.json)."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "format": self.format,
            "hypervisor": self.hypervisor,
            "size": self.size,
            "created": self.created,
        }
        for key in (
            "os",
            "os_version",
            "recipe_digest",
            "parent",
            "parent_image",
            "build_record",
            "deprecated",
            "boot_test",
        ):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_target(cls, path: str, length: int, hashes: dict[str, str], custom: Any) -> ImageRecord:
        """Build from a verified TUF target; raises InvalidInputError if the custom fields are malformed."""
        if not isinstance(custom, dict) or "sha256" not in hashes:
            raise InvalidInputError(f"target {path} is not an imagectl image (no custom fields or no sha256)")
        where = f"target {path}"
        try:
            rec = cls(
                name=str(custom["name"]),
                version=str(custom["version"]),
                arch=str(custom["arch"]),
                format=str(custom["format"]),
                hypervisor=str(custom["hypervisor"]),
                os=custom.get("os"),
                os_version=custom.get("os_version"),
                size=length,
                sha256=hashes["sha256"],
                created=str(custom["created"]),
                path=path,
                recipe_digest=custom.get("recipe_digest"),
                parent=custom.get("parent"),
                parent_image=_parent_image(custom["parent_image"], where) if "parent_image" in custom else None,
                build_record=custom.get("build_record"),
                deprecated=custom.get("deprecated"),
                boot_test=None if custom.get("boot_test") is None else check_boot_test(custom["boot_test"], where),
            )
        except KeyError as e:
            raise InvalidInputError(f"target {path} lacks the custom field {e.args[0]!r}") from None
        # Names and versions are shown to people and become file names on deployers: the writer's rules hold.
        check_name(rec.name)
        check_version(rec.version)
        for what, value in (("arch", rec.arch), ("format", rec.format), ("hypervisor", rec.hypervisor)):
            if not _TOKEN.fullmatch(value):
                raise InvalidInputError(f"target {path} has an invalid {what} {_describe(value)}")
        for what, opt in (("os", rec.os), ("os_version", rec.os_version)):
            if opt is not None and not (isinstance(opt, str) and _TOKEN.fullmatch(opt)):
                raise InvalidInputError(f"target {path} has an invalid {what} {_describe(str(opt))}")
        if not re.fullmatch(r"[0-9T:.+Z-]{1,40}", rec.created):
            raise InvalidInputError(f"target {path} has an invalid created time {_describe(rec.created)}")
        # The custom fields are what people and `pull` choose by; they must say what the path and length say.
        expected = target_path(rec.name, rec.version, rec.arch, rec.format)
        if path != expected:
            raise InvalidInputError(f"target {path} has custom fields of {expected}")
        if custom.get("size") != length:
            raise InvalidInputError(f"target {path} has size {custom.get('size')!r} but length {length}")
        if "boot_test" in custom and rec.boot_test is None:
            raise InvalidInputError(f"target {path} has a null boot_test (optional fields are omitted, never null)")
        if rec.boot_test is not None and rec.boot_test["image_sha256"] != rec.sha256:
            other = rec.boot_test["image_sha256"][:12]
            raise InvalidInputError(f"target {path} has a boot_test of other bytes (sha256 {other}…)")
        return rec

    def summary(self) -> dict[str, Any]:
        """The fields a listing shows (``--json`` output of list/search)."""
        return {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "os": self.os,
            "os_version": self.os_version,
            "hypervisor": self.hypervisor,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
            "deprecated": self.deprecated,
        }
