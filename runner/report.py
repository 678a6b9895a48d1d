"""`rethink report NAME`: the summary views of one experiment (storage/summaries.py) as tables
for the terminal, figures (runner/plots.py) as PNG, PDF and/or SVG, and one self-contained HTML
page that also lists the experiment's settings, provenance and runs.

It reads the store, local or remote, only through the SQL views (storage/reader.py) and the
frozen grid file, so the report shows exactly what `rethink query` would, and it writes only
outside the store, to a local folder: a report is a product
of the results, never part of them. Everything is drawn first, then written into a hidden folder
inside `--out` and moved into place, so a folder that cannot take it (/proc, a read-only mount,
a figure's name taken by a folder) fails in one line with nothing half written. The HTML page
(runner/templates/report.html.j2) embeds its images as PNG data URIs and its style inline, so it
opens offline, mailed or copied anywhere, with nothing to fetch (the PDF and SVG files are
linked beside it, for papers).

What the store holds is data (rethink/text.py): the page is rendered by Jinja2 with autoescape,
so an error or grid text holding `<script>` shows as those characters, and the terminal tables
are Rich `Text`, never markup, with control characters shown visibly."""

from __future__ import annotations

import base64
import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import duckdb
from matplotlib.figure import Figure
from rich.table import Table

from rethink.errors import PathError, RethinkError, path_error
from rethink.runner import plots
from rethink.runner.plots import Row, corruption_label, corruption_order, setting_of
from rethink.storage.atomic import write_bytes
from rethink.storage.errors import QueryError
from rethink.storage.reader import Reader
from rethink.storage.summaries import PROBES, VIEWS
from rethink.text import render_html, rich_text, visible

STATES = ("done", "failed", "running", "pending")
TABLE_EPOCHS = 6  # epoch columns in the memorization table: first, last, evenly between
HTML_NAME = "report.html"
TEMPLATE = "report.html.j2"  # in runner/templates, rendered by rethink.text.render_html

# (file name without its extension, view it is drawn from, how, caption, (count column, spread)
# for the caption's note on seeds); a figure carries no title, so its caption says what it shows
FIGURES: tuple[tuple[str, str, Callable[[list[Row]], Figure | None], str, tuple[str, str]], ...] = (
    ("fig1a_learning_curves", "memorization", plots.fig1a_learning_curves,
     "Training loss and train accuracy against SGD steps, one line per corruption (Zhang et al. Fig. 1a).",
     ("seeds", "band")),
    ("fig1b_time_to_fit", "fit_time", plots.fig1b_time_to_fit,
     "Epochs until the run first reaches the fit threshold, against the fraction of random labels (Fig. 1b).",
     ("fitted", "error bars")),
    ("fig1c_test_error", "gaps", plots.fig1c_test_error,
     "Final test error against the fraction of random labels (Fig. 1c).", ("seeds", "error bars")),
    ("probes", "probes", plots.probe_curves,
     "Implicit-regularization probes on the fixed probe batch, against epochs.", ("seeds", "band")),
)
# The runs table of the page: what `rethink query "select ... from runs"` gives, one row per run.
RUN_COLUMNS = ("run_id", "model", "corruption", "level", "regularizer", "seed", "status", "epochs_done",
               "final_train_acc", "final_test_acc", "error")
# Where each run was made, in the `runs` view of newer stores (NULL for runs of older versions):
# the page shows those the view has, so it works on stores from before and after they came.
PROVENANCE = ("rethink_version", "git_commit", "torch_version", "cuda_version", "device")


@dataclass
class ReportResult:
    html: Path  # the self-contained page
    figures: dict[str, list[Path]]  # figure name (FIGURES order) -> its files, one per format
    formats: tuple[str, ...]  # as asked, e.g. ("png", "pdf")
    tables: list[Table]  # the same tables as the page, for the terminal (store text as Rich Text)
    header: str  # one line: the experiment's runs per state (control characters shown visibly)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why (likewise)

    @property
    def pngs(self) -> list[Path]:
        return [p for files in self.figures.values() for p in files if p.suffix == ".png"]


@dataclass
class _Loaded:
    """Everything the report reads from the store's views, in one connection."""

    counts: dict[str, int]  # runs per status
    views: dict[str, list[Row]]  # summary view -> the experiment's rows
    runs: list[Row]  # RUN_COLUMNS of each run
    provenance: list[tuple[str, list[tuple[object, int]]]]  # column -> (value, runs) pairs


@dataclass
class _Grid:
    """A table before it is drawn: Rich for the terminal and HTML for the page share it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'png,pdf' (or a list) -> ('png', 'pdf'), checked before anything is drawn or written."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    asked = tuple(dict.fromkeys(f.strip().lower() for f in items))
    allowed = ", ".join(plots.FORMATS)
    if not asked or "" in asked:
        raise RethinkError(f"--format needs one or more of {allowed}, comma-separated with no empty item (e.g. png,pdf)")
    unknown = [f for f in asked if f not in plots.FORMATS]
    if unknown:
        raise RethinkError(f"unknown --format {', '.join(repr(f) for f in unknown)}; use one or more of {allowed}, "
                           "comma-separated (e.g. --format png,pdf)")
    return asked


def build_report(store_root: str, name: str, out_dir: str, formats: str | Iterable[str] = "png") -> ReportResult:
    """Tables, figures (one file per figure and format) and the HTML page of experiment `name`,
    written into `out_dir`."""
    fmts = parse_formats(formats)
    reader = Reader.open(store_root)
    store = reader.store
    out = _out_dir(reader.folder, out_dir)
    loaded = _load(reader, name, store_root)
    views = loaded.views
    settings = store.experiment_grid(name)
    header = visible(_header(name, loaded.counts))
    notes = [visible(n) for n in _notes(name, loaded.counts, views)]
    grids = [g for g in (_gaps_grid(views["gaps"]), _fit_grid(views["fit_time"]),
                         _memorization_grid(views["memorization"]), _probes_grid(views["probes"])) if g]
    files: dict[str, bytes] = {}  # file name in `out` -> its bytes, all drawn before any is written
    images: list[_Image] = []
    for stem, view, draw, caption, (count, spread) in FIGURES:
        fig = draw(views[view])
        if fig is None:
            continue
        drawn = {fmt: plots.figure_bytes(fig, fmt) for fmt in fmts}
        files.update({f"{stem}.{fmt}": data for fmt, data in drawn.items()})
        png = drawn.get("png") or plots.figure_bytes(fig, "png")  # the page shows PNG, whatever was asked
        note = plots.spread_note(views[view], count, spread)
        images.append(_Image(stem, png, f"{caption} {note}".strip(), [f"{stem}.{f}" for f in fmts if f != "png"]))
    sections = _Sections(settings, loaded.provenance, _runs_grid(loaded.runs))
    files[HTML_NAME] = _html(name, store_root, header, notes, grids, images, sections).encode()
    # an old report's figure would now mislead beside the new ones
    stale = [f"{stem}.{fmt}" for stem, *_ in FIGURES for fmt in plots.FORMATS if f"{stem}.{fmt}" not in files]
    _write(out, out_dir, files, stale)
    written = {stem: [out / f"{stem}.{fmt}" for fmt in fmts] for stem, *_ in FIGURES if f"{stem}.{fmts[0]}" in files}
    return ReportResult(out / HTML_NAME, written, fmts, [_rich(g) for g in grids], header, notes)


def _out_dir(store: Path | None, out_dir: str) -> Path:
    """The report's folder, refused inside a local store (a store holds results, never
    products); a remote store's report goes to a local folder, never inside it."""
    try:
        out = Path(out_dir).expanduser().resolve()
        if store is not None and (out == store or store in out.parents):
            raise RethinkError(f"--out {out_dir} is inside the store {store}; write the report outside it")
        if out.exists() and not out.is_dir():
            raise RethinkError(f"--out {out_dir} is a file; give a folder")
    except OSError as exc:
        raise _cannot(exc, out_dir) from None
    return out


def _cannot(exc: OSError, where: object) -> PathError:
    """The one line of an OSError met writing the report (errors.path_error's words)."""
    message = str(path_error(exc, "write the report to", where))
    return PathError(message.replace("; choose another path", "; choose another --out"))


def _write(out: Path, given: str, files: dict[str, bytes], stale: list[str]) -> None:
    """Put `files` (name -> bytes) into `out` and delete the `stale` figures of an older report.
    Every file is written first into a hidden folder inside `out` (same filesystem), then each is
    renamed into place: a folder that cannot take them all (no space, read-only, /proc) gets none,
    and a folder `out` this made is removed again. A name already taken by a folder is refused
    before anything is written; a stale name that is not a file is left alone."""
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]  # the folders this will create
    try:
        for file in files:
            if (out / file).is_dir():
                raise _cannot(IsADirectoryError(errno.EISDIR, "is a folder"), out / file)
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rethink-report-", dir=out))
        try:
            for file, data in files.items():
                write_bytes(staging / file, data)
            for file in files:
                os.replace(staging / file, out / file)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for file in stale:
            if (out / file).is_file() or (out / file).is_symlink():
                (out / file).unlink()
    except OSError as exc:
        for folder in made:  # innermost first; each only if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise _cannot(exc, given) from None


def _load(reader: Reader, name: str, uri: str) -> _Loaded:
    """Runs per state, every summary view's rows, the runs and their provenance for `name`, in
    one connection (reader.py retries once for files of an older schema)."""

    def load(con: duckdb.DuckDBPyConnection) -> _Loaded:
        known = [r[0] for r in con.execute("SELECT DISTINCT experiment FROM runs ORDER BY 1").fetchall()]
        if name not in known:
            raise RethinkError(f"no experiment '{name}' in store '{uri}' (experiments: {', '.join(known) or 'none yet'})")
        counts = dict(con.execute("SELECT status, count(*) FROM runs WHERE experiment = ? GROUP BY status",
                                  [name]).fetchall())
        views = {view: _rows(con, f"SELECT * FROM {view} WHERE experiment = ?", [name]) for view in VIEWS}
        runs = _rows(con, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE experiment = ?", [name])
        return _Loaded(counts, views, runs, provenance(con, name))

    try:
        return reader.run(load)
    except QueryError as exc:  # the connection's own failure already names the store
        message = str(exc)
        raise RethinkError(message if message.startswith("cannot read store") else
                           f"cannot read store '{uri}': {message}") from None


def provenance(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, list[tuple[object, int]]]]:
    """For each PROVENANCE column the `runs` view has (read at run time: stores and versions
    differ), its distinct values over the runs of `name`, with how many runs have each; most
    common first, NULL (a run from a version that recorded none) last."""
    columns = {d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description}
    sql = ('SELECT "{}" AS value, count(*) AS n FROM runs WHERE experiment = ? GROUP BY 1 '
           "ORDER BY value IS NULL, n DESC, value")
    return [(column, [tuple(v) for v in con.execute(sql.format(column), [name]).fetchall()])
            for column in PROVENANCE if column in columns]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[Row]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def _header(name: str, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    states = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)
    line = f"{name}: {total} runs ({states})"
    if counts.get("failed"):
        line += f"; failed runs are left out of every table and figure (`rethink status {name}` shows why they failed)"
    elif total != counts.get("done", 0):
        line += "; tables and figures count finished runs only"
    return line


def _notes(name: str, counts: dict[str, int], views: dict[str, list[Row]]) -> list[str]:
    notes = []
    if not counts.get("done"):
        notes.append(f"{name} has no finished runs yet: nothing to tabulate or plot")
        return notes
    if not plots.label_points(views["gaps"]):
        notes.append(f"{name} has no `labels` corruption: Fig. 1b (time to fit) and 1c (test error) are skipped")
    if not views["probes"]:
        notes.append(f"no probes were measured in {name} (train.probe_every is 0): no probe figure")
    if views["gaps"] and max(r["seeds"] for r in views["gaps"]) == 1:
        notes.append("one seed per setting: no error bands or standard deviations")
    return notes


# ---- tables ----------------------------------------------------------------------------------

def _key_columns(rows: list[Row]) -> list[str]:
    """Model and regularizer always (Table 1's rows); dataset, width, init_scale where they vary."""
    shown = set(plots.varying(rows)) | {"model", "regularizer"}
    return [p for p in plots.SETTING_PARTS if p in shown]


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (tuple(str(v) for v in setting_of(r)), corruption_order(r)))


def _key_cells(row: Row, keys: list[str]) -> list[str]:
    return [plots.cell(row[k]) for k in keys] + [corruption_label(row["corruption"], row["level"])]


def _fmt(mean: float | None, std: float | None = None, scale: float = 1.0, digits: int = 1) -> str:
    """'97.3 ± 1.2', or the mean alone with one seed; '—' when there is no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def _grid(title: str, keys: list[str], extra: list[str], rows: list[list[str]]) -> _Grid:
    columns = [*keys, "corruption", *extra]
    return _Grid(title, columns, rows, [i > len(keys) for i in range(len(columns))])


def _gaps_grid(rows: list[Row]) -> _Grid | None:
    if not rows:
        return None
    keys = _key_columns(rows)
    body = [_key_cells(r, keys) + [str(r["seeds"]), _fmt(r["epochs_done"], digits=0), _fmt(r["train_acc"], r["train_acc_std"], 100),
                                   _fmt(r["test_acc"], r["test_acc_std"], 100), _fmt(r["gap"], r["gap_std"], 100),
                                   _fmt(r["best_test_acc"], None, 100)] for r in _sorted(rows)]
    return _grid("Final accuracy and generalization gap (Table 1 layout; mean ± std over seeds)", keys,
                 ["seeds", "epochs done", "train acc (%)", "test acc (%)", "gap (points)", "best test acc (%)"], body)


def _fit_grid(rows: list[Row]) -> _Grid | None:
    if not rows:
        return None
    keys = _key_columns(rows)
    thresholds = sorted({100 * (r["fit_threshold"] or 0.99) for r in rows})
    body = [_key_cells(r, keys) + [f"{r['fitted']}/{r['runs']}", _fmt(r["epochs_to_fit"], r["epochs_to_fit_std"]),
                                   _fmt(r["steps_to_fit"], r["steps_to_fit_std"], digits=0),
                                   "—" if r["epochs_ratio"] is None else f"{r['epochs_ratio']:.2f}×"]
            for r in _sorted(rows)]
    at = "/".join(f"{t:g}%" for t in thresholds)
    return _grid(f"Time to fit: first epoch with train accuracy ≥ {at} (mean ± std over the seeds that fit)", keys,
                 ["fitted", "epochs to fit", "steps to fit", "epochs vs none"], body)


def _memorization_grid(rows: list[Row]) -> _Grid | None:
    if not rows:
        return None
    keys = _key_columns(rows)
    epochs = sorted({r["epoch"] for r in rows})
    if len(epochs) > TABLE_EPOCHS:
        epochs = sorted({epochs[round(i * (len(epochs) - 1) / (TABLE_EPOCHS - 1))] for i in range(TABLE_EPOCHS)})
    body = []
    curves = plots.groups(_sorted(rows), lambda r: (*setting_of(r), r["corruption"], r["level"]))
    for curve in curves.values():
        at = {r["epoch"]: r for r in curve}
        last = at[max(at)]
        body.append(_key_cells(curve[0], keys) + [str(max(r["seeds"] for r in curve))]
                    + [_fmt(at[e]["train_acc"], None, 100) if e in at else "—" for e in epochs]
                    + [_fmt(last["train_acc_corrupted"], None, 100)])
    return _grid("Memorization: train accuracy (%) by epoch, mean over seeds; last column: accuracy on the "
                 "corrupted subset at the last epoch (noise memorized)", keys,
                 ["seeds", *(f"epoch {e}" for e in epochs), "corrupted subset (%)"], body)


def _probes_grid(rows: list[Row]) -> _Grid | None:
    measured = [p for p in PROBES if any(r[p] is not None for r in rows)]
    if not measured:
        return None
    keys = _key_columns(rows)
    body = []
    for curve in plots.groups(_sorted(rows), lambda r: (*setting_of(r), r["corruption"], r["level"])).values():
        last = max(curve, key=lambda r: r["epoch"])
        body.append(_key_cells(last, keys) + [str(last["epoch"])]
                    + ["—" if last[p] is None else f"{last[p]:.4g}" for p in measured])
    return _grid("Probes at the last epoch they were measured (mean over seeds)", keys, ["epoch", *measured], body)


def _runs_grid(runs: list[Row]) -> _Grid | None:
    """Every run of the experiment, failed ones with their error: the rows behind every number."""
    if not runs:
        return None
    order = sorted(runs, key=lambda r: (str(r["model"]), str(r["regularizer"]), corruption_order(r),
                                        -1 if r["seed"] is None else r["seed"], r["run_id"]))
    body = [[_run_cell(c, r[c]) for c in RUN_COLUMNS] for r in order]
    numeric = [c in ("level", "seed", "epochs_done", *_ACCURACIES) for c in RUN_COLUMNS]
    return _Grid(f"Runs ({len(runs)}); accuracies as fractions, as in `rethink query`", list(RUN_COLUMNS), body, numeric)


_ACCURACIES = ("final_train_acc", "final_test_acc")


def _run_cell(column: str, value: object) -> str:
    if column in _ACCURACIES:
        return _fmt(value, digits=3)  # type: ignore[arg-type]
    return "" if value is None and column == "error" else plots.cell(value)


def _provenance_grid(recorded: list[tuple[str, list[tuple[object, int]]]]) -> _Grid | None:
    """Where the runs were made: each recorded column's values and how many runs have each."""
    body = [[column, "— (not recorded: made by an older rethink)" if value is None else str(value), str(n)]
            for column, values in recorded for value, n in values]
    if not body:
        return None
    return _Grid("Provenance: where the runs were made (distinct values over the experiment's runs)",
                 ["recorded", "value", "runs"], body, [False, False, True])


def _rich(grid: _Grid) -> Table:
    """The grid for the terminal: every string a Rich Text (a str would be parsed as markup)."""
    table = Table(title=rich_text(grid.title), title_justify="left")
    for column, numeric in zip(grid.columns, grid.numeric):
        table.add_column(rich_text(column), justify="right" if numeric else "left")
    for row in grid.rows:
        table.add_row(*(rich_text(cell) for cell in row))
    return table


# ---- the page --------------------------------------------------------------------------------

@dataclass
class _Image:
    stem: str  # the figure's file name, less its extension
    png: bytes  # embedded in the page
    caption: str
    links: list[str]  # the same figure in the other formats written, beside the page

    @property
    def data(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


@dataclass
class _Sections:
    settings: str  # the frozen grid file (YAML)
    provenance: list[tuple[str, list[tuple[object, int]]]]
    runs: _Grid | None


def _html(name: str, store: str, header: str, notes: list[str], grids: list[_Grid],
          images: list[_Image], sections: _Sections) -> str:
    """The page, from runner/templates/report.html.j2: every value autoescaped (text.render_html)."""
    return render_html(TEMPLATE, name=name, store=store, header=header, notes=notes, grids=grids, images=images,
                       settings=sections.settings.rstrip(), provenance=_provenance_grid(sections.provenance),
                       runs=sections.runs, when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
