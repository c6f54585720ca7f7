"""Mutants of imagectl/catalogue/{metadata,model,publish}.py that the rest of the suite let survive (MUTANTS.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagectl.catalogue.metadata import ValueCounter
from imagectl.catalogue.model import ImageRecord, parse_ref, target_path
from imagectl.catalogue.publish import detect_format, init_catalogue
from imagectl.errors import ImagectlError
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, Catalogue, CliResult

ARCH = "x86_64"
SHA = "a" * 64
PATH = target_path("wn", "1", ARCH, "qcow2")


def _custom(**extra: Any) -> dict[str, Any]:
    base = {"name": "wn", "version": "1", "arch": ARCH, "format": "qcow2", "hypervisor": "hvm", "size": 10}
    return {**base, "created": "2026-01-01T00:00:00Z", **extra}


def test_value_counter_adds_up_over_chunks() -> None:
    """Mutant: ``count =`` instead of ``+=``; each chunk alone is under the limit, together they are over."""
    c = ValueCounter("x.json", limit=3)
    c.feed(b"{[")
    with pytest.raises(ImagectlError) as e:
        c.feed(b"{[")
    assert str(e.value) == "x.json holds more than 3 JSON values: refused before parsing (metadata cap)"
    assert c.count == 4


def test_parse_ref_splits_at_the_first_colon() -> None:
    """Mutant: ``rsplit``; ``wn:1:2`` is the name ``wn`` with the (invalid) version ``1:2``."""
    with pytest.raises(ImagectlError) as e:
        parse_ref("wn:1:2")
    assert str(e.value).startswith("invalid version '1:2'")


@pytest.mark.parametrize("field", ["os", "os_version"])
def test_from_target_names_the_invalid_os_field(field: str) -> None:
    """Mutants: the field name in the message of an invalid os / os_version."""
    with pytest.raises(ImagectlError) as e:
        ImageRecord.from_target(PATH, 10, {"sha256": SHA}, _custom(**{field: "bad value"}))
    assert str(e.value).startswith(f"target {PATH} has an invalid {field} ")


def test_from_target_keeps_parent_and_parent_image() -> None:
    """Mutants: ``parent`` dropped or read from another key; ``parent_image`` never read."""
    parent_image = {"name": "base", "version": "3", "sha256": "b" * 64}
    rec = ImageRecord.from_target(PATH, 10, {"sha256": SHA}, _custom(parent="base@stable", parent_image=parent_image))
    assert rec.parent == "base@stable"
    assert rec.parent_image == parent_image


def test_summary_keys() -> None:
    """Mutants: the ``size`` and ``created`` keys of a listing renamed."""
    rec = ImageRecord.from_target(PATH, 10, {"sha256": SHA}, _custom())
    s = rec.summary()
    assert s["size"] == 10
    assert s["created"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("head", "name", "fmt"),
    [(b"QFI\xfb", "x.img", "qcow2"), (b"conectix", "x.img", "vhd"), (b"vhdxfile", "x.img", "vhdx")],
)
def test_detect_format_by_magic(tmp_path: Path, head: bytes, name: str, fmt: str) -> None:
    """Mutants: qcow2 / vhd spelled in capitals; ``or`` of the two VHD magics made ``and``."""
    f = tmp_path / name
    f.write_bytes(head + b"\0" * 100)
    assert detect_format(str(f)) == fmt


def test_init_hints(tmp_path: Path) -> None:
    """Mutants: the hints of a key directory inside the catalogue, of an existing catalogue (root.json, and the
    1.root.json that ``write_new`` refuses to replace)."""
    cat = tmp_path / "cat"
    cat.mkdir()
    with pytest.raises(ImagectlError) as e:
        init_catalogue(LocalStore(cat.resolve()), cat.resolve() / "keys", EXPIRY)
    assert e.value.hint == "keep keys outside the directory a web server serves"
    (cat / "metadata").mkdir()
    (cat / "metadata" / "1.root.json").write_text("{}")
    with pytest.raises(ImagectlError) as e:
        init_catalogue(LocalStore(cat), tmp_path / "keys", EXPIRY)
    assert str(e.value).endswith("is already a catalogue")
    assert e.value.hint == "use a new, empty location"
    (cat / "metadata" / "root.json").write_text("{}")
    with pytest.raises(ImagectlError) as e:
        init_catalogue(LocalStore(cat), tmp_path / "keys", EXPIRY)
    assert e.value.hint == "use a new, empty location"


def test_init_key_directory_mode_and_reuse(tmp_path: Path) -> None:
    """Mutants: the key directory made 0o701; reused keys added to no role."""
    old = os.umask(0o022)
    try:
        first = init_catalogue(LocalStore(tmp_path / "a"), tmp_path / "keys", EXPIRY)
    finally:
        os.umask(old)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert len(first.generated_keys) == 4
    second = init_catalogue(LocalStore(tmp_path / "b"), tmp_path / "keys", EXPIRY)
    assert second.generated_keys == []
    a = json.loads((tmp_path / "a" / "metadata" / "1.root.json").read_text())["signed"]["roles"]
    b = json.loads((tmp_path / "b" / "metadata" / "1.root.json").read_text())["signed"]["roles"]
    assert a == b


def test_init_signs_with_every_key_of_a_threshold(tmp_path: Path) -> None:
    """Mutant: ``append=None``; each signature replaced the one before, so a 2-of-2 role had one signature."""
    init_catalogue(LocalStore(tmp_path / "c"), tmp_path / "keys", EXPIRY, {"targets": (2, 2)})
    signed = json.loads((tmp_path / "c" / "metadata" / "1.targets.json").read_text())
    assert len(signed["signatures"]) == 2


HINT = "(stable is protected; boot it with imagectl test --record, then publish --from-build)"


@pytest.mark.parametrize(("version", "shown"), [((), "wn"), (("--version", "5"), "wn:5")])
def test_publish_untested_into_a_protected_channel_is_refused(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    version: tuple[str, ...],
    shown: str,
) -> None:
    """Mutants of the pre-upload check of a protected channel: ``known = None``, ``replace`` without the record,
    ``old_pre.boot_test`` read of None, the version left out of (or ``XXXX`` put into) what was refused."""
    w = catalogue.args()
    assert cli("catalogue", "protect", catalogue.dir, "stable", *w[2:]).code == 0
    r = cli("publish", make_image(), *w, "--name", "wn", "--arch", ARCH, *version, "--channel", "stable")
    assert (r.code, r.err) == (
        24,
        f"imagectl: error: refusing to publish {shown} to stable: no passing boot test for {ARCH} {HINT}\n",
    )
