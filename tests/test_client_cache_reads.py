"""The client's TUF directory (``CACHE/tuf/KEY/``) is read as every cache imagectl keeps: below the cache, never
through a symlink, each file bounded by the format's cap for its role — python-tuf's own reads of it included.

python-tuf's Updater opens the timestamp, snapshot and roles it starts from with a plain ``open()`` and reads them
whole: a symlink there was followed, a FIFO hung the command, and a file of any size was read into memory. The
cache directory is refused unless its user owns it, so this is defence in depth against whatever planted files
in it; each case must end in one line and its exit code, at once. ``root.json`` is python-tuf's own symlink to
``root_history/N.root.json``: only that form of link is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.catalogue.client import read_trusted
from imagectl.catalogue.metadata import TIMESTAMP_MAX
from imagectl.fsio import Beneath, SymlinkRefusedError
from tests.conftest import Catalogue, CliResult, run_imagectl

ARCH = "x86_64"


def _tuf_dir() -> Path:
    [timestamp] = Path(os.environ["IMAGECTL_CACHE_DIR"]).rglob("timestamp.json")
    return timestamp.parent


def _pulled(cat: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path) -> Path:
    """Publish one image and pull it once (which fills the client cache); the client's TUF directory."""
    r = cli("publish", make_image(4096, seed="c"), *cat.args(), "--name", "wn", "--arch", ARCH, "--version", "1")
    assert r.code == 0, r.err
    r = cli("pull", "wn", "--catalogue", cat.dir, "--root", cat.root, "--arch", ARCH, "-o", tmp_path / "first.img")
    assert r.code == 0, r.err
    return _tuf_dir()


def _pull(cat: Catalogue, out: Path, **kw: float) -> CliResult:
    return run_imagectl("pull", "wn", "--catalogue", cat.dir, "--root", cat.root, "--arch", ARCH, "-o", out, **kw)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "image-wn"])
def test_the_updater_follows_no_symlink_in_its_directory(
    role: str, catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """A trusted file replaced by a symlink to a copy of itself (which python-tuf would follow and accept) is
    refused (exit 14), and the pull writes nothing."""
    held = _pulled(catalogue, cli, make_image, tmp_path) / f"{role}.json"
    copy = tmp_path / "elsewhere.json"
    copy.write_bytes(held.read_bytes())
    held.unlink()
    held.symlink_to(copy)
    r = _pull(catalogue, tmp_path / "second.img")
    assert r.code == 14, r.err
    assert r.err == f"imagectl: error: refusing {held}: a symlink or non-directory is in the way (not followed)\n"
    assert not (tmp_path / "second.img").exists()


def test_a_fifo_in_the_updaters_directory_is_refused_at_once(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """A FIFO where the trusted snapshot was (python-tuf's ``open()`` waited for a writer forever): exit 14 within
    the child's 60 s, naming it."""
    held = _pulled(catalogue, cli, make_image, tmp_path) / "snapshot.json"
    held.unlink()
    os.mkfifo(held)
    r = _pull(catalogue, tmp_path / "second.img", timeout=60)
    assert (r.code, r.err) == (14, f"imagectl: error: refusing {held}: it is a FIFO\n")


def test_an_oversized_trusted_file_is_refused_unread(
    catalogue: Catalogue, cli: Callable[..., CliResult], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """A trusted timestamp grown past the format's cap (python-tuf read any size whole): exit 8, and only the cap
    and one byte are read (the file here is sparse, 1 GiB long)."""
    held = _pulled(catalogue, cli, make_image, tmp_path) / "timestamp.json"
    with held.open("r+b") as f:
        f.truncate(1 << 30)
    r = _pull(catalogue, tmp_path / "second.img")
    assert (r.code, r.err) == (
        8,
        f"imagectl: error: cached timestamp.json is over the {TIMESTAMP_MAX}-byte cap of the format\n",
    )


def test_the_cached_root_is_read_through_python_tufs_link_only(tmp_path: Path) -> None:
    """``root.json``: a plain file is read; python-tuf's link to ``root_history/N.root.json`` is read through; a
    link anywhere else, or to a non-numbered file, is refused; none at all is FileNotFoundError."""
    tree = Beneath(tmp_path / "cache")
    d = tree.root / "tuf" / "k"
    (d / "root_history").mkdir(parents=True)
    (d / "root_history" / "2.root.json").write_bytes(b"two")
    with pytest.raises(FileNotFoundError):
        read_trusted(tree, "tuf/k", "root.json")
    (d / "root.json").write_bytes(b"plain")
    assert read_trusted(tree, "tuf/k", "root.json") == b"plain"
    (d / "root.json").unlink()
    (d / "root.json").symlink_to("root_history/2.root.json")
    assert read_trusted(tree, "tuf/k", "root.json") == b"two"
    for elsewhere in (
        str(d / "root_history" / "2.root.json"),
        "root_history/x.root.json",
        "../k/root_history/2.root.json",
    ):
        (d / "root.json").unlink()
        (d / "root.json").symlink_to(elsewhere)
        with pytest.raises(SymlinkRefusedError, match="not to root_history/"):
            read_trusted(tree, "tuf/k", "root.json")
    # the link's target is opened without following anything either
    (d / "root.json").unlink()
    (d / "root.json").symlink_to("root_history/3.root.json")
    (d / "root_history" / "3.root.json").symlink_to(tmp_path / "planted")
    (tmp_path / "planted").write_bytes(b"planted")
    with pytest.raises(SymlinkRefusedError):
        read_trusted(tree, "tuf/k", "root.json")
