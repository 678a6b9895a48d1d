"""The grid file's plumbing: YAML that remembers line numbers, a collector that reports every
bad field on one line with its place, and typed values read from YAML or flags. Private to
runner.grid; kept apart so grid.py reads as the grid's meaning."""

from __future__ import annotations

import math
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from rethink.errors import SpecError

# A grid is a short hand-written file. These bounds keep a hostile or mistaken one (a device, a
# FIFO, "billion laughs" aliases, thousands of nested brackets) from hanging or crashing a command.
MAX_GRID_BYTES = 1 << 20  # 1 MiB read at most
MAX_DEPTH = 50  # nesting of lists and mappings, aliases followed
MAX_NODES = 100_000  # values in the document once every alias is expanded


# ---- reading the file, bounded ---------------------------------------------------------------


def read_grid_text(path: str | Path) -> str:
    """The grid file's text: a regular file of at most MAX_GRID_BYTES, UTF-8, with no NUL byte.
    Opened without blocking and checked before reading, so a FIFO, /dev/zero or a folder is
    refused at once instead of read forever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SpecError(f"grid file {path} not found") from None
    except OSError as exc:
        raise SpecError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpecError(f"grid file {path} is not a regular file (a folder, device or pipe); give a YAML file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_GRID_BYTES + 1)
        except OSError as exc:
            raise SpecError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_GRID_BYTES:
        raise SpecError(f"grid file {path} is larger than {MAX_GRID_BYTES >> 20} MiB, the most rethink reads; "
                        "a grid is a short YAML file")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"grid file {path} holds a NUL byte at offset {nul}: it is not a text file; give a YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"grid file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


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


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH (PyYAML composes
    recursively: thousands of brackets would end in RecursionError)."""

    source = "<grid>"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError(f"{self.source} line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                                "a grid needs a few")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Loader(_BoundedLoader):
    """Builds Map and Seq, which remember their lines."""


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
    return _load(_Loader, text, source, "invalid YAML")


def load_value(text: str, source: str) -> Any:
    """One YAML value as plain dicts, lists and scalars (a `--set` flag), bounded like a file."""
    return _load(_BoundedLoader, text, source, "value is not valid YAML")


def _load(loader_class: type[_BoundedLoader], text: str, source: str, invalid: str) -> Any:
    """Bounded loading: size, NUL, nesting while composing, alias expansion before constructing."""
    if len(text) > MAX_GRID_BYTES:
        raise SpecError(f"{source} is larger than {MAX_GRID_BYTES >> 20} MiB, the most rethink reads")
    if "\0" in text:
        raise SpecError(f"{source} holds a NUL character: it is not YAML text")
    try:
        loader = loader_class(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters before parsing
        raise SpecError(one_line(f"{source}: {invalid}: {exc}")) from None
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1} column {mark.column + 1}" if mark and _Loader is loader_class else source
        problem = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context:  # e.g. "while parsing a flow sequence", and where it began
            started = exc.context_mark
            on = f" started on line {started.line + 1}" if started and started.line != getattr(mark, "line", None) else ""
            problem += f" ({exc.context}{on})"
        raise SpecError(one_line(f"{where}: {invalid}: {problem}")) from None
    except yaml.YAMLError as exc:
        raise SpecError(one_line(f"{source}: {invalid}: {exc}")) from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse aliases that expand past MAX_NODES values or MAX_DEPTH levels ("billion laughs"),
    and an alias inside its own anchor. Each node is measured once (memoized), so the check is
    linear in the file, not in its expansion."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in measured:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise SpecError(f"{source} line {node.start_mark.line + 1}: an alias refers to its own anchor; "
                                "a grid cannot contain itself")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in measured)
            continue
        open_nodes.discard(id(node))
        sizes = [measured[id(child)] for child in children]
        values = 1 + sum(v for v, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if values > MAX_NODES or depth > MAX_DEPTH:
            what = f"more than {MAX_NODES:,} values" if values > MAX_NODES else f"more than {MAX_DEPTH} levels"
            raise SpecError(f"{source} line {node.start_mark.line + 1}: expands to {what} (aliases counted in "
                            "full); write the grid out plainly")
        measured[id(node)] = (values, depth)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


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
        self.items = list(dict.fromkeys(self.items))  # one check failing for several datasets or models
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
    except OverflowError:  # an integer of hundreds of digits
        raise SpecError(f"{name} must be finite, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise SpecError(f"{name} must be finite, got {value!r}")
    return number


def to_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{name} must be a name, got {value!r}")
    return value
