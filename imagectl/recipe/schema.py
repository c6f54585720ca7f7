"""A small declarative schema for recipes, checked against positioned YAML.

Why not JSON Schema: its error messages are about schema keywords ("Additional properties are not allowed"),
while a recipe author needs "file:line:column: unknown key 'pakages' (did you mean 'packages'?)". The schema
below is equivalent in power for our format and renders itself into recipes/README.md's reference table.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagectl.errors import InvalidInputError
from imagectl.recipe.yamlpos import Located, PathKey
from imagectl.text import count

__all__ = ["Bool", "Int", "List", "Map", "RecipeError", "Spec", "Str", "Table", "validate"]


class RecipeError(InvalidInputError):
    """Recipe problems, each starting with ``file:line:column``; the message is the first of them."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _dotted(path: PathKey) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top level)"


@dataclass
class Ctx:
    loc: Located
    partial: bool  # a base recipe: check keys and types, not that required keys are present
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Spec:
    doc: str = field(default="", kw_only=True)

    def expected(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        raise NotImplementedError

    def fail(self, ctx: Ctx, path: PathKey, what: str) -> None:
        ctx.errors.append(f"{ctx.loc.pos(path)}: {_dotted(path)}: {what}")


@dataclass(frozen=True)
class Str(Spec):
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    numbers_ok: bool = False  # accept 6 for "6" (releases): YAML authors rarely quote them
    rule: str = ""

    def expected(self) -> str:
        if self.enum:
            return "one of " + ", ".join(self.enum)
        return self.rule or "a string"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if self.numbers_ok and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return self.fail(ctx, path, f"expected {self.expected()}, got {_kind(value)}")
        if self.enum is not None and value not in self.enum:
            close = difflib.get_close_matches(value, self.enum, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return self.fail(ctx, path, f"expected {self.expected()}, got {value!r}{hint}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return self.fail(ctx, path, f"expected {self.expected()}, got {value!r}")
        return None


@dataclass(frozen=True)
class Int(Spec):
    min: int = 0
    max: int = 2**31

    def expected(self) -> str:
        return f"a whole number from {self.min} to {self.max}"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not self.min <= value <= self.max:
            self.fail(ctx, path, f"expected {self.expected()}, got {value!r}")


@dataclass(frozen=True)
class Bool(Spec):
    def expected(self) -> str:
        return "true or false"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if not isinstance(value, bool):
            self.fail(ctx, path, f"expected {self.expected()}, got {value!r}")


@dataclass(frozen=True)
class List(Spec):
    item: Spec = field(default_factory=Str)
    min_items: int = 0
    unique: bool = False

    def expected(self) -> str:
        return f"a list of {self.item.expected()}"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if not isinstance(value, list):
            return self.fail(ctx, path, f"expected {self.expected()}, got {_kind(value)}")
        if len(value) < self.min_items:
            return self.fail(ctx, path, f"expected at least {count(self.min_items, 'item')}")
        seen: set[Any] = set()  # a set, not a list: 10,000 distinct items must not cost 10**8 comparisons
        for i, item in enumerate(value):
            if self.unique:
                key = _identity(item)
                if key in seen:
                    self.fail(ctx, (*path, i), f"{item!r} is listed twice")
                seen.add(key)
            self.item.check(item, (*path, i), ctx)
        return None


def _identity(item: Any) -> Any:
    """A hashable stand-in for a YAML value, equal for equal values (lists and mappings included)."""
    try:
        hash(item)
    except TypeError:
        return ("\0json", json.dumps(item, sort_keys=True, default=repr))
    return item


@dataclass(frozen=True)
class Map(Spec):
    """A closed mapping: unknown keys are errors (with a suggestion when one is close)."""

    fields: Mapping[str, Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def expected(self) -> str:
        return "a mapping"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            return self.fail(ctx, path, f"expected a mapping with keys {', '.join(self.fields)}, got {_kind(value)}")
        for key, item in value.items():
            spec = self.fields.get(key)
            if spec is None:
                close = difflib.get_close_matches(key, list(self.fields), n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (expected one of {', '.join(self.fields)})"
                ctx.errors.append(f"{ctx.loc.pos((*path, key), key=True)}: {_dotted((*path, key))}: unknown key{hint}")
                continue
            spec.check(item, (*path, key), ctx)
        for key in () if ctx.partial else self.required:
            if key not in value:
                ctx.errors.append(
                    f"{ctx.loc.pos(path)}: {_dotted(path)}: missing required key {key!r} "
                    f"({self.fields[key].expected()})"
                )
        return None


@dataclass(frozen=True)
class Table(Spec):
    """An open mapping of names to values (e.g. hostname -> address)."""

    key: Str = field(default_factory=Str)
    value: Spec = field(default_factory=Str)

    def expected(self) -> str:
        return f"a mapping of {self.key.expected()} to {self.value.expected()}"

    def check(self, value: Any, path: PathKey, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            return self.fail(ctx, path, f"expected {self.expected()}, got {_kind(value)}")
        for k, v in value.items():
            self.key.check(k, (*path, k), ctx)
            self.value.check(v, (*path, k), ctx)
        return None


def validate(spec: Spec, loc: Located, *, partial: bool = False) -> None:
    """Raise RecipeError listing every problem (first line first; each with file:line:column)."""
    ctx = Ctx(loc, partial)
    spec.check(loc.data, (), ctx)
    if ctx.errors:
        raise RecipeError(ctx.errors)
