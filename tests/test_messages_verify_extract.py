"""Every user-facing message of ``catalogue verify`` and of the refusals of a hostile package member, pinned whole
(issue 13: most surviving mutants only changed a message's text, which substring checks let through).

``catalogue verify`` (imagectl/catalogue/verify.py, and its report in imagectl/cli.py): each problem line, each
``skipped:`` line, the summary and note lines, the error and its hint, the ``--json`` fields. The unpacking of a
seed package (imagectl/imaging/slc/extract.py): each refusal of a member. Each test triggers its message the way
an operator would meet it and compares the whole text (``==``); names, keys, versions and dates are computed.
Messages already pinned this way elsewhere in the suite are not repeated here. The flaws found while pinning
them (a key named twice, a FIFO called a symlink, an unversioned targets.json, "1 images", a false problem on a
partial mirror of an indexed catalogue) were fixed with their tests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from tuf.api.metadata import DelegatedRole, Delegations, SuccinctRoles, TargetFile

from imagectl.catalogue import bins, index, model, verify
from imagectl.catalogue.state import CatalogueState, load_state
from imagectl.store.local import LocalStore
from tests import hostile_yum
from tests.conftest import Catalogue, CliResult
from tests.hostile_yum import DIR, LNK, REG, Member, declare
from tests.test_mutants_extract import _refused_with, refusal, refused, root  # noqa: F401  (root: fixture)
from tests.test_mutants_verify_client import binned, change, indexed, publish, report, role_key  # noqa: F401

ARCH = "x86_64"
SHA = "ab" * 32


def _verify(cli: Callable[..., CliResult], cat: Catalogue, *flags: str) -> CliResult:
    return cli("catalogue", "verify", cat.dir, *flags)


def _names_by_index_role(cat: Catalogue) -> dict[str, list[str]]:
    by_role: dict[str, list[str]] = {}
    for name, holder in load_state(cat.store).name_index().items():
        by_role.setdefault(holder, []).append(name)
    return {role: sorted(names) for role, names in sorted(by_role.items())}


# -- the report: summary, notes, error and hint, --json ----------------------------------------------------------------
def test_a_sound_catalogue_is_summed_up_in_one_line_and_its_json(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))
    shown = catalogue.store.shown
    r = _verify(cli, catalogue)
    assert (r.code, r.out, r.err) == (0, f"{shown}: 5 metadata files, 1 image, 5000 blob bytes hashed: OK\n", "")
    r = _verify(cli, catalogue, "--no-blobs")
    assert (r.code, r.out, r.err) == (0, f"{shown}: 5 metadata files, 1 image: OK\n", "")
    r = _verify(cli, catalogue, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {
        "ok": True,
        "problems": [],
        "partial_mirror": False,
        "skipped": [],
        "roles_checked": 5,
        "images_checked": 1,
        "blob_bytes_hashed": 5000,
        "needs_upgrade": 0,
        "needs_rebin": [],
        "needs_reindex": False,
    }


def test_a_missing_target_file_is_a_problem_with_the_upgrade_as_hint(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))
    (rec,) = load_state(catalogue.store).images("wn")
    key = model.target_file_key(rec.path, rec.sha256)
    (catalogue.dir / key).unlink()
    shown = catalogue.store.shown
    problem = f"{rec.path}: target file {key} is missing (stock TUF clients cannot download it)"
    r = _verify(cli, catalogue)
    assert r.code == 15
    assert r.out == f"problem: {problem}\n{shown}: 5 metadata files, 1 image, 5000 blob bytes hashed: 1 problem\n"
    assert r.err == (
        "imagectl: error: catalogue verify found 1 problem\n"
        f"hint: 1 image lacks the target file stock TUF clients download; add them with: imagectl catalogue "
        f"upgrade {shown}\n"
    )
    r = _verify(cli, catalogue, "--json")
    assert r.code == 15
    got = json.loads(r.out)
    assert (got["ok"], got["problems"], got["needs_upgrade"]) == (False, [problem], 1)


def test_a_problem_without_missing_target_files_has_no_hint(catalogue: Catalogue, cli: Callable[..., CliResult]):
    meta = catalogue.dir / "metadata"
    (meta / "2.root.json").write_bytes((meta / "1.root.json").read_bytes())
    r = _verify(cli, catalogue, "--no-blobs")
    assert r.code == 15
    assert r.out == (
        "problem: metadata/2.root.json: has version 1, expected 2\n"
        f"{catalogue.store.shown}: 4 metadata files, 0 images: 1 problem\n"
    )
    assert r.err == "imagectl: error: catalogue verify found 1 problem\n"


def test_names_past_the_bin_threshold_are_noted_five_at_most(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], monkeypatch
) -> None:
    names = [f"n{i}" for i in range(6)]
    shown = catalogue.store.shown

    def crowded(*flags: str) -> CliResult:
        with monkeypatch.context() as m:
            m.setattr(bins, "BIN_THRESHOLD", 0)  # every name with an image is past it
            return _verify(cli, catalogue, "--no-blobs", *flags)

    for name in names[:5]:
        publish(cli, catalogue, make_image(5_000, seed=name), name)
    r = crowded()
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == [
        f"note: 5 names would benefit from hash bins (n0, n1, n2, n3, n4): imagectl catalogue rebin {shown}"
    ]
    publish(cli, catalogue, make_image(5_000, seed=names[5]), names[5])
    r = crowded()
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == [
        f"note: 6 names would benefit from hash bins (n0, n1, n2, n3, n4, …): imagectl catalogue rebin {shown}"
    ]
    assert json.loads(crowded("--json").out)["needs_rebin"] == names


def test_a_crowded_name_index_is_noted(indexed: Catalogue, cli: Callable[..., CliResult], monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(index, "INDEX_CROWDED", 1)
    r = _verify(cli, indexed, "--no-blobs")
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == [
        f"note: the name index is crowded (publishes of new names are slower): imagectl catalogue rebin "
        f"{indexed.store.shown}"
    ]


# -- reading metadata: unreadable, unparsable, unsigned, expired ------------------------------------------------------
def test_an_unreadable_metadata_file_says_why_in_full(catalogue: Catalogue, tmp_path: Path) -> None:
    ts = catalogue.dir / "metadata" / "timestamp.json"
    real = tmp_path / "ts.json"
    real.write_bytes(ts.read_bytes())
    ts.unlink()
    ts.symlink_to(real)
    assert report(catalogue).problems == [
        "metadata/timestamp.json: not a regular file (a symlink, device, FIFO or socket; not followed)",
        f"metadata/timestamp.json: unreadable: refusing {ts}: a symlink or non-directory is in the way (not followed)",
    ]


def test_metadata_of_the_wrong_type_is_named(catalogue: Catalogue) -> None:
    """The parser's message begins with the key: verify's line names it once."""
    meta = catalogue.dir / "metadata"
    (meta / "2.root.json").write_bytes((meta / "timestamp.json").read_bytes())
    assert report(catalogue).problems == ["metadata/2.root.json holds timestamp metadata, not root"]


def test_metadata_that_cannot_be_put_in_canonical_form_is_named(catalogue: Catalogue) -> None:
    ts = catalogue.dir / "metadata" / "timestamp.json"
    md = json.loads(ts.read_bytes())
    md["signed"]["x-note"] = 1.5  # canonical JSON has no floats: the signature cannot even be checked
    ts.write_text(json.dumps(md))
    assert report(catalogue).problems == ["metadata/timestamp.json: cannot be checked: not canonical JSON (a float?)"]


def test_an_unsigned_newer_root_is_named_for_each_signature_it_lacks(catalogue: Catalogue) -> None:
    """2.root.json at the right version but signed by neither root 1 nor itself; root.json is still root 1."""
    meta = catalogue.dir / "metadata"
    md = json.loads((meta / "1.root.json").read_bytes())
    md["signed"]["version"] = 2
    (meta / "2.root.json").write_text(json.dumps(md))
    assert report(catalogue).problems == [
        "metadata/2.root.json (by root 1): bad signatures: root was signed by 0/1 keys",
        "metadata/2.root.json (by itself): bad signatures: root was signed by 0/1 keys",
        "metadata/root.json is not the newest versioned root (2)",
    ]


def test_every_expired_role_is_named_with_its_expiry(catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    later = model.utcnow() + dt.timedelta(days=400)
    monkeypatch.setattr(verify, "utcnow", lambda: later)
    keys = ["metadata/1.root.json", "metadata/timestamp.json", "metadata/1.snapshot.json", "metadata/1.targets.json"]

    def expires(key: str) -> str:
        text = json.loads((catalogue.dir / key).read_bytes())["signed"]["expires"]
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).isoformat()

    assert report(catalogue).problems == [f"{key}: expired on {expires(key)}" for key in keys]


# -- blobs and the build record ---------------------------------------------------------------------------------------
def test_a_blob_that_is_no_regular_file_is_named_with_why(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))
    (rec,) = load_state(catalogue.store).images("wn")
    blob = catalogue.dir / model.blob_key(rec.sha256)
    blob.unlink()
    os.mkfifo(blob)
    key = model.blob_key(rec.sha256)
    assert report(catalogue).problems == [
        f"{key}: not a regular file (a symlink, device, FIFO or socket; not followed)",
        f"{rec.path}: blob {key} unreadable: refusing {blob}: it is a FIFO",
    ]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"sha256": "NOTHEX", "size": 5}, "the build record names no valid blob (sha256 'NOTHEX', size 5)"),
        ({"sha256": SHA, "size": -1}, f"the build record names no valid blob (sha256 '{SHA}', size -1)"),
        ({"sha256": SHA, "size": True}, f"the build record names no valid blob (sha256 '{SHA}', size True)"),
        ({"sha256": 7}, "the build record names no valid blob (sha256 7, size None)"),
        ({"sha256": "IMAGE", "size": "IMAGE", "sbom": {"sha256": None, "size": "9"}},
         "the SBOM names no valid blob (sha256 None, size '9')"),
    ],
    ids=["not-hex", "negative-size", "bool-size", "no-size", "sbom"],
)  # fmt: skip
def test_a_build_record_naming_no_valid_blob_is_named(
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    make_image: Callable[..., Path],
    record: dict[str, object],
    problem: str,
) -> None:
    """A signed build-record summary (or its SBOM) whose sha256 or size cannot name a blob; "IMAGE" stands for the
    image's own blob (a valid reference, so only the SBOM's is refused)."""
    publish(cli, catalogue, make_image(5_000))
    (rec,) = load_state(catalogue.store).images("wn")
    image = {"sha256": rec.sha256, "size": rec.size}
    summary = {k: image[k] if v == "IMAGE" else v for k, v in record.items()}

    def edit(s: CatalogueState) -> None:
        md = s.role("image-wn")
        assert md is not None
        md.signed.targets[rec.path].unrecognized_fields["custom"]["build_record"] = summary
        s.changed.add("image-wn")

    change(catalogue, edit, {"image-wn"})
    assert report(catalogue).problems == [f"{rec.path}: {problem}"]


# -- mirror.json ------------------------------------------------------------------------------------------------------
def test_an_unreadable_mirror_file_says_why_in_full(catalogue: Catalogue, tmp_path: Path) -> None:
    real = tmp_path / "mirror.json"
    real.write_text('{"names": [], "images": []}')
    (catalogue.dir / "mirror.json").symlink_to(real)
    assert report(catalogue).problems == [
        f"mirror.json: unreadable (refusing {catalogue.dir / 'mirror.json'}: a symlink or non-directory is in the way "
        "(not followed)); checked as a full catalogue"
    ]


def test_a_mirror_file_without_names_is_malformed(catalogue: Catalogue) -> None:
    """The line says which key is missing."""
    (catalogue.dir / "mirror.json").write_text('{"images": []}')
    assert report(catalogue).problems == ["mirror.json: malformed (no 'names'); checked as a full catalogue"]


def test_what_a_mirror_file_claims_but_the_signed_metadata_lacks_is_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))
    (catalogue.dir / "mirror.json").write_text(json.dumps({"names": ["ghost"], "images": [f"wn:9 {ARCH}"]}))
    shown = catalogue.store.shown
    r = _verify(cli, catalogue)
    assert r.code == 15
    assert r.out.splitlines() == [
        "problem: mirror.json: claims ghost, which the signed metadata lacks",
        f"problem: mirror.json: claims image wn:9 {ARCH}, which the signed metadata lacks",
        f"{shown}: 5 metadata files, 1 image, 5000 blob bytes hashed: 2 problems; partial mirror: 0 not held "
        "(mirror.json)",
    ]
    assert r.err == "imagectl: error: catalogue verify found 2 problems\n"


def test_a_partial_mirror_of_an_indexed_catalogue_skips_the_index_roles_it_does_not_hold(
    indexed: Catalogue,  # noqa: F811
    cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """Each index role the mirror does not hold is skipped, and so are the names under it: the snapshot lists
    their image roles, which only the skipped index role delegates; that is no problem (it was reported as one,
    "lists image-w4, which targets does not delegate", and the mirror failed verify)."""
    by_role = _names_by_index_role(indexed)
    kept = "w0"
    mirror = tmp_path / "mirror"
    r = cli("mirror", indexed.dir, mirror, "--root", indexed.root, "--filter", f"name={kept}", "--quiet")
    assert r.code == 0, r.err
    held = next(role for role, names in by_role.items() if kept in names)
    want = [f"{role}: not held by this partial mirror" for role in by_role if role != held]
    want += [f"{name}: not held by this partial mirror" for name in by_role[held] if name != kept]
    assert len(want) >= 2
    got = verify.verify_catalogue(LocalStore(mirror))
    assert got.partial and got.skipped == want
    assert got.problems == []
    r = _verify(cli, Catalogue(mirror, indexed.keys, indexed.root, LocalStore(mirror)))
    assert r.code == 0, r.out + r.err


# -- signed but wrong: targets, index roles, image roles, bins ---------------------------------------------------------
def test_a_malformed_target_is_named_with_what_is_wrong(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))
    path = f"wn/2/{ARCH}/qcow2"

    def edit(s: CatalogueState) -> None:
        md = s.role("image-wn")
        assert md is not None
        md.signed.targets[path] = TargetFile(5, {"sha256": SHA}, path)  # no custom fields
        s.changed.add("image-wn")

    change(catalogue, edit, {"image-wn"})
    key = role_key(catalogue, "image-wn")
    assert report(catalogue).problems == [
        f"{key}: target {path} is not an imagectl image (no custom fields or no sha256)"
    ]


def test_targets_delegating_a_role_of_no_known_kind_is_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path]
) -> None:
    publish(cli, catalogue, make_image(5_000))  # targets delegates (image-wn)

    def edit(s: CatalogueState) -> None:
        d = s.targets.signed.delegations
        assert d is not None and d.roles is not None
        d.roles["zz-other"] = DelegatedRole("zz-other", [], 1, False, paths=["zz/*"])

    change(catalogue, edit, {"targets"})
    key = role_key(catalogue, "targets")
    assert report(catalogue).problems == [
        f"{key}: delegates zz-other, which is neither an image role nor an index role"
    ]


@pytest.mark.parametrize("role", ["targets", "image-wn"])
def test_a_role_the_snapshot_does_not_list_is_named(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], role: str
) -> None:
    publish(cli, catalogue, make_image(5_000))

    def edit(s: CatalogueState) -> None:
        del s.snapshot.signed.meta[f"{role}.json"]

    change(catalogue, edit, set())
    snap = role_key(catalogue, "snapshot")
    want = (
        f"{snap}: does not list targets.json" if role == "targets" else f"{snap}: delegated role {role} is not listed"
    )
    assert report(catalogue).problems == [want]


def test_an_index_role_the_snapshot_does_not_list_is_named(indexed: Catalogue) -> None:  # noqa: F811
    holder, names = next(iter(_names_by_index_role(indexed).items()))

    def edit(s: CatalogueState) -> None:
        del s.snapshot.signed.meta[f"{holder}.json"]

    change(indexed, edit, set())
    snap = role_key(indexed, "snapshot")
    assert report(indexed).problems == [
        f"{snap}: index role {holder} is not listed",
        *(f"{snap}: lists image-{name}, which targets does not delegate" for name in names),
    ]


def test_an_index_role_holding_targets_is_named(indexed: Catalogue) -> None:  # noqa: F811
    holder = next(iter(_names_by_index_role(indexed)))

    def edit(s: CatalogueState) -> None:
        md = s.role(holder)
        assert md is not None
        md.signed.targets["w0/1/x86_64/qcow2"] = TargetFile(5, {"sha256": SHA}, "w0/1/x86_64/qcow2")
        s.changed.add(holder)

    change(indexed, edit, {holder})
    key = role_key(indexed, holder)
    assert report(indexed).problems == [f"{key}: an index role holds targets (they belong in image roles)"]


def test_an_index_role_that_leaves_out_a_name_targets_routes_to_it_is_named(indexed: Catalogue) -> None:  # noqa: F811
    """The line names the versioned targets file, metadata/N.targets.json, as every other line does."""
    holder, names = next(iter(_names_by_index_role(indexed).items()))
    gone = names[0]

    def edit(s: CatalogueState) -> None:
        md = s.role(holder)
        assert md is not None and md.signed.delegations is not None and md.signed.delegations.roles is not None
        del md.signed.delegations.roles[f"image-{gone}"]
        s.changed.add(holder)

    change(indexed, edit, {holder})
    assert report(indexed).problems == [
        f"{role_key(indexed, 'targets')}: routes {index.name_pattern(gone)} to {holder}, which does not delegate it",
        f"{role_key(indexed, 'snapshot')}: lists image-{gone}, which targets does not delegate",
    ]


def test_an_index_role_delegating_hash_bins_is_named(indexed: Catalogue) -> None:  # noqa: F811
    holder, names = next(iter(_names_by_index_role(indexed).items()))

    def edit(s: CatalogueState) -> None:
        md = s.role(holder)
        assert md is not None and md.signed.delegations is not None and md.signed.delegations.roles is not None
        keyids = md.signed.delegations.roles[f"image-{names[0]}"].keyids
        bins_of = SuccinctRoles(keyids, 1, 1, "stray")
        md.signed.delegations = Delegations(md.signed.delegations.keys, roles=None, succinct_roles=bins_of)
        s.changed.add(holder)

    change(indexed, edit, {holder})
    key, snap = role_key(indexed, holder), role_key(indexed, "snapshot")
    assert report(indexed).problems == [
        f"{key}: an index role delegates hash bins (only image roles)",
        *(
            f"{role_key(indexed, 'targets')}: routes {index.name_pattern(n)} to {holder}, which does not delegate it"
            for n in names
        ),
        *(f"{snap}: lists image-{n}, which targets does not delegate" for n in names),
    ]


def test_a_binned_image_role_holding_targets_is_named(binned: Catalogue) -> None:  # noqa: F811
    state = load_state(binned.store)
    carrier = next(r for r in state.bin_roles("wn") if (md := state.role(r)) is not None and md.signed.targets)

    def edit(s: CatalogueState) -> None:
        md, b = s.role("image-wn"), s.role(carrier)
        assert md is not None and b is not None
        path, target = next(iter(b.signed.targets.items()))
        md.signed.targets[path] = target  # a copy of a real image: only where it is signed is wrong
        s.changed.add("image-wn")

    change(binned, edit, {"image-wn"})
    key = role_key(binned, "image-wn")
    assert report(binned).problems == [f"{key}: a binned image role holds targets (they belong in its bins)"]


def test_a_bin_the_snapshot_does_not_list_is_named(binned: Catalogue) -> None:  # noqa: F811
    gone = load_state(binned.store).bin_roles("wn")[0]

    def edit(s: CatalogueState) -> None:
        del s.snapshot.signed.meta[f"{gone}.json"]

    change(binned, edit, set())
    assert report(binned).problems == [f"{role_key(binned, 'snapshot')}: bin {gone} is not listed"]


def test_a_bin_that_delegates_further_is_named(binned: Catalogue) -> None:  # noqa: F811
    bin_role = load_state(binned.store).bin_roles("wn")[0]

    def edit(s: CatalogueState) -> None:
        md = s.role(bin_role)
        assert md is not None
        md.signed.delegations = Delegations(keys={}, roles={})
        s.changed.add(bin_role)

    change(binned, edit, {bin_role})
    assert report(binned).problems == [f"{role_key(binned, bin_role)}: a bin delegates further"]


# -- extract.py: the refusals no other test pins whole ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (Member("./dev/log", stat.S_IFSOCK | 0o666), "it is a socket"),
        (Member("./d", DIR, b"data"), "a directory with data"),
        (Member("./" + "n" * 256, REG, b"x"), "a component is longer than 255 bytes"),
        (Member("./a/" + "n" * 256 + "/b", REG, b"x"), "a component is longer than 255 bytes"),
    ],
    ids=["socket", "directory-with-data", "long-leaf", "long-directory"],
)
def test_a_hostile_member_is_refused_with_its_reason(root: Path, member: Member, reason: str) -> None:  # noqa: F811
    assert refused(root, [member]) == refusal(str(member.name), reason)


@pytest.mark.parametrize(
    ("member", "declared", "reason"),
    [
        (Member("./d", DIR), REG, "it is a directory in the archive but a regular file in the header"),
        (Member("./f", REG, b"f"), DIR, "it is a regular file in the archive but a directory in the header"),
        (Member("./l", LNK, b"f"), DIR, "it is a symlink in the archive but a directory in the header"),
    ],
    ids=["dir-as-file", "file-as-dir", "link-as-dir"],
)
def test_a_member_of_another_type_than_declared_is_refused_naming_both(
    root: Path,  # noqa: F811
    member: Member,
    declared: int,
    reason: str,
) -> None:
    path = "/" + str(member.name).removeprefix("./")
    message = _refused_with(root, [member], hostile_yum.change(declare([member]), path, mode=declared))
    assert message == refusal(str(member.name), reason)


def test_a_file_member_over_a_non_empty_directory_of_the_target_is_refused_naming_it(root: Path) -> None:  # noqa: F811
    (root / "etc/full").mkdir(parents=True)
    (root / "etc/full/keep").write_text("k\n")
    assert refused(root, [Member("./etc/full", REG, b"x")]) == refusal(
        "./etc/full", "it would replace the non-empty directory /etc/full"
    )
