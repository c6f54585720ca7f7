"""How imagectl's names map onto the names other systems use (catalogue/README.md §14 lists the same tables).

Each table is total over :data:`imagectl.catalogue.model.ARCHES`, or says plainly which arch has no name there,
so a renderer never guesses: an image the other system cannot name is refused with a one-line error.
"""

from __future__ import annotations

from imagectl.errors import InvalidInputError

__all__ = [
    "GLANCE_ARCH",
    "OS_DISTRO",
    "OS_TITLE",
    "SIMPLESTREAMS_ARCH",
    "glance_arch",
    "os_distro",
    "simplestreams_arch",
]

#: imagectl arch -> simplestreams (Debian/Ubuntu dpkg) arch name, as Ubuntu's streams and sstream-mirror-glance use
SIMPLESTREAMS_ARCH = {
    "x86_64": "amd64",
    "i386": "i386",
    "i686": "i386",
    "ia64": "ia64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "ppc64le": "ppc64el",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

#: imagectl arch -> nova/glance ``architecture`` (nova.objects.fields.Architecture; i386 is canonicalised to i686
#: by nova anyway). riscv64 is missing: nova 26 (Debian 12) has no such architecture and refuses the image.
GLANCE_ARCH = {
    "x86_64": "x86_64",
    "i386": "i686",
    "i686": "i686",
    "ia64": "ia64",
    "aarch64": "aarch64",
    "armv7l": "armv7l",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
}

#: imagectl os -> libosinfo-style ``os_distro`` (Glance's property-keys list; anything else passes unchanged)
OS_DISTRO = {"slc": "scientificlinux", "sl": "scientificlinux", "el": "rhel", "redhat": "rhel"}

#: imagectl os -> words for people (HEPiX ``sl:comments``, simplestreams ``release_title``)
OS_TITLE = {"slc": "Scientific Linux CERN", "sl": "Scientific Linux", "debian": "Debian", "ubuntu": "Ubuntu"}


def simplestreams_arch(arch: str) -> str:
    try:
        return SIMPLESTREAMS_ARCH[arch]
    except KeyError:
        raise InvalidInputError(f"simplestreams has no name for arch {arch!r}") from None


def glance_arch(arch: str) -> str:
    try:
        return GLANCE_ARCH[arch]
    except KeyError:
        raise InvalidInputError(
            f"nova has no architecture for {arch!r}", hint=f"known: {', '.join(sorted(GLANCE_ARCH))}"
        ) from None


def os_distro(os_name: str | None) -> str | None:
    """The ``os_distro`` Glance and nova use for imagectl's ``os`` (None stays None)."""
    return None if os_name is None else OS_DISTRO.get(os_name, os_name)
