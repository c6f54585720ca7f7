"""Publishing side: create a catalogue, publish images, move channels, deprecate and revoke versions.

Every command takes the catalogue's writer lock, loads and verifies the current metadata, changes it and commits
(see :mod:`imagectl.catalogue.state` for the write order that keeps readers safe).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

from imagectl import buildrecord
from imagectl.catalogue import model
from imagectl.catalogue.keys import TOP_ROLES, KeyRing, generate_key
from imagectl.catalogue.lifecycle import resolve_parent, set_channel
from imagectl.catalogue.metacache import MetadataCache
from imagectl.catalogue.model import METADATA, ImageRecord, blob_key, target_file_key, target_path, utcnow
from imagectl.catalogue.protect import check_tested, is_protected, refuse_untested
from imagectl.catalogue.state import CatalogueState, Want, load_state, metadata_bytes, transact
from imagectl.errors import (
    CatalogueStateError,
    ConflictError,
    ImageMismatchError,
    InvalidInputError,
    KeyProblemError,
    LocalIOError,
    NotFoundError,
    RevokedError,
)
from imagectl.fsio import describe_mode, read_regular
from imagectl.store import Store
from imagectl.store.digest import DigestAhead
from imagectl.urls import safe_url

__all__ = ["PublishRequest", "PublishResult", "deprecate", "init_catalogue", "promote", "publish"]


@dataclass(frozen=True)
class InitResult:
    root_key: str  # store key of the root file deployers pin
    root_url: str
    root_sha256: str
    generated_keys: list[str]


def init_catalogue(
    store: Store, keydir: Path, expiry_days: dict[str, int], thresholds: dict[str, tuple[int, int]] | None = None
) -> InitResult:
    """Create keys where missing and the first signed metadata of an empty catalogue.

    ``thresholds`` maps a role to (threshold, number of keys); default 1 of 1. Raises CatalogueStateError if
    ``store`` already holds a catalogue.
    """
    thresholds = thresholds or {}
    local_root = getattr(store, "root", None)
    if isinstance(local_root, Path) and (keydir.resolve() == local_root or local_root in keydir.resolve().parents):
        raise KeyProblemError(
            f"key directory {keydir} is inside the catalogue {local_root}: private keys would be published",
            hint="keep keys outside the directory a web server serves",
        )
    if store.exists(f"{METADATA}root.json"):
        raise CatalogueStateError(f"{store.shown} is already a catalogue", hint="use a new, empty location")
    for role in TOP_ROLES:  # all checked before the first key is made: a refusal leaves no key behind
        threshold, count = thresholds.get(role, (1, 1))
        if not 1 <= threshold <= count:
            raise InvalidInputError(f"threshold for {role} must be between 1 and the number of keys ({count})")
    keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = utcnow()
    root = Root(expires=now + dt.timedelta(days=expiry_days["root"]), consistent_snapshot=True)
    generated: list[str] = []
    existing = KeyRing(keydir)
    for role in TOP_ROLES:
        threshold, count = thresholds.get(role, (1, 1))
        # Keys already in the directory are reused by file name (ROLE-N.key); this is the only time names matter.
        mine = [k for k, p in existing.paths.items() if p.name.startswith(f"{role}-")][:count]
        for keyid in mine:
            root.add_key(existing.public(keyid), role)
        for _ in range(count - len(mine)):
            signer = generate_key(keydir, role)
            root.add_key(signer.public_key, role)
            generated.append(f"{role}:{signer.public_key.keyid[:12]}")
        root.roles[role].threshold = threshold
    keys = KeyRing(keydir)
    root_md = Metadata(root)
    for keyid in root.roles["root"].keyids:
        root_md.sign(keys.signers[keyid], append=True)
    exp = {r: now + dt.timedelta(days=d) for r, d in expiry_days.items()}
    targets = Metadata(Targets(version=1, expires=exp["targets"]))
    snapshot = Metadata(Snapshot(version=1, expires=exp["snapshot"], meta={"targets.json": MetaFile(version=1)}))
    timestamp = Metadata(Timestamp(version=1, expires=exp["timestamp"], snapshot_meta=MetaFile(version=1)))
    for md, role in ((targets, "targets"), (snapshot, "snapshot"), (timestamp, "timestamp")):
        r = root.roles[role]
        for signer in keys.signers_for(role, r.keyids, r.threshold):
            md.sign(signer, append=True)
    root_bytes = metadata_bytes(root_md)
    with store.lock():
        if not store.write_new(f"{METADATA}1.root.json", root_bytes):
            raise CatalogueStateError(f"{store.shown} is already a catalogue", hint="use a new, empty location")
        store.write(f"{METADATA}1.targets.json", metadata_bytes(targets))
        store.write(f"{METADATA}1.snapshot.json", metadata_bytes(snapshot))
        store.write(f"{METADATA}timestamp.json", metadata_bytes(timestamp))
        store.write(f"{METADATA}root.json", root_bytes)  # last: its presence is what marks a catalogue
    return InitResult(
        root_key=f"{METADATA}1.root.json",
        root_url=safe_url(store.key_url(f"{METADATA}1.root.json")),
        root_sha256=hashlib.sha256(root_bytes).hexdigest(),
        generated_keys=generated,
    )


@dataclass(frozen=True)
class PublishRequest:
    file: str
    name: str
    arch: str
    version: str | None = None
    format: str | None = None
    hypervisor: str = "hvm"
    os: str | None = None
    os_version: str | None = None
    channel: str | None = None
    recipe_digest: str | None = None
    parent: str | None = None
    build_record: dict[str, object] | None = None
    boot_test: dict[str, object] | None = None  # from the build record (imagectl test --record): model.check_boot_test

    def validated(self) -> PublishRequest:
        model.check_name(self.name)
        model.check_arch(self.arch)
        if self.version is not None:
            model.check_version(self.version)
        if self.format is not None:
            model.check_format(self.format)
        model.check_hypervisor(self.hypervisor)
        if (self.os is None) != (self.os_version is None):
            raise InvalidInputError("--os and --os-version go together")
        if self.os is not None and self.os_version is not None:
            model.check_os(self.os)
            model.check_os_version(self.os_version)
        if self.channel is not None:
            model.check_channel(self.channel)
        if self.parent is not None:
            model.parse_ref(self.parent)
        if self.recipe_digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.recipe_digest):
            raise InvalidInputError(f"recipe digest must be sha256:<64 hex digits>, got {self.recipe_digest!r}")
        if self.build_record is not None:
            _check_canonical(self.build_record, "build record")
        if self.boot_test is not None:
            model.check_boot_test(self.boot_test, self.file)
        return self


def _check_canonical(value: object, what: str) -> None:
    """TUF signs canonical JSON, which has no floats: refuse them before any byte is uploaded."""
    if isinstance(value, float):
        raise InvalidInputError(f"{what} contains a fractional number ({value}); store it as a string")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"{what} has a non-string key {k!r}")
            _check_canonical(v, what)
    elif isinstance(value, list):
        for v in value:
            _check_canonical(v, what)
    elif not isinstance(value, (str, int, bool)) and value is not None:
        raise InvalidInputError(f"{what} contains a {type(value).__name__}, which JSON cannot hold")


@dataclass(frozen=True)
class PublishResult:
    record: ImageRecord
    created: bool  # False: identical bytes were already published under this version (a no-op)
    uploaded: bool  # whether blob bytes were sent (False when the same bytes were already stored)
    channel: str | None
    boot_test_added: bool = False  # an existing image (same bytes) took the request's boot test


def detect_format(path: str) -> str:
    """The image format from the file's magic bytes, else its extension, else raw."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV"):
        return "vmdk"
    if head.startswith(b"conectix") or head.startswith(b"vhdxfile"):
        return "vhd" if head.startswith(b"conectix") else "vhdx"
    ext = Path(path).suffix.lstrip(".").lower()
    return ext if ext in model.FORMATS else "raw"


def _existing(state: CatalogueState, name: str, version: str, arch: str, first: str = "") -> ImageRecord | None:
    """The image published as NAME:VERSION for ARCH, found by its possible target paths (one per format), not by
    building a record of every version of the name."""
    md = state.role(model.role_for(name))
    if md is None:
        return None
    formats: list[str] = list(model.FORMATS)
    if state.succinct(md) is not None:
        # Each format's path hashes into another bin: ask the store which target files exist under
        # targets/NAME/VERSION/ARCH/ (one listing; a target file is made before any metadata lists it, §6) and
        # read only those formats' bins, plus the requested one's. The signed bin still decides.
        listed = state.target_file_formats(name, version, arch)
        formats = [f for f in formats if f in listed or f == first]
    for fmt in sorted(formats, key=lambda f: f != first):
        path = target_path(name, version, arch, fmt)
        t = state.target(name, path)
        if t is not None:
            return ImageRecord.from_target(path, t.length, t.hashes, t.custom)
    return None


def _auto_version(state: CatalogueState, name: str, day: dt.date) -> str:
    """The next ``YYYYMMDD.N`` of NAME (:func:`model.auto_version`). For a binned name the day's versions come
    from one listing of its target files (made before any metadata lists an image, catalogue/README.md §6)
    instead of reading every bin; a version revoked that day counts as used either way."""
    md = state.role(model.role_for(name))
    revoked = list(CatalogueState.ext(md)["revoked"]) if md is not None else []
    if md is not None and state.succinct(md) is not None:
        listed = state.store.list_children(f"{model.TARGETS}{name}/", f"{day.strftime('%Y%m%d')}.")
        return model.auto_version([*listed, *revoked], day)
    return model.auto_version([r.version for r in state.images(name)] + revoked, day)


def _check_revoked(state: CatalogueState, name: str, version: str) -> None:
    md = state.role(model.role_for(name))
    if md is not None:
        revoked = CatalogueState.ext(md)["revoked"].get(version)
        if revoked is not None:
            raise RevokedError(
                f"{name}:{version} was revoked ({revoked.get('reason', 'no reason given')}); versions are never reused"
            )


def publish(
    store: Store,
    keys: KeyRing,
    req: PublishRequest,
    expiry_days: dict[str, int],
    *,
    today: dt.date | None = None,
    hash_memo: Path | None = None,
    ahead: DigestAhead | None = None,
    meta_cache: MetadataCache | None = None,
) -> PublishResult:
    """Publish one image file as NAME:VERSION for ARCH; identical re-publication is a no-op.

    The file is hashed on a thread of its own while the catalogue's state loads; ``ahead``: a hashing of
    ``req.file`` the caller started earlier (used when it is of this file, in this store's part size).
    ``meta_cache``: this host's cache of the catalogue's immutable metadata (:mod:`imagectl.catalogue.metacache`).

    Raises ConflictError when the version exists with other bytes, RevokedError for a revoked version,
    LocalIOError when the file cannot be read.
    """
    req = req.validated()
    try:
        if not Path(req.file).is_file():
            raise LocalIOError(f"{req.file} is not a file")
        fmt = req.format or detect_format(req.file)
    except OSError as e:
        raise LocalIOError(f"cannot read {req.file}: {e.strerror}") from None
    if ahead is None or (ahead.path, ahead.part_size) != (req.file, store.part_size):
        ahead = DigestAhead(req.file, part_size=store.part_size, memo_dir=hash_memo)

    # Check before uploading, so a doomed publish sends no bytes; the commit checks again, where it counts, and
    # starts from this same verified state (no second load of a role that may hold thousands of versions).
    # What the checks and the commit read of the name is fetched with targets.json (one round of requests on S3).
    want = Want(
        req.name,
        paths=() if req.version is None else (target_path(req.name, req.version, req.arch, fmt),),
        listing=None if req.version is None else (req.version, req.arch),
    )

    def load() -> CatalogueState:
        return load_state(store, want=want, meta_cache=meta_cache)

    prechecked = load() if req.version is not None or req.channel is not None else None
    try:
        digest = ahead.result()
    except OSError as e:
        raise LocalIOError(f"cannot read {req.file}: {e.strerror}") from None
    sha256, size = digest.sha256, digest.size
    if size == 0:
        raise InvalidInputError(f"{req.file} is empty")
    if req.boot_test is not None and req.boot_test["image_sha256"] != sha256:
        raise ImageMismatchError(
            f"the boot test given for {req.file} booted other bytes (sha256 {str(req.boot_test['image_sha256'])[:12]}"
            f"…, the file has {sha256[:12]}…): a record from another build",
            hint="boot this image and record it: imagectl test IMAGE --record",
        )

    def check(state: CatalogueState, version: str) -> ImageRecord | None:
        _check_revoked(state, req.name, version)
        old = _existing(state, req.name, version, req.arch, fmt)
        if old is not None and (old.sha256 != sha256 or old.format != fmt):
            differs = (
                f"other bytes (sha256 {old.sha256[:12]}…)"
                if old.sha256 != sha256
                else f"format {old.format} (these same bytes as {fmt})"
            )
            raise ConflictError(
                f"{req.name}:{version} ({req.arch}) is already published with {differs}; versions are immutable",
                hint="publish under a new version (omit --version for an automatic one)",
            )
        if old is not None:
            fields = (
                ("hypervisor", old.hypervisor, req.hypervisor),
                ("os", old.os, req.os),
                ("os version", old.os_version, req.os_version),
            )
            differ = [
                f"{what} {theirs or 'unset'}, not {mine or 'unset'}" for what, theirs, mine in fields if theirs != mine
            ]
            if differ:
                raise ConflictError(
                    f"{req.name}:{version} ({req.arch}) is already published with the same bytes but "
                    f"{'; '.join(differ)}; versions are immutable"
                )
        return old

    old_pre = check(prechecked, req.version) if prechecked is not None and req.version is not None else None
    if prechecked is not None and req.channel is not None and is_protected(prechecked, req.channel):
        # Refused before any byte is sent; the commit checks again against the state it signs.
        tested = req.boot_test or (old_pre.boot_test if old_pre is not None else None)
        mine = ImageRecord(
            req.name, req.version or "-", req.arch, fmt, req.hypervisor, None, None, size, sha256, "", ""
        )
        known = prechecked.version_images(req.name, req.version) if req.version else []
        others = [r for r in known if r.arch != req.arch]
        what = f"publish {req.name}" + (f":{req.version}" if req.version else "")
        check_tested(prechecked, req.channel, what, [*others, dataclasses.replace(mine, boot_test=tested)])
    # A directory stores the blob now and links the target file in the commit; an object store keeps one copy,
    # at the target file, whose key depends on the version the commit settles (catalogue/README.md §6).
    uploaded = False if store.single_copy else store.upload_file(blob_key(sha256), req.file, digest)

    def apply(state: CatalogueState) -> tuple[ImageRecord, ImageRecord | None]:
        nonlocal uploaded
        now = utcnow()
        version = req.version
        if version is None:
            version = _auto_version(state, req.name, today or now.date())
        old = check(state, version)
        record = old or ImageRecord(
            name=req.name,
            version=version,
            arch=req.arch,
            format=fmt,
            hypervisor=req.hypervisor,
            os=req.os,
            os_version=req.os_version,
            size=size,
            sha256=sha256,
            created=now.isoformat().replace("+00:00", "Z"),
            path=target_path(req.name, version, req.arch, fmt),
            recipe_digest=req.recipe_digest,
            parent=req.parent,
            parent_image=None if req.parent is None else resolve_parent(state, req.parent, req.arch),
            build_record=req.build_record,
            boot_test=req.boot_test,
        )
        expires = now + dt.timedelta(days=expiry_days["targets"])
        if old is not None and req.boot_test is not None and old.boot_test != req.boot_test:
            record = dataclasses.replace(old, boot_test=req.boot_test)  # same bytes, now (re)tested
        if req.channel is not None and is_protected(state, req.channel):  # every arch, before anything is signed
            others = [r for r in state.version_images(req.name, version) if r.arch != req.arch]
            check_tested(state, req.channel, f"publish {req.name}:{version}", [*others, record])
        # The target file a stock TUF client fetches exists before any metadata names it (and is repaired by a
        # no-op publish of the same bytes).
        if store.single_copy:
            tkey = target_file_key(record.path, sha256)
            unlisted = state.target_file_unlisted(tkey)  # load_state listed its directory (Want.listing)
            sent = store.store_image(blob_key(sha256), tkey, req.file, digest, unlisted=unlisted)
            uploaded = uploaded or sent
        else:
            store.place_target(blob_key(sha256), target_file_key(record.path, sha256), size)
        if record is not old:
            state.add_image(record, expires)  # re-signs one bin of a binned name, not all its versions
        if req.channel is not None:
            set_channel(state.role_for_update(req.name, expires), req.channel, version, now, "publish")
        if state.changed:
            state.commit(keys, expiry_days)
        return record, old

    record, old = transact(store, apply, first=prechecked, load=load)
    added = old is not None and record is not old
    return PublishResult(record, created=old is None, uploaded=uploaded, channel=req.channel, boot_test_added=added)


def _version_records(state: CatalogueState, name: str, version: str) -> list[ImageRecord]:
    _check_revoked(state, name, version)
    records = state.version_images(name, version)
    if not records:
        known = sorted({r.version for r in state.images(name)}, key=model.version_key)
        if not known:
            names = ", ".join(state.names()) or "none"
            raise NotFoundError(f"no image named {name!r} in the catalogue (images: {names})")
        raise NotFoundError(f"{name} has no version {version!r} (versions: {', '.join(known[-10:])})")
    return records


def promote(
    store: Store,
    keys: KeyRing,
    ref: str,
    channel: str,
    expiry_days: dict[str, int],
    *,
    meta_cache: MetadataCache | None = None,
) -> str:
    """Point CHANNEL of NAME at VERSION (every arch of it). Returns the version it pointed at before, or ''.
    ``meta_cache``: as for :func:`publish`."""
    r = model.parse_ref(ref)
    model.check_channel(channel)
    if r.version is None:
        raise InvalidInputError(f"promote needs NAME:VERSION, got {ref!r}")
    version = r.version

    def apply(state: CatalogueState) -> str:
        now = utcnow()
        check_tested(state, channel, f"promote {r.name}:{version}", _version_records(state, r.name, version))
        md = state.role_for_update(r.name, now + dt.timedelta(days=expiry_days["targets"]))
        before = set_channel(md, channel, version, now, "promote")
        state.commit(keys, expiry_days)
        return before

    return transact(store, apply, want=Want(r.name), meta_cache=meta_cache)


def deprecate(
    store: Store,
    keys: KeyRing,
    ref: str,
    reason: str | None,
    expiry_days: dict[str, int],
    *,
    meta_cache: MetadataCache | None = None,
) -> int:
    """Mark every arch of NAME:VERSION deprecated: still pullable by version, never chosen as newest.
    ``meta_cache``: as for :func:`publish`."""
    r = model.parse_ref(ref)
    if r.version is None:
        raise InvalidInputError(f"deprecate needs NAME:VERSION, got {ref!r}")
    version = r.version

    def apply(state: CatalogueState) -> int:
        now = utcnow()
        records = _version_records(state, r.name, version)
        expires = now + dt.timedelta(days=expiry_days["targets"])
        note = {"at": now.isoformat().replace("+00:00", "Z"), "reason": model.clean_reason(reason)}
        for rec in records:
            state.add_image(dataclasses.replace(rec, deprecated=note), expires)
        state.commit(keys, expiry_days)
        return len(records)

    return transact(store, apply, want=Want(r.name), meta_cache=meta_cache)


def _load_records(source: Path) -> list[tuple[Path, buildrecord.BuildRecord]]:
    try:
        files = [source] if source.is_file() else sorted(source.glob("*.build.json"))
    except OSError as e:
        raise LocalIOError.from_os("read", source, e) from None
    if not files:
        raise NotFoundError(f"no build records (*.build.json) in {source}", hint="run imagectl build first")
    return [
        (
            f,
            buildrecord.parse(
                read_regular(f, buildrecord.MAX_SIZE, what="build record", error=InvalidInputError), str(f)
            ),
        )
        for f in files
    ]


def _record_image(record_path: Path, image: buildrecord.ImageFile) -> tuple[Path, str]:
    """The image file a record names, and its format: a plain file name in the record's own directory, naming a
    regular file there (not a symlink). Raises InvalidInputError otherwise: a record is input, and
    ``"file": "../../../etc/hostname"`` must not publish the build host's files."""
    name = image.file
    if name in ("", ".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise InvalidInputError(f"{record_path}: image file {name!r} is not a plain file name in the build directory")
    path = record_path.parent / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{record_path}: image file {name} is missing from {record_path.parent}") from None
    except OSError as e:
        raise LocalIOError.from_os("read", path, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{record_path}: image file {name} is {describe_mode(st.st_mode)}, not a regular file")
    return path, model.check_format(image.format)


def _sbom(record: buildrecord.BuildRecord, fmt: str, version: str | None) -> bytes | None:
    """The SPDX 2.3 SBOM of the image (from the record's package list), stored content-addressed as the build
    record is; its (sha256, size) go into the signed build-record summary. None when the record names no image
    SHA-256 (an SBOM must say which bytes it describes)."""
    from imagectl.records import LoadedRecord
    from imagectl.sbom import sbom_bytes

    target = record.target
    images = {f: (i.size, i.sha256) for f, i in record.images_by_format().items()}
    loaded = LoadedRecord(
        f"{target.name} ({target.arch})", record, str(target.name), version, str(target.arch), str(target.os or ""),
        images, signed_format=fmt,
    )  # fmt: skip
    try:
        return sbom_bytes(loaded)
    except InvalidInputError:
        return None


def _recipe_parent(record: buildrecord.BuildRecord) -> str | None:
    """The recipe's ``parent:`` (NAME@CHANNEL or NAME:VERSION), from the merged recipe the build recorded."""
    merged = record.recipe.merged if record.recipe is not None else None
    parent = merged.get("parent") if isinstance(merged, Mapping) else None
    return parent if isinstance(parent, str) else None


def publish_build(
    store: Store,
    keys: KeyRing,
    source: Path,
    expiry_days: dict[str, int],
    *,
    channel: str | None = None,
    fmt: str | None = None,
    version: str | None = None,
    hash_memo: Path | None = None,
    meta_cache: MetadataCache | None = None,
) -> list[PublishResult]:
    """Publish every image a build left in ``source`` (a build output directory or one ``*.build.json``).

    ``hash_memo`` is where digests are remembered by file identity (:func:`file_digest`): the build filed its
    images' there as it made them, so publishing them right after does not read them again. ``meta_cache``: as
    for :func:`publish` (each image after the first then reads only what the one before it did not write).

    Name, arch, os, hypervisor and format come from the build record. All images of the build share one
    version: the record's (the recipe's ``version:``), ``version``, or one automatic version for all. The full
    build record is stored as a content-addressed blob and referenced (sha256, size, summary) from the signed
    image metadata, so it is verifiable without bloating the metadata.
    """
    # Every record is checked before anything is stored, so a bad one leaves nothing of the build published.
    checked = []
    for path, record in _load_records(source):
        found = [(_record_image(path, i), i) for i in record.images or ()]
        chosen = [(f, i_fmt, entry) for (f, i_fmt), entry in found if fmt in (None, i_fmt)]
        if not chosen:
            raise NotFoundError(f"{path} has no {fmt} image (formats: {', '.join(i for (_, i), _ in found)})")
        missing = record.target.missing()
        if missing:
            raise InvalidInputError(f"{path}: target.{missing[0]} is missing or not a string")
        image_file, image_fmt, entry = chosen[0]
        checked.append((path, record, image_file, image_fmt, _boot_test(path, record, image_file, entry)))
    if channel is not None:
        state = load_state(store, meta_cache=meta_cache)
        if is_protected(state, channel):
            names = ", ".join(sorted({str(r.target.name) for _, r, *_ in checked}))
            untested = sorted({str(r.target.arch) for _, r, _, _, bt in checked if not (bt and bt["passed"])})
            refuse_untested(channel, f"publish {names}" + (f":{version}" if version else ""), untested)
    results: list[PublishResult] = []
    shared = version
    for _path, record, image_file, image_fmt, boot_test in checked:
        record = record.redacted()  # published: a record made by an older imagectl may hold a mirror password
        target = record.target
        data = json.dumps(record.to_dict(), sort_keys=True).encode()
        sbom = _sbom(record, image_fmt, shared or target.version)
        blobs = {hashlib.sha256(b).hexdigest(): b for b in (data, sbom) if b is not None}
        summary = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "build_key": record.build_key,
            "started": record.started,
            "finished": record.finished,
            "dib_version": record.dib.version if record.dib else None,
            "packages": len(record.packages or ()),
            "sbom": None
            if sbom is None
            else {"sha256": hashlib.sha256(sbom).hexdigest(), "size": len(sbom), "spdx": "SPDX-2.3"},
        }
        req = PublishRequest(
            file=str(image_file),
            name=str(target.name),
            arch=str(target.arch),
            version=shared or target.version,
            format=image_fmt,
            hypervisor=str(target.hypervisor),
            os=str(target.os),
            os_version=str(target.os_version),
            channel=channel,
            recipe_digest=record.recipe.digest if record.recipe else None,
            parent=_recipe_parent(record),
            build_record={k: v for k, v in summary.items() if v is not None},
            boot_test=boot_test,
        ).validated()  # a request refused leaves no blob behind: checked before the record and SBOM are stored
        for sha, blob in blobs.items():
            store.write_new(blob_key(sha), blob)
        res = publish(store, keys, req, expiry_days, hash_memo=hash_memo, meta_cache=meta_cache)
        shared = shared or res.record.version
        results.append(res)
    return results


def _boot_test(
    path: Path, record: buildrecord.BuildRecord, image: Path, entry: buildrecord.ImageFile
) -> dict[str, Any] | None:
    """The record's ``boot_test`` (imagectl test --record; its form was checked when the record was read), if it
    booted the bytes the record says ``image`` holds: ImageMismatchError (exit 11) otherwise, a record from another
    build (publish then checks the file's own bytes)."""
    test = record.boot_test
    if test is None:
        return None
    # A record that names no sha256 for the image cannot say which build it is from; publish then compares the
    # boot test with the file's own bytes.
    if entry.sha256 is not None and test.image_sha256 != entry.sha256:
        raise ImageMismatchError(
            f"build record {path}: its boot test booted other bytes (sha256 {test.image_sha256[:12]}…) than "
            f"{image.name} (sha256 {str(entry.sha256)[:12]}…): a record from another build",
            hint="boot this image and record it: imagectl test IMAGE --record",
        )
    return test.to_dict()
