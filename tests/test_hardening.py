"""Issue 7, what its first round left tested only through stand-ins: a short blob in a directory catalogue, mirror
credentials in a build record published with ``publish --from-build``, and what ``catalogue verify`` says it
skipped in a partial mirror. Each test runs the real command and checks the exact exit code and message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Catalogue, CliResult
from tests.test_build_fake import DEMO, fake_dib  # noqa: F401  (a fixture: a stand-in disk-image-create)

ARCH = "x86_64"


def error_line(r: CliResult) -> str:
    lines = [line for line in r.err.splitlines() if line.startswith("imagectl: error:")]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


# -- item 11: a local blob too short is exit 11 ---------------------------------------------------------------------
def test_a_directory_catalogue_blob_shorter_than_signed_is_refused(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """The README's exit codes: a blob shorter than its signed length (truncated in place: its target file, the
    same inode, with it) is a mismatch (11), from a directory catalogue as over HTTP (tests/test_mutants_pull.py),
    and nothing is left at ``-o``."""
    r = cli("publish", make_image(300_000), *catalogue.args(), "--name", "wn", "--arch", ARCH, "--version", "1",
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    blob = catalogue.dir / "blobs" / "sha256" / json.loads(r.out)["sha256"]
    blob.chmod(0o644)
    os.truncate(blob, 1000)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("pull", "wn", "--catalogue", catalogue.dir, "--root", catalogue.root, "--arch", ARCH, "-o",
            out / "wn.qcow2")  # fmt: skip
    assert r.code == 11, r.err
    assert error_line(r) == (
        "imagectl: error: wn/1/x86_64/wn-1-x86_64.qcow2: the catalogue's image file has 1000 bytes, fewer than the "
        "signed 300000 bytes (tampered or damaged image file; nothing written)"
    )
    assert list(out.iterdir()) == []  # no image, no temp file
    assert r.out == ""


# -- item 4: no mirror credentials in a published build record -------------------------------------------------------
SECRET = "Pa55w0rd"
MIRROR = f"http://builder:{SECRET}@mirror.example/debian"


@pytest.mark.parametrize("record", ["written-by-build", "written-by-an-older-imagectl"])
def test_publish_from_build_stores_no_mirror_password(
    fake_dib: Path,  # noqa: F811
    catalogue: Catalogue,
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record: str,
) -> None:
    """Finding: IMAGECTL_MIRROR_…=http://u:p@… was copied into the build record, which `publish --from-build`
    stores in the public catalogue. A real (stand-in DIB) build with such a mirror, then publish: no file of the
    build's record or of the catalogue holds the password; the stored record says ``http://<hidden>@…``. The second
    case puts the password back into the record (env, command line, merged recipe), as an older imagectl wrote it:
    publish must redact it itself."""
    monkeypatch.setenv("IMAGECTL_MIRROR_DEBIAN12", MIRROR)
    out = tmp_path / "out"
    seen: list[str] = []

    def run(*args: object) -> CliResult:
        r = cli(*args)
        seen.extend([r.out, r.err])
        assert r.code == 0, r.err
        return r

    run("build", DEMO, "--arch", ARCH, "--hypervisor", "hvm", "-o", out)
    path = out / "debian12-demo-x86_64.build.json"
    built = json.loads(path.read_text())
    assert built["dib"]["env"]["DIB_DISTRIBUTION_MIRROR"] == "http://<hidden>@mirror.example/debian"
    assert [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []
    if record == "written-by-an-older-imagectl":
        built["dib"]["env"]["DIB_DISTRIBUTION_MIRROR"] = MIRROR
        built["dib"]["command"].append(f"--mirror={MIRROR}")
        built["recipe"]["merged"]["mirror"] = MIRROR
        path.write_text(json.dumps(built, indent=2))
        assert SECRET in path.read_text()
    r = run("publish", "--from-build", out, *catalogue.args(), "--version", "1", "--json")
    [published] = json.loads(r.out)
    assert published["name"] == "debian12-demo" and published["version"] == "1"
    r = run("catalogue", "show", "debian12-demo:1", "--arch", ARCH, "--catalogue", catalogue.dir, "--root",
            catalogue.root, "--json")  # fmt: skip
    summary = json.loads(r.out)["build_record"]
    stored = (catalogue.dir / "blobs" / "sha256" / summary["sha256"]).read_text()
    assert json.loads(stored)["dib"]["env"]["DIB_DISTRIBUTION_MIRROR"] == "http://<hidden>@mirror.example/debian"
    if record == "written-by-an-older-imagectl":
        assert "--mirror=http://<hidden>@mirror.example/debian" in json.loads(stored)["dib"]["command"]
        assert json.loads(stored)["recipe"]["merged"]["mirror"] == "http://<hidden>@mirror.example/debian"
    leaked = [p for p in catalogue.dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [], leaked  # no blob, metadata file, target file or SBOM holds it
    assert any(b"<hidden>@" in p.read_bytes() for p in catalogue.dir.rglob("*") if p.is_file())
    assert all(SECRET not in text for text in seen)


# -- item 7: verify says what a partial mirror skipped --------------------------------------------------------------
def test_verify_of_a_partial_mirror_lists_what_it_skipped(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """`catalogue verify` on a partial mirror (its mirror.json in scope) checks all it holds and names, one
    ``skipped:`` line each, every image and role it does not hold; the summary counts them."""
    for name in ("wn", "db"):
        for arch in ("x86_64", "i386"):
            for v in ("1", "2", "3"):
                r = cli("publish", make_image(20_000, seed=f"{name}{arch}{v}"), *catalogue.args(), "--name", name,
                        "--arch", arch, "--version", v)  # fmt: skip
                assert r.code == 0, r.err
    mirror = tmp_path / "mirror"
    r = cli("mirror", catalogue.dir, mirror, "--root", catalogue.root, "--filter", "name=wn", "--filter",
            f"arch={ARCH}", "--max", "2", "--quiet")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads((mirror / "mirror.json").read_text())  # the scope verify reads
    r = cli("catalogue", "verify", mirror)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    skipped = sorted(line for line in lines if line.startswith("skipped:"))
    assert skipped == sorted(
        [
            "skipped: db: not held by this partial mirror",
            "skipped: wn:1 i386: not held by this partial mirror",
            "skipped: wn:1 x86_64: not held by this partial mirror",
            "skipped: wn:2 i386: not held by this partial mirror",
            "skipped: wn:3 i386: not held by this partial mirror",
        ]
    ), r.out
    assert lines[-1] == (
        f"file://{mirror}/: 5 metadata files, 2 images, 40000 blob bytes hashed: OK; "
        "partial mirror: 5 not held (mirror.json)"
    ), r.out
    assert not any(line.startswith("problem:") for line in lines)
    r = cli("catalogue", "verify", mirror, "--json")
    report = json.loads(r.out)
    assert report["partial_mirror"] is True and sorted(report["skipped"]) == [s.removeprefix("skipped: ") for s in
                                                                              skipped]  # fmt: skip


# -- item 11: what another writer signed is still readable and shown escaped ----------------------------------------
def test_a_control_character_in_a_build_record_does_not_break_the_catalogue(
    catalogue: Catalogue, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """A build record is input: a control character in a free-text field it carries into the signed metadata
    (``dib.version``) must leave a catalogue every reader can still read, and is shown escaped."""
    from tests.conftest import write_pattern

    d = tmp_path / "build"
    d.mkdir()
    write_pattern(d / "wn-x86_64.qcow2", 4096)
    record = {
        "format": 1,
        "target": {"name": "wn", "arch": ARCH, "hypervisor": "hvm", "os": "debian", "os_version": "12"},
        "images": [{"file": "wn-x86_64.qcow2", "format": "qcow2", "size": 4096, "sha256": "0" * 64}],
        "dib": {"version": "3.4\x1b[31m", "command": [], "env": {}},
    }
    (d / "wn-x86_64.build.json").write_text(json.dumps(record))
    r = cli("publish", "--from-build", d, *catalogue.args(), "--version", "1")
    assert r.code == 0, r.err
    r = cli("catalogue", "verify", catalogue.dir)
    assert r.code == 0, r.out
    args = ["wn:1", "--arch", ARCH, "--catalogue", catalogue.dir, "--root", catalogue.root]
    r = cli("catalogue", "show", *args, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["build_record"]["dib_version"] == "3.4\x1b[31m"
    r = cli("catalogue", "show", *args)
    assert r.code == 0 and "\x1b" not in r.out and '"dib_version": "3.4\\u001b[31m"' in r.out, r.out


def test_cli_main_gives_the_callers_sigterm_handler_back(capsys: pytest.CaptureFixture[str]) -> None:
    """main() turns SIGTERM into SystemExit for its own run only. Left behind in a process that runs it in-process,
    the handler was inherited by forked multiprocessing workers, one of which died holding its pool's queue lock
    and hung a CI run (tests/test_build_cache.py::test_concurrent_builds_do_not_corrupt_the_cache)."""
    import signal

    from imagectl.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["recipe", "list"]) == 0
    assert "debian12-demo" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failing_pull_writer_ends_the_pull_instead_of_hanging() -> None:
    """Found by mutation testing: an exception other than OSError in the writer thread ended that thread, and the
    receiving thread then waited forever on the writer's full queue (a pull hung until its caller gave up). Any
    failure is now handed to the receiving thread, which raises it; the workers keep emptying their queues."""
    import hashlib
    import io
    import threading

    from imagectl import pull

    class Broken(io.BytesIO):
        def write(self, b: object) -> int:
            raise TypeError("a bug in the writer")

    sink = pull._Sink(Broken(), hashlib.sha256(), 0)
    raised: list[BaseException] = []

    def feed() -> None:
        try:
            for _ in range(50):  # far more blocks than the queues hold
                sink.put(b"x" * 10)
            sink.drain()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the receiving side still waits on a queue nobody empties"
    assert [type(e) for e in raised] == [TypeError] and str(raised[0]) == "a bug in the writer"
    sink.close()
    assert [th.is_alive() for th in sink._threads] == [False, False]
