"""Command line: argument parsing, output (human or ``--json``) and exit codes. No catalogue logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from imagectl import __version__
from imagectl.config import SETTINGS, Config, load_config
from imagectl.errors import (
    ImagectlError,
    InvalidInputError,
    KeyProblemError,
    VerifyFailedError,
    escape,
    printable,
    report,
)
from imagectl.text import agree, count

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, Config], int]


def warn(msg: str) -> None:
    print(f"imagectl: warning: {printable(msg)}", file=sys.stderr)


def emit(args: argparse.Namespace, data: Any, text: str | Sequence[str]) -> None:
    """Print ``data`` as JSON (--json) or ``text`` for a terminal. Text quotes names and reasons from a catalogue,
    so control characters are escaped: a string line by line; a sequence item by item, so a newline inside an item
    (a reason signed by another writer) is shown as ``\\n`` and cannot forge a line of its own."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text:
        print("\n".join(escape(line) for line in (text.split("\n") if isinstance(text, str) else text)))


def _setting_flags(p: argparse.ArgumentParser, *names: str) -> None:
    for s in SETTINGS:
        if s.name in names:
            p.add_argument(
                s.flag, dest=s.name, type=s.type, default=None, metavar=s.name.upper(), help=f"{s.help} (env {s.env})"
            )


def _require(cfg: Config, name: str, what: str) -> str:
    value = getattr(cfg, name)
    if not value:
        s = next(s for s in SETTINGS if s.name == name)
        raise InvalidInputError(f"no {what} given", hint=f"pass {s.flag} or set {s.env}")
    return str(value)


def _store(cfg: Config, location: str | None = None) -> Any:
    from imagectl.store import open_store

    return open_store(location or _require(cfg, "catalogue", "catalogue"), **cfg.store_options())


def _keys(cfg: Config) -> Any:
    from imagectl.catalogue.keys import KeyRing

    return KeyRing(_require(cfg, "keys", "key directory"))


def _meta_cache(cfg: Config, store: Any) -> Any:
    """The publisher's cache of ``store``'s immutable metadata (in the cache directory), for stores where it
    saves requests; None for a directory catalogue."""
    from imagectl.catalogue.metacache import MetadataCache

    return MetadataCache(cfg.cache_path) if store.cache_metadata else None


def _reader(cfg: Config) -> Any:
    from imagectl.catalogue.client import CatalogueReader

    return CatalogueReader(_store(cfg), cfg.cache_path, cfg.root, warn, retries=cfg.retries)


def _arch(args: argparse.Namespace) -> str:
    from imagectl.catalogue.model import check_arch, host_arch

    return check_arch(args.arch or host_arch())


# -- catalogue init / verify / resign ------------------------------------------------------------------------
MAX_KEYS = 16  # keys per role: a threshold scheme of more signers than this is a typo, not a policy


def number(text: str | float | None, flag: str, *, low: float, high: float, low_open: bool = False) -> float:
    """``text`` as a finite number within [low, high] (``(low, high]`` with ``low_open``), else InvalidInputError
    (exit 3) naming the flag. nan, inf and huge values never reach timedelta or sleep."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{flag} takes a number, got {text!r}") from None
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise InvalidInputError(f"{flag} must be a number {bound} and at most {high:g}, got {text!r}")
    return value


def _thresholds(values: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for v in values:
        role, _, spec = v.partition("=")
        k, _, n = spec.partition("/")
        if not k.isdigit() or (n and not n.isdigit()) or len(k) > 3 or len(n) > 3:
            raise InvalidInputError(f"--threshold takes ROLE=K or ROLE=K/N, got {v!r}")
        threshold, count = int(k), int(n or k)
        if not 1 <= threshold <= count <= MAX_KEYS:
            raise InvalidInputError(f"--threshold {v!r}: need 1 <= K <= N <= {MAX_KEYS} (K of N keys must sign)")
        out[role] = (threshold, count)
    return out


def cmd_init(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.publish import init_catalogue
    from imagectl.store.local import LocalStore

    store = _store(cfg, args.dest)
    if cfg.keys:
        keydir = Path(cfg.keys)
    elif isinstance(store, LocalStore):
        keydir = store.root.with_name(store.root.name + "-keys")  # beside, never inside, the served directory
    else:
        raise KeyProblemError("no key directory given", hint="pass --keys DIR or set IMAGECTL_KEYS")
    res = init_catalogue(store, keydir, cfg.expiry_days(), _thresholds(args.threshold))
    emit(
        args,
        {**res.__dict__, "keys": str(keydir)},
        "\n".join(
            [
                f"created catalogue {store.shown}",
                f"keys: {keydir}" + (f" (new: {', '.join(res.generated_keys)})" if res.generated_keys else ""),
                f"root metadata for deployers to pin: {res.root_url}",
                f"root sha256: {res.root_sha256}",
                f"  pull with: imagectl pull NAME --catalogue URL --root sha256:{res.root_sha256}",
            ]
        ),
    )
    return 0


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.verify import verify_catalogue

    store = _store(cfg, args.dest)
    report = verify_catalogue(store, check_blobs=not args.no_blobs)
    lines = [f"problem: {p}" for p in report.problems]
    lines += [f"skipped: {s}" for s in report.skipped]
    partial = f"; partial mirror: {len(report.skipped)} not held (mirror.json)" if report.partial else ""
    lines.append(
        f"{store.shown}: {count(report.roles, 'metadata file')}, {count(report.images, 'image')}"
        f"{'' if args.no_blobs else f', {report.blob_bytes} blob bytes hashed'}: "
        + ("OK" if not report.problems else count(len(report.problems), "problem"))
        + partial
    )
    if report.needs_rebin:  # not a problem: the catalogue is valid, publishes into these names are just slower
        lines.append(
            f"note: {count(len(report.needs_rebin), 'name')} would benefit from hash bins "
            f"({', '.join(report.needs_rebin[:5])}"
            f"{', …' if len(report.needs_rebin) > 5 else ''}): imagectl catalogue rebin {store.shown}"
        )
    if report.needs_reindex:
        lines.append(
            "note: the name index is crowded (publishes of new names are slower): "
            f"imagectl catalogue rebin {store.shown}"
        )
    emit(args, report.as_json(), lines)
    if report.problems:
        hint = (
            f"{count(report.needs_upgrade, 'image')} {agree(report.needs_upgrade, 'lacks', 'lack')} the target file "
            "stock TUF clients download; "
            f"add them with: imagectl catalogue upgrade {store.shown}"
            if report.needs_upgrade
            else None
        )
        raise VerifyFailedError(f"catalogue verify found {count(len(report.problems), 'problem')}", hint=hint)
    return 0


def cmd_upgrade(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.upgrade import upgrade_catalogue
    from imagectl.progress import human_size

    store = _store(cfg, args.dest)
    report = upgrade_catalogue(store, one_copy=args.one_copy)
    lines = [f"problem: {p}" for p in report.problems]
    freed = (
        f", {count(len(report.pointers), 'blob')} made pointers ({human_size(report.freed_bytes)} freed)"
        if args.one_copy
        else ""
    )
    lines.append(
        f"{store.shown}: {count(len(report.created), 'target file')} created, {report.present} already present"
        + freed
        + (f", {count(len(report.problems), 'problem')}" if report.problems else "")
    )
    emit(args, report.as_json(), lines)
    if report.problems:
        raise VerifyFailedError(
            f"catalogue upgrade left {count(len(report.problems), 'problem')}",
            hint=f"run: imagectl catalogue verify {store.shown}",
        )
    return 0


def cmd_gc(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.gc import collect_garbage
    from imagectl.progress import human_size

    grace = number(args.grace, "--grace", low=0, high=24 * 3650)
    report = collect_garbage(_store(cfg, args.dest), grace=dt.timedelta(hours=grace), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb}: {k}" for k in report.removed]
    lines += [f"skipped: {k}" for k in report.skipped]
    lines += [f"{'would abort' if args.dry_run else 'aborted'} unfinished upload: {k}" for k in report.aborted_uploads]
    lines.append(
        f"{verb} {count(len(report.removed), 'unreferenced file')}, {human_size(report.bytes_freed)}; kept "
        f"{report.referenced} referenced and {len(report.young)} younger than {grace:g} h"
    )
    emit(args, report.as_json(), lines)
    return 0


def cmd_cache_show(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.localcache import area_totals, kept_sizes, scan
    from imagectl.progress import human_size

    cache = cfg.cache_path
    entries = scan(cache)
    areas, kept = area_totals(entries), kept_sizes(cache, entries)
    left = [e for e in entries if e.leftover]
    lines = [f"{cache}:"]
    for area, a in areas.items():
        shared = a["bytes"] - a["bytes_freed_if_removed"]
        also = f" ({human_size(shared)} shared with files outside the cache)" if shared else ""
        idle = a["least_recently_used"]
        since = f", least recently used {(time.time() - idle) / 86400:.0f} days ago" if idle is not None else ""
        lines.append(f"  {area:<10} {count(a['entries'], 'entry', 'entries')}, {human_size(a['bytes'])}{also}{since}")
    if left:
        size = human_size(sum(e.size for e in left))
        lines.append(f"  {count(len(left), 'leftover')} of killed builds or pulls, {size} (pruned once a day old)")
    lines += [f"  {name + '/':<10} {human_size(size)} (kept: never pruned)" for name, size in kept.items()]
    data = {"cache_dir": str(cache), "areas": areas, "leftovers": [e.as_json() for e in left], "kept": kept}
    emit(args, data, lines)
    return 0


def cmd_cache_prune(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.localcache import parse_size, prune
    from imagectl.progress import human_size

    if args.unused_for is None and args.max_size is None:
        raise InvalidInputError("say what to prune: --unused-for DAYS, --max-size SIZE, or both")
    days = number(args.unused_for, "--unused-for", low=0, high=3650) if args.unused_for is not None else None
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    report = prune(
        cfg.cache_path, unused_for=None if days is None else days * 86400, max_size=max_size, dry_run=args.dry_run
    )
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb}: {e.rel}" for e in report.removed]
    lines += [f"kept (in use): {e.rel}" for e in report.kept_in_use]
    freed, left = ("would be freed", "would be left") if args.dry_run else ("freed", "left")
    lines.append(
        f"{verb} {count(len(report.removed), 'entry', 'entries')}, {human_size(report.freed)} {freed}; "
        f"{human_size(report.remaining_bytes)} {left} in images, builds, packages, base and slc"
        + (f"; {len(report.kept_in_use)} kept, used in the last hour" if report.kept_in_use else "")
    )
    emit(args, report.as_json(), lines)
    return 0


def cmd_mirror(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.mirror import MirrorFilter, mirror
    from imagectl.progress import human_size

    filters = MirrorFilter.parse(args.filter, args.max)
    src, dest = _store(cfg, args.src), _store(cfg, args.dest)
    say = (lambda m: print(f"imagectl: {m}", file=sys.stderr)) if not (args.json or args.quiet) else (lambda m: None)
    report = mirror(src, dest, cfg.cache_path, cfg.root, filters, warn, say, retries=cfg.retries)
    emit(
        args,
        report.as_json(),
        f"mirrored {count(len(report.images), 'image')} from {src.shown} to {dest.shown}: "
        f"{count(report.blobs_copied, 'blob')} copied ({human_size(report.bytes_copied)}), "
        f"{report.blobs_present} already there; timestamp version {report.timestamp_version}",
    )
    return 0


def cmd_resign(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.trust import resign

    within = dt.timedelta(days=number(args.within, "--within", low=0, high=3650)) if args.within is not None else None
    roles = resign(_store(cfg, args.dest), _keys(cfg), cfg.expiry_days(), within=within, everything=args.all)
    emit(args, {"resigned": roles}, f"re-signed: {', '.join(roles)}" if roles else "nothing about to expire")
    return 0


def cmd_rebin(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue import model
    from imagectl.catalogue.bins import MAX_BITS
    from imagectl.catalogue.upgrade import rebin_catalogue

    bits = int(number(args.bits, "--bits", low=1, high=MAX_BITS)) if args.bits is not None else None
    names = [model.check_name(n) for n in args.names]
    report = rebin_catalogue(_store(cfg, args.dest), _keys(cfg), cfg.expiry_days(), names, bits=bits)
    lines = [f"{n}: {b} bins" for n, b in sorted(report.rebinned.items())]
    lines += [f"{n}: unchanged" for n in report.unchanged if n not in report.layouts]
    lines += [f"{n}: its arches and formats recorded" for n in report.layouts]
    if report.index_roles:
        lines.append(f"names spread over {report.index_roles} index roles")
    emit(args, report.as_json(), lines or ["no name needs bins"])
    return 0


def cmd_rotate(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.trust import rotate

    k, n = _thresholds([f"{args.role}={args.threshold}"])[args.role]
    res = rotate(_store(cfg, args.dest), _keys(cfg), args.role, cfg.expiry_days(), threshold=k, count=n)
    emit(
        args,
        res.__dict__,
        f"rotated {res.role} keys: new {', '.join(res.new_keys)}; root is now version "
        f"{res.root_version}; retired {', '.join(res.retired) or 'nothing'} to {cfg.keys}/retired/",
    )
    return 0


# -- publishing ----------------------------------------------------------------------------------------------
def _before_change(args: argparse.Namespace, cfg: Config) -> None:
    """Refuse, before anything is signed, a ``--site`` or ``--export`` that could only fail after the change: a
    site directory that is not ours, a malformed ``KIND=PATH``, a HEPiX export without its certificate and key."""
    if getattr(args, "site", None):
        from imagectl.site.write import existing_site

        existing_site(Path(args.site))
    if getattr(args, "export", None):
        from imagectl.export import parse_specs, signer

        if any(kind == "hepix" for kind, _ in parse_specs(args.export)):
            signer(cfg)


def _after_change(args: argparse.Namespace, cfg: Config) -> None:
    """Refresh what is rendered from the catalogue after a committed change: the browse site (``--site DIR``) and
    the exports (``--export KIND=PATH``). The change itself is already visible; a failure here is reported with its
    own exit code and says so."""
    if getattr(args, "site", None):
        from imagectl.site import refresh_site

        refresh_site(cfg, Path(args.site), warn)
    if getattr(args, "export", None):
        from imagectl.export import refresh_exports

        refresh_exports(cfg, args.export, warn)


def cmd_publish(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.store import part_size_for
    from imagectl.store.digest import MEMO_DIR, DigestAhead

    ahead = None
    if args.file and args.name and args.arch and not args.from_build and cfg.catalogue:
        # The image is hashed while the rest is imported, the catalogue opened (boto3's import and client) and
        # its state loaded: publish takes this digest when it is of the same file in the store's part size.
        ahead = DigestAhead(args.file, part_size=part_size_for(cfg.catalogue), memo_dir=cfg.cache_path / MEMO_DIR)
    from imagectl.catalogue.publish import PublishRequest, publish, publish_build

    _before_change(args, cfg)

    if args.from_build:
        if args.file or args.name or args.arch or args.os or args.os_version:
            raise InvalidInputError(
                "--from-build takes name, arch, os and format from the build record",
                hint="drop FILE, --name, --arch, --os and --os-version",
            )
        store = _store(cfg)
        results = publish_build(
            store,
            _keys(cfg),
            Path(args.from_build),
            cfg.expiry_days(),
            channel=args.channel,
            fmt=args.format,
            version=args.version,
            hash_memo=cfg.cache_path / MEMO_DIR,
            meta_cache=_meta_cache(cfg, store),
        )
        emit(
            args,
            [{**r.record.summary(), "created": r.created, "uploaded": r.uploaded} for r in results],
            "\n".join(
                f"{'published' if r.created else 'boot test added' if r.boot_test_added else 'already published'}: "
                f"{r.record.name}:{r.record.version} "
                f"{r.record.arch} {r.record.hypervisor} {r.record.format} sha256:{r.record.sha256}"
                for r in results
            ),
        )
        _after_change(args, cfg)
        return 0
    if not (args.file and args.name and args.arch):
        raise InvalidInputError("publish needs FILE --name NAME --arch ARCH (or --from-build DIR)")
    req = PublishRequest(
        file=args.file,
        name=args.name,
        arch=args.arch,
        version=args.version,
        format=args.format,
        hypervisor=args.hypervisor,
        os=args.os,
        os_version=args.os_version,
        channel=args.channel,
        parent=args.parent,
    )
    store = _store(cfg)
    res = publish(
        store,
        _keys(cfg),
        req,
        cfg.expiry_days(),
        hash_memo=cfg.cache_path / MEMO_DIR,
        ahead=ahead,
        meta_cache=_meta_cache(cfg, store),
    )
    rec = res.record
    what = "published" if res.created else "already published (identical bytes; nothing changed)"
    emit(
        args,
        {**rec.summary(), "created": res.created, "uploaded": res.uploaded, "channel": res.channel},
        f"{what}: {rec.name}:{rec.version} {rec.arch} {rec.format} {rec.size} bytes sha256:{rec.sha256}"
        + (f"; channel {res.channel} -> {rec.version}" if res.channel else ""),
    )
    _after_change(args, cfg)
    return 0


def cmd_promote(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.publish import promote

    if (args.channel is None) == (args.rollback is None):
        raise InvalidInputError("promote needs NAME:VERSION CHANNEL, or NAME --rollback CHANNEL")
    _before_change(args, cfg)
    if args.rollback is not None:
        from imagectl.catalogue.lifecycle import rollback

        store = _store(cfg)
        was, now = rollback(
            store, _keys(cfg), args.ref, args.rollback, cfg.expiry_days(), meta_cache=_meta_cache(cfg, store)
        )
        emit(
            args,
            {"name": args.ref, "channel": args.rollback, "version": now, "previous": was or None},
            f"{args.ref}@{args.rollback} -> {now} (rolled back from {was or 'nothing'})",
        )
        _after_change(args, cfg)
        return 0
    store = _store(cfg)
    before = promote(store, _keys(cfg), args.ref, args.channel, cfg.expiry_days(), meta_cache=_meta_cache(cfg, store))
    emit(
        args,
        {"ref": args.ref, "channel": args.channel, "previous": before or None},
        f"{args.channel} -> {args.ref}" + (f" (was {before})" if before else ""),
    )
    _after_change(args, cfg)
    return 0


def cmd_protect(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.protect import protect

    store = _store(cfg, args.dest)
    res = protect(store, _keys(cfg), args.channels, cfg.expiry_days(), off=args.off, meta_cache=_meta_cache(cfg, store))
    emit(
        args,
        {"protected_channels": res.protected, "changed": res.changed},
        f"protected channels of {store.shown}: {', '.join(res.protected) or 'none'}"
        + ("" if res.changed else " (unchanged)"),
    )
    return 0


def cmd_deprecate(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.publish import deprecate

    _before_change(args, cfg)
    store = _store(cfg)
    n = deprecate(store, _keys(cfg), args.ref, args.reason, cfg.expiry_days(), meta_cache=_meta_cache(cfg, store))
    emit(args, {"ref": args.ref, "images": n}, f"deprecated {args.ref} ({n} arch(es))")
    _after_change(args, cfg)
    return 0


def _when(text: str) -> Any:
    """A time given on the command line: ISO 8601 date or date-time; without a zone, UTC."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"--at {text!r} is not a date or time (e.g. 2027-01-31 or 2027-01-31T12:00Z)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def cmd_revoke(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue import lifecycle

    if args.at is not None and args.cascade:
        raise InvalidInputError("revoke --at and --cascade do not go together: schedule each version")
    _before_change(args, cfg)
    store = _store(cfg)
    if args.at is not None:
        when = lifecycle.schedule_revocation(
            store,
            _keys(cfg),
            args.ref,
            args.reason,
            _when(args.at),
            cfg.expiry_days(),
            meta_cache=_meta_cache(cfg, store),
        )
        emit(args, {"ref": args.ref, "at": when, "scheduled": True}, f"{args.ref} will be revoked at {when}")
        _after_change(args, cfg)
        return 0
    revoked, dropped = lifecycle.revoke(
        store,
        _keys(cfg),
        args.ref,
        args.reason,
        cfg.expiry_days(),
        cascade=args.cascade,
        meta_cache=_meta_cache(cfg, store),
    )
    for c in dropped:
        name, _, channel = c.partition("@")
        warn(f"channel {channel} of {name} pointed at a revoked version and now points nowhere")
    labels = [f"{n}:{v}" for n, v in revoked]
    emit(
        args,
        {"ref": args.ref, "revoked": labels, "dropped_channels": dropped},
        f"revoked {', '.join(labels)}",
    )
    _after_change(args, cfg)
    return 0


def cmd_restore(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.lifecycle import restore

    _before_change(args, cfg)
    store = _store(cfg)
    records = restore(store, _keys(cfg), args.ref, cfg.expiry_days(), meta_cache=_meta_cache(cfg, store))
    emit(
        args,
        {"ref": args.ref, "images": [r.summary() for r in records]},
        f"restored {args.ref} ({', '.join(sorted(r.arch for r in records))})",
    )
    _after_change(args, cfg)
    return 0


# -- reading -------------------------------------------------------------------------------------------------
def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(no images)"
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _rows(reader: Any, names: list[str], keep: Callable[[Any], bool]) -> tuple[list[dict[str, Any]], str]:
    from imagectl.progress import human_size

    data, rows = [], []
    for name in names:
        channels = reader.ext(name)["channels"]
        for rec in reader.images(name):
            if not keep(rec):
                continue
            chans = sorted(c for c, p in channels.items() if p.get("version") == rec.version)
            data.append({**rec.summary(), "channels": chans})
            flags = ",".join(chans) + (" deprecated" if rec.deprecated else "")
            osv = f"{rec.os} {rec.os_version}" if rec.os else "-"
            rows.append(
                [
                    rec.name,
                    rec.version,
                    rec.arch,
                    osv,
                    rec.hypervisor,
                    rec.format,
                    human_size(rec.size),
                    rec.created,
                    flags.strip(),
                ]
            )
    header = ["NAME", "VERSION", "ARCH", "OS", "HYPERVISOR", "FORMAT", "SIZE", "CREATED", "CHANNELS"]
    return data, _table(rows, header)


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    with _reader(cfg) as reader:
        names = [args.name] if args.name else reader.names()
        if args.outdated:
            return _list_outdated(args, reader, names)
        data, text = _rows(reader, names, lambda r: args.arch in (None, r.arch))
    emit(args, data, text)
    return 0


def _list_outdated(args: argparse.Namespace, reader: Any, names: list[str]) -> int:
    """Images built from a parent channel that has moved on since (their parent_image.channel points elsewhere)."""
    from imagectl.catalogue.lifecycle import outdated

    records = [r for n in names for r in reader.images(n) if args.arch in (None, r.arch)]
    parents = {r.parent_image["name"] for r in records if isinstance(r.parent_image, dict)}
    known = set(reader.names())
    channels = {p: reader.ext(p)["channels"] for p in sorted(parents) if p in known}
    found = outdated(records, channels)
    data = [
        {**r.summary(), "parent": r.parent_image, "parent_now": f["parent_now"]}
        for r, f in ((next(x for x in records if x.path == f["path"]), f) for f in found)
    ]
    lines = [
        f"{d['name']}:{d['version']} {d['arch']}: built from {d['parent']['name']}@{d['parent']['channel']} = "
        f"{d['parent']['version']}, which now points at {d['parent_now']}"
        for d in data
    ]
    emit(args, data, lines or ["no image is outdated"])
    return 0


def cmd_search(args: argparse.Namespace, cfg: Config) -> int:
    terms = [t.lower() for t in args.terms]

    def keep(r: Any) -> bool:
        hay = " ".join(str(v) for v in (r.name, r.version, r.os, r.os_version, r.hypervisor, r.arch, r.format))
        return all(t in hay.lower() for t in terms) and all(
            getattr(r, k) == v
            for k, v in (("arch", args.arch), ("os", args.os), ("hypervisor", args.hypervisor), ("format", args.format))
            if v is not None
        )

    with _reader(cfg) as reader:
        data, text = _rows(reader, reader.names(), keep)
    emit(args, data, text)
    return 0


def _boot_text(test: dict[str, Any]) -> str:
    verdict = "boot test passed" if test["passed"] else "boot test FAILED"
    return f"{verdict} ({test['accel']}, {test['seconds']} s, {test['host']}, {test['at']})"


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.model import parse_ref

    ref = parse_ref(args.ref)
    with _reader(cfg) as reader:
        if ref.version is None and ref.channel is None and args.arch is None:
            ext = reader.ext(ref.name)
            images = reader.images(ref.name)
            data: dict[str, Any] = {
                "name": ref.name,
                "channels": ext["channels"],
                "revoked": ext["revoked"],
                "revoke_at": ext["revoke_at"],
                "images": [{**r.summary(), "boot_test": r.boot_test} for r in images],
            }
            if args.history:
                data["history"] = ext["history"]
            lines = [
                f"name: {ref.name}",
                "channels: "
                + (", ".join(f"{c} -> {p['version']}" for c, p in sorted(ext["channels"].items())) or "none"),
                *(f"revoked: {v}: {w.get('reason', '')}" for v, w in sorted(ext["revoked"].items())),
                *(f"revokes at {w.get('at')}: {v}: {w.get('reason', '')}" for v, w in sorted(ext["revoke_at"].items())),
                *(
                    f"history {c}: {m.get('at')} {m.get('action')} -> {m.get('version') or '(none)'}"
                    for c, moves in (sorted(ext["history"].items()) if args.history else [])
                    for m in moves
                    if isinstance(m, dict)
                ),
                *(
                    f"  {r.version} {r.arch} {r.format} {r.size} bytes sha256:{r.sha256}"
                    + (" (deprecated)" if r.deprecated else "")
                    + (f"; {_boot_text(r.boot_test)}" if r.boot_test else "")
                    for r in images
                ),
            ]
            emit(args, data, lines)
            return 0
        rec = reader.resolve(ref, _arch(args)).record
    full = {**rec.custom(), "sha256": rec.sha256, "path": rec.path}
    emit(args, full, [f"{k}: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in full.items()])
    return 0


def cmd_site(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.site import build_site

    res = build_site(_store(cfg, args.dest), cfg, Path(args.output), warn)
    info = res.as_json()
    emit(
        args,
        info,
        f"wrote {res.path}/index.html: {info['names']} names, {info['images']} images, {res.files} files; "
        f"metadata version {info['metadata_version']}, "
        + (f"EXPIRED on {info['expires']}" if info["expired"] else f"expires {info['expires']}"),
    )
    return 0


# -- exports (imagectl/export/) ------------------------------------------------------------------------------
def _export_reader(cfg: Config, dest: str | None) -> Any:
    from imagectl.catalogue.client import CatalogueReader

    return CatalogueReader(_store(cfg, dest), cfg.cache_path, cfg.root, warn, retries=cfg.retries)


def cmd_export_simplestreams(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl import export

    with _export_reader(cfg, args.dest) as reader:
        files = export.simplestreams(reader, Path(args.output), gpg_key=cfg.gpg_key, public_url=cfg.public_url)
    signed = f"clearsigned by {cfg.gpg_key}" if cfg.gpg_key else "unsigned (no --gpg-key)"
    emit(
        args,
        {"output": args.output, "files": files, "signed": bool(cfg.gpg_key)},
        f"wrote {args.output}: " + ", ".join(files) + f"; {signed}",
    )
    return 0


def cmd_export_hepix(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl import export

    days = int(number(args.valid_days, "--valid-days", low=1, high=export.VALID_DAYS_MAX))
    signer = export.signer(cfg)  # before any download: a wrong key must not cost a pass over every image
    with _export_reader(cfg, args.dest) as reader:
        doc = export.hepix(
            reader,
            Path(args.output),
            signer,
            cache=cfg.cache_path,
            public_url=cfg.public_url,
            list_url=args.list_url,
            valid_days=days,
        )
    images = doc["hv:imagelist"]["hv:images"]
    emit(args, doc, f"wrote {args.output}: {count(len(images), 'image')}, S/MIME signed by {signer.dn}")
    return 0


def cmd_export_glance(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl import export
    from imagectl.catalogue.model import parse_ref

    ref = parse_ref(args.ref)
    with _reader(cfg) as reader:
        image = export.glance(reader, ref, _arch(args), public_url=cfg.public_url, root=cfg.root)
    emit(args, image.as_json(), image.shell())
    return 0


def _cache_limit(cfg: Config) -> int | None:
    """The ``cache_max_size`` setting in bytes, checked before the command does any work (None: unset)."""
    from imagectl.localcache import parse_size

    if not cfg.cache_max_size:
        return None
    return parse_size(cfg.cache_max_size, f"cache_max_size (from {cfg.sources.get('cache_max_size', '?')})")


def _keep_cache_under(args: argparse.Namespace, cfg: Config, limit: int | None) -> None:
    """After a build or pull that succeeded: prune the cache down to ``limit`` bytes, the least recently used first
    (never what was used in the last hour: what this command just made or took). A cache that cannot be pruned
    is a warning; the command's own work is done."""
    if limit is None:
        return
    from imagectl.localcache import prune
    from imagectl.progress import human_size

    try:
        report = prune(cfg.cache_path, unused_for=None, max_size=limit)
    except ImagectlError as e:
        warn(f"cache_max_size: the cache was not pruned: {e}")
        return
    if report.removed and not (getattr(args, "quiet", False) or getattr(args, "json", False)):
        print(
            f"imagectl: cache: removed {count(len(report.removed), 'entry', 'entries')} not used lately, "
            f"{human_size(report.freed)} freed, to stay under cache_max_size {cfg.cache_max_size}",
            file=sys.stderr,
        )


def cmd_pull(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.model import parse_ref
    from imagectl.pull import pull

    limit = _cache_limit(cfg)
    ref = parse_ref(args.ref)
    arch = _arch(args)
    with _reader(cfg) as reader:
        res = pull(
            reader,
            ref,
            arch,
            args.output,
            cfg.cache_path,
            retries=cfg.retries,
            progress=not (args.quiet or args.json),
            warn=warn,
        )
    emit(
        args,
        res.as_json(),
        ""
        if args.quiet
        else f"pulled {res.name}:{res.version} ({res.arch}) -> {res.path} sha256:{res.sha256} verified"
        + (" (from cache)" if res.cached else ""),
    )
    _keep_cache_under(args, cfg, limit)
    return 0


def _load_records(args: argparse.Namespace, cfg: Config, refs: Sequence[str]) -> list[Any]:
    """The build records ``refs`` name: ``*.build.json`` files, or images of the catalogue (one verified session)."""
    from imagectl.records import is_record_path, load_file, load_published

    out: list[Any] = [load_file(Path(r)) if is_record_path(r) else None for r in refs]
    if None in out:
        with _reader(cfg) as reader:
            arch = _arch(args)
            out = [o if o is not None else load_published(reader, r, arch) for o, r in zip(out, refs, strict=True)]
    return out


def cmd_diff(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.diff import diff_records

    a, b = _load_records(args, cfg, [args.a, args.b])
    d = diff_records(a, b)
    emit(args, d.as_json(), d.text())
    return 0


def cmd_sbom(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.fsio import atomic_write
    from imagectl.sbom import sbom_bytes

    [loaded] = _load_records(args, cfg, [args.ref])
    data = loaded.sbom or sbom_bytes(loaded)  # the SBOM publish stored (verified), else made from the record
    if args.output in (None, "-"):
        sys.stdout.write(data.decode())
        return 0
    atomic_write(Path(args.output), data)  # replaces a symlink at the path, never writes through it
    emit(args, {"output": args.output, "image": loaded.label}, f"wrote {args.output}: SPDX 2.3 SBOM of {loaded.label}")
    return 0


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    data = {s.name: {"value": getattr(cfg, s.name), "from": cfg.sources.get(s.name)} for s in SETTINGS}
    emit(args, data, [f"{k} = {v['value']!r}  ({v['from']})" for k, v in data.items()])
    return 0


def _recipe_path(text: str) -> Path:
    """A recipe file, or the name of a shipped one (``debian12-demo``, ``slc6-worker``) when no such file exists."""
    from imagectl.resources import shipped_recipes

    path = Path(text)
    if not path.exists() and "/" not in text and not text.endswith((".yaml", ".yml")):
        shipped = shipped_recipes()
        if text in shipped:
            return shipped[text]
    return path


def cmd_recipe_list(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.recipe.model import load_recipe
    from imagectl.resources import shipped_recipes

    data = []
    for stem, path in sorted(shipped_recipes().items()):
        r = load_recipe(path)
        abstract = bool(r.data.get("abstract"))
        data.append({"name": stem, "path": str(path), "abstract": abstract, "description": r.data.get("description")})
    lines = [f"{d['name']:<20} {'(abstract base) ' if d['abstract'] else ''}{d['description'] or ''}" for d in data]
    lines.append("build one with: imagectl build NAME (or copy its file from the paths in --json and edit it)")
    emit(args, data, lines)
    return 0


def cmd_recipe_validate(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.families import family
    from imagectl.imaging.elements import check_elements
    from imagectl.recipe.model import load_recipe
    from imagectl.recipe.schema import RecipeError

    results, failed = [], 0
    for path in args.paths:
        try:
            r = load_recipe(_recipe_path(path))
            if not r.data.get("abstract") and (missing := check_elements(r)):
                raise RecipeError(missing)
            # valid, but not buildable as it stands (an SLC recipe without gpg_keys): said, not failed
            needs = [] if r.data.get("abstract") else family(r.release.family).build_needs(r.release, r.data, r.pos)
            results.append({"path": path, "ok": True, "problems": [], "warnings": needs, "digest": r.digest()})
            if not args.json:
                what = (
                    "abstract base"
                    if r.data.get("abstract")
                    else f"{r.name}: {count(len(r.architectures), 'arch', 'arches')} x "
                    f"{count(len(r.hypervisors), 'hypervisor')}"
                )
                print(f"ok: {path} ({what})")
                for need in needs:
                    warn(need)
        except RecipeError as e:
            failed += 1
            results.append({"path": path, "ok": False, "problems": e.problems})
            if not args.json:
                for problem in e.problems:
                    print(problem, file=sys.stderr)
        except ImagectlError as e:
            failed += 1
            results.append({"path": path, "ok": False, "problems": [e.message]})
            if not args.json:
                print(e.message, file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    if failed:
        raise InvalidInputError(
            f"{failed} of {count(len(args.paths), 'recipe')} {agree(failed, 'has', 'have')} problems"
        )
    return 0


def cmd_recipe_show(args: argparse.Namespace, cfg: Config) -> int:
    import yaml

    from imagectl.recipe.model import load_recipe

    r = load_recipe(_recipe_path(args.path))
    info = {"recipe": r.data, "digest": r.digest(), "chain": [str(p) for p in r.chain]}
    emit(
        args,
        info,
        f"# {' <- '.join(str(p) for p in r.chain)}\n# digest {r.digest()}\n"
        + yaml.safe_dump(r.data, sort_keys=False, default_flow_style=False).rstrip(),
    )
    return 0


def _epoch(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds since 1970")
    return int(text)


@contextlib.contextmanager
def _live_progress(
    args: argparse.Namespace, keep: Callable[[str], bool] = lambda _line: False
) -> Iterator[Callable[[str], None]]:
    """The progress callback of a long command (build, rebuild): on a terminal it redraws one status line, cleared
    on the way out; elsewhere (a CI log) it prints only the lines ``keep`` accepts. Silent with --quiet or --json."""
    live = sys.stderr.isatty() and not args.quiet and not args.json

    def progress(line: str) -> None:
        if live:
            sys.stderr.write("\r\033[K" + line[: shutil.get_terminal_size().columns - 1])
            sys.stderr.flush()
        elif keep(line) and not args.quiet:
            print(line, file=sys.stderr)

    try:
        yield progress
    finally:
        if live:
            sys.stderr.write("\r\033[K")


def _source_date_epoch(args: argparse.Namespace, recipe: Any) -> int | None:
    """The SOURCE_DATE_EPOCH of ``build`` (and of ``plan``, whose keys must be build's): --source-date-epoch N;
    else, with --reproducible or --check-reproducible, the recipe's default; else None (not reproducible)."""
    from imagectl.catalogue.model import check_format
    from imagectl.imaging.builder import check_reproducible_formats, default_epoch

    if args.source_date_epoch is None and not (args.reproducible or getattr(args, "check_reproducible", False)):
        return None
    # an argument mistake first, before any look at git
    check_reproducible_formats(recipe, [check_format(f) for f in getattr(args, "format", None) or []] or None)
    return int(args.source_date_epoch) if args.source_date_epoch is not None else default_epoch(recipe)


def cmd_build(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl import buildrecord
    from imagectl.catalogue.model import check_arch, check_format
    from imagectl.imaging.builder import BuildOptions, build_recipe, check_reproducible
    from imagectl.recipe.model import load_recipe

    recipe = load_recipe(_recipe_path(args.recipe))
    limit = _cache_limit(cfg)
    epoch = _source_date_epoch(args, recipe)
    arches = [check_arch(a) for a in args.arch] or None
    formats = [check_format(f) for f in args.format] or None
    indexes = releases = None
    with _live_progress(args, keep=lambda line: "build cache" in line or "recorded state" in line) as progress:
        if args.pin_mirror:
            from imagectl.imaging.plan import targets
            from imagectl.rebuild import pinned_mirror
            from imagectl.records import is_record_path, load_file, load_published

            if recipe.data["os"]["family"] != "debian":
                raise InvalidInputError(
                    f"--pin-mirror: {args.recipe} builds {recipe.data['os']['family']}, and only Debian builds record "
                    "a mirror state"
                )

            # a record file, or a published image's signed records: one for each arch this build makes
            built = list(dict.fromkeys(t.arch for t in targets(recipe, arches, args.hypervisor or None)))
            if is_record_path(args.pin_mirror):
                pinned = [load_file(Path(args.pin_mirror))]
            else:
                with _reader(cfg) as reader:
                    pinned = [load_published(reader, args.pin_mirror, a) for a in built]
            indexes, releases, checked = pinned_mirror(pinned, args.pin_mirror, built, cfg.cache_path)
            progress(f"--pin-mirror {args.pin_mirror}: {checked}")
        opts = BuildOptions(
            output=Path(args.output),
            cache_dir=cfg.cache_path,
            arches=arches,
            hypervisors=args.hypervisor or None,
            formats=formats,
            rebuild=args.rebuild,
            progress=progress,
            source_date_epoch=epoch,
            mirror_state=indexes,
            mirror_releases=releases,
        )
        outputs = check_reproducible(recipe, opts) if args.check_reproducible else build_recipe(recipe, opts)
    data = [
        {
            "name": o.target.image_name,
            "arch": o.target.arch,
            "hypervisor": o.target.hypervisor,
            "images": [str(i) for i in o.images],
            "record": str(o.record),
            "cached": o.cached,
            "seconds": round(o.seconds, 1),
        }
        for o in outputs
    ]
    lines = [
        f"{'cached' if o.cached else 'built'}: {', '.join(map(str, o.images))} ({o.seconds:.0f} s; record {o.record})"
        for o in outputs
    ]
    if args.check_reproducible:  # check_reproducible raised if any image differed: say what was compared
        for entry, o in zip(data, outputs, strict=True):
            shas = {i.file: i.sha256 for i in buildrecord.parse(o.record.read_bytes(), str(o.record)).images or ()}
            entry["reproducible"] = {str(i): shas.get(i.name) for i in o.images}
            lines += [
                f"reproducible: {i} (sha256 {shas.get(i.name)}): the same bytes from a second build "
                f"({Path(args.output) / 'check-reproducible' / i.name})"
                for i in o.images
            ]
    emit(args, data, lines)
    _keep_cache_under(args, cfg, limit)
    return 0


def cmd_rebuild(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.rebuild import original_beside, original_published
    from imagectl.records import is_record_path, load_file, load_published

    out = Path(args.output)
    if is_record_path(args.ref):
        record = Path(args.ref)
        if out.resolve() == record.resolve().parent:
            raise InvalidInputError(
                f"-o {args.output} is the directory of {record}: the rebuild would replace the image it is compared "
                "with",
                hint="give the rebuild its own directory",
            )
        loaded = load_file(record)
        return _rebuild(args, cfg, loaded, original_beside(record, loaded))
    with _reader(cfg) as reader:
        loaded = load_published(reader, args.ref, _arch(args))
        return _rebuild(args, cfg, loaded, original_published(reader, loaded, cfg.cache_path, cfg.retries))


def _rebuild(args: argparse.Namespace, cfg: Config, loaded: Any, original: Callable[[Path], Path | None]) -> int:
    from imagectl.rebuild import rebuild

    with _live_progress(args) as progress:
        result = rebuild(
            loaded,
            Path(args.output),
            cfg.cache_path,
            recipe_file=Path(args.recipe) if args.recipe else None,
            mirrors=[(m, s) for m, s in args.mirror],
            anyway=args.anyway,
            original=original,
            progress=progress,
        )
    emit(args, result.as_json(), result.text())
    result.check()  # exit 25 when the bytes differ, after saying what differs
    return 0


def cmd_plan(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.model import check_arch
    from imagectl.imaging.matrix import plan_matrix
    from imagectl.recipe.model import load_recipe

    recipes = [(text, load_recipe(_recipe_path(text))) for text in args.recipes]
    arches = [check_arch(a) for a in args.arch] or None
    entries = plan_matrix(recipes, arches, cfg.cache_path, lambda recipe: _source_date_epoch(args, recipe))
    rows = [
        [
            e.job,
            e.target.arch,
            e.target.hypervisor,
            ",".join(e.runner.tags),
            "kvm" if e.runner.kvm else "-",
            "yes" if e.runner.buildable_here else "no",
            "cached" if e.cached else "-",
            e.build_key[:12],
        ]
        for e in entries
    ]
    header = ["JOB", "ARCH", "HYPERVISOR", "RUNNER TAGS", "BOOT", "BUILDS HERE", "CACHE", "BUILD KEY"]
    notes = sorted({f"{e.target.arch} {e.target.hypervisor}: {e.runner.why}" for e in entries})
    emit(args, {"entries": [e.as_json() for e in entries]}, "\n".join([_table(rows, header), *notes]))
    return 0


def cmd_test(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.catalogue.model import check_arch, host_arch
    from imagectl.imaging.boottest import BootFailedError, boot_test

    image = Path(args.image)
    live = sys.stderr.isatty() and not args.json
    record = None
    if args.record is not None:  # checked before the boot: a wrong record should not cost a boot's minutes
        from imagectl.imaging.bootrecord import open_record

        record = open_record(image, Path(args.record) if args.record else None)

    def progress(stage: str) -> None:
        if live or " " in stage:  # stages live on a terminal; sentences (KVM fallback) always
            print(f"imagectl: {stage}", file=sys.stderr)

    hypervisor = args.hypervisor or (record.hypervisor if record is not None else "hvm")
    started = time.monotonic()
    work = None
    try:
        direct = None
        if hypervisor == "xen-pv":  # no boot loader in the image: what Xen's pygrub extracts, booted directly
            from imagectl.imaging.boottest import detect_format
            from imagectl.imaging.pvboot import pygrub_extract

            work = Path(tempfile.mkdtemp(prefix="imagectl-pv-"))
            pv = pygrub_extract(image, detect_format(image), work)
            progress(f"xen-pv: booting what {pv.pygrub} read from the image; command line: {printable(pv.args)}")
            direct = (pv.kernel, pv.initrd, pv.args)
        res = boot_test(
            image,
            arch=check_arch(args.arch or host_arch()),
            marker=args.marker,
            timeout=number(args.timeout, "--timeout", low=0, high=86400, low_open=True),
            accel=args.accel,
            log_path=Path(args.log) if args.log else None,
            on_progress=progress,
            cdrom=Path(args.context) if args.context else None,
            direct=direct,
        )
    except BootFailedError as e:
        if e.tail and not args.json:
            print("--- last console lines ---", file=sys.stderr)
            for line in e.tail:
                print(f"  {printable(line)}", file=sys.stderr)
        if record is not None:
            record.write(passed=False, marker=args.marker, accel=e.accel or "tcg", seconds=time.monotonic() - started)
            print(f"imagectl: the failed boot test is recorded in {printable(str(record.path))}", file=sys.stderr)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    if record is not None:
        record.write(passed=True, marker=args.marker, accel=res.accel, seconds=res.seconds)
    data = {
        "passed": True,
        "record": str(record.path) if record is not None else None,
        "image": str(image),
        "hypervisor": hypervisor,
        "accel": res.accel,
        "fell_back": res.fell_back,
        "seconds": round(res.seconds, 1),
        "log": str(res.log_path),
        "milestones": res.milestones,
        "note": res.note,
    }
    emit(
        args,
        data,
        f"booted {image} to {args.marker!r} in {res.seconds:.0f} s under {res.accel}"
        + (" (after KVM was dropped)" if res.fell_back else "")
        + f"; console log {res.log_path}"
        + (f"; recorded in {record.path}" if record is not None else ""),
    )
    return 0


def cmd_context(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.imaging.context import KNOWN_KEYS, make_context_iso, parse_assignments

    values = parse_assignments(args.assignments)
    out = make_context_iso(values, Path(args.output))
    others = [k for k in values if k not in KNOWN_KEYS]
    emit(
        args,
        {"path": str(out), "label": "CONTEXT", "keys": list(values)},
        f"wrote {out} (CONTEXT: {', '.join(values)})"
        + (f"; {', '.join(others)} go to /etc/imagectl/context.env for site scripts" if others else "")
        + f"\nattach it as a CD-ROM: imagectl test IMAGE --context {out}, or qemu -drive file={out},media=cdrom",
    )
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from imagectl.demo import DEMO_RECIPE, run_demo

    return run_demo(
        Path(args.workdir),
        cfg,
        print,
        quick=args.quick,
        boot=not args.no_boot,
        recipe=Path(args.recipe) if args.recipe else DEMO_RECIPE,
        epoch=args.source_date_epoch,
    )


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    base.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    _setting_flags(common, "timeout", "retries", "min_rate", "cache_dir")

    p = argparse.ArgumentParser(prog="imagectl", description="Build, sign, publish and pull VM guest images.")
    p.add_argument("--version", action="version", version=f"imagectl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        parent: Any, name: str, fn: Handler, help: str, settings: Sequence[str], *, network: bool = True
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common if network else base], help=help, description=help
        )
        _setting_flags(sp, *settings)
        sp.set_defaults(fn=fn)
        return sp

    writer = ("catalogue", "keys", "expires_root", "expires_targets", "expires_snapshot", "expires_timestamp")
    reader = ("catalogue", "root")

    cat = sub.add_parser("catalogue", help="create, inspect and maintain catalogues").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sp = add(cat, "init", cmd_init, "create a catalogue and its signing keys", writer)
    sp.add_argument("dest", nargs="?", help="directory (or file:// URL) to create the catalogue in")
    sp.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="ROLE=K[/N]",
        help="K of N keys must sign ROLE (root, targets, snapshot, timestamp); default 1/1",
    )
    sp = add(cat, "verify", cmd_verify, "check every signature, version, expiry, hash and length", reader)
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument("--no-blobs", action="store_true", help="check metadata only, not image bytes")
    sp = add(cat, "upgrade", cmd_upgrade, "add what a catalogue written by an older imagectl lacks", reader)
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument(
        "--one-copy",
        action="store_true",
        help="S3: turn each blob still holding a second copy of an image into a pointer to its target file "
        "(halves the bytes; imagectl clients older than one copy per image can no longer read those images)",
    )
    sp = add(cat, "gc", cmd_gc, "remove blobs and metadata versions no signed metadata refers to", writer)
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    sp.add_argument(
        "--grace",
        default="24",
        metavar="HOURS",
        help="keep orphans younger than this: a running publish may be about to use them (default 24)",
    )
    sp = add(cat, "resign", cmd_resign, "re-sign metadata that is about to expire", writer)
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument(
        "--within",
        metavar="DAYS",
        help="re-sign roles expiring within DAYS (default: those past half their validity)",
    )
    sp.add_argument("--all", action="store_true", help="re-sign every role")
    sp = add(
        cat,
        "rebin",
        cmd_rebin,
        "spread the versions of big image names over hash bins; record the arches and formats of binned names",
        writer,
    )
    sp.add_argument("dest", metavar="DEST", help="catalogue location")
    sp.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="names to (re-)bin (default: those past the threshold; every binned name's record is checked)",
    )
    sp.add_argument("--bits", metavar="B", help="2**B bins per name (default: sized for what the name holds)")
    sp = add(cat, "protect", cmd_protect, "let channels point only at versions that passed a boot test", writer)
    sp.add_argument("dest", metavar="DEST", help="catalogue location")
    sp.add_argument("channels", nargs="+", metavar="CHANNEL")
    sp.add_argument("--off", action="store_true", help="stop protecting these channels")
    sp = add(cat, "list", cmd_list, "list images (every version and arch)", reader)
    sp.add_argument("name", nargs="?", help="only this image name")
    sp.add_argument("--arch", help="only this architecture")
    sp.add_argument(
        "--outdated", action="store_true", help="only images whose parent channel has moved on since they were built"
    )
    sp = add(cat, "show", cmd_show, "show one image name, or one image in full", reader)
    sp.add_argument("ref", metavar="NAME[:VERSION|@CHANNEL]")
    sp.add_argument("--history", action="store_true", help="also every signed move of each channel")
    sp.add_argument("--arch", help="architecture (default: the host's, when a version or channel is given)")
    sp = add(cat, "search", cmd_search, "find images by words and fields", reader)
    sp.add_argument("terms", nargs="*", metavar="TERM", help="words that must all appear (name, os, version…)")
    for f in ("arch", "os", "hypervisor", "format"):
        sp.add_argument(f"--{f}", help=f"only this {f}")
    sp = add(
        cat,
        "site",
        cmd_site,
        "render a static browse site (HTML and a JSON feed) from verified metadata",
        (*reader, "public_url"),
    )
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument(
        "-o", "--output", default="site", metavar="DIR", help="site directory, replaced atomically (default: ./site)"
    )

    rec = sub.add_parser("recipe", help="check and inspect recipes").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sp = add(rec, "validate", cmd_recipe_validate, "validate recipes; print every problem with file:line:column", ())
    sp.add_argument("paths", nargs="+", metavar="PATH")
    add(rec, "list", cmd_recipe_list, "list the recipes shipped with imagectl (usable by name)", ())
    sp = add(rec, "show", cmd_recipe_show, "print the fully merged recipe", ())
    sp.add_argument("path", metavar="PATH")

    sp = add(sub, "mirror", cmd_mirror, "copy a verified subset of a catalogue (resumable)", ("root",))
    sp.add_argument("src", metavar="SRC", help="source catalogue: directory, http(s)://, s3://")
    sp.add_argument("dest", metavar="DEST", help="mirror: directory or s3://")
    sp.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="name=…, arch=… or channel=… (repeatable; comma-separated values)",
    )
    sp.add_argument("--max", type=int, metavar="N", help="only the newest N versions per name and arch")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    cache = sub.add_parser(
        "cache", help="show imagectl's local caches, and remove what was not used lately"
    ).add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    add(
        cache,
        "show",
        cmd_cache_show,
        "what the cache holds: pulled images, builds, packages, base systems, SLC downloads",
        ("cache_dir",),
        network=False,
    )
    sp = add(
        cache,
        "prune",
        cmd_cache_prune,
        "remove cached images, builds, packages, base systems and SLC downloads not used lately (never trusted "
        "metadata)",
        ("cache_dir",),
        network=False,
    )
    sp.add_argument("--unused-for", metavar="DAYS", help="remove entries not used for DAYS days")
    sp.add_argument(
        "--max-size",
        metavar="SIZE",
        help="then remove the least recently used until these areas hold at most SIZE (20G, 500M)",
    )
    sp.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    trust = sub.add_parser("trust", help="manage signing keys").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sp = add(trust, "rotate", cmd_rotate, "replace a role's keys; clients follow the new root", writer)
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument("--role", default="root", choices=("root", "targets", "snapshot", "timestamp"))
    sp.add_argument("--threshold", default="1", metavar="K[/N]", help="new threshold K of N new keys")

    exp = sub.add_parser(
        "export", help="render the catalogue for other tools (simplestreams, HEPiX, Glance)"
    ).add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    sp = add(
        exp,
        "simplestreams",
        cmd_export_simplestreams,
        "write streams/v1 for sstream-query and mirrors",
        (*reader, "public_url", "gpg_key"),
    )
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="where streams/v1/ goes (serve it at the catalogue's base URL: item paths are its target files)",
    )
    sp = add(
        exp,
        "hepix",
        cmd_export_hepix,
        "write an S/MIME-signed HEPiX image list (vmcatcher, atrope)",
        (*reader, "public_url"),
    )
    sp.add_argument("dest", nargs="?", help="catalogue location (default: --catalogue)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="the signed list")
    sp.add_argument("--cert", dest="hepix_cert", metavar="PEM", help="signing certificate (env IMAGECTL_HEPIX_CERT)")
    sp.add_argument("--key", dest="hepix_key", metavar="PEM", help="its private key (env IMAGECTL_HEPIX_KEY)")
    sp.add_argument("--list-url", help="where the list will be published (hv:uri; default: beside the catalogue)")
    sp.add_argument("--valid-days", default="30", help="days until the list expires (dc:date:expires; default 30)")
    sp = add(
        exp,
        "glance",
        cmd_export_glance,
        "print the `openstack image create` command for one image",
        (*reader, "public_url"),
    )
    sp.add_argument("ref", metavar="NAME[:VERSION|@CHANNEL]")
    sp.add_argument("--arch", help="architecture (default: the host's)")

    sp = add(sub, "build", cmd_build, "build a recipe's images with diskimage-builder", (*reader, "cache_max_size"))
    sp.add_argument("recipe", metavar="RECIPE")
    sp.add_argument(
        "--arch", action="append", default=[], help="only this arch (repeatable; default: all of the recipe's)"
    )
    sp.add_argument(
        "--hypervisor",
        action="append",
        default=[],
        choices=["hvm", "xen-pv"],
        help="only this hypervisor's image (repeatable; default: all of the recipe's)",
    )
    sp.add_argument("--format", action="append", default=[], help="only this format (repeatable)")
    sp.add_argument("-o", "--output", default="build", help="output directory (default: ./build)")
    sp.add_argument(
        "--rebuild", action="store_true", help="build even if an identical build is cached (each initramfs made afresh)"
    )
    sp.add_argument(
        "--reproducible",
        action="store_true",
        help="bit-identical images: SOURCE_DATE_EPOCH to DIB, the root fs normalized (needs root; qcow2 and raw)",
    )
    sp.add_argument(
        "--source-date-epoch",
        type=_epoch,
        metavar="N",
        help="seconds since 1970 for --reproducible (default: $SOURCE_DATE_EPOCH, else the recipe's last git commit)",
    )
    sp.add_argument(
        "--check-reproducible",
        action="store_true",
        help="build reproducibly twice (the second without the build cache) and compare every image (exit 25 if not)",
    )
    sp.add_argument(
        "--pin-mirror",
        metavar="RECORD|REF",
        help="Debian: install from the mirror state a build record names (its signed indexes, from imagectl's "
        "package cache or the mirror; exit 25 if neither has them): a *.build.json file, or a published image "
        "NAME:VERSION or NAME@CHANNEL of --catalogue (its signed record of each arch built)",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="no live progress line")

    sp = add(
        sub,
        "rebuild",
        cmd_rebuild,
        "build a published image again from its signed build record and compare the bytes (exit 25 if they differ)",
        reader,
    )
    sp.add_argument("ref", metavar="REF", help="NAME:VERSION, NAME@CHANNEL or a *.build.json file")
    sp.add_argument("--arch", help="architecture of a catalogue image (default: the host's)")
    sp.add_argument("--recipe", help="the recipe file it was built from (default: the one its build record carries)")
    sp.add_argument(
        "--mirror",
        nargs=2,
        action="append",
        default=[],
        metavar=("MIRROR", "SNAPSHOT"),
        help="fetch MIRROR's files from SNAPSHOT (Debian; checked against the recorded signed indexes; repeatable)",
    )
    sp.add_argument(
        "--anyway",
        action="store_true",
        help="build although the mirror is no longer in the recorded state, and list the packages that moved",
    )
    sp.add_argument("-o", "--output", default="rebuild", help="output directory (default: ./rebuild)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no live progress line")

    sp = add(sub, "plan", cmd_plan, "the build matrix for CI: one entry per recipe, arch and hypervisor", ())
    sp.add_argument("recipes", nargs="+", metavar="RECIPE")
    sp.add_argument(
        "--arch", action="append", default=[], help="only this arch (repeatable; default: all of each recipe's)"
    )
    sp.add_argument(
        "--reproducible",
        action="store_true",
        help="the keys of build --reproducible (the epoch is part of a build's key)",
    )
    sp.add_argument(
        "--source-date-epoch",
        type=_epoch,
        metavar="N",
        help="the keys of build --source-date-epoch N (default with --reproducible: as build chooses it)",
    )

    sp = add(sub, "test", cmd_test, "boot an image under qemu and wait for its login prompt", (), network=False)
    sp.add_argument("image", metavar="IMAGE")
    sp.add_argument("--arch", help="architecture (default: the host's)")
    sp.add_argument("--timeout", default="600", help="seconds to wait for the marker (default 600, at most 86400)")
    sp.add_argument("--marker", default="login:", help="console text that means booted (default 'login:')")
    sp.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: KVM if it boots, else software emulation (default)",
    )
    sp.add_argument("--log", metavar="PATH", help="where to keep the console log")
    sp.add_argument("--context", metavar="ISO", help="attach this context disk (imagectl context) as a CD-ROM")
    sp.add_argument(
        "--hypervisor",
        choices=("hvm", "xen-pv"),
        help="xen-pv: boot what Xen's pygrub reads from the image (default: the build record's, else hvm)",
    )
    sp.add_argument(
        "--record",
        nargs="?",
        const="",
        metavar="RECORD",
        help="write the result (pass or fail) into the image's build record (default: NAME-ARCH.build.json beside it)",
    )

    sp = add(sub, "context", cmd_context, "make a node's context disk (an ISO labelled CONTEXT) for batch workers", ())
    sp.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="HOSTNAME=…, SSH_PUBLIC_KEY=@FILE, …")
    sp.add_argument("-o", "--output", required=True, metavar="ISO", help="where to write the ISO")

    sp = publish_p = add(sub, "publish", cmd_publish, "sign and publish an image file to a catalogue", writer)
    sp.add_argument("file", nargs="?", help="image file")
    sp.add_argument("--from-build", metavar="DIR", help="publish what `imagectl build` left in DIR (uses its records)")
    sp.add_argument("--name")
    sp.add_argument("--arch", help="x86_64, i386, ia64, aarch64, …")
    sp.add_argument("--version", help="immutable version (default: automatic YYYYMMDD.N)")
    sp.add_argument("--format", help="qcow2, raw, vmdk, vhd, tar, … (default: detected)")
    sp.add_argument("--hypervisor", default="hvm", help="hvm (default) or xen-pv")
    sp.add_argument("--os", help="operating system, e.g. slc, debian")
    sp.add_argument("--os-version", help="its release, e.g. 6, 12")
    sp.add_argument("--channel", help="also point this channel at the new version")
    sp.add_argument(
        "--parent",
        metavar="NAME@CHANNEL",
        help="the image this one was built from (NAME@CHANNEL or NAME:VERSION in this catalogue): its version and "
        "sha256 are signed with the image, for `catalogue list --outdated` and `revoke --cascade`",
    )
    sp = promote_p = add(sub, "promote", cmd_promote, "point a channel at a version", writer)
    sp.add_argument("ref", metavar="NAME:VERSION", help="NAME:VERSION (or NAME with --rollback)")
    sp.add_argument("channel", nargs="?")
    sp.add_argument("--rollback", metavar="CHANNEL", help="move CHANNEL of NAME back to its previous version")
    sp = deprecate_p = add(
        sub, "deprecate", cmd_deprecate, "mark a version deprecated (still pullable, with a warning)", writer
    )
    sp.add_argument("ref", metavar="NAME:VERSION")
    sp.add_argument("--reason", default="", help="shown to deployers")
    sp = add(sub, "revoke", cmd_revoke, "remove a version from the signed metadata", writer)
    sp.add_argument("ref", metavar="NAME:VERSION")
    sp.add_argument("--reason", required=True, help="shown to anyone who asks for the version")
    sp.add_argument("--at", metavar="DATE", help="take effect at DATE (ISO 8601; UTC unless a zone is given)")
    sp.add_argument("--cascade", action="store_true", help="also revoke every image built from this one")
    revoke_p = sp
    sp = add(sub, "restore", cmd_restore, "list a revoked version again (while its blobs are kept)", writer)
    sp.add_argument("ref", metavar="NAME:VERSION")
    for changer in (publish_p, promote_p, deprecate_p, revoke_p, sp):
        changer.add_argument(
            "--site", metavar="DIR", help="then refresh the browse site in DIR (imagectl catalogue site)"
        )
        changer.add_argument(
            "--export",
            action="append",
            default=[],
            metavar="KIND=PATH",
            help="then refresh this export (imagectl export; repeatable)",
        )
    sp = add(sub, "pull", cmd_pull, "download a verified image", (*reader, "cache_max_size"))
    sp.add_argument("ref", metavar="NAME[:VERSION|@CHANNEL]")
    sp.add_argument("--arch", help="architecture (default: the host's)")
    sp.add_argument("-o", "--output", metavar="PATH", help="file or directory (default: ./NAME-VERSION-ARCH.FMT)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    sp = add(sub, "diff", cmd_diff, "compare two images: packages, merged recipe, size (from build records)", reader)
    sp.add_argument("a", metavar="A", help="NAME:VERSION, NAME@CHANNEL or a *.build.json file")
    sp.add_argument("b", metavar="B", help="the same, compared against A")
    sp.add_argument("--arch", help="architecture of catalogue images (default: the host's)")
    sp = add(sub, "sbom", cmd_sbom, "an SPDX 2.3 JSON SBOM of an image, from its build record", reader)
    sp.add_argument("ref", metavar="REF", help="NAME:VERSION, NAME@CHANNEL or a *.build.json file")
    sp.add_argument("--arch", help="architecture of a catalogue image (default: the host's)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here, atomically (default: stdout)")
    add(
        sub,
        "config",
        cmd_config,
        "show every setting and where its value comes from",
        [s.name for s in SETTINGS if s.name not in ("timeout", "retries", "min_rate", "cache_dir")],
    )
    sp = add(sub, "demo", cmd_demo, "the embedded default: build the Debian demo, boot it, publish, list, pull", ())
    sp.add_argument("--workdir", default="imagectl-demo", help="where the demo writes (default: ./imagectl-demo)")
    sp.add_argument("--recipe", help="recipe to build (default: the Debian demo, recipes/demo/debian12-demo.yaml)")
    sp.add_argument("--no-boot", action="store_true", help="skip the qemu boot test")
    sp.add_argument(
        "--source-date-epoch",
        type=_epoch,
        metavar="N",
        help="build the demo reproducibly at this SOURCE_DATE_EPOCH (as build --reproducible does)",
    )
    sp.add_argument(
        "--quick",
        action="store_true",
        help="publish a small generated disk image instead of building (no build tools needed)",
    )
    return p


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run finally blocks: child processes (qemu, DIB) are stopped, temp files go


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    # SIGTERM runs the finally blocks that stop child processes, for this call only: a caller that runs main()
    # in-process (the tests do) gets its own handler back, and processes it forks later die of SIGTERM as usual
    # (a multiprocessing pool worker that raised SystemExit instead once held its queue's lock as it died).
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("IMAGECTL_DEBUG") == "1"
    try:
        flags = {s.name: getattr(args, s.name, None) for s in SETTINGS}
        cfg = load_config(flags)
        code: int = args.fn(args, cfg)
        return code
    except ImagectlError as e:
        if debug:
            raise
        return report(e)
    except KeyboardInterrupt:
        print("imagectl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
