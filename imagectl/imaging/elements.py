"""diskimage-builder elements: where a recipe's elements are found, and whether they all exist.

DIB looks elements up on ``ELEMENTS_PATH`` and then among its own; a name it cannot find stops the build at
start-up with exit 1 ("Element 'slc-worker' not found"). ``imagectl recipe validate`` and ``imagectl build``
check the same thing first, naming the recipe line that asks for the element and the closest names there are.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from imagectl.recipe.model import Recipe
from imagectl.resources import elements_dir

__all__ = ["check_elements", "dib_elements_dir", "elements_paths", "find_element"]


def dib_elements_dir() -> Path:
    """diskimage-builder's own elements (``debian-minimal``, ``vm``, …)."""
    import diskimage_builder

    return Path(diskimage_builder.__file__).parent / "elements"


def elements_paths(recipe: Recipe) -> list[Path]:
    """Our elements for this recipe (DIB's ``ELEMENTS_PATH``): an ``elements/`` directory beside or above the recipe,
    then the ones imagectl ships."""
    found: list[Path] = []
    for parent in recipe.path.parents:
        if (parent / "elements").is_dir():
            found.append((parent / "elements").resolve())
            break
    ours = elements_dir().resolve()
    if ours not in found:
        found.append(ours)
    return found


def find_element(name: str, search: list[Path]) -> Path | None:
    """The directory of element ``name`` on ``search`` (first match, as DIB resolves it), or None."""
    return next((p / name for p in search if (p / name).is_dir()), None)


def _lines(path: Path) -> list[str]:
    """The names listed in an element's ``element-deps`` or ``element-provides`` (comments and blanks dropped)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [d.strip() for d in lines if d.strip() and not d.strip().startswith("#")]


def _deps(where: Path) -> list[str]:
    return _lines(where / "element-deps") if (where / "element-deps").is_file() else []


def check_elements(recipe: Recipe) -> list[str]:
    """Every element the recipe names, and everything those need through ``element-deps``, must exist on the
    recipe's element path or among DIB's (a dependency may also be a name an element declares in
    ``element-provides``, as ``block-device-mbr`` provides ``block-device``). Returns one ``file:line:column``
    problem per missing name, with the closest names that do exist; empty when all are there."""
    search = [*elements_paths(recipe), dib_elements_dir()]
    known = sorted({e.name for p in search if p.is_dir() for e in p.iterdir() if e.is_dir()})
    provided = {
        name
        for p in search
        if p.is_dir()
        for e in p.iterdir()
        if (e / "element-provides").is_file()
        for name in _lines(e / "element-provides")
    }
    problems = []
    for i, name in enumerate(recipe.data.get("elements", [])):
        where = find_element(name, search)
        at = f"{recipe.pos(('elements', i))}: elements[{i}]"
        if where is None:
            close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            problems.append(f"{at}: no element {name!r} in {', '.join(map(str, search))}{hint}")
            continue
        todo, seen = _deps(where), {name}
        while todo:
            dep = todo.pop(0)
            if dep in seen:
                continue
            seen.add(dep)
            dep_dir = find_element(dep, search)
            if dep_dir is None and dep in provided:
                continue
            if dep_dir is None:
                problems.append(f"{at}: element {name!r} needs {dep!r} (element-deps), which is nowhere on the path")
            else:
                todo += _deps(dep_dir)
    return problems
