"""simplestreams (``sstream-query``, ``sstream-mirror``, ``sstream-mirror-glance``, LXD-style clients) from a catalogue.

Layout (relative to the output directory, which is meant to be served at the catalogue's own base URL, so item
``path``s, the images' target files ``targets/NAME/VERSION/ARCH/HEX.FILE``, resolve against the same mirror
base)::

    streams/v1/index.json             format index:1.0
    streams/v1/CONTENT_ID.json        format products:1.0, datatype image-downloads
    streams/v1/index.sjson, streams/v1/CONTENT_ID.sjson   the same, clearsigned (``--gpg-key``)

One product per (name, arch): ``CONTENT_ID:NAME:ARCH`` with the simplestreams arch. One version per imagectl
version, keyed by :func:`version_serial`. Channels are product ``aliases`` (``NAME@CHANNEL``) and the version a
channel points at carries the channel in ``label``. Deprecated versions say ``supported: false``. The mapping is
catalogue/README.md §14.1.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from imagectl.catalogue import model
from imagectl.catalogue.model import ImageRecord, utcnow
from imagectl.errors import InvalidInputError
from imagectl.export.names import OS_TITLE, os_distro, simplestreams_arch
from imagectl.export.output import write_files
from imagectl.export.view import CatalogueView, NameView
from imagectl.runner import run

__all__ = ["CONTENT_ID", "check_gpg_key", "export_simplestreams", "render_products", "version_serial"]

CONTENT_ID = "org.imagectl:download"
STREAMS = "streams/v1/"
_GPG_KEY = re.compile(r"[0-9A-Za-z@._+<>=][0-9A-Za-z@._+<>= -]{0,254}")

#: imagectl format -> simplestreams ftype (``disk1.img`` is the qcow2 ftype sstream-mirror-glance knows)
FTYPES = {"qcow2": "disk1.img", "tgz": "root.tar.gz", "tar": "root.tar"}


def version_serial(version: str) -> str:
    """A simplestreams version key for an imagectl version: plain string order equals imagectl's version order.

    simplestreams clients sort version keys as strings (``--max N`` keeps the last N). The key depends on the
    version alone, so it never changes when another version is published. Each part of the version
    (catalogue/README.md §3.1) becomes ``a`` (``~``), ``nLL<digits>`` (a number: two-digit length, then the digits
    without leading zeros) or ``w<letters>``; parts are joined with ``.``, then ``.e`` (the end) and ``_VERSION``
    (the tie-break of equal parts). ``6.1`` -> ``n016.n011.e_6.1``; ``1.0~rc1`` -> ``n011.n010.a.wrc.n011.e_1.0~rc1``.
    """
    parts = []
    for p in re.findall(r"\d+|[A-Za-z]+|~", version):
        if p == "~":
            parts.append("a")
        elif p.isdigit():
            digits = str(int(p))
            parts.append(f"n{len(digits):02d}{digits}")
        else:
            parts.append("w" + p)
    return ".".join([*parts, "e"]) + "_" + version


def check_gpg_key(key: str) -> str:
    """A GnuPG key id, fingerprint or user id as given; InvalidInputError for one that could be read as an option."""
    if not _GPG_KEY.fullmatch(key):
        raise InvalidInputError(f"not a GnuPG key id or user id: {key!r}")
    return key


def _os_fields(rec: ImageRecord) -> dict[str, Any]:
    if rec.os is None:
        return {}
    title = f"{OS_TITLE.get(rec.os, rec.os)} {rec.os_version}"
    return {"os": os_distro(rec.os), "release": rec.os_version, "version": rec.os_version, "release_title": title}


def _product(nv: NameView, arch: str, images: list[ImageRecord]) -> dict[str, Any]:
    newest = max(images, key=lambda r: model.version_key(r.version))
    listed = {r.version for r in images}
    aliases = [nv.name] + [f"{nv.name}@{c}" for c, v in sorted(nv.channels.items()) if v in listed]
    versions: dict[str, Any] = {}
    for rec in images:
        item: dict[str, Any] = {
            "ftype": FTYPES.get(rec.format, rec.format),
            "path": model.target_file_key(rec.path, rec.sha256),
            "sha256": rec.sha256,
            "size": rec.size,
        }
        version: dict[str, Any] = {
            "imagectl_version": rec.version,
            "pubname": f"{rec.name}-{rec.version}-{rec.arch}",
            "created": rec.created,
            "hypervisor": rec.hypervisor,
            "format": rec.format,
            **_os_fields(rec),
            "items": {item["ftype"]: item},
        }
        if nv.channels_of(rec.version):
            version["label"] = ",".join(nv.channels_of(rec.version))
        if rec.deprecated:
            version["supported"] = False
            version["deprecated_at"] = rec.deprecated.get("at", "")
            version["deprecated_reason"] = rec.deprecated.get("reason", "")
        versions[version_serial(rec.version)] = version
    return {
        "arch": simplestreams_arch(arch),
        "imagectl_name": nv.name,
        "imagectl_arch": arch,
        "aliases": ",".join(aliases),
        "supported": any(not r.deprecated for r in images),
        **_os_fields(newest),
        "versions": versions,
    }


def render_products(view: CatalogueView, content_id: str, updated: str) -> dict[str, Any]:
    """The ``products:1.0`` document of ``view`` (every listed image; revoked ones are not in the view)."""
    products = {}
    for nv in view.names:
        for arch in sorted({r.arch for r in nv.images}):
            images = [r for r in nv.images if r.arch == arch]
            products[f"{content_id}:{nv.name}:{simplestreams_arch(arch)}"] = _product(nv, arch, images)
    return {
        "content_id": content_id,
        "datatype": "image-downloads",
        "format": "products:1.0",
        "updated": updated,
        "products": products,
    }


def _index(content_id: str, products: dict[str, Any], path: str, updated: str) -> dict[str, Any]:
    entry = {
        "datatype": "image-downloads",
        "format": "products:1.0",
        "path": path,
        "products": sorted(products["products"]),
        "updated": updated,
    }
    return {"format": "index:1.0", "updated": updated, "index": {content_id: entry}}


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def clearsign(data: bytes, key: str) -> bytes:
    """``data`` clearsigned by ``key`` with gpg (GNUPGHOME honoured). Raises ToolMissingError / ToolError."""
    env = {"GNUPGHOME": os.environ["GNUPGHOME"]} if os.environ.get("GNUPGHOME") else {}
    with tempfile.TemporaryDirectory(prefix="imagectl-sign-") as tmp:
        src, out = Path(tmp) / "in.json", Path(tmp) / "out.sjson"
        src.write_bytes(data)
        run(
            ["gpg", "--batch", "--yes", "--no-tty", "--local-user", key, "--clearsign", "--output", out, src],
            env=env,
            timeout=120,
            what="gpg --clearsign",
        )
        return out.read_bytes()


def export_simplestreams(
    view: CatalogueView, out: Path, gpg_key: str | None, content_id: str = CONTENT_ID
) -> list[str]:
    """Write the streams of ``view`` under ``out`` all-or-nothing; return the paths written (relative to ``out``).

    Unsigned, the ``.sjson`` files of an earlier signed export are removed (they would go on being served, signed
    and stale). Raises InvalidInputError for a bad key id, ToolError when gpg fails (nothing written),
    SymlinkRefusedError/LocalIOError for the output.
    """
    if gpg_key is not None:
        check_gpg_key(gpg_key)
    updated = email.utils.format_datetime(utcnow())
    products = render_products(view, content_id, updated)
    files: dict[str, bytes] = {}
    plain, signed = f"{STREAMS}{content_id}.json", f"{STREAMS}{content_id}.sjson"
    files[plain] = _dump(products)
    index = _dump(_index(content_id, products, plain, updated))
    if gpg_key is not None:
        files[signed] = clearsign(files[plain], gpg_key)
        files[f"{STREAMS}index.sjson"] = clearsign(_dump(_index(content_id, products, signed, updated)), gpg_key)
    files[f"{STREAMS}index.json"] = index  # last: it names the others
    stale = [] if gpg_key is not None else [signed, f"{STREAMS}index.sjson"]
    write_files(out, files, remove=stale)
    return list(files)
