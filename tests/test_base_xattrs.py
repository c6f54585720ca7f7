"""The cached Debian base keeps its extended attributes (imagectl/imaging/xattrs.py and the element's root.d/09/76).

Found by `build --check-reproducible` of a cold build against one from the cached base: DIB untars the base with
plain tar, so systemd's ACLs on /var/log/journal (and any file capability of a base package) were lost, and the two
images differed (`differing files: /var/log/journal`). The real builds are in test_build_integration.py; here the
dump and restore, with hostile entries, and the element's scripts on a tree of the test's own.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagectl.imaging import xattrs
from imagectl.resources import elements_dir
from tests.conftest import REPO, require_tools

pytestmark = [pytest.mark.root]  # trusted.* attributes, as security.* ones, need root


def _tree(root: Path) -> Path:
    (root / "var/log/journal").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/ping").write_bytes(b"\x7fELF")
    (root / "etc").mkdir()
    (root / "etc/plain").write_text("no attributes\n")
    os.setxattr(root / "var/log/journal", "trusted.acl-stand-in", b"group:adm:r-x")
    os.setxattr(root / "usr/bin/ping", "trusted.cap-stand-in", b"\x01\x00\x00\x02\x00\x20")
    os.setxattr(root / "usr/bin/ping", "user.note", b"x")
    (root / "lib").symlink_to("usr/lib")  # merged /usr: a symlink is walked past, never followed
    return root


def _attrs(root: Path) -> dict[str, dict[str, bytes]]:
    return {
        rel: {n: os.getxattr(root / rel, n) for n in sorted(os.listxattr(root / rel))}
        for rel in ("var/log/journal", "usr/bin/ping", "etc/plain")
    }


def test_dump_then_restore_on_an_untarred_copy_gives_the_same_attributes(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    dumped = xattrs.dump(src)
    assert dumped == {
        "usr/bin/ping": {
            "trusted.cap-stand-in": base64.b64encode(b"\x01\x00\x00\x02\x00\x20").decode(),
            "user.note": "eA==",
        },
        "var/log/journal": {"trusted.acl-stand-in": base64.b64encode(b"group:adm:r-x").decode()},
    }
    (src / xattrs.FILE).write_text(json.dumps(dumped))
    dst = tmp_path / "dst"
    dst.mkdir()
    subprocess.run(["tar", "-C", src, "-cf", tmp_path / "base.tar", "."], check=True, timeout=60)
    subprocess.run(["tar", "-C", dst, "-xf", tmp_path / "base.tar"], check=True, timeout=60)  # as DIB untars
    assert os.listxattr(dst / "var/log/journal") == []  # what was lost before
    assert xattrs.main(["restore", str(dst)]) == 0
    assert _attrs(dst) == _attrs(src)
    assert not (dst / xattrs.FILE).exists()  # nothing of it stays in the image


def test_restore_sets_nothing_outside_the_root_nor_through_a_symlink(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("host file\n")
    (root / "escape").symlink_to(outside)
    value = base64.b64encode(b"planted").decode()
    hostile = {
        "../outside/victim": {"user.x": value},
        "/etc/passwd": {"user.x": value},
        "escape/victim": {"user.x": value},  # through a symlink in the tree
        "lib": {"user.x": value},  # the symlink itself
        "usr//bin/ping": {"user.x": value},
        "./usr/bin/ping": {"user.x": value},
        "missing/file": {"user.x": value},
        "usr/bin/ping": {"user.y": "not base64!", "nodot": value, "user.big": base64.b64encode(b"x" * 70000).decode()},
        "etc/plain": {"user.ok": value},
        "var/log/journal": ["not", "a", "mapping"],
    }
    done, skipped = xattrs.restore(root, json.dumps(hostile).encode())
    assert (done, skipped) == (1, 11)
    assert os.getxattr(root / "etc/plain", "user.ok") == b"planted"
    assert os.listxattr(outside / "victim") == [] and os.listxattr(outside) == []
    assert "user.y" not in os.listxattr(root / "usr/bin/ping")
    for bad in (b"[]", b"not json", b"{" * 10, b" " * (xattrs.MAX_BYTES + 1)):
        with pytest.raises(ValueError):
            xattrs.restore(root, bad)


def test_a_damaged_dump_fails_the_step_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path / "root")
    (root / xattrs.FILE).write_bytes(b"\xff\xfe")
    assert xattrs.main(["restore", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"imagectl: error: {xattrs.FILE} of the cached base system is not readable: ")
    assert err.count("\n") == 1
    assert xattrs.main(["restore", str(root)]) == 0  # gone: an older cache entry keeps nothing, said so
    assert "keeps no extended attributes" in capsys.readouterr().out
    assert xattrs.main(["frobnicate", str(root)]) == 2


def test_the_element_scripts_keep_and_restore_them(tmp_path: Path) -> None:
    """root.d/76's dump goes into the archive and is removed from the tree; root.d/09 restores after the untar."""
    require_tools("sudo", "tar")
    element = elements_dir() / "imagectl-package-cache"
    src = _tree(tmp_path / "src")
    env = {
        **os.environ,
        "TARGET_ROOT": str(src),
        "IMAGECTL_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "IMAGECTL_PKGCACHE_CONTROL": "http://127.0.0.1:9/unused",
    }
    py = [sys.executable, "-m", "imagectl.imaging.xattrs"]
    subprocess.run([*py, "dump", str(src)], env=env, check=True, timeout=60, capture_output=True)
    subprocess.run(["tar", "-C", src, "-cf", tmp_path / "base.tar", "."], check=True, timeout=60)
    dst = tmp_path / "dst"
    dst.mkdir()
    subprocess.run(["tar", "-C", dst, "-xf", tmp_path / "base.tar"], check=True, timeout=60)
    r = subprocess.run(
        ["bash", element / "root.d/09-imagectl-package-cache-xattrs"],
        env={**env, "TARGET_ROOT": str(dst)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "imagectl-package-cache: 3 extended attributes restored\n"
    assert _attrs(dst) == _attrs(src) and not (dst / xattrs.FILE).exists()
    # outside imagectl build, or for a base bootstrapped just now (no file), the script does nothing
    quiet = subprocess.run(
        ["bash", element / "root.d/09-imagectl-package-cache-xattrs"],
        env={**env, "TARGET_ROOT": str(dst)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert quiet.stdout == ""
    saver = (element / "root.d/76-imagectl-package-cache").read_text()
    assert saver.index("imagectl.imaging.xattrs)") < saver.index('"${py[@]}" dump') < saver.index("sudo tar ")
    assert saver.count('sudo rm -f "$TARGET_ROOT/.imagectl-base-xattrs.json"') == 2  # before and after the tar
