"""What a store holds is data: a hostile error, model name and grid text planted in a real store
(trained in-process by the real worker) never act as Rich markup, terminal control, HTML or
mathtext in what rethink prints or writes (rethink/text.py is the one root), and a report folder
that cannot be written is one line with nothing half written."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rethink.cli import app
from rethink.runner import plots
from rethink.runner.dryrun import run_table
from rethink.runner.grid import parse_grid, run_row
from rethink.runner.progress import Progress
from rethink.runner.report import build_report
from rethink.runner.worker import run_pack
from rethink.storage import query
from rethink.storage.store import Store
from rethink.storage.views import connect
from rethink.text import json_text, one_line, render_html, rich_text, visible

# Rich markup, terminal control (window title, clear screen), a bidi override, HTML, mathtext.
ERROR = "<img src=x onerror=alert(1)> [/red] [i]x[/i] \x1b]0;t\x07\x1b[2J \u202eevil <script>alert(1)</script>"
MODEL = "m$\\frac{$ [/red][i]y[/i] \x1b[2J<script>alert(2)</script>"  # two `$`: mathtext, unless escaped
GRID = """\
name: hostile
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
corruption: [none, {kind: labels, level: 1.0}]
seed: [0, 1]
train: {epochs: 2, batch_size: 16, lr: 0.05, probe_every: 0}
resources: {cpus: 1, gpus: 0}
"""
RAW = ("\x1b", "\x07", "\u202e")  # what must never reach a terminal as is


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four runs trained for real; the frozen grid carries a <script>, the run list names the
    seed-0 runs' model MODEL (so the figures have a hostile setting label), and one run failed
    with ERROR."""
    root = tmp_path_factory.mktemp("hostile-store")
    grid = parse_grid(GRID)
    rows = [run_row(grid.name, r) | ({"model": MODEL} if r.seed == 0 else {}) for r in grid.runs]
    s = Store.open(root, create=True)
    s.save_experiment(grid.name, grid.text + "# <script>alert(3)</script> \x1b]0;t\x07\n", rows)
    results = run_pack(str(root), grid.name, [r.to_dict() for r in grid.runs], "unused", token="t")
    assert {r.outcome for r in results} == {"done"}
    failed = next(r for r in grid.runs if r.seed == 1 and r.corruption.kind == "labels")
    s.write_status(failed.run_id, status="failed", error=ERROR)
    return root


def test_visible_one_line_rich_text_and_json_text() -> None:
    assert visible("plain text, é, 漢字 ok") == "plain text, é, 漢字 ok"
    assert visible("a\x1b]0;t\x07b\rc\u202ed\x9b\ud800") == "a\\x1b]0;t\\x07b\\x0dc\\u202ed\\x9b\\ud800"
    assert visible("a\nb\tc", keep="\n") == "a\nb\\x09c"
    assert one_line("boom\n  at x\r\n\x1b[2J") == "boom at x \\x1b[2J"
    text = rich_text("[/red] [i]x[/i] \x1b[2J")
    assert text.plain == "[/red] [i]x[/i] \\x1b[2J" and not text.spans  # never parsed as markup
    dumped = json_text({"e": ERROR, "c1": "\x9b\u2028"}, indent=2)
    assert not any(c in dumped for c in (*RAW, "\x9b", "\u2028")) and json.loads(dumped) == {"e": ERROR, "c1": "\x9b\u2028"}


def test_query_prints_store_text_as_text(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "select error, model from runs where error is not null"
    table = CliRunner().invoke(app, ["query", sql, "--store", str(store)])
    assert table.exit_code == 0, table.output
    assert not any(c in table.stdout for c in RAW)
    assert "[/red] [i]x[/i] \\x1b]0;t\\x07\\x1b[2J \\u202eevil <script>" in table.stdout
    as_json = CliRunner().invoke(app, ["query", sql, "--store", str(store), "--format", "json"])
    assert not any(c in as_json.stdout for c in RAW)
    assert json.loads(as_json.stdout) == [{"error": ERROR, "model": "mlp1x512"}]  # the same data, escaped
    piped = CliRunner().invoke(app, ["query", sql, "--store", str(store), "--format", "csv"])
    assert ERROR in piped.stdout  # CSV to a file or pipe is data for programs: exact bytes
    monkeypatch.setattr(query, "stdout_is_terminal", lambda: True)  # as query.py decides it
    shown = CliRunner().invoke(app, ["query", sql, "--store", str(store), "--format", "csv"])
    assert not any(c in shown.stdout for c in RAW) and visible(ERROR) in shown.stdout


def recorded(*renderables: object) -> str:
    console = Console(width=300, record=True, file=io.StringIO(), force_terminal=True)
    for r in renderables:
        console.print(r)
    return console.export_text()


def test_dry_run_and_progress_show_names_and_errors_as_text(capsys: pytest.CaptureFixture) -> None:
    grid = parse_grid(GRID)
    runs = tuple(copy.copy(r) for r in grid.runs)
    for run in runs:  # past RunSpec's own checks: the printers must not rely on them
        object.__setattr__(run, "model", MODEL)
    grid = dataclasses.replace(grid, runs=runs)
    shown = recorded(run_table(grid))
    assert "[/red][i]y[/i] \\x1b[2J<script>" in shown and "\x1b[2J" not in shown
    run = grid.runs[0]
    progress = Progress("hostile", total=1, epochs=2, quiet=False)
    progress.say(ERROR)
    progress.running = {run.run_id: {"status": "running", "epochs_done": 1, "phase": ERROR}}
    progress._show_runs({run.run_id: run})
    columns = [col for col in progress.bar.columns if hasattr(col, "text_format")]
    # each line of the bar as drawn: a markup parse would raise on [/red] or eat [i]
    lines = [" ".join(col.render(task).plain for col in columns) for task in progress.bar.tasks]
    assert not any(c in line for line in lines for c in RAW)
    assert "[/red] [i]x[/i] \\x1b]0;t" in lines[0] and MODEL[:8] in lines[2] and "[/red] [i]x[/i]" in lines[2]
    quiet = Progress("hostile", total=1, epochs=2, quiet=True)
    quiet.finished(run, ok=False, error=ERROR)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not any(c in err for c in RAW) and "failed: <img src=x" in err


class Elements(HTMLParser):
    """Every element and its attributes, and the page's text, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_page_tables_and_figures_show_store_text_as_text(store: Path, tmp_path: Path) -> None:
    result = build_report(str(store), "hostile", str(tmp_path / "out"), "png,svg")
    page = Elements()
    page.feed(result.html.read_text(encoding="utf-8"))
    tags = [t for t, _ in page.tags]
    assert "script" not in tags  # neither the error's, the model's nor the grid's
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in page.tags if t == "img")
    assert tags.count("img") == len(result.pngs) == 3 and not any("onerror" in a for _, a in page.tags)
    text = "".join(page.text)
    assert visible(ERROR) in text and "<script>alert(3)</script> \\x1b]0;t\\x07" in text  # shown, escaped
    assert not any(c in text for c in RAW)
    tables = recorded(*result.tables)
    assert "[/red][i]y[/i]" in tables and "\x1b[2J" not in tables  # Rich never parsed the model name
    con = connect(str(store))
    cursor = con.execute("SELECT * FROM gaps WHERE experiment = 'hostile'")
    rows = [dict(zip([d[0] for d in cursor.description], r)) for r in cursor.fetchall()]
    fig = plots.fig1c_test_error(rows)
    fig.canvas.draw()  # mathtext would fail on `$\frac{$`
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.plain(MODEL) in legend and not any(t._preprocess_math(t.get_text())[1] for t in fig.legends[0].get_texts())


def test_html_environment_escapes_every_value() -> None:
    page = render_html("report.html.j2", name="<b>n</b>", store="s", header="h", notes=["<i>"], grids=[],
                       images=[], settings="a\n<script>", provenance=None, runs=None, when="now")
    assert "<b>n</b>" not in page and "&lt;b&gt;n&lt;/b&gt;" in page and "<pre>a\n&lt;script&gt;</pre>" in page


@pytest.mark.parametrize("where", ["proc", "sys", "figure-folder", "file-on-the-way"])
def test_report_out_that_cannot_be_written_is_one_line(store: Path, tmp_path: Path, where: str) -> None:
    out = {"proc": Path("/proc/rethink-report"), "sys": Path("/sys/rethink-report"),
           "figure-folder": tmp_path / "rep", "file-on-the-way": tmp_path / "afile" / "rep"}[where]
    if where in ("proc", "sys") and not out.parent.is_dir():
        pytest.skip(f"no {out.parent} here")
    if where == "figure-folder":
        (out / "fig1c_test_error.png").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["report", "hostile", "--store", str(store), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("Error: cannot write the report to ") and result.stderr.count("\n") == 1
    assert result.stderr.rstrip().endswith("; choose another --out"), result.stderr
    if where == "figure-folder":
        assert "fig1c_test_error.png: it is a folder" in result.stderr
        assert os.listdir(out) == ["fig1c_test_error.png"]  # nothing half written beside it
    assert not out.exists() or where == "figure-folder"
