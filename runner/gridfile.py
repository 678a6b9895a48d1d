"""The grid file's plumbing: YAML that remembers line numbers, a collector that reports every
bad field on one line with its place, and typed values read from YAML or flags. Private to
runner.grid; kept apart so grid.py reads as the grid's meaning."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import yaml

from rethink.errors import SpecError


# ---- YAML with line numbers ------------------------------------------------------------------


class Map(dict):
    """A mapping from the file that remembers each key's line (None: the value came from a flag)."""

    def __init__(self, *args: Any, line: int | None = None, lines: dict | None = None) -> None:
        super().__init__(*args)
        self.line, self.lines = line, dict(lines or {})


class Seq(list):
    """A sequence from the file that remembers each item's line."""

    def __init__(self, items: list, line: int, lines: list[int]) -> None:
        super().__init__(items)
        self.line, self.lines = line, lines


class _Loader(yaml.SafeLoader):
    source = "<grid>"


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    out = Map(line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise SpecError(f"{loader.source} line {line}: keys are names, got {key!r}")
        if key in out:
            raise SpecError(f"{loader.source} line {line}: duplicate key '{key}' (first on line {out.lines[key]})")
        out[key], out.lines[key] = loader.construct_object(value_node, deep=True), line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return Seq(items, node.start_mark.line + 1, [child.start_mark.line + 1 for child in node.value])


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml(text: str, source: str) -> Any:
    """YAML -> Map/Seq/scalars; a syntax error becomes one line: file, line, column, problem."""
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1} column {mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context:  # e.g. "while parsing a flow sequence", and where it began
            started = exc.context_mark
            on = f" started on line {started.line + 1}" if started and started.line != getattr(mark, "line", None) else ""
            problem += f" ({exc.context}{on})"
        raise SpecError(one_line(f"{where}: invalid YAML: {problem}")) from None
    except yaml.YAMLError as exc:
        raise SpecError(one_line(f"{source}: invalid YAML: {exc}")) from None
    finally:
        loader.dispose()


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- problems, each with its place ---------------------------------------------------------


_LINE = re.compile(r" line (\d+):")


class Problems:
    """Collects every bad field, each prefixed with where it is ('grid.yaml line 7' or 'override')."""

    def __init__(self, source: str) -> None:
        self.source, self.items = source, []

    def where(self, container: Any, key: Any = None) -> str:
        lines = getattr(container, "lines", None)
        if lines is None:
            return "override"
        if key is None:
            return self.source
        if isinstance(lines, dict) and key in lines:
            return "override" if lines[key] is None else f"{self.source} line {lines[key]}"
        if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
            return f"{self.source} line {lines[key]}"
        return f"{self.source} line {container.line}" if container.line else self.source

    def add(self, container: Any, key: Any, message: str) -> None:
        self.items.append(one_line(f"{self.where(container, key)}: {message}"))

    @contextmanager
    def guard(self, container: Any, key: Any, label: str = "") -> Iterator[None]:
        """Record a SpecError raised inside (the block is abandoned) and carry on with the rest."""
        try:
            yield
        except Skip:
            pass
        except SpecError as exc:
            self.add(container, key, f"{label}: {exc}" if label else str(exc))

    def each(self, container: Any, key: Any, label: str, convert: Callable[[Any], Any]) -> list | None:
        """`container[key]` as one value or a non-empty list of distinct values, each converted; a
        bad item is reported on its own line. None when anything was wrong."""
        value = container[key]
        if value is None or value == []:
            self.add(container, key, f"{label}: {key} is empty; give one value or a list of values")
            return None
        places = [(value, i) for i in range(len(value))] if isinstance(value, list) else [(container, key)]
        out: list = []
        for c, k in places:
            done = len(out)
            with self.guard(c, k, label):
                item = convert(c[k])
                if item in out:
                    raise SpecError(f"duplicate {key} {c[k]}")
                out.append(item)
            if len(out) == done:
                return None
        return out

    def raise_if_any(self) -> None:
        """One problem is one sentence; several are listed on the same line, in file order."""
        if len(self.items) == 1:
            raise SpecError(self.items[0])
        if self.items:
            ordered = sorted(self.items, key=lambda item: int(m.group(1)) if (m := _LINE.search(item)) else 0)
            raise SpecError(f"{len(self.items)} problems: " + " | ".join(ordered))


class Skip(SpecError):
    """An entry whose problem is already recorded with a more precise line."""


# ---- typed values ----------------------------------------------------------------------------


def coerce(name: str, value: Any, type_text: str) -> Any:
    """A YAML or flag value -> the field's type; strings from flags are parsed, floats are not ints."""
    kinds = [t.strip() for t in type_text.split("|")]
    if value is None and "None" in kinds:
        return None
    base = kinds[0]
    if base == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return text in ("true", "yes", "on", "1")
        raise SpecError(f"{name} must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        if "str" in kinds and isinstance(value, str):
            return value  # int | str: the dataclass checks the text (e.g. a cadence "60s")
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if base == "float":
        return to_float(name, value)
    return to_text(name, value)


def to_float(name: str, value: Any) -> float:
    """YAML reads 5e-4 as a string (no dot), so numeric strings count as numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise SpecError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SpecError(f"{name} must be finite, got {value!r}")
    return number


def to_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{name} must be a name, got {value!r}")
    return value
