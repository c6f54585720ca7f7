"""Mutants of imagectl/catalogue/state.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

import pytest

from imagectl.catalogue import trust
from imagectl.catalogue.keys import KeyRing
from imagectl.errors import ConflictError
from imagectl.store.local import LocalStore
from tests.conftest import EXPIRY, Catalogue


class RootTaken(LocalStore):
    """A directory store on which another rotation has just created ``metadata/2.root.json``."""

    def write_new(self, key: str, data: bytes) -> bool:
        return False if key == "metadata/2.root.json" else super().write_new(key, data)


def test_a_root_version_taken_by_a_concurrent_rotation_is_a_conflict(catalogue: Catalogue) -> None:
    """Mutant of write_root: the message of the conflict (two rotations racing for the same root version)."""
    before = sorted(p.name for p in (catalogue.dir / "metadata").iterdir())
    with pytest.raises(ConflictError) as e:
        trust.rotate(RootTaken(catalogue.dir), KeyRing(catalogue.keys), "timestamp", EXPIRY)
    assert str(e.value) == "root version 2 already exists; retry"
    assert e.value.exit_code == 6
    assert sorted(p.name for p in (catalogue.dir / "metadata").iterdir()) == before
