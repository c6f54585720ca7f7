"""Scientific Linux CERN images: a rinse-style bootstrap (repository metadata, seed packages, unpack, stage 2 in
the chroot) and the era's boot loaders, for the ``slc-bootstrap`` and ``slc-bootloader`` DIB elements.

Modules: :mod:`.repo` (yum metadata, seed resolution, verified downloads), :mod:`.headers` (the yum 2.0
``headers/`` repositories of SLC 3 mirrors), :mod:`.evr` (rpm version order),
:mod:`.rpmfile` (rpm headers, file list, payload, cpio members), :mod:`.rpmsig` (signatures against pinned
keys), :mod:`.extract` (unpacking that cannot leave the target), :mod:`.seed` (seed lists, unpack),
:mod:`.bootstrap` (the element's entry point), :mod:`.bootloader` (menu.lst / elilo.conf).
"""
