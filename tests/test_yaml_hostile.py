"""Hostile recipes and config files (issue 7, items 9 and 11): each is refused with exit 3 and file:line:column.

One test per finding; each failed on the code before the fix (a hang, a traceback, or a silent load). Cases that
could hang run imagectl in a subprocess with a timeout and a 1 GiB address-space limit, so a regression fails
instead of hanging or exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_imagectl

GOOD = "name: demo\nos: {family: debian, release: 12}\narchitectures: [x86_64]\n"
# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, from under 1 KB of text.
LAUGHS = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
HANG_LIMIT = 30.0  # seconds; the fixed code answers in well under one


def _one_error_line(r: CliResult) -> str:
    assert r.code == 3, (r.code, r.err)
    assert r.err.startswith("imagectl: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    return r.err.removeprefix("imagectl: error: ").rstrip("\n")


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run(tmp_path: Path, *args: str, **env: str) -> tuple[CliResult, float]:
    """``python -m imagectl ARGS`` with a clean environment plus ``env`` and 1 GiB of address space; fails the test
    after HANG_LIMIT. Returns the result and the seconds it took."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMAGECTL_CACHE_DIR": str(tmp_path / "cache")}
    start = time.monotonic()
    r = run_imagectl(*args, env={**base, **env}, timeout=HANG_LIMIT, preexec_fn=_limit_memory)
    return r, time.monotonic() - start


# -- recipes ---------------------------------------------------------------------------------------------------------


def _validate(cli: Callable[..., CliResult], path: Path) -> str:
    """``recipe validate PATH`` must fail with exit 3; returns its (single) problem line."""
    r = cli("recipe", "validate", path)
    assert r.code == 3, (r.code, r.err)
    assert "Traceback" not in r.err
    problem, summary = r.err.splitlines()
    assert summary == "imagectl: error: 1 of 1 recipe has problems"
    # `recipe show` reports the same problem as the one-line `imagectl: error:` every command uses
    assert _one_error_line(cli("recipe", "show", path)) == problem
    return problem


def test_billion_laughs_recipe_is_refused_fast(tmp_path):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(GOOD + LAUGHS)
    assert len(recipe.read_bytes()) < 1024
    r, took = run(tmp_path, "recipe", "validate", str(recipe))
    assert r.code == 3 and took < HANG_LIMIT
    assert r.err.splitlines()[0] == f"{recipe}:4:5: YAML anchors and aliases are not allowed (use extends:)"


def test_recipe_alias_of_a_scalar_is_refused(tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: &n demo\ndescription: *n\nos: {family: debian, release: 12}\narchitectures: [x86_64]\n")
    assert _validate(cli, recipe) == f"{recipe}:1:7: YAML anchors and aliases are not allowed (use extends:)"


def test_recipe_not_utf8_names_line_and_column(tmp_path, cli):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(GOOD.encode() + "description: caf\xe9\n".encode("latin-1"))
    assert _validate(cli, recipe) == f"{recipe}:4:17: not valid UTF-8 (byte 0xe9); save the file as UTF-8"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!!python/object:os.system echo", "'!!python/object:os.system'"),
        ("!!python/object/apply:os.system [echo]", "'!!python/object/apply:os.system'"),
        ("!mytag demo", "'!mytag'"),
        ("!!binary ZGVtbw==", "'!!binary'"),
        ("!!set {demo}", "'!!set'"),
        ("!!omap [demo: 1]", "'!!omap'"),
        ("!!str demo", "'!!str'"),
        ("! demo", "'!'"),
    ],
)
def test_recipe_tags_are_refused(tmp_path, cli, value, shown):
    recipe = tmp_path / "tagged.yaml"
    recipe.write_text(f"os: {{family: debian, release: 12}}\narchitectures: [x86_64]\nname: {value}\n")
    assert _validate(cli, recipe) == (
        f"{recipe}:3:7: YAML tags are not allowed (found {shown}); quote the value for text"
    )


def test_recipe_control_character_names_line_and_column(tmp_path, cli):
    recipe = tmp_path / "ctl.yaml"
    recipe.write_text(GOOD + "description: a\x01b\n")  # was "invalid YAML" with no position
    assert _validate(cli, recipe) == f"{recipe}:4:15: invalid YAML: control character U+0001 is not allowed"


def test_recipe_merge_key_is_refused(tmp_path, cli):
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("name: demo\nos:\n  <<: {family: debian}\n  release: 12\narchitectures: [x86_64]\n")
    assert _validate(cli, recipe) == f"{recipe}:3:3: '<<' (a YAML merge key) is not allowed; quote it for the text"


def test_recipe_value_key_is_refused(tmp_path, cli):
    recipe = tmp_path / "eq.yaml"
    recipe.write_text(GOOD + "description: =\n")
    assert _validate(cli, recipe) == f"{recipe}:4:14: '=' (the YAML value key) is not allowed; quote it for the text"


def test_recipe_duplicate_key_is_still_refused(tmp_path, cli):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(GOOD + "name: other\n")
    assert _validate(cli, recipe) == f"{recipe}:4:1: duplicate key 'name'"


def test_recipe_deep_nesting_is_refused(tmp_path, cli):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(GOOD + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    assert _validate(cli, recipe) == f"{recipe}:4:45: nested more than 32 levels deep"


def test_recipe_with_too_many_values_is_refused(tmp_path, cli):
    recipe = tmp_path / "wide.yaml"
    recipe.write_text(GOOD + "packages: [" + ", ".join(["a"] * 10_000) + "]\n")
    problem = _validate(cli, recipe)
    assert problem.startswith(f"{recipe}:4:") and problem.endswith(": more than 10000 keys and values in one file")


def test_unique_list_check_is_linear():
    # Each item was compared with every one before it: 30,000 distinct items took 4 s, 10**6 would take an hour.
    from imagectl.recipe.schema import List, Str, validate
    from imagectl.recipe.yamlpos import Located

    items = [f"a{i}" for i in range(30_000)]
    start = time.monotonic()
    validate(List(Str(), unique=True), Located(items, {}, {}, "r.yaml"))
    assert time.monotonic() - start < 1.0  # 0.01 s here


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "a number longer than 64 characters; quote it for text"),  # int() refuses > 4300 digits
        ("1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17:18:19:20:21:22:23:24:25", "a number longer than 64 characters"),
        ("0b_", "not a valid YAML value: '0b_'; quote it for text"),  # yaml.safe_load raises ValueError
        ('"a\\0b"', "a NUL character (\\0) is not allowed"),
    ],
)
def test_recipe_scalars_that_broke_the_loader(tmp_path, cli, value, message):
    recipe = tmp_path / "num.yaml"
    recipe.write_text(GOOD + f"description: {value}\n")
    assert _validate(cli, recipe).startswith(f"{recipe}:4:14: {message}")


def test_recipe_extends_with_nul_is_refused(tmp_path, cli):
    recipe = tmp_path / "child.yaml"
    recipe.write_text(GOOD + 'extends: "base\\0.yaml"\n')  # Path.resolve() raised ValueError: embedded null byte
    assert _validate(cli, recipe) == f"{recipe}:4:10: a NUL character (\\0) is not allowed"


def test_recipe_date_version_is_a_string(tmp_path, cli):
    recipe = tmp_path / "dated.yaml"
    recipe.write_text(GOOD + "version: 2026-01-01\ndescription: 2026-01-01 10:00:00\n")
    r = cli("recipe", "show", "--json", recipe)
    assert r.code == 0, r.err
    data = json.loads(r.out)["recipe"]
    assert data["version"] == "2026-01-01" and data["description"] == "2026-01-01 10:00:00"


def test_recipe_float_where_a_number_is_wanted_is_an_error(tmp_path, cli):
    recipe = tmp_path / "float.yaml"
    recipe.write_text(GOOD + "boot_test: {timeout: .nan}\n")
    assert (
        _validate(cli, recipe) == f"{recipe}:4:22: boot_test.timeout: expected a whole number from 10 to 3600, got nan"
    )


def test_recipe_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    r, _ = run(tmp_path, "recipe", "validate", str(fifo))
    assert r.code == 3
    assert r.err.splitlines()[0] == f"recipe file {fifo} is a FIFO, not a regular file"


def test_recipe_larger_than_1mib_is_refused(tmp_path, cli):
    recipe = tmp_path / "big.yaml"
    recipe.write_text(GOOD + "# " + "x" * (1 << 20) + "\n")
    assert _validate(cli, recipe).startswith(f"recipe file {recipe} is larger than the allowed 1048576 bytes")


def test_missing_recipe_message_is_unchanged(tmp_path, cli):
    assert _validate(cli, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such recipe file"


# -- the config file -------------------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | bytes], Path]:
    """Write the config file imagectl will read (IMAGECTL_CONFIG) and clear the variables the suite sets."""
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("IMAGECTL_CONFIG", str(path))
    monkeypatch.delenv("IMAGECTL_RETRIES", raising=False)
    monkeypatch.delenv("IMAGECTL_CACHE_DIR", raising=False)

    def write(text: str | bytes) -> Path:
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        path.chmod(0o644)
        return path

    return write


def test_billion_laughs_config_is_refused_fast(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("catalogue: /cat\n" + LAUGHS)
    r, took = run(tmp_path, "config", IMAGECTL_CONFIG=str(cfg))
    assert r.code == 3 and took < HANG_LIMIT
    assert r.err == (f"imagectl: error: {cfg}:2:5: YAML anchors and aliases are not allowed (write each value out)\n")


def test_config_alias_is_refused(cli, config_file):
    path = config_file("catalogue: &c /cat\nkeys: *c\n")
    assert _one_error_line(cli("config")) == (
        f"{path}:1:12: YAML anchors and aliases are not allowed (write each value out)"
    )


def test_config_not_utf8_names_line_and_column(cli, config_file):
    path = config_file(b"timeout: 5\nkeys: /k\xffeys\n")
    assert _one_error_line(cli("config")) == f"{path}:2:9: not valid UTF-8 (byte 0xff); save the file as UTF-8"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!!python/object/apply:os.system [echo]", "'!!python/object/apply:os.system'"),
        ("!env HOME", "'!env'"),
        ("!!binary L2NhdA==", "'!!binary'"),
    ],
)
def test_config_tags_are_refused(cli, config_file, value, shown):
    path = config_file(f"catalogue: {value}\n")
    assert _one_error_line(cli("config")) == (
        f"{path}:1:12: YAML tags are not allowed (found {shown}); quote the value for text"
    )


def test_config_merge_key_is_refused(cli, config_file):
    path = config_file("timeout: 5\n<<: {catalogue: /cat}\n")
    assert (
        _one_error_line(cli("config")) == f"{path}:2:1: '<<' (a YAML merge key) is not allowed; quote it for the text"
    )


def test_config_value_key_is_refused(cli, config_file):
    path = config_file("catalogue: =\n")
    assert _one_error_line(cli("config")) == (
        f"{path}:1:12: '=' (the YAML value key) is not allowed; quote it for the text"
    )


def test_config_duplicate_keys_are_refused(cli, config_file):
    path = config_file("catalogue: /a\ntimeout: 5\ncatalogue: /b\n")
    assert _one_error_line(cli("config")) == f"{path}:3:1: duplicate key 'catalogue'"
    path = config_file("cache_dir: /a\ncache-dir: /b\n")
    assert _one_error_line(cli("config")) == f"{path}:2:1: cache_dir is set twice (also at {path}:1:1)"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("timeout", "nan", "timeout must be a finite number, got {v}"),
        ("timeout", "inf", "timeout must be a finite number, got {v}"),
        ("timeout", "-inf", "timeout must be a finite number, got {v}"),
        ("timeout", "0", "timeout must be more than 0 seconds, got {v}"),
        ("timeout", "1e308", "timeout must be at most 3600 seconds, got {v}"),
        ("timeout", "1e400", "timeout must be a finite number, got {v}"),
        ("retries", "21", "retries must be at most 20, got {v}"),
        ("retries", "1" + "0" * 30, "retries must be at most 20, got {v}"),
        ("retries", "2.5", "retries must be a whole number, got {v}"),
        ("retries", "nan", "retries must be a whole number, got {v}"),
        ("expires_root", "0", "expires_root must be at least 1 day, got {v}"),
        ("expires_root", "1000000000", "expires_root must be at most 3650 days, got {v}"),
        ("expires_timestamp", "inf", "expires_timestamp must be a whole number, got {v}"),
    ],
)
def test_config_numbers_out_of_bounds_via_env(cli, monkeypatch, setting, value, message):
    monkeypatch.setenv(f"IMAGECTL_{setting.upper()}", value)
    assert _one_error_line(cli("config")) == f"IMAGECTL_{setting.upper()}: " + message.format(v=repr(value))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timeout: .nan\n", "timeout must be a finite number, got nan"),
        ("timeout: .inf\n", "timeout must be a finite number, got inf"),
        ("timeout: 0\n", "timeout must be more than 0 seconds, got 0"),
        ("timeout: 1.0e+308\n", "timeout must be at most 3600 seconds, got 1e+308"),
        ("timeout: 1e308\n", "timeout must be at most 3600 seconds, got '1e308'"),  # YAML 1.1: a string
        ("retries: .inf\n", "retries must be a whole number, got inf"),  # was OverflowError
        ("retries: 2.7\n", "retries must be a whole number, got 2.7"),  # was silently 2
        ("retries: true\n", "retries must be a whole number, got True"),  # was silently 1
        (f"retries: {10**30}\n", "retries must be at most 20, got 1000000000000000000000000000000"),
        ("expires_targets: 1000000000\n", "expires_targets must be at most 3650 days, got 1000000000"),
        ("expires_snapshot: 0\n", "expires_snapshot must be at least 1 day, got 0"),
        ('keys: "/k\\0eys"\n', "a NUL character (\\0) is not allowed"),
        ('keys: "/k\\x01eys"\n', "keys contains control characters: '/k\\x01eys'"),
    ],
)
def test_config_bad_values_in_file(cli, config_file, text, message):
    path = config_file(text)
    line = _one_error_line(cli("config"))
    assert line in (f"{path}:1:1: {message}", f"{path}:1:7: {message}"), line


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://[::1]:99999/cat", "https:///no-host", "http://host/a b", "ftp://host/cat"],
)
def test_malformed_catalogue_url_is_refused_at_load(cli, config_file, monkeypatch, url):
    config_file("")
    monkeypatch.setenv("IMAGECTL_CATALOGUE", url)
    line = _one_error_line(cli("config"))
    assert line.startswith("IMAGECTL_CATALOGUE: ") and ("catalogue" in line)
    path = config_file(f"catalogue: '{url}'\n")
    monkeypatch.delenv("IMAGECTL_CATALOGUE")
    line = _one_error_line(cli("catalogue", "list"))
    assert line.startswith(f"{path}:1:1: ") and "catalogue" in line


def test_catalogue_control_character_is_refused(cli, monkeypatch):
    monkeypatch.setenv("IMAGECTL_CATALOGUE", "http://host/cat\x1b[31m")
    assert _one_error_line(cli("config")) == "IMAGECTL_CATALOGUE: catalogue contains control characters"


def test_catalogue_errors_do_not_show_the_password(cli, monkeypatch):
    monkeypatch.setenv("IMAGECTL_CATALOGUE", "https://user:s3cret@/cat")
    line = _one_error_line(cli("config"))
    assert line == "IMAGECTL_CATALOGUE: catalogue URL 'https://<hidden>@/cat' has no host"
    monkeypatch.setenv("IMAGECTL_CATALOGUE", "https://user:s3cret@host/cat\n")
    assert "s3cret" not in _one_error_line(cli("config"))


def test_world_writable_config_is_refused(cli, config_file):
    path = config_file("catalogue: /cat\n")
    path.chmod(0o666)
    assert _one_error_line(cli("config")) == (
        f"config file {path} is writable by every user (mode 0666); refusing it: run chmod o-w on it"
    )


def test_config_of_another_user_is_refused_when_root(cli, config_file, monkeypatch):
    path = config_file("catalogue: /cat\n")
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:  # pretend: the file is ours (not root's) and we are root
        monkeypatch.setattr(os, "geteuid", lambda: 0)
    uid = path.stat().st_uid
    assert _one_error_line(cli("config")) == (
        f"config file {path} is owned by uid {uid}, not root; refusing it when running as root"
    )


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero", "too-big"])
def test_config_that_is_not_a_small_regular_file_is_refused_without_hanging(tmp_path, kind):
    path = tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(path)
        expected = f"config file {path} is a FIFO, not a regular file"
    elif kind == "directory":
        path.mkdir()
        expected = f"config file {path} is a directory, not a regular file"
    elif kind == "dev-zero":
        path = Path("/dev/zero")
        expected = "config file /dev/zero is a character device, not a regular file"
    else:
        path.write_text("# " + "x" * (1 << 20) + "\n")
        expected = f"config file {path} is larger than the allowed 1048576 bytes (1048579 bytes)"
    r, _ = run(tmp_path, "config", IMAGECTL_CONFIG=str(path))
    assert (r.code, r.err) == (3, f"imagectl: error: {expected}\n")


def test_default_config_path_that_is_a_directory_is_refused(cli, tmp_path):
    (tmp_path / "home" / ".config" / "imagectl" / "config.yaml").mkdir(parents=True)
    line = _one_error_line(cli("config"))
    assert line.endswith("config.yaml is a directory, not a regular file")


# -- found by the fuzzer: an abstract recipe's files[].source was read by digest() unchecked and unbounded ---------


def test_abstract_recipe_with_a_missing_source_is_an_error(tmp_path, cli):
    recipe = tmp_path / "base.yaml"
    recipe.write_text("abstract: true\nfiles:\n- path: /etc/motd\n  source: nope\n")
    assert "nope" in _validate(cli, recipe)  # was FileNotFoundError from Recipe.digest()


def test_abstract_recipe_with_dev_zero_as_source_is_refused_fast(tmp_path):
    recipe = tmp_path / "base.yaml"
    recipe.write_text("abstract: true\nfiles:\n- path: /etc/motd\n  source: /dev/zero\n")
    r, _ = run(tmp_path, "recipe", "validate", str(recipe))  # read /dev/zero until MemoryError
    assert r.code == 3 and "Traceback" not in r.err, r.err[-300:]
