"""YAML loading that remembers where every key and value came from (``file:line:column``).

PyYAML's composer gives nodes with marks; we build plain Python data from them and keep a side table from each
path (a tuple of keys and list indices) to its position, so validation errors can point at the exact spot.

Recipes and the config file are written by people but may come from anyone, so only the plain subset of YAML is
accepted: no anchors or aliases (nine levels of aliases expand a 1 KB file to a billion values), no explicit
tags (``!!python/object``, ``!!binary``, ``!!set``: values JSON cannot hold), no ``<<`` merge keys or ``=`` value
keys, no duplicate keys, bounded nesting, size and count of values. Each refusal is an InvalidInputError
(exit 3) that starts with ``file:line:column``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagectl.errors import InvalidInputError
from imagectl.fsio import read_regular

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_VALUES", "Located", "Pos", "load_located", "parse_located"]

PathKey = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # a recipe or config file larger than 1 MiB is a mistake (or an attack), not a recipe
MAX_DEPTH = 32  # nesting levels of lists and mappings; the deepest recipe key (network.hosts.NAME) is 3
MAX_VALUES = 10_000  # keys, scalars, lists and mappings in one file: bounds time and memory (each node keeps marks)
MAX_NUMBER = 64  # characters in a plain scalar read as a number: YAML 1.1's 1:2:3 base-60 ints cost O(n^2)

_T = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class Pos:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class Located:
    """Data loaded from one YAML file, with the position of every value and every mapping key."""

    data: Any
    values: dict[PathKey, Pos]
    keys: dict[PathKey, Pos]  # position of the *key* of a mapping entry (for "unknown key" errors)
    file: str

    def pos(self, path: PathKey, *, key: bool = False) -> Pos:
        """Best position for ``path``: exact if known, else the nearest enclosing value."""
        table = self.keys if key else self.values
        while path:
            if path in table:
                return table[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), Pos(self.file, 1, 1))


def _at(file: str, mark: Any) -> str:
    return f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{file}:1:1"


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, refusing anchors, aliases and tags before they exist, and bounding depth and count.

    Checked per event while composing, so a hostile file stops at its first offending token: nothing is expanded.
    """

    def __init__(self, text: str, file: str, aliases_hint: str) -> None:
        super().__init__(text)
        self._file = file
        self._aliases_hint = aliases_hint
        self._depth = 0
        self._count = 0

    def _refuse(self, event: yaml.Event, what: str) -> InvalidInputError:
        return InvalidInputError(f"{_at(self._file, event.start_mark)}: {what}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise self._refuse(event, f"YAML anchors and aliases are not allowed ({self._aliases_hint})")
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = "!!" + tag[len(_T) :] if tag.startswith(_T) else tag
            raise self._refuse(event, f"YAML tags are not allowed (found {_short(shown)}); quote the value for text")
        self._count += 1
        if self._count > MAX_VALUES:
            raise self._refuse(event, f"more than {MAX_VALUES} keys and values in one file")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(event, f"nested more than {MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None
        return node


def _short(text: str, limit: int = 40) -> str:
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 1] + "…"


_CONSTRUCT = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.ScalarNode, file: str) -> Any:
    """The value of a scalar, typed as ``yaml.safe_load`` would, except that a YAML 1.1 date or time stays the
    text it was written as (JSON has no dates: ``version: 2026-01-01`` is a version string, not a ``date``).

    Raises InvalidInputError for the YAML 1.1 merge (``<<``) and value (``=``) keys, overlong numbers and NUL
    characters (a path with one raises ValueError deep in ``os``).
    """
    tag = node.tag
    where = _at(file, node.start_mark)
    if "\0" in node.value:  # only a "\0" escape can make one; no path, name or text wants it
        raise InvalidInputError(f"{where}: a NUL character (\\0) is not allowed")
    if tag in (_T + "str", _T + "timestamp"):
        return str(node.value)
    if tag == _T + "merge":
        raise InvalidInputError(f"{where}: '<<' (a YAML merge key) is not allowed; quote it for the text")
    if tag == _T + "value":
        raise InvalidInputError(f"{where}: '=' (the YAML value key) is not allowed; quote it for the text")
    if tag in (_T + "int", _T + "float") and len(node.value) > MAX_NUMBER:
        raise InvalidInputError(f"{where}: a number longer than {MAX_NUMBER} characters; quote it for text")
    construct = {
        _T + "null": _CONSTRUCT.construct_yaml_null,
        _T + "bool": _CONSTRUCT.construct_yaml_bool,
        _T + "int": _CONSTRUCT.construct_yaml_int,
        _T + "float": _CONSTRUCT.construct_yaml_float,
    }.get(tag)
    try:
        if construct is None:
            raise ValueError
        return construct(node)
    except ValueError:  # e.g. 0b_ matches YAML 1.1's int pattern but has no digits
        raise InvalidInputError(f"{where}: not a valid YAML value: {_short(node.value)}; quote it for text") from None


def _build(node: yaml.Node, path: PathKey, loc: Located) -> Any:
    loc.values[path] = Pos(loc.file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            where = _at(loc.file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise InvalidInputError(f"{where}: mapping keys must be plain words")
            _scalar(key_node, loc.file)  # refuses << and =; the key itself is its text
            key = str(key_node.value)
            if key in out:
                raise InvalidInputError(f"{where}: duplicate key {_short(key)}")
            loc.keys[(*path, key)] = Pos(loc.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, (*path, key), loc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), loc) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    return _scalar(node, loc.file)


def _decode(data: bytes, file: str) -> str:
    """``data`` as UTF-8; raises InvalidInputError naming the line and column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[line_start : e.start].decode("utf-8", "replace")) + 1
        raise InvalidInputError(
            f"{file}:{line}:{column}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def parse_located(data: bytes, file: str, *, aliases_hint: str = "use extends:") -> Located:
    """Parse the bytes of one YAML file named ``file`` (for positions) into a :class:`Located`.

    Raises InvalidInputError, starting ``file:line:column``, for text that is not UTF-8, invalid YAML, more than
    one document, anchors or aliases (the message ends with ``(aliases_hint)``), explicit tags, ``<<`` or ``=``
    keys, duplicate keys, non-scalar keys, nesting deeper than MAX_DEPTH, or more than MAX_VALUES keys and values.
    """
    text = _decode(data, file)
    loader: _Loader | None = None
    try:
        loader = _Loader(text, file, aliases_hint)  # the reader checks every character here
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise InvalidInputError(
            f"{_at(file, e.problem_mark)}: invalid YAML: {e.problem or e.context or 'cannot parse'}"
        ) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, other control characters)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - text.rfind("\n", 0, e.position)
        raise InvalidInputError(
            f"{file}:{line}:{column}: invalid YAML: control character U+{e.character:04X} is not allowed"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    loc = Located(None, {}, {}, file)
    loc.data = {} if node is None else _build(node, (), loc)
    return loc


class _Missing(InvalidInputError):
    """The file does not exist: said as "no such recipe file", as before read_regular."""


def load_located(
    path: Path, *, what: str = "recipe file", limit: int = MAX_BYTES, aliases_hint: str = "use extends:"
) -> Located:
    """Load one YAML file (``what``: for messages) of at most ``limit`` bytes; see :func:`parse_located`.

    Raises InvalidInputError (exit 3) for a missing file ("no such recipe file"), one that is not a regular file
    (a FIFO or device cannot hang or flood us), is larger than ``limit`` or cannot be read, and for every
    problem :func:`parse_located` refuses, with ``file:line:column``.
    """
    file = str(path)
    try:
        data = read_regular(path, limit, what=what, error=InvalidInputError, missing=_Missing)
    except _Missing:
        raise InvalidInputError(f"{file}: no such {what}") from None
    return parse_located(data, file, aliases_hint=aliases_hint)
