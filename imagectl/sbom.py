"""An SPDX 2.3 JSON software bill of materials of one image, from its build record (``imagectl sbom``).

The document describes one package, the image (its SHA-256 as checksum), which CONTAINS one package per entry
of the record's package list, each with a purl (``pkg:deb/debian/bash@5.2.15-2?arch=amd64``, ``pkg:rpm/slc/…``).

Why the choices below:

- ``documentNamespace`` is derived from the image's SHA-256: the same image always gets the same namespace, and
  two images never share one (SPDX requires it unique per document). ``created`` is the record's ``finished``
  time when it has one, so generating the SBOM twice gives the same bytes.
- A package's licence comes from the record when it has one (``license``/``licence``); package managers write
  free text there (Debian's ``GPL-2+``), which is not an SPDX licence expression, so each distinct text is
  declared as a ``LicenseRef-…`` with the text kept verbatim in ``hasExtractedLicensingInfos``. Without one it
  is ``NOASSERTION``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import urllib.parse
from typing import Any

from imagectl import __version__
from imagectl.errors import InvalidInputError
from imagectl.records import LoadedRecord

__all__ = ["NAMESPACE_BASE", "purl", "sbom", "sbom_bytes"]

NAMESPACE_BASE = "https://spdx.imagectl.invalid/image"  # .invalid: a name, never fetched (RFC 6761)
_DEB = {"debian", "ubuntu", "devuan", "raspbian"}
_RPM = {"slc", "centos", "rhel", "rocky", "almalinux", "alma", "fedora", "el", "alt", "opensuse", "sles", "cc"}
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe=".-_~")


def purl(os: str, name: str, version: str, arch: str) -> str:
    """The package URL of a package of an image of ``os`` (the record's target.os): ``deb`` for Debian and
    Ubuntu, ``rpm`` for the Red Hat family (SLC included), ``generic`` otherwise."""
    family = os.lower()
    kind = "deb" if family in _DEB else "rpm" if family in _RPM else "generic"
    head = f"pkg:{kind}/{_q(family)}/{_q(name)}" if kind != "generic" else f"pkg:generic/{_q(name)}"
    return head + (f"@{_q(version)}" if version else "") + (f"?arch={_q(arch)}" if arch else "")


def _spdx_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:64] or "x"


def _licence_ref(text: str) -> str:
    return f"LicenseRef-{_spdx_id(text)}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _image(loaded: LoadedRecord) -> tuple[str, str]:
    """(format, sha256) of the image the SBOM describes: the signed one, else the record's first with a hash."""
    order = [loaded.signed_format] if loaded.signed_format else []
    for fmt in [*order, *loaded.images]:
        sha = loaded.images.get(fmt, (None, None))[1] if fmt else None
        if sha and re.fullmatch(r"[0-9a-f]{64}", sha):
            return str(fmt), sha
    raise InvalidInputError(
        f"{loaded.label} names no image SHA-256 (images[].sha256)", hint="use a record written by imagectl build"
    )


def _created(record: dict[str, Any]) -> str:
    finished = record.get("finished")
    if isinstance(finished, str) and _CREATED.fullmatch(finished):
        return finished
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sbom(loaded: LoadedRecord) -> dict[str, Any]:
    """The SPDX 2.3 document (a JSON-ready dict) of the image of ``loaded``.

    Raises InvalidInputError when the record names no image SHA-256 to describe."""
    fmt, sha = _image(loaded)
    version = loaded.version or ""
    image_name = f"{loaded.name}-{loaded.arch}.{fmt}" if not version else f"{loaded.name}-{version}-{loaded.arch}.{fmt}"
    image_pkg: dict[str, Any] = {
        "SPDXID": "SPDXRef-Image",
        "name": loaded.name,
        **({"versionInfo": version} if version else {}),
        "packageFileName": image_name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": sha}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": f"{fmt} disk image for {loaded.arch}" + (f", {loaded.os}" if loaded.os else ""),
    }
    packages: list[dict[str, Any]] = [image_pkg]
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"}
    ]
    licences: dict[str, str] = {}  # LicenseRef id -> text
    raw = loaded.record.get("packages")
    entries = [p for p in (raw if isinstance(raw, list) else []) if isinstance(p, dict)]
    entries.sort(key=lambda p: (str(p.get("name", "")), str(p.get("arch", "")), str(p.get("version", ""))))
    for n, p in enumerate(entries, 1):
        name, pver, arch = (str(p.get(k) or "") for k in ("name", "version", "arch"))
        text = p.get("license", p.get("licence"))
        declared = "NOASSERTION"
        if isinstance(text, str) and text.strip():
            declared = _licence_ref(text)
            licences[declared] = text
        spdx_id = f"SPDXRef-Package-{n}-{_spdx_id(name)}"
        packages.append(
            {
                "SPDXID": spdx_id,
                "name": name or "unnamed",
                **({"versionInfo": pver} if pver else {}),
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": declared,
                "copyrightText": "NOASSERTION",
                "externalRefs": [
                    {
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": purl(loaded.os, name, pver, arch),
                    }
                ],
            }
        )
        relationships.append(
            {"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": spdx_id}
        )
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": f"{NAMESPACE_BASE}/{_q(loaded.name)}/{_q(loaded.arch)}/sha256-{sha}",
        "creationInfo": {"created": _created(loaded.record), "creators": [f"Tool: imagectl-{__version__}"]},
        "packages": packages,
        "relationships": relationships,
    }
    if licences:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": k, "extractedText": v, "name": v} for k, v in sorted(licences.items())
        ]
    return doc


def sbom_bytes(loaded: LoadedRecord) -> bytes:
    """The document as the file holds it: sorted keys, indented, one trailing newline."""
    return (json.dumps(sbom(loaded), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
