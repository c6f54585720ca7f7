"""The publisher's cache of immutable metadata (issue 10 item 2; imagectl/catalogue/metacache.py).

What must hold: a publish whose cache holds what it needs reads no metadata file after the timestamp (on S3: no
GET but the first round's); every cached entry is verified as a download is, and one that fails (garbage, a change
the signature does not cover, another version's bytes, torn) is dropped and read from the store, so the publish
still signs on top of the store's truth; a stale cache loses nothing another publisher committed; nothing in the
cache is followed through a symlink or trusted from a directory others can write; the cache keeps one file per
role and sweeps the temp files of killed writers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue import bins
from imagectl.catalogue.keys import KeyRing
from imagectl.catalogue.metacache import PUBLISHER_DIR, SEEN, CatalogueCache, MetadataCache, _entry
from imagectl.catalogue.model import target_path
from imagectl.catalogue.publish import PublishRequest, init_catalogue, publish
from imagectl.catalogue.state import CatalogueState, Want, load_state
from imagectl.store import Store
from imagectl.store.s3 import S3Store
from tests.conftest import Catalogue, CliResult
from tests.conftest import sha256 as sha256_of
from tests.test_bins import ARCH, EXPIRY
from tests.test_bins import small_bins as small_bins  # a fixture: bins past 4 targets

pytestmark = pytest.mark.usefixtures("small_bins")


def reads_of(store: Store) -> list[str]:
    """Every key read from ``store`` from now on (``read`` and ``read_versioned``), in order."""
    keys: list[str] = []
    read, read_versioned = store.read, store.read_versioned

    def counted(key: str, max_length: int) -> bytes:
        keys.append(key)
        return read(key, max_length)

    def counted_versioned(key: str, max_length: int) -> tuple[bytes, str]:
        keys.append(key)
        return read_versioned(key, max_length)

    store.read = counted  # type: ignore[method-assign]
    store.read_versioned = counted_versioned  # type: ignore[method-assign]
    return keys


FIRST_ROUND = {"metadata/root.json", "metadata/1.root.json", "metadata/2.root.json", "metadata/timestamp.json"}


def s3_gets(store: S3Store) -> list[str]:
    """The key of every ``GetObject`` sent through ``store``'s clients from now on, in order."""
    gets: list[str] = []

    def get(params: dict[str, str], **_: object) -> None:
        gets.append(str(params.get("Key", "?")).removeprefix(store.prefix))

    for client in store.clients():
        client.meta.events.register("before-parameter-build.s3.GetObject", get)
    return gets


def seeded(store: Store, keydir: Path, make_image: Callable[..., Path], name: str = "wn") -> KeyRing:
    """The catalogue in ``store`` (made with the keys in ``keydir`` if there is none yet), its NAME holding 8
    versions (binned under small_bins), published without a cache; its keys."""
    if not store.exists("metadata/root.json"):
        init_catalogue(store, keydir, EXPIRY)
    keys = KeyRing(keydir)
    for i in range(8):
        req = PublishRequest(file=str(make_image(4096, seed=f"{name}{i}")), name=name, arch=ARCH, version=f"1.{i}")
        publish(store, keys, req, EXPIRY)
    assert len(load_state(store).bin_roles(name)) > 2
    return keys


def warm(store: Store, cache: MetadataCache, version: str, name: str = "wn") -> CatalogueState:
    """Load the state as a publish of NAME:VERSION would, with ``cache``: it then holds all that publish reads."""
    path = target_path(name, version, ARCH, "qcow2")
    state = load_state(store, want=Want(name, paths=(path,), listing=(version, ARCH)), meta_cache=cache)
    assert state.holder(name, path) is not None
    return state


def warmed(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> tuple[KeyRing, MetadataCache, CatalogueState]:
    """The catalogue seeded, and a publisher cache (``tmp_path/pubcache``) warmed for a publish of wn:2.0."""
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    cache = MetadataCache(tmp_path / "pubcache")
    return keys, cache, warm(catalogue.store, cache, "2.0")


def publish_new(store: Store, keys: KeyRing, make_image: Callable[..., Path], cache: MetadataCache) -> None:
    """Publish new bytes as wn:2.0 through ``cache``."""
    req = PublishRequest(file=str(make_image(4096, seed="new")), name="wn", arch=ARCH, version="2.0")
    publish(store, keys, req, EXPIRY, meta_cache=cache)


def bin_of(state: CatalogueState, version: str, name: str = "wn") -> str:
    succinct = state.succinct(state.role(f"image-{name}"))  # type: ignore[arg-type]
    assert succinct is not None
    return bins.bin_role_for(succinct, target_path(name, version, ARCH, "qcow2"))


def entries(cache_dir: Path) -> dict[str, Path]:
    """The entries of the (one) catalogue directory of the publisher cache, by role."""
    (d,) = (cache_dir / PUBLISHER_DIR).iterdir()
    return {p.name.removesuffix(".json"): p for p in d.iterdir() if p.suffix == ".json" and not p.name.startswith(".")}


def published(store: Store, version: str, name: str = "wn") -> bool:
    """Whether the store's current metadata, loaded without any cache, lists NAME:VERSION."""
    return any(r.version == version for r in load_state(store).version_images(name, version))


def test_a_warm_cache_spares_every_metadata_read_after_the_timestamp(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    keys, cache, state = warmed(catalogue, tmp_path, make_image)
    held = entries(tmp_path / "pubcache")
    assert {"snapshot", "targets", "image-wn", bin_of(state, "2.0")} <= held.keys()
    reads = reads_of(catalogue.store)
    publish_new(catalogue.store, keys, make_image, cache)
    after_timestamp = [k for k in reads if k.startswith("metadata/") and "root" not in k and "timestamp" not in k]
    assert after_timestamp == [], reads
    assert published(catalogue.store, "2.0")
    # what the commit wrote is what the cache now holds (the next publish needs nothing but the timestamp either)
    now = load_state(catalogue.store)
    snap = now.timestamp.signed.snapshot_meta.version
    entry = entries(tmp_path / "pubcache")["snapshot"].read_bytes()
    assert entry == f"{snap}\n".encode() + (catalogue.dir / "metadata" / f"{snap}.snapshot.json").read_bytes()
    assert cli("catalogue", "verify", catalogue.dir).code == 0


def _tamper(kind: str, entry: Path, older: bytes) -> None:
    header, _, body = entry.read_bytes().partition(b"\n")
    if kind == "garbage":
        body = b"not json at all"
    elif kind == "unsigned":
        doc = json.loads(body)
        doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a change its signatures do not cover
        body = json.dumps(doc).encode()
    elif kind == "older":
        body = older  # another version's bytes, validly signed, under this version's header
    elif kind == "torn":
        body = body[: len(body) // 2]
    entry.write_bytes(header + b"\n" + body)


@pytest.mark.parametrize("kind", ["garbage", "unsigned", "older", "torn"])
@pytest.mark.parametrize("which", ["snapshot", "targets", "bin"])
def test_a_cached_entry_that_fails_its_check_is_read_from_the_store(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path], kind: str, which: str
) -> None:
    keys, cache, state = warmed(catalogue, tmp_path, make_image)
    role = bin_of(state, "2.0") if which == "bin" else which
    version = (
        state.snapshot.signed.version if role == "snapshot" else state.snapshot.signed.meta[f"{role}.json"].version
    )
    older = sorted((catalogue.dir / "metadata").glob(f"*.{role}.json"), key=lambda p: int(p.name.split(".")[0]))
    if kind == "older" and len(older) < 2:
        pytest.skip(f"{role} has one version only")
    _tamper(kind, entries(tmp_path / "pubcache")[role], older[0].read_bytes())
    reads = reads_of(catalogue.store)
    publish_new(catalogue.store, keys, make_image, cache)
    assert f"metadata/{version}.{role}.json" in reads  # the refused entry was read from the store instead
    assert published(catalogue.store, "2.0")
    # the entry holds good bytes again: the store's, of the version read, or of the one the commit wrote
    header, _, body = entries(tmp_path / "pubcache")[role].read_bytes().partition(b"\n")
    assert body == (catalogue.dir / "metadata" / f"{int(header)}.{role}.json").read_bytes()


def test_a_symlink_in_the_cache_is_never_followed(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    keys, cache, state = warmed(catalogue, tmp_path, make_image)
    role = bin_of(state, "2.0")
    entry = entries(tmp_path / "pubcache")[role]
    outside = tmp_path / "outside.json"
    outside.write_bytes(entry.read_bytes())  # even the right bytes are not read through a link
    entry.unlink()
    entry.symlink_to(outside)
    reads = reads_of(catalogue.store)
    publish_new(catalogue.store, keys, make_image, cache)
    version = state.snapshot.signed.meta[f"{role}.json"].version
    assert f"metadata/{version}.{role}.json" in reads
    assert not entry.is_symlink() and entry.is_file()  # replaced by the entry of the bin the commit wrote
    assert outside.read_bytes().startswith(f"{version}\n".encode())  # untouched
    assert published(catalogue.store, "2.0")


def test_a_catalogue_directory_that_is_a_symlink_leaves_the_cache_unused(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    keys, cache, _ = warmed(catalogue, tmp_path, make_image)
    (d,) = (tmp_path / "pubcache" / PUBLISHER_DIR).iterdir()
    elsewhere = tmp_path / "elsewhere"
    d.rename(elsewhere)
    d.symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    reads = reads_of(catalogue.store)
    publish_new(catalogue.store, keys, make_image, cache)
    assert any("snapshot" in k for k in reads)  # everything read from the store
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    assert published(catalogue.store, "2.0")


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_cache_others_can_write_to_is_not_used(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path], mode: int
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    root = tmp_path / "pubcache"
    root.mkdir()
    root.chmod(mode)
    publish_new(catalogue.store, keys, make_image, MetadataCache(root))
    assert not (root / PUBLISHER_DIR).exists()
    assert published(catalogue.store, "2.0")


def test_a_stale_cache_loses_nothing_another_publisher_committed(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    keys, cache, _ = warmed(catalogue, tmp_path, make_image)
    for i in range(6):  # another host, no cache: new snapshots, targets unchanged, several bins re-signed
        req = PublishRequest(file=str(make_image(4096, seed=f"other{i}")), name="wn", arch=ARCH, version=f"3.{i}")
        publish(catalogue.store, keys, req, EXPIRY)
    publish_new(catalogue.store, keys, make_image, cache)
    versions = {r.version for r in load_state(catalogue.store).images("wn")}
    assert versions == {*(f"1.{i}" for i in range(8)), *(f"3.{i}" for i in range(6)), "2.0"}
    snap = load_state(catalogue.store).snapshot.signed.version
    assert entries(tmp_path / "pubcache")["snapshot"].read_bytes().startswith(f"{snap}\n".encode())


def test_a_catalogue_made_again_at_the_same_place_gets_a_directory_of_its_own(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    from imagectl.store.local import LocalStore

    cache = MetadataCache(tmp_path / "pubcache")
    made = []
    for attempt in range(2):
        store = LocalStore(tmp_path / "cat")
        init_catalogue(store, tmp_path / f"keys{attempt}", EXPIRY)
        req = PublishRequest(file=str(make_image(4096, seed=f"a{attempt}")), name="wn", arch=ARCH, version="1.0")
        publish(store, KeyRing(tmp_path / f"keys{attempt}"), req, EXPIRY, meta_cache=cache)
        made.append({p.name for p in (tmp_path / "pubcache" / PUBLISHER_DIR).iterdir()})
        if attempt == 0:
            import shutil

            shutil.rmtree(tmp_path / "cat")
    assert len(made[0]) == 1 and len(made[1]) == 2 and made[0] < made[1]


def test_the_cache_keeps_one_file_per_role(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    keys = seeded(catalogue.store, catalogue.keys, make_image)
    cache = MetadataCache(tmp_path / "pubcache")
    for i in range(5):
        req = PublishRequest(file=str(make_image(4096, seed=f"n{i}")), name="wn", arch=ARCH, version=f"4.{i}")
        publish(catalogue.store, keys, req, EXPIRY, meta_cache=cache)
    held = entries(tmp_path / "pubcache")
    listed = {r.removesuffix(".json") for r in load_state(catalogue.store).snapshot.signed.meta} | {"snapshot"}
    assert set(held) <= listed  # one file per role, named by it: never one per version
    (d,) = (tmp_path / "pubcache" / PUBLISHER_DIR).iterdir()
    assert sorted(p.name for p in d.iterdir()) == sorted([SEEN, *(f"{r}.json" for r in held)])  # no temp file left
    assert oct(d.stat().st_mode & 0o777) == oct(0o700)


def test_a_seen_timestamp_version_with_other_bytes_drops_every_entry(tmp_path: Path) -> None:
    bound = MetadataCache(tmp_path / "pubcache").bind("s3://b/c", b"r")
    assert bound is not None
    assert bound.seen() is None and bound.saw(5, "a" * 64) and bound.seen() == (5, "a" * 64)
    bound.put("metadata/3.snapshot.json", b"{}")
    bound.put("metadata/2.image-wn.json", b"{}")
    assert bound.saw(6, "b" * 64)  # a newer one: recorded, entries kept
    assert bound.get("metadata/3.snapshot.json", 10) == b"{}" and bound.seen() == (6, "b" * 64)
    assert not bound.saw(4, "c" * 64)  # an older one: the store is behind; nothing recorded, nothing dropped
    assert bound.seen() == (6, "b" * 64) and bound.get("metadata/3.snapshot.json", 10) == b"{}"
    assert bound.saw(6, "d" * 64)  # the same version, other bytes: another history
    assert bound.get("metadata/3.snapshot.json", 10) is None and bound.get("metadata/2.image-wn.json", 10) is None
    assert bound.seen() == (6, "d" * 64)
    (bound.path / SEEN).write_bytes(b"6 short\n")  # damaged: as if none
    assert bound.seen() is None


def test_a_catalogue_restored_from_a_backup_is_published_to_from_the_store(
    catalogue: Catalogue, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """The catalogue goes back to a copy taken earlier while the cache holds newer files. The next publish from
    this host reads everything from the store (its timestamp is older than one this host saw), and its commit,
    which succeeds on top of that older timestamp, drops the cache. Then another publisher re-uses the lost
    versions' names with other bytes (so their bin gets the same version numbers the lost history gave it) and goes
    past the timestamp this host saw; this host's next publish into that bin must sign the store's bin, not the
    lost one it had cached."""
    import shutil

    keys = seeded(catalogue.store, catalogue.keys, make_image)
    cache = MetadataCache(tmp_path / "pubcache")
    state = load_state(catalogue.store)
    lost_bin = bin_of(state, "lost.0")
    pick = (f"9.{k}" for k in range(1000))
    mine = next(v for v in pick if bin_of(state, v) != lost_bin)
    extra = next(v for v in pick if bin_of(state, v) != lost_bin)
    final = next(v for v in pick if bin_of(state, v) == lost_bin)

    def put(version: str, seed: str, via: MetadataCache | None) -> list[str]:
        reads = reads_of(catalogue.store)
        req = PublishRequest(file=str(make_image(4096, seed=seed)), name="wn", arch=ARCH, version=version)
        publish(catalogue.store, keys, req, EXPIRY, meta_cache=via)
        del catalogue.store.read, catalogue.store.read_versioned  # the counting wrappers
        return reads

    shutil.copytree(catalogue.dir, tmp_path / "backup")
    for i in range(4):
        put(f"lost.{i}", f"lost{i}", cache)  # published here, then lost with the restore
    seen = load_state(catalogue.store).timestamp.signed.version
    shutil.rmtree(catalogue.dir)
    shutil.copytree(tmp_path / "backup", catalogue.dir)
    reads = put(mine, "mine", cache)
    assert any(k.endswith(".snapshot.json") for k in reads)  # nothing taken from the cache
    for i in range(4):
        put(f"lost.{i}", f"other{i}", None)  # another host, other bytes under the lost names
    put(extra, "extra", None)
    assert load_state(catalogue.store).timestamp.signed.version > seen
    put(final, "final", cache)
    state = load_state(catalogue.store)
    images = {r.version: r.sha256 for r in state.images("wn")}
    assert set(images) == {*(f"1.{i}" for i in range(8)), *(f"lost.{i}" for i in range(4)), mine, extra, final}
    for i in range(4):  # the bytes of this history, not of the lost one
        assert images[f"lost.{i}"] == sha256_of(make_image(4096, seed=f"other{i}")), i
    for role, entry in entries(tmp_path / "pubcache").items():  # every entry is of this history
        header, _, body = entry.read_bytes().partition(b"\n")
        assert body == (catalogue.dir / "metadata" / f"{int(header)}.{role}.json").read_bytes(), role


def test_temp_files_of_a_killed_writer_are_swept_after_an_hour(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path / "pubcache")
    bound = cache.bind("s3://bucket/cat", b"root one")
    assert bound is not None
    old, young, kept = (bound.path / n for n in (".snapshot.json.1a2b3c4d.tmp", ".targets.json.5e6f.tmp", "x.json"))
    for p in (old, young, kept):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(kept, (two_hours_ago, two_hours_ago))
    again = cache.bind("s3://bucket/cat", b"root one")
    assert again is not None and again.path == bound.path
    assert not old.exists() and young.exists() and kept.exists()


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("metadata/12.snapshot.json", ("snapshot", 12)),
        ("metadata/3.targets.json", ("targets", 3)),
        ("metadata/7.image-wn~b3-5.json", ("image-wn~b3-5", 7)),
        ("metadata/2.names~b4-a.json", ("names~b4-a", 2)),
        ("metadata/1.image-a.b.c.json", ("image-a.b.c", 1)),
        ("metadata/timestamp.json", None),  # mutable: always from the store
        ("metadata/4.root.json", None),  # the root chain is always walked from the store
        ("metadata/root.json", None),
        ("metadata/1.../x.json", None),
        ("metadata/1.a/b.json", None),
        ("metadata/01.snapshot.json", None),
        ("metadata/0.snapshot.json", None),
        ("metadata/1..hidden.json", None),
        ("metadata/1.x..json", None),
        ("metadata/1.json", None),
        ("blobs/1.snapshot.json", None),
        ("metadata/1." + "a" * 251 + ".json", None),  # past NAME_MAX as a file name
    ],
)
def test_only_versioned_role_files_are_kept(tmp_path: Path, key: str, kept: tuple[str, int] | None) -> None:
    assert _entry(key) == kept
    bound = MetadataCache(tmp_path / "pubcache").bind("s3://b/c", b"r")
    assert isinstance(bound, CatalogueCache)
    bound.put(key, b"{}")
    assert bound.get(key, 100) == (b"{}" if kept else None)
    assert sorted(p.name for p in bound.path.iterdir()) == ([f"{kept[0]}.json"] if kept else [])


def test_an_entry_over_the_cap_or_of_another_version_is_a_miss(tmp_path: Path) -> None:
    bound = MetadataCache(tmp_path / "pubcache").bind("s3://b/c", b"r")
    assert bound is not None
    bound.put("metadata/5.snapshot.json", b"x" * 100)
    assert bound.get("metadata/5.snapshot.json", 100) == b"x" * 100
    assert bound.get("metadata/5.snapshot.json", 99) is None  # over the cap the caller reads within
    assert bound.get("metadata/6.snapshot.json", 100) is None  # the role's entry is of version 5
    assert bound.get("metadata/55.snapshot.json", 100) is None
    (bound.path / "snapshot.json").write_bytes(b"5")  # no header line
    assert bound.get("metadata/5.snapshot.json", 100) is None
    (bound.path / "snapshot.json").unlink()
    os.mkfifo(bound.path / "snapshot.json")  # a FIFO planted there: refused without blocking
    assert bound.get("metadata/5.snapshot.json", 100) is None


@pytest.mark.s3
def test_one_bucket_name_on_two_servers_is_two_catalogues_to_the_cache(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bucket copied to a test server under the same name and prefix (same URL, same first root) is another
    catalogue once published to: its files get other bytes under the same versions. The cache tells them apart
    by the server (no request is made to the second one)."""
    from imagectl.store import open_store
    from imagectl.store.local import LocalStore

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.2:9")
    other = open_store(s3_store.url)
    assert isinstance(other, S3Store) and other.url == s3_store.url
    assert s3_store.endpoint in s3_store.identity and other.identity != s3_store.identity
    cache = MetadataCache(tmp_path / "pubcache")
    a, b = cache.bind(s3_store.identity, b"root"), cache.bind(other.identity, b"root")
    assert a is not None and b is not None and a.path != b.path
    assert LocalStore(tmp_path / "cat").identity == LocalStore(tmp_path / "cat").shown  # a path says it all


@pytest.mark.s3
def test_a_publish_on_s3_sends_no_get_the_cache_answers(
    s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """On a real S3 server: with a warm cache, the publish's GETs are the first round's only (the roots and the
    timestamp), and a second publish into the same bin after it needs no more."""
    keys = seeded(s3_store, tmp_path / "keys", make_image)
    cache = MetadataCache(tmp_path / "pubcache")
    warm(s3_store, cache, "2.0")
    gets, first_round = s3_gets(s3_store), FIRST_ROUND
    for version in ("2.0", "2.0.1"):
        gets.clear()
        req = PublishRequest(file=str(make_image(4096, seed=version)), name="wn", arch=ARCH, version=version)
        if version == "2.0.1":  # its path may hash into another bin: the cache holds it once this has read it
            warm(s3_store, cache, version)
            gets.clear()
        publish(s3_store, keys, req, EXPIRY, meta_cache=cache)
        assert set(gets) <= first_round, gets
        assert published(s3_store, version)


@pytest.mark.s3
def test_the_cli_publishes_to_s3_through_its_cache(
    s3_store: S3Store, tmp_path: Path, make_image: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    """``imagectl publish`` to S3 keeps the metadata it reads and writes under the cache directory's
    ``publisher/`` (and a directory catalogue does not: reading it is as cheap as reading the cache)."""
    url, keydir = s3_store.url, tmp_path / "s3keys"
    assert cli("catalogue", "init", url, "--keys", keydir).code == 0
    for i in range(3):
        image = make_image(4096, seed=f"cli{i}")
        r = cli(
            "publish",
            image,
            "--catalogue",
            url,
            "--keys",
            keydir,
            "--name",
            "wn",
            "--arch",
            ARCH,
            "--version",
            f"1.{i}",
        )
        assert r.code == 0, r.err
    held = entries(tmp_path / "cache")
    assert {"snapshot", "targets", "image-wn"} <= held.keys()
    assert cli("catalogue", "verify", url).code == 0
    local = tmp_path / "localcat"
    assert cli("catalogue", "init", local, "--keys", tmp_path / "lk").code == 0
    image = make_image(4096, seed="local")
    r = cli("publish", image, "--catalogue", local, "--keys", tmp_path / "lk", "--name", "wn", "--arch", ARCH)
    assert r.code == 0, r.err
    assert len(list((tmp_path / "cache" / PUBLISHER_DIR).iterdir())) == 1  # the S3 catalogue's only
