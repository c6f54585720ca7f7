"""YAML loading that remembers where every key and value came from (``file:line:column``).

PyYAML's composer gives nodes with marks; we build plain Python data from them and keep a side table from each
path (a tuple of keys and list indices) to its position, so validation errors can point at the exact spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagectl.errors import InvalidInputError

__all__ = ["Located", "Pos", "load_located"]

PathKey = tuple[str | int, ...]


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


def _mark(file: str, node: yaml.Node) -> Pos:
    return Pos(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, path: PathKey, loc: Located) -> Any:
    loc.values[path] = _mark(loc.file, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise InvalidInputError(f"{_mark(loc.file, key_node)}: mapping keys must be plain words")
            key = str(key_node.value)
            if key in out:
                raise InvalidInputError(f"{_mark(loc.file, key_node)}: duplicate key {key!r}")
            loc.keys[(*path, key)] = _mark(loc.file, key_node)
            out[key] = _build(value_node, (*path, key), loc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), loc) for i, item in enumerate(node.value)]
    # A scalar: let the safe loader resolve its type (int, bool, null, str) exactly as yaml.safe_load would.
    return yaml.safe_load(yaml.serialize(node))


def load_located(path: Path) -> Located:
    """Load one YAML file; raises InvalidInputError with file:line:column for unreadable or invalid YAML."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{file}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{file}: cannot read: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise InvalidInputError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    loc = Located(None, {}, {}, file)
    loc.data = {} if node is None else _build(node, (), loc)
    return loc
