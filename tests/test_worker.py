"""Worker nodes (issue 12): the recipe's ``batch:``, the batch-worker element's ``imagectl-context``, context disks,
and validation that catches what diskimage-builder would reject.

``imagectl-context`` is the script every worker image runs at boot. Here it runs on the build host under both
shells an image may have (dash, as /bin/sh on Debian; bash, as on SLC), against a directory standing in for the
image's root (IMAGECTL_ROOT) and a directory standing in for the mounted CONTEXT disk. The real thing, a booted
image with a real context ISO, is in tests/test_build_integration.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imagectl.errors import InvalidInputError
from imagectl.imaging.builder import python_error, startup_cause
from imagectl.imaging.configscript import worker_files
from imagectl.imaging.context import context_script, make_context_iso, parse_assignments
from imagectl.imaging.elements import check_elements
from imagectl.imaging.plan import BuildTarget, plan_dib
from imagectl.recipe.model import load_recipe
from tests.conftest import REPO, CliResult, require_tools

SCRIPT = REPO / "recipes" / "elements" / "batch-worker" / "batch-worker-files" / "imagectl-context"
SHELLS = ("dash", "bash")
MUNGE_KEY = bytes(range(128))  # what `mungekey` makes: 1024 bits
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKm8p3b4hf2k5l3Q1tY0yB5x4Yh3mC2Wq9hG2t7mKx7Z deployer@site"


def image_root(tmp: Path, system: str = "slurm", server: str = "default-head", options: str = "") -> Path:
    """A directory laid out like a worker image after the batch-worker element's build step."""
    root = tmp / "root"
    for d in ("etc/imagectl", "root", "etc/slurm", "var/spool/torque/mom_priv", "etc/ssh"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/imagectl/worker.conf").write_text(
        f"BATCH_SYSTEM='{system}'\nBATCH_SERVER='{server}'\nBATCH_CLUSTER='wn'\n"
    )
    (root / "etc/imagectl/batch-options").write_text(options)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nbatchops:x:1000:1000::/home/batchops:/bin/sh\n")
    (root / "home/batchops").mkdir(parents=True)
    return root


def run_context(
    shell: str, root: Path, context: str | None, *args: str, cmdline: str = "", env_extra: dict[str, str] | None = None
) -> list[str]:
    """Run imagectl-context under ``shell``; return its output lines (it must exit 0)."""
    require_tools(shell)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IMAGECTL_ROOT": str(root), **(env_extra or {})}
    cmd = root.parent / "cmdline"
    cmd.write_text(cmdline)
    env["IMAGECTL_CMDLINE_FILE"] = str(cmd)
    if context is not None:
        ctx = root.parent / "ctx"
        ctx.mkdir(exist_ok=True)
        (ctx / "context.sh").write_text(context)
        env["IMAGECTL_CONTEXT_DIR"] = str(ctx)
    p = subprocess.run([shell, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", (p.returncode, p.stdout, p.stderr)
    return p.stdout.splitlines()


@pytest.mark.parametrize("shell", SHELLS)
def test_context_makes_the_node_itself(tmp_path: Path, shell: str) -> None:
    root = image_root(tmp_path, options="SlurmdTimeout 300\n")
    values = {"HOSTNAME": "node42.example.org", "SSH_PUBLIC_KEY": KEY, "BATCH_SERVER": "head01", "SITE": "it's 'q'"}
    values["MUNGE_KEY"] = base64.encodebytes(MUNGE_KEY).decode()  # the cluster's key, 76-column lines
    out = run_context(shell, root, context_script({**values, "USERNAME": "batchops"}))
    assert out == [
        "imagectl-context: context from " + str(tmp_path / "ctx"),
        "imagectl-context: hostname node42.example.org",
        "imagectl-context: 1 authorised key(s) for root: ssh-ed25519 deployer@site",
        "imagectl-context: 1 authorised key(s) for batchops: ssh-ed25519 deployer@site",
        "imagectl-context: slurm: munge key installed (128 bytes in /etc/munge/munge.key)",
        "imagectl-context: slurm server head01 (SlurmctldHost=head01 in /etc/slurm/slurm.conf)",
        "imagectl-context: done",
    ]
    munge = root / "etc/munge/munge.key"
    assert munge.read_bytes() == MUNGE_KEY and munge.stat().st_mode & 0o777 == 0o400
    assert list(munge.parent.iterdir()) == [munge]  # no part file left
    assert "MUNGE_KEY" not in (root / "etc/imagectl/context.env").read_text()  # the secret is in one place
    assert (root / "etc/hostname").read_text() == "node42.example.org\n"
    assert "127.0.1.1 node42.example.org node42\n" in (root / "etc/hosts").read_text()
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert (root / "home/batchops/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert (root / "root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    slurm = (root / "etc/slurm/slurm.conf").read_text().splitlines()
    assert "SlurmctldHost=head01" in slurm and "ClusterName=wn" in slurm and "SlurmdTimeout=300" in slurm
    env = (root / "etc/imagectl/context.env").read_text()
    assert "SITE='it'\\''s '\\''q'\\'''" in env and (root / "etc/imagectl/context.env").stat().st_mode & 0o777 == 0o600
    # a second boot with the same context changes nothing (no key or hosts line twice)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    run_context(shell, root, context_script({**values, "USERNAME": "batchops"}))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("shell", SHELLS)
def test_multi_line_values_and_the_kernel_command_line(tmp_path: Path, shell: str) -> None:
    root = image_root(tmp_path)
    second = KEY.replace("deployer@site", "ops@site").replace("Kx7Z", "Kx7Y")
    out = run_context(
        shell,
        root,
        context_script({"SSH_PUBLIC_KEY": f"{KEY}\n{second}"}),
        cmdline="quiet imagectl.HOSTNAME=wn007 imagectl.BATCH_SERVER=head02 console=ttyS0",
    )
    assert "imagectl-context: 2 authorised key(s) for root: ssh-ed25519 deployer@site" in out
    assert out[0].endswith("and the kernel command line")
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{KEY}\n{second}\n"
    assert (root / "etc/hostname").read_text() == "wn007\n"
    assert "SlurmctldHost=head02" in (root / "etc/slurm/slurm.conf").read_text()


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_context_values(tmp_path: Path, shell: str) -> None:
    """The context comes from outside the image: it is parsed, never executed; a bad hostname is refused."""
    root = image_root(tmp_path)
    canary = tmp_path / "executed"
    context = (
        f"HOSTNAME='$(touch {canary})'\n"
        f"touch {canary}\n"
        f"BATCH_SERVER='head; touch {canary}'\n"
        "lowercase='ignored'\n"
        "A'B='ignored'\n"
    )
    out = run_context(shell, root, context)
    assert not canary.exists()
    assert any("refusing hostname" in line for line in out), out
    assert not (root / "etc/hostname").exists()


@pytest.mark.parametrize(
    ("system", "options", "path", "lines"),
    [
        (
            "pbs",
            "$usecp *:/home /home\n",
            "var/spool/torque/mom_priv/config",
            ["$pbsserver head01", "$usecp *:/home /home"],
        ),
        ("lsf", "LSB_SHAREDIR /shared\n", "etc/lsf/lsf.conf", ['LSF_SERVER_HOSTS="head01"', "LSF_CLUSTER_NAME=wn"]),
        (
            "htcondor",
            "",
            "etc/condor/config.d/50-imagectl.conf",
            ["CONDOR_HOST = head01", "DAEMON_LIST = MASTER, STARTD"],
        ),
    ],
)
def test_each_batch_system_is_configured(
    tmp_path: Path, system: str, options: str, path: str, lines: list[str]
) -> None:
    root = image_root(tmp_path, system=system, options=options)
    out = run_context("dash", root, context_script({"BATCH_SERVER": "head01"}))
    written = (root / path).read_text().splitlines()
    assert all(line in written for line in lines), written
    assert any(f"{system} server head01" in line for line in out), out
    if system == "pbs":
        assert (root / "var/spool/torque/server_name").read_text() == "head01\n"
    if system == "lsf":
        assert "LSB_SHAREDIR=/shared" in written and "LSF_ENVDIR=/etc/lsf" in written


def test_build_mode_removes_host_keys_and_uses_the_recipes_server(tmp_path: Path) -> None:
    root = image_root(tmp_path, server="head-from-recipe")
    for k in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (root / "etc/ssh" / k).write_text("a key every node would share")
    (root / "etc/munge").mkdir()
    (root / "etc/munge/munge.key").write_bytes(
        b"made by the munge package at install: every reader of the image has it"
    )
    out = run_context("bash", root, None, "--build")
    assert list((root / "etc/ssh").iterdir()) == []  # each node makes its own at first boot
    assert list((root / "etc/munge").iterdir()) == []  # each node gets its cluster's from the context
    assert "SlurmctldHost=head-from-recipe" in (root / "etc/slurm/slurm.conf").read_text()
    assert not any(line.endswith("done") for line in out)


def test_no_server_yet_says_so(tmp_path: Path) -> None:
    root = image_root(tmp_path, server="")
    out = run_context("dash", root, None)
    assert out == [NO_MUNGE_KEY,
                   "imagectl-context: slurm: no batch server yet (give BATCH_SERVER in the node's context)",
                   "imagectl-context: done"]  # fmt: skip
    assert not (root / "etc/slurm/slurm.conf").exists()


NO_MUNGE_KEY = (
    "imagectl-context: slurm: no munge key yet, slurmd stays off"
    " (give MUNGE_KEY, the cluster's key in base64, in the node's context)"
)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("not base64 at all!", "not base64"),
        (base64.b64encode(b"k" * 16).decode(), "16 bytes (munge takes 32 to 1024)"),
        (base64.b64encode(b"k" * 1025).decode(), "1025 bytes (munge takes 32 to 1024)"),
    ],
)
def test_a_bad_munge_key_is_refused_and_nothing_is_written(
    tmp_path: Path, shell: str, value: str, refusal: str
) -> None:
    root = image_root(tmp_path)
    out = run_context(shell, root, context_script({"MUNGE_KEY": value}))
    assert f"imagectl-context: slurm: refusing MUNGE_KEY: {refusal}" in out
    assert not any(value in line for line in out)
    assert list((root / "etc/munge").iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS)
def test_a_munge_key_on_the_kernel_command_line_is_ignored(tmp_path: Path, shell: str) -> None:
    root = image_root(tmp_path)
    value = base64.b64encode(MUNGE_KEY).decode()
    out = run_context(shell, root, None, cmdline=f"ro quiet imagectl.MUNGE_KEY={value} imagectl.HOSTNAME=n1")
    assert out[0] == (
        "imagectl-context: ignoring MUNGE_KEY on the kernel command line (every local user can read /proc/cmdline;"
        " give it on the CONTEXT disk)"
    )
    assert NO_MUNGE_KEY in out and "imagectl-context: hostname n1" in out
    assert not any(value in line for line in out) and not (root / "etc/munge").exists()
    assert "MUNGE_KEY" not in (root / "etc/imagectl/context.env").read_text()


def test_the_scripts_are_posix_sh() -> None:
    """Old SLC releases have bash 2.05: imagectl-context sticks to POSIX sh (dash parses it; shellcheck in sh
    mode finds no bashism or unquoted expansion). The element's own hook is bash, as DIB runs it."""
    require_tools("dash", "shellcheck", install="dash shellcheck")
    assert subprocess.run(["dash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    for script in (SCRIPT, SCRIPT.with_name("imagectl-context.init")):
        p = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    hook = REPO / "recipes/elements/batch-worker/post-install.d/80-batch-worker"
    p = subprocess.run(["shellcheck", "-s", "bash", str(hook)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# -- imagectl context ------------------------------------------------------------------------------------------------
def test_context_iso_holds_what_was_asked(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    require_tools("xorriso", install="xorriso")
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(KEY + "\n")
    iso = tmp_path / "ctx.iso"
    r = cli("context", "-o", iso, "HOSTNAME=node1", f"SSH_PUBLIC_KEY=@{keyfile}", "BATCH_SERVER=head", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {
        "path": str(iso),
        "label": "CONTEXT",
        "keys": ["HOSTNAME", "SSH_PUBLIC_KEY", "BATCH_SERVER"],
    }
    assert iso.stat().st_mode & 0o777 == 0o600
    info = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True).stdout
    assert "Volume Id    : CONTEXT" in info
    out = tmp_path / "context.sh"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/context.sh", str(out)],
                   capture_output=True, check=True)  # fmt: skip
    assert out.read_text().splitlines()[1:] == ["HOSTNAME='node1'", f"SSH_PUBLIC_KEY='{KEY}'", "BATCH_SERVER='head'"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hostname=x"], "KEY of A-Z"),
        (["NOEQUALS"], "KEY of A-Z"),
        (["A=1", "A=2"], "given twice"),
        (["A=bell\x07"], "control characters"),
        (["A=@/nonexistent/key.pub"], "does not exist"),
        (["A=@/dev/zero"], "not a regular file"),
    ],
)
def test_context_refuses_bad_assignments(args: list[str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as e:
        parse_assignments(args)
    assert e.value.exit_code == 3


def test_context_without_xorriso_is_a_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    from imagectl.errors import ToolMissingError

    with pytest.raises(ToolMissingError, match="xorriso not found"):
        make_context_iso({"A": "1"}, tmp_path / "x.iso")
    assert not (tmp_path / "x.iso").exists() and list(tmp_path.glob(".x.iso*")) == []


# -- recipes, plans and what DIB would reject ----------------------------------------------------------------------
def test_batch_in_recipes_plans_and_worker_files(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "recipes/slc/slc4-worker.yaml")
    assert recipe.data["batch"] == {"system": "pbs", "options": {"$usecp": "*:/home /home"}}
    inv = plan_dib(BuildTarget(recipe, "x86_64", "hvm"), tmp_path, tmp_path / "cfg", [])
    assert "batch-worker" in inv.elements and inv.elements.count("batch-worker") == 1
    files = worker_files(recipe)
    assert files["worker.conf"].splitlines()[1:] == ["BATCH_SYSTEM=pbs", "BATCH_SERVER=''", "BATCH_CLUSTER=''"]
    assert files["batch-options"] == "$usecp *:/home /home\n"
    demo = load_recipe(REPO / "recipes/demo/debian12-demo.yaml")
    assert demo.data["batch"]["system"] == "slurm" and "slurmd" in demo.data["packages"]


def test_unknown_batch_system_is_refused_with_its_position(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    r = tmp_path / "r.yaml"
    r.write_text("name: r\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nbatch:\n  system: sge\n")
    res = cli("recipe", "validate", r)
    assert res.code == 3
    assert f"{r}:5:11: batch.system: expected one of pbs, lsf, slurm, htcondor, got 'sge'" in res.err


def test_a_missing_element_is_refused_with_its_position_and_close_names(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """Finding: the shipped SLC recipes named an element that did not exist ('slc-worker'); validate said OK and
    the build stopped at start-up with only 'disk-image-create exit 1'."""
    r = tmp_path / "r.yaml"
    r.write_text("name: r\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nelements: [vm, batch-workr]\n")
    res = cli("recipe", "validate", r)
    assert res.code == 3
    [problem, _summary] = res.err.splitlines()
    assert problem.startswith(f"{r}:4:16: elements[1]: no element 'batch-workr' in ")
    assert problem.endswith("(did you mean 'batch-worker'?)")
    res = cli("build", r, "-o", tmp_path / "out")
    assert res.code == 3 and "no element 'batch-workr'" in res.err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_missing_element_dependencies_are_found(tmp_path: Path) -> None:
    elements = tmp_path / "elements" / "mine"
    elements.mkdir(parents=True)
    (elements / "element-deps").write_text("# needs\nvm\nno-such-dependency\n")
    (tmp_path / "r.yaml").write_text(
        "name: r\nos: {family: debian, release: 12}\narchitectures: [x86_64]\nelements: [mine]\n"
    )
    problems = check_elements(load_recipe(tmp_path / "r.yaml"))
    assert problems == [
        f"{tmp_path / 'r.yaml'}:4:12: elements[0]: element 'mine' needs 'no-such-dependency' (element-deps), "
        "which is nowhere on the path"
    ]


def test_every_shipped_recipe_names_only_existing_elements() -> None:
    for path in sorted((REPO / "recipes").glob("*/*.yaml")):
        recipe = load_recipe(path)
        if not recipe.data.get("abstract"):
            assert check_elements(recipe) == [], path


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        ("Element 'slc-worker' not found\n", "element 'slc-worker' not found on ELEMENTS_PATH"),
        ("/usr/bin/disk-image-create: line 3: kpartx: command not found\n", "kpartx is not installed on this host"),
        ("INFO ...\nERROR: Could not find the block device\n", "Could not find the block device"),
        ("+ disk-image-create -o x\nnothing useful\n", None),
    ],
)
def test_startup_cause_from_a_dib_log(tmp_path: Path, log: str, cause: str | None) -> None:
    path = tmp_path / "build.log"
    path.write_text(log)
    assert startup_cause(path) == cause


@pytest.mark.build
def test_startup_cause_of_a_real_dib_run(tmp_path: Path) -> None:
    """The same reader against what a real disk-image-create writes when it stops at start-up."""
    require_tools("disk-image-create", install="diskimage-builder (pip)")
    log = tmp_path / "dib.log"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ELEMENTS_PATH": str(tmp_path)}
    argv = ["disk-image-create", "-o", str(tmp_path / "x"), "imagectl-no-such-element"]
    with log.open("w") as f:
        p = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode != 0
    cause = startup_cause(log)
    assert cause == "element 'imagectl-no-such-element' not found on ELEMENTS_PATH", log.read_text()[-2000:]


def test_shipped_elements_are_executable() -> None:
    for script in (REPO / "recipes/elements").glob("*/*.d/*"):
        assert script.stat().st_mode & 0o111, script
    assert SCRIPT.stat().st_mode & 0o111
    assert shutil.which("dash") is None or subprocess.run(["dash", "-n", str(SCRIPT)]).returncode == 0


def test_an_elements_own_error_line_is_the_cause(tmp_path: Path) -> None:
    """Our element helpers report like the CLI (``imagectl: error: …``); the build's one-line error quotes it."""
    from imagectl.imaging.builder import element_error

    log = tmp_path / "build.log"
    log.write_text(
        "2026-12-01 | dib-run-parts Running /tmp/hooks/root.d/10-slc-bootstrap\n"
        "2026-12-01 | slc-bootstrap: reading os repository http://127.0.0.1:1/slc6X/x86_64/yum/os\n"
        "2026-12-01 | imagectl: error: bash-4.1.2-15.el6.x86_64: no valid signature by the pinned key(s)\n"
        "2026-12-01 | hint: check gpg_keys\n"
    )
    assert element_error(log) == "bash-4.1.2-15.el6.x86_64: no valid signature by the pinned key(s)"
    log.write_text("nothing of ours\n")
    assert element_error(log) is None


def test_startup_cause_from_dibs_own_exception(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text(
        '2026-12-01 15:02:04.463 |   File "element_dependencies.py", line 177, in _expand_element_dependencies\n'
        "2026-12-01 15:02:04.463 | diskimage_builder.element_dependencies.MissingOSException: Please include an "
        "operating system element\n"
    )
    assert startup_cause(log) == "Please include an operating system element"


def test_slc_bootstrap_provides_the_operating_system() -> None:
    """DIB refuses a build without an element that provides 'operating-system' (found by the real SLC build test:
    no SLC build could get past DIB's start-up)."""
    provides = (REPO / "recipes/elements/slc-bootstrap/element-provides").read_text().split()
    assert provides == ["operating-system"]


# -- time keeping, SSH host keys on SLC (issue 12 G7, G8) -------------------------------------------------------------
NTP = "ntp1.cern.ch ip-time-1.cern.ch"


@pytest.mark.parametrize("shell", SHELLS)
def test_slc6_worker_keeps_time_with_ntpdate(tmp_path: Path, shell: str) -> None:
    """SLC 6 worker: ntpdate (no ntp.conf, no systemd). NTP_SERVERS reaches ntpdate's step-tickers, which its init
    script reads at boot, after imagectl-context (S07) has run."""
    root = image_root(tmp_path)
    (root / "etc/rc.d/init.d").mkdir(parents=True)
    (root / "etc/rc.d/init.d/ntpdate").write_text("#!/bin/sh\n")
    (root / "etc/rc.d/init.d/ntpdate").chmod(0o755)
    out = run_context(shell, root, context_script({"NTP_SERVERS": NTP}))
    assert f"imagectl-context: time servers {NTP} (/etc/ntp/step-tickers)" in out
    assert (root / "etc/ntp/step-tickers").read_text() == "ntp1.cern.ch\nip-time-1.cern.ch\n"


def test_ntpd_and_its_step_tickers_get_the_servers(tmp_path: Path) -> None:
    """SLC 3 to 5: the ntp package, whose ntpd init script sets the clock from step-tickers before ntpd starts."""
    root = image_root(tmp_path)
    (root / "etc/ntp").mkdir()
    (root / "etc/ntp/step-tickers").write_text("")
    (root / "etc/ntp.conf").write_text("driftfile /var/lib/ntp/drift\nserver 0.rhel.pool.ntp.org\n")
    out = run_context("dash", root, context_script({"NTP_SERVERS": NTP}))
    assert f"imagectl-context: time servers {NTP} (/etc/ntp.conf, /etc/ntp/step-tickers)" in out
    assert (root / "etc/ntp.conf").read_text() == (
        "driftfile /var/lib/ntp/drift\nserver ntp1.cern.ch iburst\nserver ip-time-1.cern.ch iburst\n"
    )
    assert (root / "etc/ntp/step-tickers").read_text() == "ntp1.cern.ch\nip-time-1.cern.ch\n"


def test_no_time_service_is_said_never_claimed(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    out = run_context("dash", root, context_script({"NTP_SERVERS": "ntp1.cern.ch"}))
    assert not any("time servers" in line for line in out), out
    assert (
        "imagectl-context: NTP_SERVERS not applied: this image has no time service (timesyncd, ntpd or ntpdate)" in out
    )
    assert not (root / "etc/ntp").exists()


def test_hostile_time_servers_are_refused(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    (root / "etc/systemd").mkdir()
    canary = tmp_path / "globbed"
    canary.mkdir()
    out = run_context("dash", root, context_script({"NTP_SERVERS": f"ok.example\n[Time]\nNTP=evil * {canary}/*"}))
    assert "imagectl-context: refusing time server '[Time]'" in out
    assert "imagectl-context: refusing time server 'NTP=evil'" in out
    assert "imagectl-context: time servers ok.example (timesyncd)" in out, out
    assert (root / "etc/systemd/timesyncd.conf.d/imagectl.conf").read_text() == "[Time]\nNTP=ok.example\n"


STUB_KEYGEN = """#!/bin/sh
# ssh-keygen of OpenSSH < 5.8 (SLC 3 to 6): no -A
echo "$*" >> "$(dirname "$0")/calls"
case " $* " in *" -A "*) echo "ssh-keygen: illegal option -- A" >&2; exit 1 ;; esac
while [ $# -gt 0 ]; do
    case "$1" in -f) f=$2; shift ;; -t) t=$2; shift ;; esac
    shift
done
echo "$t private" > "$f" && echo "$t public" > "$f.pub"
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_host_keys_without_ssh_keygen_a(tmp_path: Path, shell: str) -> None:
    """G8: SLC's ssh-keygen has no -A; the node still makes its own rsa and dsa host keys, by name."""
    stub = tmp_path / "bin" / "ssh-keygen"
    stub.parent.mkdir()
    stub.write_text(STUB_KEYGEN)
    stub.chmod(0o755)
    root = image_root(tmp_path)
    out = run_context(shell, root, None, env_extra={"IMAGECTL_SSH_KEYGEN": str(stub)})
    assert "imagectl-context: made this node's SSH host keys: rsa dsa" in out
    for t in ("rsa", "dsa"):
        assert (root / f"etc/ssh/ssh_host_{t}_key").read_text() == f"{t} private\n"
        assert (root / f"etc/ssh/ssh_host_{t}_key.pub").read_text() == f"{t} public\n"
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert calls[0] == f"-A -f {root}"
    assert calls[1:] == [f"-q -t {t} -f {root}/etc/ssh/ssh_host_{t}_key -C  -N " for t in ("rsa", "dsa")]
    # keys there: nothing is made again
    out = run_context(shell, root, None, env_extra={"IMAGECTL_SSH_KEYGEN": str(stub)})
    assert (
        not any("SSH host keys" in line for line in out)
        and len((tmp_path / "bin" / "calls").read_text().splitlines()) == 3
    )


# -- a Python traceback inside an element script (issue 12 G3) -------------------------------------------------------
@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (  # the last exception of a chained traceback, DIB's timestamps stripped
            "2026-12-01 15:02:04.463 | dib-run-parts Running /tmp/hooks/root.d/10-slc-bootstrap\n"
            "2026-12-01 15:02:04.470 | Traceback (most recent call last):\n"
            '2026-12-01 15:02:04.470 |   File "x.py", line 1, in <module>\n'
            "2026-12-01 15:02:04.470 | KeyError: 'a'\n"
            "2026-12-01 15:02:04.470 | \n"
            "2026-12-01 15:02:04.470 | During handling of the above exception, another exception occurred:\n"
            "2026-12-01 15:02:04.470 | Traceback (most recent call last):\n"
            '2026-12-01 15:02:04.470 |   File "x.py", line 3, in <module>\n'
            "2026-12-01 15:02:04.470 |     raise urllib.error.URLError('no route')\n"
            "2026-12-01 15:02:04.470 | urllib.error.URLError: <urlopen error no route>\n"
            "2026-12-01 15:02:04.480 | ++ exit 1\n",
            "URLError: <urlopen error no route>",
        ),
        (  # python3 -m of a package that is not installed: no traceback, one line (what O1 of the audit saw)
            "2026-12-01 15:02:04.463 | dib-run-parts Running /tmp/hooks/root.d/10-slc-bootstrap\n"
            "2026-12-01 15:02:04.470 | /usr/bin/python3: Error while finding module specification for "
            "'imagectl.imaging.slc.bootstrap' (ModuleNotFoundError: No module named 'imagectl')\n",
            "Error while finding module specification for 'imagectl.imaging.slc.bootstrap' (ModuleNotFoundError: "
            "No module named 'imagectl')",
        ),
        (  # a traceback of an earlier script that went on is not this one's cause
            'Traceback (most recent call last):\n  File "a.py", line 1\nValueError: old\n'
            "dib-run-parts Running /tmp/hooks/install.d/50-x\nE: Unable to locate package x\n",
            None,
        ),
        ('Traceback (most recent call last):\n  File "a", line 1\nSystemExit\n', "SystemExit"),
        ('Traceback (most recent call last):\n  File "a", line 1\nOSError: \x1b]0;x\x07' + "z" * 400 + "\n", None),
    ],
)
def test_python_error_in_an_element_script(tmp_path: Path, log: str, cause: str | None) -> None:
    path = tmp_path / "build.log"
    path.write_text(log)
    got = python_error(path)
    if log.startswith("Traceback") and "OSError" in log:  # bounded, control characters escaped
        assert got is not None and got.startswith("OSError: \\x1b]0;x\\x07zzz") and len(got) == 200, got
        assert got.endswith("…") and got.isprintable()
    else:
        assert got == cause


# -- gpg_keys: valid, but not buildable (issue 12 G1) ---------------------------------------------------------------
def test_slc_recipe_without_gpg_keys_validates_with_a_warning(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    shipped = REPO / "recipes" / "slc" / "slc6-worker.yaml"
    res = cli("recipe", "validate", shipped)
    assert res.code == 0 and res.out.startswith(f"ok: {shipped} (slc6-worker:")
    [warning] = res.err.splitlines()
    assert warning.startswith(f"imagectl: warning: {shipped}:5:11: gpg_keys: no GPG key pinned for SLC 6")
    assert "https://linuxsoft.cern.ch/cern/slc6X/x86_64/RPM-GPG-KEYs/RPM-GPG-KEY-cern" in warning
    assert "check its fingerprint" in warning
    res = cli("recipe", "validate", shipped, "--json")
    assert res.code == 0 and json.loads(res.out)[0]["warnings"][0].startswith(f"{shipped}:5:11: gpg_keys:")
    # with a key pinned (a child of the shipped recipe), no warning; Debian never needs one
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "RPM-GPG-KEY-site").write_text("placeholder: validate checks the file exists\n")
    child = tmp_path / "site-slc6.yaml"
    child.write_text(f"name: site-slc6\nextends: {shipped}\ngpg_keys: [keys/RPM-GPG-KEY-site]\n")
    res = cli("recipe", "validate", child, REPO / "recipes" / "demo" / "debian12-demo.yaml")
    assert res.code == 0 and res.err == "", res.err
    assert res.out.count("ok: ") == 2
