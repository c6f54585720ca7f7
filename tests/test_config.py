"""Settings: one declaration, flags > environment > config file > defaults, positions in config errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from imagectl.config import SETTINGS, Config, load_config
from imagectl.errors import InvalidInputError
from tests.conftest import run_imagectl


def test_every_setting_is_declared_once_with_help():
    names = [s.name for s in SETTINGS]
    fields = [f.name for f in dataclasses.fields(Config) if f.name != "sources"]
    assert names == fields
    assert all(s.help and s.env == "IMAGECTL_" + s.name.upper() for s in SETTINGS)


def test_precedence(tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("catalogue: /from/file\nkeys: /file/keys\ntimeout: 7\nretries: 5\n")
    env = {"IMAGECTL_CONFIG": str(cfgfile), "IMAGECTL_KEYS": "/env/keys", "IMAGECTL_TIMEOUT": "9"}
    cfg = load_config({"timeout": 11.0}, env)
    assert cfg.catalogue == "/from/file" and cfg.keys == "/env/keys" and cfg.timeout == 11.0 and cfg.retries == 5
    assert cfg.sources["catalogue"] == f"{cfgfile}:1:1"
    assert cfg.sources["keys"] == "IMAGECTL_KEYS" and cfg.sources["timeout"] == "--timeout"
    assert cfg.expires_timestamp == 1 and cfg.sources["expires_timestamp"] == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("catalogue: /x\ncatalog: /y\n", ":2:1: unknown setting 'catalog' (did you mean 'catalogue'?)"),
        ("timeout: fast\n", ":1:1: timeout must be a float, got 'fast'"),
        ("retries: -1\n", ":1:1: retries must not be negative"),
        ("expires_timestamp: 0\n", ":1:1: expires_timestamp must be at least 1 day"),
        ("catalogue: [a, b]\n", ":1:1: catalogue must be a single value"),
        ("catalogue: /x\n  bad: indent\n", ":2:6: invalid YAML"),
        ("- a\n- b\n", ":1:1: config file must be a mapping"),
    ],
)
def test_config_file_errors_carry_positions(tmp_path, text, message):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(text)
    with pytest.raises(InvalidInputError) as exc:
        load_config({}, {"IMAGECTL_CONFIG": str(cfgfile)})
    assert str(exc.value) == f"{cfgfile}{message}" or str(exc.value).startswith(f"{cfgfile}{message}")


def test_config_command_and_real_console_errors(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMAGECTL_CATALOGUE": str(tmp_path / "cat")}
    r = run_imagectl("config", "--json", env=env)
    assert r.code == 0, r.err
    assert json.loads(r.out)["catalogue"] == {"value": str(tmp_path / "cat"), "from": "IMAGECTL_CATALOGUE"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("timeout: soon\n")
    r = run_imagectl("catalogue", "list", env={**env, "IMAGECTL_CONFIG": str(bad)})
    assert r.code == 3
    assert r.err == f"imagectl: error: {bad}:1:1: timeout must be a float, got 'soon'\n"
    r = run_imagectl("catalogue", "list", "--catalogue", tmp_path / "none", env=env)
    assert r.code == 16 and "is not a catalogue" in r.err and "Traceback" not in r.err


def test_every_number_setting_declares_bounds_and_its_help_states_them():
    numbers = [s for s in SETTINGS if s.type in (int, float)]
    assert {s.name for s in numbers} == {"timeout", "retries", "min_rate", "s3_concurrency"} | {
        f"expires_{r}" for r in ("root", "targets", "snapshot", "timestamp")
    }
    for s in numbers:
        assert s.low is not None and s.high is not None and s.low <= s.default <= s.high, s
        assert s.help.endswith(f"({s.bounds()})") and s.bounds(), s.help
    timeout = next(s for s in SETTINGS if s.name == "timeout")
    assert timeout.help == "network timeout per request, seconds (more than 0 and at most 3600 seconds)"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ({"IMAGECTL_TIMEOUT": "3600"}, ("timeout", 3600.0)),
        ({"IMAGECTL_TIMEOUT": "0.001"}, ("timeout", 0.001)),
        ({"IMAGECTL_RETRIES": "20"}, ("retries", 20)),
        ({"IMAGECTL_RETRIES": " 0 "}, ("retries", 0)),
        ({"IMAGECTL_EXPIRES_ROOT": "3650"}, ("expires_root", 3650)),
        ({"IMAGECTL_EXPIRES_TIMESTAMP": "1"}, ("expires_timestamp", 1)),
    ],
)
def test_values_at_the_bounds_load(env, value):
    cfg = load_config({}, env)
    assert getattr(cfg, value[0]) == value[1]


def test_flag_values_are_checked_like_the_others():
    with pytest.raises(InvalidInputError, match=r"^--timeout: timeout must be a finite number, got nan$"):
        load_config({"timeout": float("nan")}, {})
    with pytest.raises(InvalidInputError, match=r"^--retries: retries must be at most 20, got 100$"):
        load_config({"retries": 100}, {})


def test_a_null_in_the_config_file_means_not_set(tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("timeout:\ncache_dir: ~\ncatalogue: /cat\n")  # `timeout: None` waited forever
    cfg = load_config({}, {"IMAGECTL_CONFIG": str(cfgfile)})
    assert (cfg.timeout, cfg.cache_dir, cfg.catalogue) == (30.0, "~/.cache/imagectl", "/cat")
    assert cfg.sources["timeout"] == "default" and cfg.sources["catalogue"] == f"{cfgfile}:3:1"


def test_empty_imagectl_config_is_refused():
    with pytest.raises(InvalidInputError, match=r"^IMAGECTL_CONFIG is set but empty: name a config file, or unset it$"):
        load_config({}, {"IMAGECTL_CONFIG": ""})


def test_yaml_dates_in_the_config_file_are_text(tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("keys: 2026-01-01\n")  # was datetime.date: "keys must be a str, got datetime.date(...)"
    assert load_config({}, {"IMAGECTL_CONFIG": str(cfgfile)}).keys == "2026-01-01"
