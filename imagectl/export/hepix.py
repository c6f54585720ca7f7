"""A HEPiX image list (``hv:imagelist``, as vmcaster writes and vmcatcher and atrope read), signed as S/MIME.

Which images: for every (name, arch), what ``imagectl pull NAME`` would give (the newest version that is not
deprecated), and for every channel what ``NAME@CHANNEL`` gives. Each has a stable ``dc:identifier`` (a UUID made
from ``NAME`` or ``NAME@CHANNEL`` and the arch), so a subscriber follows new versions and promotions the way
vmcatcher follows an image whose ``hv:version`` changes. Revoked versions are not in the verified metadata, so
never in a list. HEPiX needs a SHA-512 of each image, which the catalogue does not sign: it is computed from the
blob while checking the signed length and SHA-256 (:func:`imagectl.export.view.verified_sha512`).

The signature is a detached S/MIME ``multipart/signed`` message (vmcaster's ``PKCS7_DETACHED``), made with the
``cryptography`` package's PKCS#7 builder: ``openssl smime -verify`` (what atrope runs) checks it. Field map:
catalogue/README.md §14.2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from imagectl.catalogue.model import ImageRecord, utcnow
from imagectl.errors import KeyProblemError
from imagectl.export.names import OS_TITLE, os_distro
from imagectl.export.output import check_output_file, write_files
from imagectl.export.view import CatalogueView, newest_live
from imagectl.fsio import read_regular

__all__ = ["Signer", "export_hepix", "load_signer", "render_imagelist"]

PEM_MAX = 1 << 20
_NS = uuid.UUID("5b0c7f0e-6a43-5d1f-9a7e-2f1d6c9e4b21")  # imagectl's namespace for HEPiX identifiers
#: OpenSSL's short names, for DNs written the way atrope and vmcatcher compare them (``/C=CH/O=…/CN=…``)
_SHORT = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
}


def openssl_dn(name: x509.Name) -> str:
    """``name`` in OpenSSL's one-line form, ``/C=CH/O=CERN/CN=Image Team`` (the form HEPiX lists carry)."""
    return "".join(f"/{_SHORT.get(a.oid, a.oid.dotted_string)}={a.value!s}" for a in name)


@dataclass(frozen=True)
class Signer:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def dn(self) -> str:
        return openssl_dn(self.cert.subject)

    @property
    def ca(self) -> str:
        return openssl_dn(self.cert.issuer)

    @property
    def creator(self) -> str:
        cns = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cns[0].value) if cns else self.dn

    @property
    def email(self) -> str:
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            emails = san.get_values_for_type(x509.RFC822Name)
        except x509.ExtensionNotFound:
            emails = []
        emails += [str(a.value) for a in self.cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
        return emails[0] if emails else ""


def _private(st: os.stat_result) -> None:
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProblemError(
            f"the HEPiX signing key is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint="chmod 600 it",
        )


def load_signer(cert_path: str, key_path: str) -> Signer:
    """The certificate and private key that sign image lists. Raises KeyProblemError (exit 7) for a missing,
    unreadable, group/world-readable, malformed or mismatched pair, or a key type S/MIME cannot use."""
    cert_pem = read_regular(cert_path, PEM_MAX, what="HEPiX certificate", error=KeyProblemError)
    key_pem = read_regular(key_path, PEM_MAX, what="HEPiX key", error=KeyProblemError, check=_private)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise KeyProblemError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise KeyProblemError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyProblemError(f"{key_path}: S/MIME signing needs an RSA or EC key")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != cert.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise KeyProblemError(f"{key_path} is not the private key of {cert_path}")
    return Signer(cert, key)


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(
    view: CatalogueView, rec: ImageRecord, ref: str, sha512: str, signer: Signer, expires: str
) -> dict[str, Any]:
    osname = os_distro(rec.os)
    what = f"{OS_TITLE.get(rec.os, rec.os)} {rec.os_version}" if rec.os else "operating system not given"
    comments = f"{what}; imagectl {rec.name}:{rec.version} ({rec.arch}, {rec.hypervisor})"
    if rec.deprecated:
        comments += f"; deprecated since {rec.deprecated.get('at', '?')}: {rec.deprecated.get('reason') or '-'}"
    return {
        "hv:image": {
            "dc:identifier": str(uuid.uuid5(_NS, f"{ref} {rec.arch}")),
            "dc:title": f"{ref} ({rec.arch})",
            "dc:description": f"{ref}: {what}, {rec.hypervisor}, {rec.format}",
            "dc:date:created": rec.created,
            "dc:date:expires": expires,
            "hv:version": rec.version,
            "hv:uri": view.image_url(rec),
            "hv:size": rec.size,
            "hv:format": rec.format,
            "hv:hypervisor": "Xen" if rec.hypervisor == "xen-pv" else "QEMU,KVM",
            "sl:checksum:sha512": sha512,
            "sl:arch": rec.arch,
            "sl:os": "Linux" if rec.os else "unknown",
            # atrope gives Glance ``os_distro = sl:osname.lower()``: the name Glance and nova know
            "sl:osname": osname or "unknown",
            "sl:osversion": rec.os_version or "unknown",
            "sl:comments": comments,
            "ad:group": "imagectl",
            "ad:mpuri": f"{view.base}#{ref}",
            "ad:user:fullname": signer.creator,
            "ad:user:guid": str(uuid.uuid5(_NS, signer.dn)),
            "ad:user:uri": f"mailto:{signer.email}" if signer.email else view.base,
        }
    }


def render_imagelist(
    view: CatalogueView,
    signer: Signer,
    sha512: Callable[[ImageRecord], str],
    *,
    list_url: str,
    valid_days: int = 30,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``hv:imagelist`` document (unsigned). ``sha512`` gives the verified SHA-512 of an image."""
    now = now or utcnow()
    expires = _stamp(now + dt.timedelta(days=valid_days))
    chosen: list[tuple[str, ImageRecord]] = []
    for nv in view.names:
        for arch in sorted({r.arch for r in nv.images}):
            newest = newest_live(nv.images, arch)
            if newest is not None:
                chosen.append((nv.name, newest))
            for channel, version in sorted(nv.channels.items()):
                chosen += [(f"{nv.name}@{channel}", r) for r in nv.images if r.arch == arch and r.version == version]
    images = [_entry(view, rec, ref, sha512(rec), signer, expires) for ref, rec in chosen]
    return {
        "hv:imagelist": {
            "dc:identifier": str(uuid.uuid5(_NS, view.base)),
            "dc:title": f"imagectl images of {view.base}",
            "dc:description": f"Images published in the imagectl catalogue {view.base} (signed TUF metadata)",
            "dc:source": view.base,
            "dc:date:created": _stamp(now),
            "dc:date:expires": expires,
            "hv:version": str(view.snapshot_version),
            "hv:uri": list_url,
            "hv:endorser": {
                "hv:x509": {
                    "dc:creator": signer.creator,
                    "hv:ca": signer.ca,
                    "hv:dn": signer.dn,
                    "hv:email": signer.email,
                }
            },
            "hv:images": images,
        }
    }


def sign(data: bytes, signer: Signer) -> bytes:
    """``data`` as a detached S/MIME ``multipart/signed`` message (SHA-256), as vmcaster and ``openssl smime``."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(signer.cert, signer.key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )


def export_hepix(
    view: CatalogueView,
    out: Path,
    signer: Signer,
    sha512: Callable[[ImageRecord], str],
    *,
    list_url: str | None = None,
    valid_days: int = 30,
) -> dict[str, Any]:
    """Render, sign and write the list to ``out`` atomically; return the unsigned document.

    Raises SymlinkRefusedError/LocalIOError for the output, and whatever ``sha512`` raises (nothing written).
    """
    check_output_file(out)
    doc = render_imagelist(view, signer, sha512, list_url=list_url or view.base + out.name, valid_days=valid_days)
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    # The directory is the one the user named (followed); the file itself is never written through a symlink.
    write_files(out.parent.resolve(), {out.name: sign(body, signer)})
    return doc
