"""Mutants of imagectl/catalogue/client.py, keys.py and metadata.py that the rest of the suite let survive.

Each test checks what a deployer, an operator or the next run sees: the client cache a reader makes (its
directory, mode, lock and ``url`` file), the messages and hints of a refused root, version or key, which bins a
pull by version reads, the dict a scheduled revocation is reported as, and the bytes of a signed metadata file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Signature, Timestamp

from imagectl.catalogue import client, metadata, model
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.state import load_state
from imagectl.errors import InvalidInputError, KeyProblemError, LocalIOError, NotFoundError, UntrustedMetadataError
from imagectl.store.local import LocalStore
from tests.conftest import Catalogue, CliResult
from tests.test_mutants_verify_client import bin_wn

ARCH = "x86_64"


def publish(cli: Callable[..., CliResult], cat: Catalogue, image: Path, version: str, *extra: str) -> None:
    r = cli("publish", image, *cat.args(), "--name", "wn", "--arch", ARCH, "--version", version, *extra)
    assert r.code == 0, r.err


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def reader_of(cat: Catalogue, cache: Path, root: str | None = None, warn: Callable[[str], None] | None = None):
    return client.CatalogueReader(
        LocalStore(cat.dir),
        cache,
        str(cat.root) if root is None else root,
        warn or (lambda _m: None),
        retries=0,
    )


# -- the client cache ------------------------------------------------------------------------------------------------
def test_cache_key_ignores_the_query_string() -> None:
    """Mutant: the query kept in the hashed URL (a presigned URL's signature would change the cache every time)."""
    plain = client.cache_key("https://example.org/cat/")
    assert client.cache_key("https://example.org/cat/?X-Amz-Signature=1") == plain
    assert client.cache_key("https://u:pw1@example.org/cat/?a=b") == client.cache_key("https://u:pw2@example.org/cat/")
    assert plain == hashlib.sha256(b"https://example.org/cat/").hexdigest()[:16]


def test_client_cache_creates_missing_parents(tmp_path: Path) -> None:
    """Mutant: ``mkdir(parents=None)``, so a cache under a directory that does not exist yet is refused."""
    tree = client.client_cache(tmp_path / "a" / "b" / "cache")
    assert tree.root == (tmp_path / "a" / "b" / "cache").resolve()
    assert stat.S_IMODE(os.stat(tree.root).st_mode) == 0o700


@pytest.mark.usefixtures("umask_022")
def test_reader_cache_directory_is_owner_only_and_records_its_url(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutants: the catalogue's cache directory made 0701 (not 0700), and its ``url`` file under another name."""
    with reader_of(catalogue, tmp_path / "c") as reader:
        assert reader.dir == (tmp_path / "c").resolve() / "tuf" / client.cache_key(catalogue.store.url)
        assert stat.S_IMODE(os.stat(reader.dir).st_mode) == 0o700
        assert (reader.dir / "url").read_text() == reader.shown_url + "\n"
        assert not (reader.dir / "XXurlXX").exists()


def test_a_symlinked_lock_file_is_refused(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant: the lock opened without O_NOFOLLOW (``|`` turned into ``&``), so a planted symlink is followed."""
    cache = tmp_path / "c"
    d = cache / "tuf" / client.cache_key(catalogue.store.url)
    d.mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    (cache / "tuf").chmod(0o700)
    victim = tmp_path / "victim"
    (d / ".lock").symlink_to(victim)
    with pytest.raises(LocalIOError):
        reader_of(catalogue, cache)
    assert not victim.exists()


# -- the trusted root ------------------------------------------------------------------------------------------------
def test_a_root_that_is_a_directory_is_invalid_input(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant: ``read_regular(..., error=None)``: the refusal of a --root that is no regular file is a TypeError."""
    d = tmp_path / "rootdir"
    d.mkdir()
    with pytest.raises(InvalidInputError) as e:
        reader_of(catalogue, tmp_path / "c", root=str(d))
    assert str(e.value).startswith(f"trusted root {d} is ")


def test_a_root_of_another_catalogue_is_refused_with_a_hint(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Mutants: the hint of a pinned root that is not a root of the catalogue (dropped or upper-cased)."""
    other = tmp_path / "other"
    r = cli("catalogue", "init", other, "--keys", tmp_path / "other-keys")
    assert r.code == 0, r.err
    pinned = other / "metadata" / "1.root.json"
    with pytest.raises(client.WrongRootError) as e:
        reader_of(catalogue, tmp_path / "c", root=str(pinned))
    assert e.value.hint == "pin the root.json that `imagectl catalogue init` printed for this catalogue"


def test_trust_on_first_use_warns_exactly(catalogue: Catalogue, tmp_path: Path) -> None:
    """Mutant: the advice of the trust-on-first-use warning upper-cased."""
    seen: list[str] = []
    with reader_of(catalogue, tmp_path / "c", root="", warn=seen.append) as reader:
        sha = hashlib.sha256(catalogue.root.read_bytes()).hexdigest()
        assert seen == [
            f"trusting the root of {reader.shown_url} on first use (sha256:{sha}); "
            "pin it with --root to be safe from a server that was already compromised"
        ]


# -- binned names ----------------------------------------------------------------------------------------------------
@pytest.fixture
def binned(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch
) -> Catalogue:
    """A catalogue whose name ``wn`` is binned (thresholds lowered), versions 1.0 to 1.7."""
    bin_wn(catalogue, cli, make_image, monkeypatch, 8)
    assert len(load_state(catalogue.store).bin_roles("wn")) > 2, "not binned in more than two bins"
    return catalogue


def test_a_malformed_record_in_a_bin_names_its_image(
    binned: Catalogue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant: ``_records(None, ...)`` for the records of a bin: the error said 'signed metadata of None'."""

    def malformed(*_a: object) -> model.ImageRecord:
        raise InvalidInputError("bad record")

    with reader_of(binned, tmp_path / "c") as reader:
        reader.role("wn")
        assert reader.role("wn").targets == {}  # every record is in a bin
        monkeypatch.setattr(model.ImageRecord, "from_target", malformed)
        with pytest.raises(UntrustedMetadataError) as e:
            reader.images("wn")
    assert str(e.value) == "signed metadata of wn is malformed: bad record"


def test_a_pull_by_version_reads_only_the_bins_of_its_paths(binned: Catalogue, tmp_path: Path) -> None:
    """Mutants: the by-path lookup of a binned NAME:VERSION skipped (``found = None``, or taken for unbinned names
    only), so every bin of the name was fetched to pull one version."""
    all_bins = set(load_state(binned.store).bin_roles("wn"))
    with reader_of(binned, tmp_path / "c") as reader:
        got = reader.resolve(model.parse_ref("wn:1.3"), ARCH)
        assert (got.record.version, got.record.arch) == ("1.3", ARCH)
        fetched = {p.name.removesuffix(".json") for p in reader.dir.iterdir()} & all_bins
    assert 0 < len(fetched) < len(all_bins), (fetched, all_bins)


# -- what resolve says -----------------------------------------------------------------------------------------------
def test_an_unknown_version_lists_versions_in_version_order(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Mutant: the known versions sorted as strings ('1.10' before '1.9')."""
    publish(cli, catalogue, make_image(4_000, seed="9"), "1.9")
    publish(cli, catalogue, make_image(4_000, seed="10"), "1.10")
    with reader_of(catalogue, tmp_path / "c") as reader, pytest.raises(NotFoundError) as e:
        reader.resolve(model.parse_ref("wn:7"), ARCH)
    assert str(e.value) == "wn has no version '7' (versions: 1.9, 1.10)"


def test_every_version_deprecated_hints_at_the_newest(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Mutant: the hint of 'every version is deprecated' dropped."""
    publish(cli, catalogue, make_image(4_000, seed="1"), "1")
    publish(cli, catalogue, make_image(4_000, seed="2"), "2")
    for v in ("1", "2"):
        r = cli("deprecate", f"wn:{v}", "--reason", "old", *catalogue.args())
        assert r.code == 0, r.err
    with reader_of(catalogue, tmp_path / "c") as reader, pytest.raises(NotFoundError) as e:
        reader.resolve(model.parse_ref("wn"), ARCH)
    assert str(e.value) == f"every {ARCH} version of wn is deprecated"
    assert e.value.hint == "ask for one explicitly, e.g. wn:2"


def test_a_revocation_without_a_reason_says_nothing_after_the_colon(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Mutant: ``why.get('reason')`` without its default: a tombstone without a reason read '...: None'."""
    publish(cli, catalogue, make_image(4_000, seed="1"), "1")
    with reader_of(catalogue, tmp_path / "c") as reader:
        reader.revoked_now = lambda _name, _version, now=None: {"at": "2026-01-02T03:04:05Z"}  # type: ignore[method-assign]
        with pytest.raises(client.RevokedError) as e:
            reader.resolve(model.parse_ref("wn:1"), ARCH)
    assert str(e.value) == "wn:1 was revoked on 2026-01-02T03:04:05Z:"


def test_a_scheduled_revocation_whose_time_has_come(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Mutants: the keys of the dict a scheduled revocation is reported as (reason, at, scheduled)."""
    publish(cli, catalogue, make_image(4_000, seed="1"), "1")
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = cli("revoke", "wn:1", "--reason", "end of support", "--at", at, *catalogue.args())
    assert r.code == 0, r.err
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with reader_of(catalogue, tmp_path / "c") as reader:
        assert reader.revoked_now("wn", "1") is None
        assert reader.revoked_now("wn", "1", later) == {"reason": "end of support", "at": at, "scheduled": True}


@pytest.mark.parametrize("deprecate", [True, False])
def test_newest_when_the_others_are_deprecated_or_revoked_by_schedule(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    deprecate: bool,
) -> None:
    """wn:2's scheduled revocation has come: if wn:1 is deprecated, the name is "deprecated or revoked" and the
    hint names wn:1 (it named wn:2, which is revoked); if not, wn:1 is the newest usable version. With both
    revoked by schedule, nothing is left and no version is suggested."""
    publish(cli, catalogue, make_image(4_000, seed="1"), "1")
    publish(cli, catalogue, make_image(4_000, seed="2"), "2")
    if deprecate:
        assert cli("deprecate", "wn:1", "--reason", "old", *catalogue.args()).code == 0
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cli("revoke", "wn:2", "--reason", "end of support", "--at", at, *catalogue.args()).code == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    monkeypatch.setattr(model, "utcnow", lambda: later)  # the deployer's clock, three days on
    with reader_of(catalogue, tmp_path / "c") as reader:
        if deprecate:
            with pytest.raises(NotFoundError) as e:
                reader.resolve(model.parse_ref("wn"), ARCH)
            assert (str(e.value), e.value.hint) == (
                f"every {ARCH} version of wn is deprecated or revoked",
                "ask for one explicitly, e.g. wn:1",
            )
        else:
            assert reader.resolve(model.parse_ref("wn"), ARCH).record.version == "1"
    monkeypatch.undo()
    assert cli("revoke", "wn:1", "--reason", "end of support", "--at", at, *catalogue.args()).code == 0
    monkeypatch.setattr(model, "utcnow", lambda: later)
    with reader_of(catalogue, tmp_path / "c2") as reader, pytest.raises(NotFoundError) as e:
        reader.resolve(model.parse_ref("wn"), ARCH)
    assert (str(e.value), e.value.hint) == (f"every {ARCH} version of wn is revoked", None)


# -- keys.py ---------------------------------------------------------------------------------------------------------
def test_a_missing_key_directory_hints_at_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyProblemError) as e:
        KeyRing(tmp_path / "nope")
    assert str(e.value) == f"key directory {tmp_path / 'nope'} does not exist"
    assert e.value.hint == "pass --keys DIR or set IMAGECTL_KEYS"


def test_a_key_file_that_is_no_pem_key_is_named(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    bad = keys / "root-1.key"
    bad.write_bytes(b"not a key\n")
    bad.chmod(0o600)
    with pytest.raises(KeyProblemError) as e:
        KeyRing(keys)
    assert str(e.value).startswith(f"{bad} is not an unencrypted PEM private key: ")


# -- metadata.py -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "cap"),
    [
        ("metadata/timestamp.json", metadata.TIMESTAMP_MAX),
        ("metadata/3.snapshot.json", metadata.SNAPSHOT_MAX),
        ("metadata/4.targets.json", metadata.TARGETS_MAX),
        ("metadata/7.image-wn.json", metadata.TARGETS_MAX),
        ("metadata/2.root.json", metadata.ROOT_MAX),
        ("metadata/root.json", metadata.ROOT_MAX),
        # image names may hold dots and end like a top-level role: an image role all the same (the mutation run
        # of the third sample found `catalogue verify` refusing image-wn.root as "not root metadata")
        ("metadata/5.image-wn.root.json", metadata.TARGETS_MAX),
        ("metadata/5.image-buildroot.json", metadata.TARGETS_MAX),
        ("metadata/6.image-nightly-snapshot.json", metadata.TARGETS_MAX),
        ("metadata/6.image-a.timestamp~b2-1.json", metadata.TARGETS_MAX),
    ],
)
def test_cap_for_each_kind(key: str, cap: int) -> None:
    assert metadata.cap_for(key) == cap
    role = metadata.role_of(key)
    assert metadata.kind_of(key) == (role if role in ("root", "timestamp", "snapshot") else "targets")
    assert metadata.kind_of(key) == ("targets" if cap == metadata.TARGETS_MAX else role)


def test_signed_file_bytes_sorts_the_keys_of_each_signature() -> None:
    """Mutant: the signatures encoded without sort_keys (a signature's extra fields came after keyid and sig)."""
    md = Metadata(Timestamp(), {"k": Signature("k", "ab", {"a": 1})})
    out = metadata.signed_file_bytes(md, b'{"x":1}')
    assert out == b'{"signatures":[{"a":1,"keyid":"k","sig":"ab"}],"signed":{"x":1}}\n'


def test_signed_file_bytes_keeps_unrecognized_top_level_fields() -> None:
    """Mutant: ``json.dumps(None, ...)``: metadata with a key beside signatures and signed was written as 'null'."""
    md = Metadata(Timestamp(), {}, {"extra": [1, 2]})
    out = metadata.signed_file_bytes(md, b"{}")
    assert out == json.dumps(md.to_dict(), separators=(",", ":"), sort_keys=True).encode() + b"\n"
    assert json.loads(out)["extra"] == [1, 2]
