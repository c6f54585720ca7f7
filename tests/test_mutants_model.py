"""Mutants of imagectl/catalogue/model.py that the rest of the suite let survive (issue 13; tests/MUTANTS.md)."""

from __future__ import annotations

import datetime as dt

import pytest

from imagectl.catalogue import model
from imagectl.errors import InvalidInputError


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (
            model.check_os,
            "Debian",
            "invalid os 'Debian': use 1-32 of a-z 0-9 _ - starting with a letter (e.g. slc, debian)",
        ),
        (model.check_os, "a/b", "invalid os 'a/b': path separators and '..' are not allowed"),
        (model.check_os, "sl\x1bc", "invalid os 'sl\\x1bc': control characters are not allowed"),
        (model.check_os_version, "-6", "invalid os version '-6': use 1-32 of A-Z a-z 0-9 . _ - (e.g. 6, 12)"),
        (model.check_os_version, "6..1", "invalid os version '6..1': path separators and '..' are not allowed"),
        (
            model.check_name,
            "-wn",
            "invalid image name '-wn': use 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        ),
        (model.check_version, "1/2", "invalid version '1/2': path separators and '..' are not allowed"),
        (model.check_channel, "1st", "invalid channel '1st': use 1-32 of a-z 0-9 _ - starting with a letter"),
        (model.check_arch, "amd64", "unknown arch 'amd64': expected one of " + ", ".join(model.ARCHES)),
        (model.check_format, "qcow3", "unknown format 'qcow3': expected one of " + ", ".join(model.FORMATS)),
        (model.check_hypervisor, "kvm", "unknown hypervisor 'kvm': expected one of hvm, xen-pv"),
    ],
)
def test_each_identifier_check_names_its_kind_and_rule(check: object, value: str, message: str) -> None:
    """Mutants: the kind and the rule text of each check (what a publisher reads when a value is refused)."""
    with pytest.raises(InvalidInputError) as e:
        check(value)  # type: ignore[operator]
    assert str(e.value) == message
    assert e.value.exit_code == 3


@pytest.mark.parametrize("value", ["slc", "debian", "rhel_9", "a" * 32])
def test_valid_os_names_pass_unchanged(value: str) -> None:
    assert model.check_os(value) == value


@pytest.mark.parametrize("value", ["6", "12", "6.10", "LTS_22-04", "9" * 32])
def test_valid_os_versions_pass_unchanged(value: str) -> None:
    assert model.check_os_version(value) == value


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("AMD64", "x86_64"), ("amd64", "x86_64"), ("x64", "x86_64"), ("ARM64", "aarch64"), ("x86_64", "x86_64"),
     ("ppc64le", "ppc64le"), ("i686", "i686")],
)  # fmt: skip
def test_host_arch_maps_the_other_names_of_an_architecture(
    monkeypatch: pytest.MonkeyPatch, machine: str, arch: str
) -> None:
    """Mutants: every key and value of host_arch's table (Windows and macOS name x86_64 and aarch64 otherwise)."""
    monkeypatch.setattr(model.platform, "machine", lambda: machine)
    assert model.host_arch() == arch


def test_auto_version_counts_up_from_the_highest_of_the_day() -> None:
    today = dt.date(2026, 12, 1)
    assert model.auto_version([], today) == "20261201.1"
    used = ["20261201.9", "20261201.10", "20261130.50", "20261201.3.1", "x20261201.99", "1.0"]
    assert model.auto_version(used, today) == "20261201.11"
