"""Settings, declared once: each becomes a CLI flag, an ``IMAGECTL_*`` variable and a config-file key.

Precedence: command-line flag > environment > config file > default. The config file is YAML: ``$IMAGECTL_CONFIG``,
else ``~/.config/imagectl/config.yaml``, else ``/etc/imagectl/config.yaml`` (the first that exists).

Every value is checked where it enters, whatever its source: numbers against the bounds declared with the setting
(a ``nan`` timeout or a 10**30-day expiry would otherwise fail much later, as an OverflowError mid-publish), text
for control characters, the catalogue for a well-formed URL. The config file must be a regular file of at most
1 MiB, in the plain YAML subset of :mod:`imagectl.recipe.yamlpos`, that no other user could have written.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagectl.errors import InvalidInputError
from imagectl.recipe.yamlpos import load_located
from imagectl.urls import safe_url

__all__ = ["SETTINGS", "Config", "Setting", "config_file_path", "load_config"]

CONFIG_MAX_BYTES = 1 << 20  # ten settings fit in 1 KiB; a larger file is a mistake (or /dev/zero behind a link)
TEXT_MAX = 4096  # characters in a path or URL setting (PATH_MAX)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Setting:
    """One setting: its name, type and default, help text (which states the bounds) and, for numbers, bounds."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None  # smallest allowed value (numbers only)
    high: float | None = None  # largest allowed value (numbers only)
    low_open: bool = False  # the value must be *more than* ``low`` (a timeout of 0 means nothing)
    unit: str = ""  # plural, for messages: "days", "seconds"

    @property
    def env(self) -> str:
        return "IMAGECTL_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds(self) -> str:
        """The allowed range in words, for help text: ``from 1 to 3650 days``, ``more than 0 and at most 3600
        seconds``; empty for a text setting."""
        if self.low is None or self.high is None:
            return ""
        if self.low_open:
            return f"more than {_num(self.low)} and at most {_amount(self.high, self.unit)}"
        return f"from {_num(self.low)} to {_amount(self.high, self.unit)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _amount(x: float, unit: str) -> str:
    if not unit:
        return _num(x)
    return f"{_num(x)} {unit[:-1] if x == 1 else unit}"


def _s(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    unit: str = "",
) -> Any:
    return field(default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open, "unit": unit})


@dataclass(frozen=True)
class Config:
    """Every setting, declared once; flags, environment variables and config keys are derived from it."""

    catalogue: str | None = _s(None, "catalogue location: DIR, file:///DIR, http(s)://HOST/PATH or s3://BUCKET/PREFIX")
    keys: str | None = _s(None, "directory holding the catalogue's signing keys")
    root: str | None = _s(None, "trusted root: a root.json file, or sha256:HEX of the catalogue's root")
    cache_dir: str = _s("~/.cache/imagectl", "caches: trusted and published metadata, image blobs, digests, packages")
    cache_max_size: str | None = _s(
        None,
        "after each build and pull, remove the cache's least recently used images, builds, packages, base "
        "systems and SLC downloads down to this size (20G, 500M); unset: only imagectl cache prune removes anything",
    )
    timeout: float = _s(30.0, "network timeout per request, seconds", low=0, low_open=True, high=3600, unit="seconds")
    retries: int = _s(3, "retries of a failed download or request (connection errors, 5xx)", low=0, high=20)
    min_rate: float = _s(
        4096.0,
        "slowest transfer a server may keep us waiting on, bytes/s over every --timeout window; 0: no limit",
        low=0,
        high=1 << 30,
    )
    s3_concurrency: int = _s(
        4, "S3: parts of an image (16 MiB each) uploaded or copied server-side at once", low=1, high=32
    )
    expires_root: int = _s(365, "days until newly signed root metadata expires", low=1, high=3650, unit="days")
    expires_targets: int = _s(
        90, "days until newly signed targets and image metadata expire", low=1, high=3650, unit="days"
    )
    expires_snapshot: int = _s(7, "days until newly signed snapshot metadata expires", low=1, high=3650, unit="days")
    expires_timestamp: int = _s(1, "days until newly signed timestamp metadata expires", low=1, high=3650, unit="days")
    public_url: str | None = _s(None, "URL deployers reach the catalogue at, for download URLs in exports")
    gpg_key: str | None = _s(None, "GnuPG key id that clearsigns simplestreams exports (GNUPGHOME is honoured)")
    hepix_cert: str | None = _s(None, "PEM certificate that signs HEPiX image lists (S/MIME)")
    hepix_key: str | None = _s(None, "PEM private key of --hepix-cert (mode 0600)")
    #: setting name -> where its value came from (a flag, a variable, file:line:column, "default")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    def store_options(self) -> dict[str, Any]:
        """The settings every store is opened with: ``open_store(location, **cfg.store_options())``."""
        return {
            "timeout": self.timeout,
            "retries": self.retries,
            "min_rate": self.min_rate,
            "concurrency": self.s3_concurrency,
        }

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
        m = f.metadata
        s = Setting(f.name, typ, f.default, m["help"], m["low"], m["high"], m["low_open"], m["unit"])
        bounds = s.bounds()
        out.append(dataclasses.replace(s, help=f"{s.help} ({bounds})") if bounds else s)
    return tuple(out)


SETTINGS: tuple[Setting, ...] = _settings()


def _show(value: Any, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"


def _check_catalogue(value: str, where: str) -> None:
    """Refuse a catalogue location that ``open_store`` could not use: malformed URL, unknown scheme, no host.

    Messages show the location through :func:`safe_url`: it may carry a password.
    """
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 -- parsing the port is what raises ValueError for http://h:99999
    except ValueError as e:
        raise InvalidInputError(f"{where}: catalogue is not a valid URL: {e}") from None
    shown = _show(safe_url(value), 80)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https", "s3"):
        if not parts.hostname:
            raise InvalidInputError(f"{where}: catalogue URL {shown} has no host")
        if any(c.isspace() for c in value):
            raise InvalidInputError(f"{where}: catalogue URL {shown} contains a space (write it as %20)")
    elif scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(f"{where}: catalogue file URL with a host is not supported: {shown}")
    elif len(scheme) > 1:  # one letter would be a Windows drive; a local path
        raise InvalidInputError(
            f"{where}: unsupported catalogue location {shown} "
            f"(use a directory, file:///DIR, http(s)://HOST/PATH or s3://BUCKET/PREFIX)"
        )


def _coerce_text(setting: Setting, value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInputError(f"{where}: {setting.name} must be a string, got {_show(value)}")
    text = str(value)
    if not text:
        raise InvalidInputError(f"{where}: {setting.name} must not be empty")
    if len(text) > TEXT_MAX:
        raise InvalidInputError(f"{where}: {setting.name} is longer than {TEXT_MAX} characters")
    if _CONTROL.search(text):
        shown = "" if setting.name == "catalogue" else f": {_show(text)}"  # a URL may carry a password
        raise InvalidInputError(f"{where}: {setting.name} contains control characters{shown}")
    if setting.name == "catalogue":
        _check_catalogue(text, where)
    return text


def _coerce_number(setting: Setting, value: Any, where: str) -> float | int:
    number: float | int
    if setting.type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                if not isinstance(value, str) or not re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
                    raise ValueError
                number = int(value)  # ValueError past Python's 4300-digit limit
            except ValueError:
                raise InvalidInputError(f"{where}: {setting.name} must be a whole number, got {_show(value)}") from None
    else:
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError
            number = float(value)
        except (ValueError, OverflowError):  # OverflowError: float(10**400)
            raise InvalidInputError(f"{where}: {setting.name} must be a float, got {_show(value)}") from None
        if not math.isfinite(number):
            raise InvalidInputError(f"{where}: {setting.name} must be a finite number, got {_show(value)}")
    low, high = setting.low, setting.high
    if low is not None and (number <= low if setting.low_open else number < low):
        if setting.low_open:
            need = f"must be more than {_amount(low, setting.unit)}"
        elif low == 0:
            need = "must not be negative"
        else:
            need = f"must be at least {_amount(low, setting.unit)}"
        raise InvalidInputError(f"{where}: {setting.name} {need}, got {_show(value)}")
    if high is not None and number > high:
        raise InvalidInputError(
            f"{where}: {setting.name} must be at most {_amount(high, setting.unit)}, got {_show(value)}"
        )
    return number


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    """``value`` (from a flag, a variable or the config file: ``where``) as the setting's type, within its bounds.

    Raises InvalidInputError naming the setting and ``where`` for a value of the wrong type, out of bounds, NaN or
    infinite, text with control characters, or a malformed catalogue URL.
    """
    if value is None:
        return None
    if setting.type is str:
        return _coerce_text(setting, value, where)
    return _coerce_number(setting, value, where)


def config_file_path(env: Mapping[str, str]) -> Path | None:
    """The config file to read: ``$IMAGECTL_CONFIG``, else the first of the user's and the system's that exists.

    Raises InvalidInputError for an IMAGECTL_CONFIG that is empty or has control characters (a NUL cannot name a
    file).
    """
    if "IMAGECTL_CONFIG" in env:
        value = env["IMAGECTL_CONFIG"]
        if not value:  # Path("") is the current directory: say what is wrong instead
            raise InvalidInputError("IMAGECTL_CONFIG is set but empty: name a config file, or unset it")
        if _CONTROL.search(value):
            raise InvalidInputError(f"IMAGECTL_CONFIG contains control characters: {_show(value)}")
        return Path(value)
    for candidate in (Path("~/.config/imagectl/config.yaml").expanduser(), Path("/etc/imagectl/config.yaml")):
        if candidate.exists():  # not is_file(): a directory or FIFO there is refused, not silently skipped
            return candidate
    return None


def _check_owner(path: Path) -> None:
    """Refuse a config file that another user could have written: it chooses our catalogue, keys and root.

    Raises InvalidInputError for a world-writable file, or, when we run as root, one not owned by root.
    Anything else about the path (missing, not a regular file) is left to the read, which says so.
    """
    try:
        st = path.stat()
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    if st.st_mode & stat.S_IWOTH:
        raise InvalidInputError(
            f"config file {path} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing it: run chmod o-w on it"
        )
    if os.geteuid() == 0 and st.st_uid != 0:
        raise InvalidInputError(
            f"config file {path} is owned by uid {st.st_uid}, not root; refusing it when running as root"
        )


def _read_config_file(path: Path) -> dict[str, tuple[Any, str]]:
    """Key -> (value, 'file:line:column') for each top-level key of the YAML config file.

    Raises InvalidInputError (with file:line:column where there is one) for an unsafe, unreadable, oversized or
    non-regular file, YAML outside the plain subset, a top level that is not a mapping, an unknown or repeated
    setting, or a value that is not a single scalar.
    """
    _check_owner(path)
    loc = load_located(path, what="config file", limit=CONFIG_MAX_BYTES, aliases_hint="write each value out")
    if not isinstance(loc.data, dict):
        raise InvalidInputError(f"{loc.pos(())}: config file must be a mapping of setting: value")
    known = {s.name: s for s in SETTINGS}
    out: dict[str, tuple[Any, str]] = {}
    for raw, value in loc.data.items():
        pos = str(loc.pos((raw,), key=True))
        key = raw.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInputError(f"{pos}: unknown setting {_show(raw)}{hint}")
        if key in out:
            raise InvalidInputError(f"{pos}: {key} is set twice (also at {out[key][1]})")
        if isinstance(value, (dict, list)):
            raise InvalidInputError(f"{pos}: {key} must be a single value")
        out[key] = (value, pos)
    return out


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting: flags > ``IMAGECTL_*`` environment > config file > default.

    Raises InvalidInputError (exit 3; with file:line:column for the config file, else the flag or variable) for
    an unsafe or malformed config file, unknown keys, or values of the wrong type or outside their bounds.
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
        elif from_file.get(s.name, (None, ""))[0] is not None:  # `timeout:` with no value: not set here
            value, pos = from_file[s.name]
            values[s.name], sources[s.name] = _coerce(s, value, pos), pos
        else:
            values[s.name], sources[s.name] = s.default, "default"
    return dataclasses.replace(Config(), sources=sources, **values)
