"""The build record (``NAME-ARCH.build.json``, format 1): a typed model, read and written by one piece of code.

``imagectl build`` writes a record beside every image it builds, ``imagectl test --record`` adds the boot test to
it, ``publish --from-build`` publishes it with the image and ``diff``/``sbom`` read it back, from a file or from a
catalogue. All of them go through :func:`parse` and :meth:`BuildRecord.to_json`, so what one writes the others
read, and catalogue/schema/build-record.schema.json says the same thing for other tools.

Reading is strict about what it knows and tolerant of what it does not. Every member imagectl writes is checked
for its type (and the digests, timestamps and boot test for their form); a malformed one is refused with one line
naming the file and the member. Only ``format`` (1) and ``target`` are required: records written by hand or by an
older imagectl name fewer members, and every member left out stays left out when the record is written again.
Members this code does not know (a newer imagectl's additions to format 1, a package's licence) are kept, not
refused or dropped, and written back unchanged: a record parsed and written again is the record that was read,
which matters because publish stores (and signs the SHA-256 of) exactly that. An incompatible change would be a
new format number, which this reader refuses. This module imports nothing of :mod:`imagectl.catalogue`, so the
build side and the catalogue side can both use it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagectl.errors import InvalidInputError
from imagectl.urls import redact_json

__all__ = [
    "FORMAT",
    "MAX_SIZE",
    "BootTest",
    "BuildRecord",
    "Dib",
    "ImageFile",
    "NotJSONError",
    "Package",
    "RecipeInfo",
    "Target",
    "from_dict",
    "parse",
]

FORMAT = 1
MAX_SIZE = 64 << 20  # bytes: a record with a package list of tens of thousands of entries fits easily
BOOT_TEST_KEYS = ("passed", "marker", "accel", "seconds", "host", "at", "image_sha256")
IDENTITY = ("name", "arch", "hypervisor", "os", "os_version")  # the target members publish needs
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_A_RECORD = "is not an imagectl build record (format 1)"
_IMAGE_ENTRY = "images[] entries need a file name and a format"  # publish's wording since it first read records


class NotJSONError(InvalidInputError):
    """The bytes are not UTF-8 JSON at all; ``reason`` says why, for a caller that words the message its own way."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where} is not a readable build record: {reason}")
        self.reason = reason


def _plain(value: Any) -> Any:
    """A JSON value of a record member: sections as dicts, tuples as lists, free-form objects copied."""
    if isinstance(value, _Section | BootTest):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    return value


class _Section:
    """What the record's objects share: members this code does not know (``extra``) are written back as they
    were read, and a member that is None is left out unless ``keep_null`` names it (then it is written as null)."""

    extra: Mapping[str, Any]
    keep_null: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        """The section as written in the record: a new dict, safe to change."""
        out: dict[str, Any] = copy.deepcopy(dict(self.extra))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in ("extra", "keep_null") or (value is None and f.name not in self.keep_null):
                continue
            out[f.name] = _plain(value)
        return out


@dataclass(frozen=True)
class Target(_Section):
    """What was built: the image name, its recipe, arch, hypervisor mode, OS and the recipe's ``version:``.

    Every member is optional when reading (a hand-written record may name only some); publish needs the five of
    :data:`IDENTITY` and asks :meth:`missing`. ``version`` is written as null when the recipe has none."""

    name: str | None = None
    recipe: str | None = None
    arch: str | None = None
    hypervisor: str | None = None
    os: str | None = None
    os_version: str | None = None
    version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset({"version"})

    def missing(self) -> tuple[str, ...]:
        """The members publish needs that this target lacks, in the order of :data:`IDENTITY`."""
        return tuple(k for k in IDENTITY if getattr(self, k) is None)


@dataclass(frozen=True)
class ImageFile(_Section):
    """One image file the build made: its name in the record's directory, format, size and SHA-256."""

    file: str
    format: str
    size: int | None = None
    sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Package(_Section):
    """One package installed in the image, from DIB's dpkg/rpm manifest. Other members (a licence) are kept."""

    name: str
    version: str | None = None
    arch: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RecipeInfo(_Section):
    """The recipe the image was built from: its file, its digest, its ``extends:`` chain and the merged recipe."""

    path: str | None = None
    digest: str | None = None
    chain: tuple[str, ...] | None = None
    merged: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Dib(_Section):
    """The diskimage-builder run: its version, the digest of the elements used, the exact command and environment."""

    version: str | None = None
    elements_digest: str | None = None
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] | None = None
    elements: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BootTest:
    """The last boot test of the image (``imagectl test --record``): exactly these seven members, as the catalogue
    takes them into signed metadata (catalogue/README.md §4.2)."""

    passed: bool
    marker: str
    accel: str
    seconds: int
    host: str
    at: str
    image_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in BOOT_TEST_KEYS}


@dataclass(frozen=True)
class BuildRecord(_Section):
    """One build record: what was built (``target``), from what, how, on which host, when, with which packages, the
    image files and their digests, and, once ``imagectl test --record`` ran, the boot test."""

    target: Target
    format: int = FORMAT
    imagectl: str | None = None
    recipe: RecipeInfo | None = None
    dib: Dib | None = None
    build_key: str | None = None
    host: Mapping[str, str | bool] | None = None
    notes: tuple[str, ...] | None = None
    started: str | None = None
    finished: str | None = None
    seconds: int | None = None
    packages: tuple[Package, ...] | None = None
    images: tuple[ImageFile, ...] | None = None
    log: str | None = None
    package_cache: Mapping[str, Any] | None = None  # what the Debian package cache served (imagectl.imaging.aptproxy)
    initramfs_cache: Mapping[str, Any] | None = None  # each kernel's initramfs: reused or made (imaging/initramfs.py)
    source_date_epoch: int | None = None  # seconds; set by a reproducible build (build --reproducible)
    reproducible: bool | None = None  # True: images normalized to be bit-identical (issue 11); absent otherwise
    boot_test: BootTest | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_null: frozenset[str] = frozenset()  # parse: {"boot_test"} for a record that says "boot_test": null

    def to_json(self) -> str:
        """The record as ``imagectl build`` writes it: sorted keys, two-space indent, a final newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def redacted(self) -> BuildRecord:
        """This record with every credential in a URL removed (a record is published with its image)."""
        return from_dict(redact_json(self.to_dict()), "the redacted build record")

    def image(self, file: str) -> ImageFile | None:
        """The entry of the image file named ``file``, if the record lists it."""
        return next((i for i in self.images or () if i.file == file), None)

    def package_indexes(self, label: str) -> dict[str, str] | None:
        """The Debian mirror state this record names (``package_cache.base.package_indexes``: ``MIRROR SUITE PATH``
        -> the SHA-256 its signed InRelease gives that Packages index), what ``imagectl rebuild`` and ``build
        --pin-mirror`` hold a build to; None when it names none (an SLC build, an older record). InvalidInputError
        (exit 3) naming ``label`` for one of another shape."""
        state = self._base("package_indexes")
        if state is None:
            return None
        well_formed = isinstance(state, Mapping) and all(
            isinstance(k, str) and k.count(" ") == 2 and isinstance(v, str) and _SHA256.fullmatch(v)
            for k, v in state.items()
        )
        if not state or not well_formed:
            raise InvalidInputError(f"{label}: its build record's package_cache.base.package_indexes is malformed")
        return dict(state)

    def mirror_releases(self) -> dict[str, str] | None:
        """The InRelease files this Debian record names (``package_cache.base.mirror_state``: ``MIRROR SUITE`` ->
        SHA-256 of the InRelease the build verified and served to apt), or None. Only a lookup key into the package
        cache (a copy is used only when its bytes hash to it, and its signature is checked again), so entries of
        another shape are left out rather than refused."""
        state = self._base("mirror_state")
        if not isinstance(state, Mapping):
            return None
        return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v)}

    def _base(self, key: str) -> Any:
        base = (self.package_cache or {}).get("base")
        return base.get(key) if isinstance(base, Mapping) else None

    def images_by_format(self) -> dict[str, ImageFile]:
        """The first image file of each format, by format."""
        out: dict[str, ImageFile] = {}
        for i in self.images or ():
            out.setdefault(i.format, i)
        return out


# -- reading --------------------------------------------------------------------------------------------------------
class _Reader:
    """One object of the record being read: typed members, a one-line refusal naming the member, and the rest."""

    def __init__(self, value: dict[str, Any], path: str, where: str) -> None:
        self.value, self.path, self.where = value, path, where
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def bad(self, key: str, kind: str) -> InvalidInputError:
        return InvalidInputError(f"{self.where}: {self.name(key)} must be {kind}")

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.value.get(key)

    def rest(self) -> dict[str, Any]:
        return {k: v for k, v in self.value.items() if k not in self.seen}

    def nulls(self, *keys: str) -> frozenset[str]:
        return frozenset(k for k in keys if k in self.value and self.value[k] is None)

    def text(self, key: str, pattern: re.Pattern[str] | None = None, kind: str = "a string") -> str | None:
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.bad(key, kind)
        return value

    def count(self, key: str, unit: str) -> int | None:
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if type(value) is not int or value < 0:
            raise self.bad(key, f"a whole number of {unit} (0 or more)")
        return value

    def texts(self, key: str) -> tuple[str, ...] | None:
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "a list of strings")
        return tuple(value)

    def mapping(self, key: str, values: type | tuple[type, ...] = object, kind: str = "an object") -> Any:
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, values) for v in value.values()):
            raise self.bad(key, kind)
        return value

    def objects(self, key: str, refusal: str | None = None) -> list[tuple[str, dict[str, Any]]] | None:
        """A list of objects, each with its path (``packages[3]``); ``refusal`` words the message for an entry that
        is not an object."""
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if not isinstance(value, list):
            raise self.bad(key, "a list")
        for n, v in enumerate(value):
            if not isinstance(v, dict):
                raise InvalidInputError(f"{self.where}: {refusal or f'{self.name(key)}[{n}] must be an object'}")
        return [(f"{self.name(key)}[{n}]", v) for n, v in enumerate(value)]

    def section(self, key: str) -> _Reader | None:
        value = self.get(key)
        if value is None and key not in self.value:
            return None
        if not isinstance(value, dict):
            raise self.bad(key, "an object")
        return _Reader(value, self.name(key), self.where)


def _target(r: _Reader) -> Target:
    fields: dict[str, str | None] = {}
    for key in ("name", "recipe", "arch", "hypervisor", "os", "os_version"):
        value = r.get(key)
        if key in r.value and not isinstance(value, str):  # publish's wording: it needs these
            raise InvalidInputError(f"{r.where}: target.{key} is missing or not a string")
        fields[key] = value
    version = r.get("version")
    if version is not None and not isinstance(version, str):
        raise r.bad("version", "a string or null")
    return Target(**fields, version=version, extra=r.rest(), keep_null=frozenset({"version"} & set(r.value)))


def _image(path: str, value: dict[str, Any], where: str) -> ImageFile:
    r = _Reader(value, path, where)
    file, fmt = r.get("file"), r.get("format")
    if not isinstance(file, str) or not isinstance(fmt, str):
        raise InvalidInputError(f"{where}: {_IMAGE_ENTRY}")
    size = r.count("size", "bytes")
    sha256 = r.text("sha256", _SHA256, "64 lower-case hex digits")
    return ImageFile(file, fmt, size, sha256, extra=r.rest())


def _package(path: str, value: dict[str, Any], where: str) -> Package:
    r = _Reader(value, path, where)
    name = r.text("name")
    if name is None:
        raise r.bad("name", "a string")
    return Package(name, r.text("version"), r.text("arch"), extra=r.rest())


def _recipe(r: _Reader) -> RecipeInfo:
    path, digest, chain, merged = r.text("path"), r.text("digest"), r.texts("chain"), r.mapping("merged")
    return RecipeInfo(path, digest, chain, merged, extra=r.rest())


def _dib(r: _Reader) -> Dib:
    version, elements_digest, command = r.text("version"), r.text("elements_digest"), r.texts("command")
    env = r.mapping("env", str, "an object of strings")
    return Dib(version, elements_digest, command, env, r.texts("elements"), extra=r.rest())


def check_boot_test(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a well-formed ``boot_test`` (catalogue/README.md §4.2), else InvalidInputError naming
    ``where`` and the first problem. The one check of a boot test: where it enters a build record, a catalogue
    (publish) and where it is read back (``ImageRecord.from_target``).

    Exactly the seven members, each of its type: no floats (signed metadata is canonical JSON), no control
    characters in the text a terminal shows, a UTC timestamp, a lower-case SHA-256."""

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"{where}: boot_test {why}")

    if not isinstance(value, dict):
        raise bad("is not an object")
    extra = sorted(str(k) for k in value if k not in BOOT_TEST_KEYS)
    if extra:
        raise bad(f"has unknown member {extra[0]!r}")
    missing = [k for k in BOOT_TEST_KEYS if k not in value]
    if missing:
        raise bad(f"lacks {missing[0]!r}")
    passed, accel, seconds, at, sha = (value[k] for k in ("passed", "accel", "seconds", "at", "image_sha256"))
    if not isinstance(passed, bool):
        raise bad("passed must be true or false")
    if accel not in ("kvm", "tcg"):
        raise bad(f"accel must be kvm or tcg, not {str(accel)!r}")
    if isinstance(seconds, float):
        raise bad(f"seconds must be a whole number, not {seconds!r} (canonical JSON has no floats)")
    if type(seconds) is not int or not 0 <= seconds <= 10**7:
        raise bad(f"seconds must be a whole number from 0 to 10000000, not {str(seconds)!r}")
    for key, most in (("marker", 256), ("host", 255)):
        text = value[key]
        if not isinstance(text, str) or not 1 <= len(text) <= most or not text.isprintable():
            raise bad(f"{key} must be 1-{most} printable characters")
    if not isinstance(at, str) or not _TIMESTAMP.fullmatch(at):
        raise bad("at must be a UTC timestamp like 2026-11-25T15:02:03Z")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise bad("image_sha256 must be 64 lower-case hex digits")
    return {k: value[k] for k in BOOT_TEST_KEYS}


def _boot_test(value: Any, where: str) -> BootTest:
    v = check_boot_test(value, f"build record {where}")
    return BootTest(v["passed"], v["marker"], v["accel"], v["seconds"], v["host"], v["at"], v["image_sha256"])


def from_dict(value: Any, where: str) -> BuildRecord:
    """The build record in the JSON value ``value`` (read from ``where``, which messages name).

    Raises InvalidInputError (exit 3), one line naming ``where`` and the member, for anything but a format-1 record
    whose members have their types."""
    if (
        not isinstance(value, dict)
        or type(value.get("format")) is not int
        or value["format"] != FORMAT
        or not isinstance(value.get("target"), dict)
    ):
        raise InvalidInputError(f"{where} {_NOT_A_RECORD}")
    r = _Reader(value, "", where)
    r.get("format")
    target = _target(_Reader(r.get("target"), "target", where))
    recipe, dib = r.section("recipe"), r.section("dib")
    stamp = "a UTC timestamp like 2026-11-25T15:02:03Z"
    packages, images = r.objects("packages"), r.objects("images", _IMAGE_ENTRY)
    boot_test = r.get("boot_test")
    return BuildRecord(
        target=target,
        imagectl=r.text("imagectl"),
        recipe=_recipe(recipe) if recipe is not None else None,
        dib=_dib(dib) if dib is not None else None,
        build_key=r.text("build_key"),
        host=r.mapping("host", (str, bool), "an object of strings and booleans"),
        notes=r.texts("notes"),
        started=r.text("started", _TIMESTAMP, stamp),
        finished=r.text("finished", _TIMESTAMP, stamp),
        seconds=r.count("seconds", "seconds"),
        packages=None if packages is None else tuple(_package(p, v, where) for p, v in packages),
        images=None if images is None else tuple(_image(p, v, where) for p, v in images),
        log=r.text("log"),
        package_cache=r.mapping("package_cache"),
        initramfs_cache=r.mapping("initramfs_cache"),
        source_date_epoch=r.count("source_date_epoch", "seconds"),
        reproducible=_flag(r, "reproducible"),
        boot_test=None if boot_test is None else _boot_test(boot_test, where),
        extra=r.rest(),
        keep_null=r.nulls("boot_test"),
    )


def _flag(r: _Reader, key: str) -> bool | None:
    value = r.get(key)
    if value is None and key not in r.value:
        return None
    if not isinstance(value, bool):
        raise r.bad(key, "true or false")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(data: bytes, where: str) -> BuildRecord:
    """The build record in ``data``, the bytes of ``where`` (a file, or a published image's record blob).

    Raises InvalidInputError (exit 3), one line naming ``where``: for more than :data:`MAX_SIZE` bytes; NotJSONError
    (a subclass) for bytes that are not UTF-8 JSON; and what :func:`from_dict` raises."""
    if len(data) > MAX_SIZE:
        raise InvalidInputError(f"{where} is {len(data)} bytes, more than the {MAX_SIZE} a build record may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotJSONError(where, f"not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)  # NaN and Infinity are not JSON
    except (ValueError, RecursionError) as e:
        raise NotJSONError(where, str(e)) from None
    return from_dict(value, where)
