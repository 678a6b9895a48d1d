"""`rethink report`: tables, PNG figures and the self-contained HTML page (settings, provenance,
runs), on a small store trained for real in-process (no Ray). Experiment `mem` has label
corruption, two seeds, a failed run and fake probe values; experiment `pixels` has no label
corruption, one seed and no probes. Figure formats and styling: test_figures.py."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import struct
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from rethink.cli import app
from rethink.errors import RethinkError
from rethink.runner import plots
from rethink.runner.grid import parse_grid, run_row
from rethink.runner.report import PROVENANCE, ReportResult, build_report, provenance
from rethink.runner.worker import run_pack
from rethink.storage import layout, schema
from rethink.storage.store import Store
from rethink.storage.views import connect

GRIDS = {
    "mem": """\
name: mem
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
corruption: [none, {kind: labels, level: [0.5, 1.0]}]
seed: [0, 1]
train: {epochs: 4, batch_size: 16, lr: 0.05, probe_every: 0}
resources: {cpus: 1, gpus: 0}
""",
    "pixels": """\
name: pixels
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
corruption: [none, shuffled_pixels]
seed: 0
train: {epochs: 2, batch_size: 16, lr: 0.05}
resources: {cpus: 1, gpus: 0}
""",
}
MEM_PNGS = ["fig1a_learning_curves.png", "fig1b_time_to_fit.png", "fig1c_test_error.png", "probes.png"]
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both experiments trained; (mem, labels 1.0, seed 1) then marked failed; the mem
    labels-0.5 runs given probe values at epochs 2 and 4, written into their epochs files."""
    root = tmp_path_factory.mktemp("report-store")
    s = Store.open(root, create=True)
    for text in GRIDS.values():
        grid = parse_grid(text)
        s.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
        results = run_pack(str(root), grid.name, [r.to_dict() for r in grid.runs], "unused", token="t")
        assert {r.outcome for r in results} == {"done"}
        for run in grid.runs:
            c = run.corruption
            if grid.name == "mem" and (c.kind, c.level, run.seed) == ("labels", 1.0, 1):
                s.write_status(run.run_id, status="failed", error="RuntimeError: boom")
            if grid.name == "mem" and (c.kind, c.level) == ("labels", 0.5):
                path = root / layout.RunPaths(run.run_id).epochs
                rows = pq.read_table(path).to_pylist()
                for row in rows:
                    if row["epoch"] % 2 == 0:
                        e = row["epoch"]
                        row.update(act_sparsity=0.4 + 0.01 * run.seed + 0.02 * e, jacobian_norm=2.0 + run.seed + e,
                                   grad_sqnorm=100.0 * (run.seed + 1) * e, functional_dim=30.0 + e, param_norm=20.0 + e)
                pq.write_table(schema.table(rows, schema.EPOCHS), path)
    return root


@pytest.fixture(scope="module")
def mem_report(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportResult, bool]:
    """The report of `mem`, built once (drawing takes a second or two); and whether building it
    left the store as it was."""
    before = fingerprint(store)
    result = build_report(str(store), "mem", str(tmp_path_factory.mktemp("mem-report") / "out"))
    return result, fingerprint(store) == before


def fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def text_of(tables) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    for table in tables:
        console.print(table)
    return console.export_text()


def test_report_writes_every_figure_and_one_self_contained_page(mem_report) -> None:
    result, store_unchanged = mem_report
    assert [p.name for p in result.pngs] == MEM_PNGS and result.formats == ("png",)
    assert [p.name for files in result.figures.values() for p in files] == MEM_PNGS  # png only, by default
    for png in result.pngs:
        data = png.read_bytes()
        width, height = png_size(data)
        assert 1200 <= width <= 3000 and 500 <= height <= 2500, (png.name, width, height)  # ~7 in at 300 dpi
        assert len(data) > 10_000, png.name  # something drawn, not a blank canvas
    page = result.html.read_text(encoding="utf-8")
    assert result.html.name == "report.html" and result.html.parent == result.pngs[0].parent
    embedded = [base64.b64decode(m) for m in DATA_URI.findall(page)]
    assert embedded == [p.read_bytes() for p in result.pngs]
    rest = DATA_URI.sub("", page)
    assert "http" not in rest and "<link" not in rest and "<script" not in rest and "url(" not in rest
    assert "src=\"data:image/png;base64," in page and rest.count("<img") == 4
    assert "<a href" not in rest  # no PDF or SVG asked: nothing to link
    for title in ("Final accuracy and generalization gap", "Time to fit", "Memorization", "Probes"):
        assert f"<caption>{title}" in page, title
    assert "labels p=0.5" in page and "<td" in page
    assert store_unchanged  # the report never writes into the store


def test_header_counts_the_failed_run_and_the_numbers_leave_it_out(store: Path, mem_report) -> None:
    result, _ = mem_report
    assert result.header.startswith("mem: 6 runs (5 done, 1 failed, 0 running, 0 pending)")
    assert "1 failed" in result.html.read_text(encoding="utf-8")
    assert result.notes == []
    con = connect(str(store))
    (test_acc,) = con.execute("SELECT avg(final_test_acc) FROM runs WHERE experiment = 'mem' AND corruption = 'labels' "
                              "AND level = 1.0 AND status = 'done'").fetchone()
    text = text_of(result.tables)
    row = next(line for line in text.splitlines() if "labels p=1 " in line and "±" not in line)
    assert f"{100 * test_acc:.1f}" in row  # one finished seed: its own number, with no spread
    assert "1.00×" in text  # true labels against themselves


def test_a_grid_without_label_corruption_single_seed_and_no_probes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pixels"
    out.mkdir()
    (out / "probes.png").write_bytes(b"stale")  # from an older report: it would mislead now
    result = build_report(str(store), "pixels", str(out))
    assert [p.name for p in result.pngs] == ["fig1a_learning_curves.png"]
    assert not (out / "probes.png").exists()
    notes = " ".join(result.notes)
    assert "no `labels` corruption" in notes and "no probes" in notes and "one seed" in notes
    page = result.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1 and "no `labels` corruption" in page
    assert "shuffled_pixels" in text_of(result.tables)


def test_bands_only_with_two_seeds_or_more(store: Path) -> None:
    con = connect(str(store))

    def rows(name: str) -> list[dict]:
        cursor = con.execute("SELECT * FROM memorization WHERE experiment = ?", [name])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r)) for r in cursor.fetchall()]

    two, one = plots.fig1a_learning_curves(rows("mem")), plots.fig1a_learning_curves(rows("pixels"))
    loss_axes = [ax for ax in two.axes if ax.get_ylabel().startswith("training loss")]
    assert len(loss_axes) == 1 and len(loss_axes[0].lines) == 3 and len(loss_axes[0].collections) >= 2
    assert all(not ax.collections for ax in one.axes)
    for ax in two.axes:
        assert ax.get_xlabel() == "SGD steps" and ax.get_ylabel()
    assert len(two.legends) == 1 and len(two.legends[0].get_texts()) == 3  # one legend for both panels
    assert plots.fig1b_time_to_fit(rows("pixels")) is None


def test_page_lists_settings_runs_and_the_provenance_the_view_has(store: Path, mem_report) -> None:
    result, _ = mem_report
    page = result.html.read_text(encoding="utf-8")
    settings = page.split("<h2>Settings</h2>", 1)[1].split("<h2>", 1)[0]
    frozen = Store.open(store).experiment_grid("mem")
    assert f"<pre>{frozen.rstrip()}</pre>" in html.unescape(settings) and "level: [0.5, 1.0]" in frozen
    runs = page.split("<h2>Runs</h2>", 1)[1]
    header = "".join(f"<th>{c}</th>" for c in ("run_id", "model", "corruption", "level", "regularizer", "seed",
                                               "status", "epochs_done", "final_train_acc", "final_test_acc", "error"))
    assert header in runs and runs.count("<tr>") == 1 + 6  # header + every run, the failed one too
    con = connect(str(store))
    failed, acc = con.execute("SELECT run_id, final_test_acc FROM runs WHERE experiment = 'mem' AND status = 'failed'").fetchone()
    row = next(r for r in runs.split("<tr>") if failed in r)
    assert "RuntimeError: boom" in row and ">failed<" in row and f">{acc:.3f}<" in row
    present = [c for c in PROVENANCE if c in {d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description}]
    assert ("<h2>Provenance</h2>" in page) == bool(present)  # skipped, silently, by a view without them
    for column in present:
        assert f"<td class=\"recorded\">{column}</td>" in page


def test_provenance_reads_whichever_columns_the_runs_view_has() -> None:
    con = duckdb.connect()
    con.execute("CREATE VIEW runs AS SELECT * FROM (VALUES ('a', 'mem', '0.2.0', 'cuda:0'), ('b', 'mem', '0.2.0', NULL), "
                "('c', 'mem', NULL, NULL), ('d', 'other', '9.9', 'cpu')) t(run_id, experiment, rethink_version, device)")
    assert provenance(con, "mem") == [("rethink_version", [("0.2.0", 2), (None, 1)]),
                                      ("device", [("cuda:0", 1), (None, 2)])]
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT 'a' AS run_id, 'mem' AS experiment")
    assert provenance(con, "mem") == []


def test_unknown_experiment_and_bad_out_dirs_are_refused(store: Path, tmp_path: Path) -> None:
    with pytest.raises(RethinkError, match=r"no experiment 'nosuch' .*experiments: mem, pixels"):
        build_report(str(store), "nosuch", str(tmp_path / "out"))
    with pytest.raises(RethinkError, match="inside the store"):
        build_report(str(store), "mem", str(store / "reports"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RethinkError, match="is a file"):
        build_report(str(store), "mem", str(tmp_path / "afile"))
    assert not (store / "reports").exists()


def test_cli_report_prints_tables_and_writes_the_page(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["report", "mem", "--store", str(store), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("mem: 6 runs") and "Time to fit" in result.stdout
    assert (out / "report.html").is_file() and f"wrote {out / 'report.html'}" in result.stdout


def test_cli_report_default_out_is_report_slash_name(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "pixels", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "pixels" / "report.html").is_file()


def test_cli_report_bad_name_is_one_line(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "nosuch", "--store", str(store), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no experiment 'nosuch'") and result.stderr.count("\n") == 1
    assert "mem, pixels" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
