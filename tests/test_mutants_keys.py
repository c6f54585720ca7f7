"""Mutants of imagectl/catalogue/keys.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Catalogue, CliResult

ARCH = "x86_64"


@pytest.mark.parametrize(
    ("mode", "how"),
    [
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable or executable"),
        (0o602, "writable or executable"),
        (0o610, "writable or executable"),
        (0o601, "writable or executable"),
        (0o644, "readable"),
        (0o700, None),  # the owner's own bits are nobody else's business
        (0o400, None),
    ],
    ids=lambda v: f"{v:04o}" if isinstance(v, int) else str(v),
)
def test_a_key_file_any_group_or_other_bit_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], mode: int, how: str | None
) -> None:
    """Mutants: the mode check with only the group bits or only the other bits, and the wording of the two
    kinds of refusal. Each bit alone is refused (exit 7) with the mode in the message and ``chmod 600`` as hint."""
    key = next(catalogue.keys.glob("targets-*.key"))
    key.chmod(mode)
    r = cli("publish", make_image(), *catalogue.args(), "--name", "wn", "--arch", ARCH)
    if how is None:
        assert r.code == 0, r.err
        return
    assert r.code == 7, r.err
    assert r.err.splitlines() == [
        f"imagectl: error: private key {key} is {how} by group or others (mode {mode:04o})",
        f"hint: chmod 600 {key}",
    ]
    assert not (catalogue.dir / "blobs").exists() or not any((catalogue.dir / "blobs").rglob("*"))
