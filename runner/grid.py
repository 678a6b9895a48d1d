"""Grid file -> runs. A researcher's YAML grid (every axis one value or a list) plus command-line
overrides are merged once, validated with every bad field reported on one line that points at
the file's line, and expanded into frozen `RunSpec`s whose ids are content hashes.

Grid keys: name, dataset, data, model, width, init_scale, corruption, regularizer, seed, train,
resources (see DESIGN.md). `width`/`init_scale` are top-level axes that apply to every model; a
model entry written as a mapping `{name, width, init_scale}` replaces them for that model only."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from rethink.errors import SpecError
from rethink.runner.gridfile import (
    Map, Problems, Skip, coerce, load_value, load_yaml, read_grid_text, to_float, to_text,
)
from rethink.storage.layout import check_name
from rethink.storage.limits import MAX_GRID_RUNS
from rethink.tasks.spec import (
    CORRUPTIONS, IMAGE_KINDS, LABEL_KINDS, CorruptionSpec, DataSpec, RegularizerSpec, RunSpec, TrainSpec,
    parse_corruption, parse_regularizer, regularizer_from_mapping,
)

TOP_KEYS = ("name", "dataset", "data", "model", "width", "init_scale", "corruption", "regularizer",
            "seed", "train", "resources")
MODEL_KEYS = ("name", "width", "init_scale")
CORRUPTION_KEYS = ("kind", "level")
# What a grid means when it leaves an axis out.
DEFAULTS: dict[str, list[Any]] = {"dataset": ["cifar10"], "model": ["mlp1x512"], "width": [1.0],
                                  "init_scale": [1.0], "corruption": ["none"], "regularizer": ["none"],
                                  "seed": [0]}


@dataclass(frozen=True)
class Resources:
    """What Ray reserves for each task; fractional GPUs let several tasks share one GPU."""

    gpus: float = 0.0  # per task; Ray accepts fractions below 1, whole numbers above
    cpus: float = 1.0  # per task

    def __post_init__(self) -> None:
        for name in ("gpus", "cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise SpecError(f"resources.{name} must be a number >= 0, got {value!r}")
            if value > 1 and value != int(value):
                raise SpecError(f"resources.{name} above 1 must be a whole number (Ray's rule), got {value!r}")


@dataclass(frozen=True)
class Grid:
    name: str  # experiment name, [a-z0-9_-]+
    runs: tuple[RunSpec, ...]  # expanded in a stable order, duplicates (same run_id) removed
    resources: Resources
    text: str  # the resolved grid as YAML (overrides applied): what the store keeps
    duplicates: int = 0  # combinations of the axes that resolved to a run already in the grid


def load_grid(path: str | Path, overrides: dict[str, object] | None = None) -> Grid:
    """Read and resolve a grid file; a missing or unreadable file is one SpecError line too."""
    return parse_grid(read_grid_text(path), overrides, source=str(path))


def parse_grid(text: str, overrides: dict[str, object] | None = None, source: str = "<grid>") -> Grid:
    """Parse grid YAML, apply overrides (they beat the file), validate everything, expand."""
    raw = load_yaml(text, source)
    if raw is None:
        raw = Map()
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a grid is a mapping with keys {', '.join(TOP_KEYS)}; "
                        f"got {'a list' if isinstance(raw, list) else repr(raw)}")
    problems = Problems(source)
    for key in raw:
        if key not in TOP_KEYS:
            problems.add(raw, key, f"unknown key '{key}'; valid: {', '.join(TOP_KEYS)}")
    raw = _apply_overrides(raw, overrides or {}, problems)
    count = count_runs(raw)
    if count > MAX_GRID_RUNS:
        raise SpecError(f"{source}: this grid makes {count:,} runs, past rethink's limit of {MAX_GRID_RUNS:,} "
                        "a grid; split it into several grids")
    return _resolve(raw, problems, overrides or {})


def count_runs(raw: dict) -> int:
    """How many runs the grid's axes make, counted from the YAML before anything is expanded or
    checked (a 27-million-run product would take minutes and gigabytes to expand): the product of
    the axes, where a model entry counts its own width x init_scale and a regularizer mapping the
    product of its lists. Duplicates, refused later, count too."""
    def size(value: Any) -> int:  # an empty axis is reported later; counted as one it hides no product
        return max(len(value), 1) if isinstance(value, list) else 1

    def axis(key: str) -> int:
        return size(raw[key]) if key in raw else len(DEFAULTS[key])

    widths, scales = axis("width"), axis("init_scale")
    models = corruptions = regularizers = 0
    for value in raw["model"] if isinstance(raw.get("model"), list) else [raw.get("model")]:
        own = value if isinstance(value, dict) else {}
        models += (size(own["width"]) if "width" in own else widths) * \
            (size(own["init_scale"]) if "init_scale" in own else scales)
    for value in raw["corruption"] if isinstance(raw.get("corruption"), list) else [raw.get("corruption")]:
        corruptions += size(value.get("level")) if isinstance(value, dict) else 1
    for value in raw["regularizer"] if isinstance(raw.get("regularizer"), list) else [raw.get("regularizer")]:
        regularizers += math.prod(size(v) for v in value.values()) if isinstance(value, dict) else 1
    return axis("dataset") * max(models, 1) * max(corruptions, 1) * max(regularizers, 1) * axis("seed")


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`--set KEY=VALUE` flags -> overrides; VALUE is YAML, so `seed=[0,1]` is a list and
    `corruption=[none, labels:0.5]` a corruption axis. Keys are checked by parse_grid."""
    out: dict[str, object] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise SpecError(f"--set takes KEY=VALUE (e.g. train.epochs=5 or seed=[0,1]), got {item!r}")
        if key in out:
            raise SpecError(f"--set {key} is given twice")
        out[key] = load_value(text, f"--set {key}")
    return out


def run_row(experiment: str, run: RunSpec) -> dict:
    """One row of storage.schema.EXPERIMENT_RUNS: the run's config flattened for SQL."""
    d, c, r, t = run.data, run.corruption, run.regularizer, run.train
    return {
        "experiment": experiment, "run_id": run.run_id, "dataset": d.dataset, "train_size": d.train_size,
        "test_size": d.test_size, "crop": d.crop, "whiten": d.whiten, "model": run.model, "width": run.width,
        "init_scale": run.init_scale, "corruption": c.kind, "level": c.level, "regularizer": r.label,
        "weight_decay": r.weight_decay, "dropout": r.dropout, "augment": r.augment,
        "early_stopping": r.early_stopping, "label_smoothing": r.label_smoothing, "batch_norm": r.batch_norm,
        "seed": run.seed, "epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, "momentum": t.momentum,
        "lr_decay": t.lr_decay, "optimizer": t.optimizer, "fit_threshold": t.fit_threshold,
        "config": json.dumps(run.to_dict(), sort_keys=True),
    }


# ---- overrides -------------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {"data": DataSpec, "train": TrainSpec, "resources": Resources}


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(_SECTIONS[section]) if (section, f.name) != ("data", "dataset")}


def _apply_overrides(raw: dict, overrides: dict[str, object], problems: Problems) -> Map:
    """Flags beat the file. A top-level key replaces the file's value (axes in grid form); a dotted
    key (`train.epochs`), or a mapping given for data/train/resources, replaces single settings and
    keeps the file's others. None or an empty list means the flag was not given."""
    out = Map(raw, line=getattr(raw, "line", None), lines=getattr(raw, "lines", {}))
    flat: list[tuple[str, object]] = []
    for key, value in overrides.items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            flat.append((key, list(value) if isinstance(value, tuple) else value))
    for key, value in flat:
        section, dot, field = key.partition(".")
        known = key in TOP_KEYS if not dot else section in _SECTIONS and field in _section_fields(section)
        if known and (value is None or value == []):
            continue  # not given; an unknown key is refused whatever its value (a typo is never silent)
        if not dot and key in TOP_KEYS:
            out[key], out.lines[key] = value, None
        elif dot and section in _SECTIONS and field in _section_fields(section):
            base = out.get(section)
            merged = Map(base if isinstance(base, dict) else {}, line=getattr(base, "line", None),
                         lines=getattr(base, "lines", {}))
            merged[field], merged.lines[field] = value, None
            out[section] = merged
            out.lines.setdefault(section, None)  # the file's line for the section, if it had one
        elif dot and section in _SECTIONS:
            problems.items.append(f"unknown override '{key}'; valid {section} keys: {', '.join(_section_fields(section))}")
        else:
            problems.items.append(f"unknown override '{key}'; valid: {', '.join(TOP_KEYS)}, or data.KEY, "
                                  "train.KEY, resources.KEY (e.g. train.epochs)")
    return out


# ---- resolving -------------------------------------------------------------------------------


def _resolve(raw: Map, problems: Problems, overrides: dict[str, object]) -> Grid:
    name = raw.get("name")
    if "name" not in raw:
        problems.add(raw, None, "name is required: the experiment's name, [a-z0-9_-]+")
    else:
        with problems.guard(raw, "name"):
            check_name(name)
    data = _section(raw, "data", problems)
    train = _section(raw, "train", problems)
    resources = _section(raw, "resources", problems)
    datasets = _axis(raw, "dataset", problems, lambda v: DataSpec(dataset=to_text("dataset", v)).dataset)
    widths = _axis(raw, "width", problems, lambda v: RunSpec(width=to_float("width", v)).width)
    scales = _axis(raw, "init_scale", problems, lambda v: RunSpec(init_scale=to_float("init_scale", v)).init_scale)
    seeds = _axis(raw, "seed", problems, lambda v: RunSpec(seed=coerce("seed", v, "int")).seed)
    models, model_text = _models(raw, problems, widths, scales)
    corruptions, corruption_text = _corruptions(raw, problems)
    regularizers = _regularizers(raw, problems)
    data_specs = _data_specs(raw, problems, data, datasets, models)
    problems.raise_if_any()

    train_spec = TrainSpec(**train)
    runs: dict[str, RunSpec] = {}
    combinations = 0
    for d, (m, w, s), c, r, seed in itertools.product(data_specs, models, corruptions, regularizers, seeds):
        run = RunSpec(data=d, model=m, width=w, init_scale=s, corruption=c, regularizer=r, train=train_spec, seed=seed)
        runs.setdefault(run.run_id, run)
        combinations += 1
    resolved = {
        "name": name, "dataset": datasets,
        "data": {k: v for k, v in dataclasses.asdict(data_specs[0]).items() if k != "dataset"},
        "model": model_text, "width": widths, "init_scale": scales, "corruption": corruption_text,
        "regularizer": [_regularizer_text(r) for r in regularizers], "seed": seeds,
        "train": dataclasses.asdict(train_spec), "resources": dataclasses.asdict(Resources(**resources)),
    }
    header = f"# grid '{name}' as resolved by rethink from {problems.source}"
    given = {k: v for k, v in overrides.items() if v is not None and v != [] and v != ()}
    if given:
        header += f"\n# overrides: {json.dumps(given, sort_keys=True, default=str)}"
    text = header + "\n" + yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)
    return Grid(name=name, runs=tuple(runs.values()), resources=Resources(**resources), text=text,
                duplicates=combinations - len(runs))


def _data_specs(raw: Map, problems: Problems, data: dict, datasets: list, models: list) -> list[DataSpec]:
    """The data section with each dataset, and what involves the dataset or the model too (a
    synthetic set's size, a subset past the split, an image too small for a model), checked here
    so each is a problem with its line rather than an error part way through expanding."""
    out = []
    place = "data" if "data" in raw else None
    for dataset in datasets:
        with problems.guard(raw, place):
            spec = DataSpec(dataset=dataset, **data)
            out.append(spec)
            for model in dict.fromkeys(m for m, _, _ in models):
                with problems.guard(raw, place):
                    RunSpec(data=spec, model=model)
    return out


def _section(raw: Map, key: str, problems: Problems) -> dict[str, Any]:
    """A mapping of single settings (data, train, resources), each typed and checked on its own line."""
    value = raw.get(key)
    fields = _section_fields(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(raw, key, f"{key} must be a mapping of {', '.join(fields)}; got {value!r}")
        return {}
    cls, kwargs = _SECTIONS[key], {}
    for k, v in value.items():
        if k not in fields:
            problems.add(value, k, f"unknown {key} key '{k}'; valid: {', '.join(fields)}")
            continue
        with problems.guard(value, k):
            if isinstance(v, list):
                raise SpecError(f"{key}.{k} takes one value, not a list (only axes take lists)")
            v = coerce(f"{key}.{k}", v, _type_text(fields[k]))
            cls(**{k: v})  # the dataclass's own checks, one setting at a time, so the error has a line
            kwargs[k] = v
    with problems.guard(raw, key):  # checks that involve two settings
        cls(**kwargs)
    return kwargs


def _entries(raw: Map, key: str, problems: Problems) -> list[tuple[Any, Any, str, Any]]:
    """An axis as (container, key in it, label, value) per entry: one value or a non-empty list."""
    if key not in raw:
        return [(raw, key, key, v) for v in DEFAULTS[key]]
    value = raw[key]
    if value is None or value == []:
        problems.add(raw, key, f"{key} is empty; give one value or a list of values")
        return []
    if isinstance(value, list):
        return [(value, i, f"{key}[{i}]", v) for i, v in enumerate(value)]
    return [(raw, key, key, value)]


def _axis(raw: Map, key: str, problems: Problems, convert: Callable[[Any], Any]) -> list:
    """Resolve each entry of a plain axis (dataset, width, init_scale, seed)."""
    out, seen = [], {}
    for container, k, label, value in _entries(raw, key, problems):
        with problems.guard(container, k, label if label != key else ""):
            item = convert(value)
            _claim(seen, item, label, key)
            out.append(item)
    return out


def _claim(seen: dict, item: Any, label: str, what: str) -> None:
    """An entry seen twice in an axis is an error, not a silent doubling of the grid."""
    if item in seen:
        raise SpecError(f"duplicate {what} {_show(item)} (already in {seen[item]})")
    seen[item] = label


def _models(raw: Map, problems: Problems, widths: list, scales: list) -> tuple[list[tuple], list]:
    """Model entries: a name (takes the top-level width and init_scale axes) or a mapping
    {name, width, init_scale} whose width/init_scale (one value or a list) are its own."""
    out, text, seen = [], [], {}
    for container, k, label, value in _entries(raw, "model", problems):
        prefix = "" if label == "model" else label
        with problems.guard(container, k, prefix):
            if isinstance(value, dict):
                entry, own = value, {}
                for key in entry:
                    if key not in MODEL_KEYS:
                        problems.add(entry, key, f"{label}: unknown key '{key}'; valid: {', '.join(MODEL_KEYS)}")
                        raise Skip
                if "name" not in entry:
                    raise SpecError("a model mapping needs a name, e.g. {name: mlp1x512, width: 2}")
                name = RunSpec(model=to_text("model", entry["name"])).model
                for key in ("width", "init_scale"):
                    if key in entry:
                        own[key] = problems.each(entry, key, label, lambda v, key=key: _checked_scale(key, v))
                        if own[key] is None:
                            raise Skip
                text.append({"name": name, **own})
                ws, ss = own.get("width", widths), own.get("init_scale", scales)
            elif isinstance(value, str):
                name, ws, ss = RunSpec(model=value).model, widths, scales
                text.append(name)
            else:
                raise SpecError(f"a model is a name or a mapping {{name, width, init_scale}}, got {value!r}")
            for combo in itertools.product([name], ws, ss):
                _claim(seen, combo, label, "model")
                out.append(combo)
    return out, text


def _corruptions(raw: Map, problems: Problems) -> tuple[list[CorruptionSpec], list]:
    """Corruption entries: a kind ('none', 'gaussian', or 'labels:0.5' as on the command line) or
    a mapping {kind, level} where level is one value or a list."""
    out, text, seen = [], [], {}
    for container, k, label, value in _entries(raw, "corruption", problems):
        prefix = "" if label == "corruption" else label
        specs: list[CorruptionSpec] = []
        with problems.guard(container, k, prefix):
            if isinstance(value, str):
                if ":" not in value and value.strip() in LABEL_KINDS:
                    kind = value.strip()
                    raise SpecError(f"corruption '{kind}' needs a level, e.g. {{kind: {kind}, level: 0.5}}")
                specs = [parse_corruption(value)]
            elif isinstance(value, dict):
                for key in value:
                    if key not in CORRUPTION_KEYS:
                        problems.add(value, key, f"{label}: unknown key '{key}'; valid: {', '.join(CORRUPTION_KEYS)}")
                        raise Skip
                if "kind" not in value:
                    raise SpecError("a corruption mapping needs a kind, e.g. {kind: labels, level: 0.5}")
                kind = to_text("corruption kind", value["kind"])
                if kind not in CORRUPTIONS:
                    raise SpecError(f"unknown corruption '{kind}'; valid: {', '.join(CORRUPTIONS)}")
                if kind in LABEL_KINDS and "level" not in value:
                    raise SpecError(f"corruption '{kind}' needs a level, e.g. {{kind: {kind}, level: 0.5}}")
                if "level" not in value:
                    specs = [CorruptionSpec(kind, 1.0 if kind in IMAGE_KINDS else 0.0)]
                else:
                    specs = problems.each(value, "level", label, lambda v: CorruptionSpec(kind, to_float(f"level of {kind}", v)))
                    if specs is None:
                        raise Skip
            else:
                raise SpecError(f"a corruption is a kind or a mapping {{kind, level}}, got {value!r}")
            for spec in specs:
                _claim(seen, spec, label, "corruption")
            out.extend(specs)
            text.append(specs[0].kind if len(specs) == 1 and specs[0].kind not in LABEL_KINDS
                        else {"kind": specs[0].kind, "level": [s.level for s in specs]})
    return out, text


def _regularizers(raw: Map, problems: Problems) -> list[RegularizerSpec]:
    """Regularizer entries: 'none', 'weight_decay=5e-4,augment' as on the command line, or a mapping
    of settings in which a list makes that setting an axis within the entry."""
    out, seen = [], {}
    for container, k, label, value in _entries(raw, "regularizer", problems):
        with problems.guard(container, k, "" if label == "regularizer" else label):
            if isinstance(value, str):
                specs = [parse_regularizer(value)]
            elif isinstance(value, dict):
                axes = {key: problems.each(value, key, label, lambda v, key=key: _setting(key, v)) for key in value}
                if None in axes.values():
                    raise Skip
                specs = [regularizer_from_mapping(dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
            else:
                raise SpecError(f"a regularizer is none or a mapping of settings, e.g. {{weight_decay: 0.0005}}; got {value!r}")
            for spec in specs:
                _claim(seen, spec, label, "regularizer")
            out.extend(specs)
    return out


def _regularizer_text(spec: RegularizerSpec) -> Any:
    """A spec as a grid entry: its settings that differ from the defaults, or 'none'."""
    changed = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if getattr(spec, f.name) != f.default}
    return changed or "none"


def _type_text(field: dataclasses.Field) -> str:
    """A field's annotation as text ('int | None'), whether or not its module postpones annotations."""
    t = field.type
    return t if isinstance(t, str) else getattr(t, "__name__", None) or str(t)


def _setting(key: str, value: Any) -> Any:
    """One regularizer setting, typed and checked alone so a bad one is reported on its own line."""
    return getattr(regularizer_from_mapping({key: value}), key)


def _checked_scale(key: str, value: Any) -> float:
    return getattr(RunSpec(**{key: to_float(key, value)}), key)


def _show(item: Any) -> str:
    if isinstance(item, (RegularizerSpec, CorruptionSpec)):
        return item.label
    if isinstance(item, tuple):  # a model: (name, width, init_scale)
        return f"{item[0]} (width {item[1]:g}, init_scale {item[2]:g})"
    return f"{item:g}" if isinstance(item, float) else str(item)
