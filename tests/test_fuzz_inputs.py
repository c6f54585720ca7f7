"""Property-based fuzzing of the two loaders a user (or an attacker) feeds files to: recipes and the config.

Every generated input must either load or raise an ``ImagectlError`` whose message is one non-empty line with exit
code 3 (invalid input) and names where the problem is (the file, the variable or the flag). Anything else is a bug
and fails the test with its traceback. Each input is bounded (``tests/fuzzbound.py``): at most 5 s of CPU time of
this process and 60 s of wall time (generous: CI machines are loaded and shared; the loaders take milliseconds)
and at most 50 MiB of Python heap at peak, measured with ``tracemalloc`` around that one input (an RSS limit would
be process-wide). What loads must be usable: a recipe's data survives ``json.dumps(allow_nan=False)`` and its
digest; a config's numbers are finite and within their declared bounds.

Derandomised (the "imagectl-fuzz" profile below: same inputs every run, no example database), 10,000 recipe
inputs (3,000 + 3,000 + 2,000 + 2,000) and 10,500 config inputs (3,000 + 3,000 + 3,000 + 1,500) in all, each
figure as ``--hypothesis-show-statistics`` counts it; about three minutes on a loaded 2-core machine. Run alone
with ``-m fuzz``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagectl.config import SETTINGS, Config, load_config
from imagectl.errors import ImagectlError
from imagectl.recipe.model import RECIPE_SCHEMA, Recipe, load_recipe
from tests.fuzzbound import bounded as within_bounds

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

settings.register_profile(
    "imagectl-fuzz",
    derandomize=True,
    deadline=None,  # our own per-input bound is below; Hypothesis' deadline would flake on a loaded machine
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("imagectl-fuzz")

MEMORY_LIMIT = 50 * 2**20  # bytes of Python heap per input (tracemalloc peak)

T = TypeVar("T")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what a text setting must never hold
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: generating inputs is most of the cost


def bounded(load: Callable[[], T], *, names: tuple[str, ...]) -> T | ImagectlError:
    """Run one input's ``load`` under the time and memory bounds; return its result or its ImagectlError.

    The error must be one line, exit code 3, and mention one of ``names`` (the file, variable or flag it came
    from). Any other exception propagates: Hypothesis shows it, shrunk, with its traceback.
    """
    result = within_bounds(load, memory_limit=MEMORY_LIMIT)
    if isinstance(result, ImagectlError):
        message = str(result)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert result.exit_code == 3, (type(result).__name__, message)
        assert any(n in message for n in names), (names, message)
    return result


def put(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` in place: write, then cut to length. Not ``write_bytes``: ext4 flushes a
    file truncated to zero on close (auto_da_alloc), which cost more than loading it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


# -- what hostile YAML is made of ------------------------------------------------------------------------------------

RECIPE_KEYS = list(RECIPE_SCHEMA.fields)
NESTED_KEYS = ["family", "release", "mode", "interface", "address", "gateway", "dns", "hostname", "hosts", "path"]
NESTED_KEYS += ["content", "source", "url", "gpgcheck", "gpgkey", "ssh_keys", "sudo", "groups", "marker", "timeout"]
WORDS = ["debian", "slc", "12", "6", "3", "x86_64", "i386", "ia64", "hvm", "xen-pv", "qcow2", "raw", "tar", "2G"]
WORDS += ["dhcp", "static", "eth0", "10.0.0.5/24", "http://m/x", "file:///m", "base.yaml", "motd", "/etc/motd", "0644"]
SCALARS = [".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e308", "1.0e+308", "-1.0e+400", "0b_", "0x_", "0x1F", "0o17"]
SCALARS += ["017", "1:20", "190:20:30", "1_000", "2026-01-01", "2026-01-01 10:00:00", "2001-12-14t21:59:43.10-05:00"]
SCALARS += ["~", "null", "Null", "yes", "No", "on", "OFF", "y", "n", "true", "=", "<<", "-", "0", "-1", "10" * 40]
YAML_TOKENS = [": ", "\n", "\n  ", "\n    ", "- ", "\n- ", "[", "]", "{", "}", ", ", "? ", "'", '"', "#", "|\n", ">-\n"]
YAML_TOKENS += ["&a ", "&b ", "*a", "*b", "!!python/object:os.system ", "!!python/name:os.system", "!t ", "! "]
YAML_TOKENS += ["!!binary ", "!!set ", "!!omap ", "!!str ", "!!int ", "!!float ", "!!timestamp ", "<<: ", "=: "]
YAML_TOKENS += ["---\n", "...\n", "%YAML 1.1\n", "%TAG !e! tag:e,2000:\n", "!e!x ", '"\\0"', '"\\x00"', '"\\ud800"']
YAML_TOKENS += ['"\\U0010FFFF"', "\t", "\r", "\r\n", "\ufeff", "\u2028", "\x85", "\x00", "\x1b", "\x7f", "\ud800"]
CHARS = st.characters(codec="utf-8")  # every code point but surrogates; YAML_TOKENS add a lone one


def _yaml_text(keys: list[str]) -> st.SearchStrategy[str]:
    """Text made of YAML syntax, the loader's keys and words, awkward scalars and random characters."""
    tokens = YAML_TOKENS + [k + ": " for k in keys] + WORDS + SCALARS
    # One sampled_from for the known pieces (cheap to draw), random characters one piece in four or so.
    return st.lists(st.sampled_from(tokens) | st.text(CHARS, min_size=1, max_size=4), max_size=40).map("".join)


def _json_like_strategy() -> st.SearchStrategy[Any]:
    """Values of every type YAML can carry: JSON's, plus NaN/inf floats, huge ints, bytes, dates and sets."""
    odd = [None, True, False, 0, -1, 2**63, 10**40, math.nan, math.inf, -0.0, 1e308, b"\x00\xff", dt.date(2026, 1, 1)]
    odd += [
        dt.datetime(2026, 1, 1, 10, 0),
        {1, 2},
        "",
        " ",
        "\x00",
        "\x1b[0m",
        "\u2028",
        "é",
        "a" * 300,
        *WORDS,
        *SCALARS,
    ]
    arbitrary = st.one_of(
        st.integers(), st.floats(), st.text(CHARS, max_size=12), st.binary(max_size=6), st.dates(), st.none()
    )
    leaf = st.sampled_from(odd) | arbitrary  # half the leaves from the list: ten times cheaper to draw
    keys = st.sampled_from(NESTED_KEYS) | st.text(max_size=4)
    # Two levels, spelled out: st.recursive costs several times more per draw; deep nesting has its own test.
    one = st.one_of(st.lists(leaf, max_size=4), st.lists(st.tuples(keys, leaf), max_size=4).map(dict))
    return st.one_of(leaf, one, st.lists(one, max_size=3), st.lists(st.tuples(keys, one), max_size=3).map(dict))


JSON_LIKE = _json_like_strategy()


def _good_values() -> dict[str, st.SearchStrategy[Any]]:
    """Values the schema accepts (some of the time), per key: so generation reaches the deeper checks."""
    return {
        "name": st.sampled_from(["demo", "slc6-worker", "a"]),
        "os": st.sampled_from([{"family": "debian", "release": 12}, {"family": "slc", "release": "6"}]),
        "architectures": st.lists(st.sampled_from(["x86_64", "i386", "ia64"]), min_size=1, max_size=3),
        "hypervisors": st.lists(st.sampled_from(["hvm", "xen-pv"]), min_size=1, max_size=2),
        "formats": st.lists(st.sampled_from(["qcow2", "raw", "vmdk", "vhd", "tar"]), min_size=1, max_size=2),
        "extends": st.sampled_from(["base.yaml", "fuzz.yaml", "missing.yaml", "../base.yaml", "motd"]),
        "abstract": st.booleans(),
        "version": st.sampled_from(["6.10", "2026-01-01", "1", "x y"]),
        "files": st.lists(
            st.fixed_dictionaries(
                {"path": st.sampled_from(["/etc/motd", "relative"])},
                optional={"content": st.just("hi\n"), "source": st.sampled_from(["motd", "nope", "."])},
            ),
            max_size=2,
        ),
        "network": st.fixed_dictionaries(
            {"mode": st.sampled_from(["dhcp", "static"])}, optional={"address": st.just("10.0.0.5/24")}
        ),
        "boot_test": st.fixed_dictionaries({}, optional={"timeout": st.integers(0, 5000), "marker": st.just("x")}),
        "packages": st.lists(st.sampled_from(["openssh-server", "-ntp", "yum", "bad name"]), max_size=3),
        "users": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["ops", "Root"])}), max_size=2),
        "disk_size": st.sampled_from(["2G", "800M", "0G", "2 G"]),
    }


_HOSTILE_LINES = [
    "x: &a [1, 2]\ny: *a\n",
    "description: !!python/object/apply:os.system [true]\n",
    "description: !!binary aGk=\n",
    "packages: !!set {a, b}\n",
    "packages: !!omap [a: 1]\n",
    "description: !local x\n",
    "<<: {name: merged}\n",
    "=: value\n",
    "description: =\n",
    '"\\0": x\n',
]


# Strategies are built once, here: building them inside a draw costs more than the loaders under test.
_TYPOS = st.sampled_from(["pakages", "Name", "os.family", "", "extends "])
_STYLE = st.sampled_from([False, True, None])  # block, flow, or yaml's mix


def _render_recipe(
    good: dict[str, Any], wrong: dict[str, Any], style: bool | None, width: int, extra: str, front: bool
) -> str:
    doc = {**good, **wrong}
    text = yaml.dump(doc, Dumper=DUMPER, default_flow_style=style, allow_unicode=True, sort_keys=False, width=width)
    return extra + text if front else text + extra


#: A recipe that knows the schema: right values for some keys, wrong values (of any type) or typos for a few,
#: dumped in a random style, with sometimes a hostile line (alias, tag, merge, value key, duplicate) appended or
#: spliced in front. (Good values are cheap to draw; arbitrary ones are what costs, so there are at most three.)
RECIPE_DOCUMENT = st.builds(
    _render_recipe,
    st.fixed_dictionaries({}, optional=_good_values()),
    st.lists(st.tuples(st.sampled_from(RECIPE_KEYS) | _TYPOS, JSON_LIKE), max_size=2).map(dict),
    _STYLE,
    st.sampled_from([20, 80, 10**6]),
    st.just("") | st.sampled_from([*_HOSTILE_LINES, "name: dup\n", "os: {<<: {family: slc}}\n"]),
    st.booleans(),
)


def _laughs(levels: int, width: int) -> str:
    lines = ['l0: &l0 "lol"'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


#: Billion-laughs alias fans, deep nesting in flow and block style, tags, many small values. Depths go a little
#: past the limit (32) and lists stay short: the bounds themselves are tested exactly in test_yaml_hostile.py.
_STRUCTURAL_PIECE = st.one_of(
    st.builds(_laughs, st.integers(1, 12), st.integers(1, 12)),
    st.builds(
        lambda d, c: "description: " + "[" * d + "x" + "]" * min(c, d) + "\n", st.integers(1, 40), st.integers(0, 40)
    ),
    st.integers(1, 40).map(lambda d: "".join("  " * i + "- \n" for i in range(d)) + "  " * d + "x\n"),
    st.integers(1, 40).map(lambda d: "".join("  " * i + f"k{i}:\n" for i in range(d)) + "  " * d + "v\n"),
    st.builds(
        lambda tag, n: f"description: {tag} x\n" * n,
        st.sampled_from(["!!python/object:os.system", "!t", "!!str", "!!map", "!!seq", "!"]),
        st.integers(1, 3),
    ),
    st.integers(1, 100).map(lambda n: "packages: [" + ", ".join(f"p{i}" for i in range(n)) + "]\n"),
    st.just("x: &k a\n*k : b\n"),
)
#: One piece, or two or three of them in one file (duplicate keys, an alias fan after deep nesting...): the single
#: pieces are a finite space of 1,983 files, too few for the 2,000 inputs asked of the test below.
STRUCTURAL_BOMB = _STRUCTURAL_PIECE | st.lists(_STRUCTURAL_PIECE, min_size=2, max_size=3).map("".join)


BASE_RECIPE = "abstract: true\nos: {family: debian, release: 12}\narchitectures: [x86_64]\n"


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a parent recipe (base.yaml) and a source file (motd) a fuzzed recipe may refer to."""
    d = tmp_path_factory.mktemp("fuzz-recipes")
    (d / "base.yaml").write_text(BASE_RECIPE)
    (d / "motd").write_text("hello\n")
    return d


def check_recipe(recipe_dir: Path, data: bytes) -> None:
    """Load ``data`` as a recipe and take its digest, as `imagectl recipe validate` does; what loads must be
    JSON-able without NaN."""
    path = recipe_dir / "fuzz.yaml"
    put(path, data)
    result = bounded(lambda: load_recipe(path), names=(str(recipe_dir),))
    if isinstance(result, Recipe):
        json.dumps(result.data, allow_nan=False)
        digest = bounded(result.digest, names=(str(recipe_dir),))
        assert isinstance(digest, ImagectlError) or digest.startswith("sha256:")


@settings(FUZZ, max_examples=3000)
@given(text=_yaml_text(RECIPE_KEYS + NESTED_KEYS))
def test_recipe_loader_on_yaml_like_text(recipe_dir: Path, text: str) -> None:
    check_recipe(recipe_dir, text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=3000)
@given(text=RECIPE_DOCUMENT)
def test_recipe_loader_on_schema_aware_documents(recipe_dir: Path, text: str) -> None:
    check_recipe(recipe_dir, text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=2000)
@given(data=st.binary(max_size=400) | st.binary(max_size=60).map(lambda b: BASE_RECIPE.encode() + b))
def test_recipe_loader_on_random_bytes(recipe_dir: Path, data: bytes) -> None:
    check_recipe(recipe_dir, data)


@settings(FUZZ, max_examples=2000)
@given(text=STRUCTURAL_BOMB)
def test_recipe_loader_on_aliases_tags_and_nesting(recipe_dir: Path, text: str) -> None:
    check_recipe(recipe_dir, text.encode())


# -- the config loader -----------------------------------------------------------------------------------------------

SETTING_KEYS = [s.name for s in SETTINGS] + [s.name.replace("_", "-") for s in SETTINGS if "_" in s.name]
NUMBER_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "0", "-0", "0.0", "-1", "1e308", "1e400", "1" + "0" * 30]
NUMBER_TEXT += ["9" * 5000, " 5 ", "5_000", "0x10", "1.5", "\u0663", "3600", "3600.0001", "20", "21", "3650", "3651"]
URL_TEXT = ["http://[::1", "http://[::1]:99999/c", "https:///x", "http://h/a b", "ftp://h/c", "s3://", "s3://b/p"]
URL_TEXT += ["file://host/x", "file:///x", "http://u:p@h/c", "C:/x", "/tmp/cat", "http://h:0/", "http://h:x/"]
SPECIAL_TEXT = NUMBER_TEXT + URL_TEXT + ["", "~", "~nobody/x", "/dev/null", "a\x00b", "a\nb", "\x1b[31m", "é"]
ARGV_TEXT = [*SPECIAL_TEXT, "/k\udcffeys"]  # argv and environ hold undecodable bytes as lone surrogates


SETTING_VALUE = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(CHARS, max_size=10),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),
    st.booleans(),
    st.none(),
)


def _render_config(doc: dict[str, Any], odd: tuple[str, Any] | None, style: bool | None, extra: str) -> str:
    if odd is not None:
        doc = {**doc, odd[0]: odd[1]}
    return yaml.dump(doc, Dumper=DUMPER, default_flow_style=style, allow_unicode=True) + extra


#: A config file that knows the settings (and their misspellings), with values of every type and size.
CONFIG_DOCUMENT = st.builds(
    _render_config,
    st.dictionaries(
        st.sampled_from([*SETTING_KEYS, "catalog", "timeOut", "", "IMAGECTL_TIMEOUT"]), SETTING_VALUE, max_size=6
    ),
    st.none() | st.tuples(st.sampled_from(SETTING_KEYS), JSON_LIKE),  # one value of any type: a list, a mapping...
    _STYLE,
    st.just("") | st.sampled_from([*_HOSTILE_LINES, "timeout: 1\n", "cache-dir: /x\n", "timeout: !!float 1\n"]),
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz-config")
    (d / "empty.yaml").write_text("")
    return d


def check_config(config_dir: Path, data: bytes | None, env: dict[str, str], flags: dict[str, Any]) -> None:
    """Load the config from ``data`` (or an empty file), ``env`` and ``flags``; check what loads is in bounds."""
    path = config_dir / ("fuzz.yaml" if data is not None else "empty.yaml")
    if data is not None:
        put(path, data)
    env = {"IMAGECTL_CONFIG": str(path), **env}
    names = (str(path), str(Path(env["IMAGECTL_CONFIG"])), *env, *(s.flag for s in SETTINGS))
    result = bounded(lambda: load_config(flags, env), names=names)
    if isinstance(result, Config):
        for s in SETTINGS:
            value = getattr(result, s.name)
            if s.type is str:
                assert value is None or (isinstance(value, str) and not CONTROL.search(value)), (s.name, value)
            else:
                assert isinstance(value, s.type) and not isinstance(value, bool), (s.name, value)
                assert s.low is not None and s.high is not None and math.isfinite(value)
                assert (s.low < value if s.low_open else s.low <= value) and value <= s.high, (s.name, value)
        now = dt.datetime.now(dt.UTC)
        assert all(now + dt.timedelta(days=d) for d in result.expiry_days().values())  # no OverflowError
        json.dumps({s.name: getattr(result, s.name) for s in SETTINGS}, allow_nan=False)


@settings(FUZZ, max_examples=3000)
@given(text=_yaml_text(SETTING_KEYS))
def test_config_loader_on_yaml_like_text(config_dir: Path, text: str) -> None:
    check_config(config_dir, text.encode("utf-8", "surrogatepass"), {}, {})


@settings(FUZZ, max_examples=3000)
@given(text=CONFIG_DOCUMENT)
def test_config_loader_on_setting_aware_documents(config_dir: Path, text: str) -> None:
    check_config(config_dir, text.encode("utf-8", "surrogatepass"), {}, {})


# Drawing from a list is ten times cheaper than generating an int or a text: most values come from lists of the
# awkward ones, the rest are arbitrary. A few entries each (lists of pairs: no uniqueness retries as in dictionaries).
_TEXT = st.sampled_from(ARGV_TEXT) | st.text(CHARS, max_size=12)
_CONFIG_PATHS = ["", "/", "/dev/zero", "/dev/null", "/proc/self/status", "/nonexistent/config.yaml", "a\x00b"]
_ENV = st.lists(
    st.tuples(st.sampled_from([s.env for s in SETTINGS]), _TEXT)
    | st.tuples(st.just("IMAGECTL_CONFIG"), st.sampled_from(_CONFIG_PATHS)),
    max_size=4,
).map(dict)
ODD_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e308, 3600.0, 3600.000001, 1e-9, -1.0]
ODD_INTS = [0, -1, 1, 20, 21, 3650, 3651, 10**19, 10**30, -(10**40), 2**63]
_FLAG_VALUE = {
    float: st.sampled_from(ODD_FLOATS) | st.floats(),
    int: st.sampled_from(ODD_INTS) | st.integers(),
    str: _TEXT,
}
# What argparse hands over: each flag's value already converted by the setting's type (float, int or str).
_FLAGS = st.lists(st.one_of([st.tuples(st.just(s.name), _FLAG_VALUE[s.type]) for s in SETTINGS]), max_size=4).map(dict)


@settings(FUZZ, max_examples=3000)
@given(env=_ENV, flags=_FLAGS, text=st.none() | CONFIG_DOCUMENT)
def test_config_loader_on_environment_and_flags(
    config_dir: Path, env: dict[str, str], flags: dict[str, Any], text: str | None
) -> None:
    check_config(config_dir, None if text is None else text.encode("utf-8", "surrogatepass"), env, flags)


@settings(FUZZ, max_examples=1500)
@given(data=st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: b"timeout: 5\n" + b))
def test_config_loader_on_random_bytes(config_dir: Path, data: bytes) -> None:
    check_config(config_dir, data, {}, {})


def test_fuzz_profile_is_derandomised() -> None:
    """The CI guarantee the numbers above rely on: same inputs every run, no deadline flakes, no local database."""
    assert FUZZ.derandomize and FUZZ.deadline is None and FUZZ.database is None
