"""Settings, declared once: each becomes a CLI flag, an ``IMAGECTL_*`` variable and a config-file key.

Precedence: command-line flag > environment > config file > default. The config file is YAML: ``$IMAGECTL_CONFIG``,
else ``~/.config/imagectl/config.yaml``, else ``/etc/imagectl/config.yaml`` (the first that exists).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagectl.errors import InvalidInputError

__all__ = ["SETTINGS", "Config", "Setting", "config_file_path", "load_config"]


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "IMAGECTL_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _s(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    """Every setting, declared once; flags, environment variables and config keys are derived from it."""

    catalogue: str | None = _s(None, "catalogue location: DIR, file:///DIR or http(s)://HOST/PATH")
    keys: str | None = _s(None, "directory holding the catalogue's signing keys")
    root: str | None = _s(None, "trusted root: a root.json file, or sha256:HEX of the catalogue's root")
    cache_dir: str = _s("~/.cache/imagectl", "client cache: trusted metadata and verified image blobs")
    timeout: float = _s(30.0, "network timeout per request, seconds")
    retries: int = _s(3, "retries of a failed download or request (connection errors, 5xx)")
    expires_root: int = _s(365, "days until newly signed root metadata expires")
    expires_targets: int = _s(90, "days until newly signed targets and image metadata expire")
    expires_snapshot: int = _s(7, "days until newly signed snapshot metadata expires")
    expires_timestamp: int = _s(1, "days until newly signed timestamp metadata expires")
    #: setting name -> where its value came from (a flag, a variable, file:line:column, "default")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    def expiry_days(self) -> dict[str, int]:
        return {
            "root": self.expires_root,
            "targets": self.expires_targets,
            "snapshot": self.expires_snapshot,
            "timestamp": self.expires_timestamp,
        }


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Config)
    out = []
    for f in dataclasses.fields(Config):
        if "help" not in f.metadata:
            continue
        typ = next(t for t in (str, int, float) if t is hints[f.name] or t in typing.get_args(hints[f.name]))
        out.append(Setting(f.name, typ, f.default, f.metadata["help"]))
    return tuple(out)


SETTINGS: tuple[Setting, ...] = _settings()


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        if setting.type is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        converted = setting.type(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: {setting.name} must be a {setting.type.__name__}, got {value!r}") from None
    if setting.type in (int, float) and converted < 0:
        raise InvalidInputError(f"{where}: {setting.name} must not be negative, got {value!r}")
    if setting.name.startswith("expires_") and converted < 1:
        raise InvalidInputError(f"{where}: {setting.name} must be at least 1 day, got {value!r}")
    return converted


def config_file_path(env: Mapping[str, str]) -> Path | None:
    if "IMAGECTL_CONFIG" in env:
        return Path(env["IMAGECTL_CONFIG"])
    for candidate in (Path("~/.config/imagectl/config.yaml").expanduser(), Path("/etc/imagectl/config.yaml")):
        if candidate.is_file():
            return candidate
    return None


def _read_config_file(path: Path) -> dict[str, tuple[Any, str]]:
    """Key -> (value, 'file:line:column') for each top-level key of the YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInputError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InvalidInputError(f"{pos}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise InvalidInputError(f"{path}:1:1: config file must be a mapping of setting: value")
    known = {s.name: s for s in SETTINGS}
    out: dict[str, tuple[Any, str]] = {}
    for key_node, value_node in node.value:
        pos = f"{path}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
        key = str(key_node.value).replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInputError(f"{pos}: unknown setting {key_node.value!r}{hint}")
        if not isinstance(value_node, yaml.ScalarNode):
            raise InvalidInputError(f"{pos}: {key} must be a single value")
        value = yaml.safe_load(yaml.serialize(value_node))
        out[key] = (value, pos)
    return out


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting: flags > ``IMAGECTL_*`` environment > config file > default.

    Raises InvalidInputError (with file:line:column for the config file) for unknown keys or bad values.
    """
    flags = flags or {}
    env = os.environ if env is None else env
    path = config_file_path(env)
    from_file = _read_config_file(path) if path is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        if flags.get(s.name) is not None:
            values[s.name], sources[s.name] = _coerce(s, flags[s.name], s.flag), s.flag
        elif env.get(s.env):
            values[s.name], sources[s.name] = _coerce(s, env[s.env], s.env), s.env
        elif s.name in from_file:
            value, pos = from_file[s.name]
            values[s.name], sources[s.name] = _coerce(s, value, pos), pos
        else:
            values[s.name], sources[s.name] = s.default, "default"
    return dataclasses.replace(Config(), sources=sources, **values)
