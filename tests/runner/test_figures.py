"""The report's figures as a reviewer of a paper reads them: formats (PNG at print resolution,
PDF with TrueType fonts, SVG), no title, the Okabe–Ito palette with markers and dashes, readable
ticks even when probes were measured at a single epoch; and a report that imports neither torch
nor Ray. On a store trained for real in-process (narrow MLPs, so probes cost little): `once`
(3 epochs, probes at epoch 2 only, two models, one seed) and `single` (1 epoch, probes at epoch
1, two seeds)."""

from __future__ import annotations

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text
from typer.testing import CliRunner

from rethink.cli import app
from rethink.runner import plots
from rethink.runner.grid import parse_grid, run_row
from rethink.runner.report import FIGURES, build_report
from rethink.runner.worker import run_pack
from rethink.storage.store import Store
from rethink.storage.views import connect

GRIDS = {
    "once": """\
name: once
dataset: synthetic
data: {train_size: 48, test_size: 16, image_size: 8}
model: [mlp1x512, mlp3x512]
width: 0.0625
corruption: [none, {kind: labels, level: 1.0}]
seed: 0
train: {epochs: 3, batch_size: 16, lr: 0.05, probe_every: 2}
resources: {cpus: 1, gpus: 0}
""",
    "single": """\
name: single
dataset: synthetic
data: {train_size: 48, test_size: 16, image_size: 8}
model: mlp1x512
width: 0.0625
corruption: [none, {kind: labels, level: 1.0}]
seed: [0, 1]
train: {epochs: 1, batch_size: 16, lr: 0.05, probe_every: 1}
resources: {cpus: 1, gpus: 0}
""",
}
GREY = "#777777"  # the reference lines (budget, chance)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("figures-store")
    s = Store.open(root, create=True)
    for text in GRIDS.values():
        grid = parse_grid(text)
        s.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
        for model in {r.model for r in grid.runs}:  # a pack shares one model shape
            pack = [r.to_dict() for r in grid.runs if r.model == model]
            assert {r.outcome for r in run_pack(str(root), grid.name, pack, "unused", token="t")} == {"done"}
    return root


@pytest.fixture(scope="module")
def figures(store: Path) -> dict[tuple[str, str], Figure]:
    """(experiment, figure name) -> the drawn Figure, for every figure each experiment has."""
    con = connect(str(store))
    out = {}
    for name in GRIDS:
        for stem, view, draw, *_ in FIGURES:
            cursor = con.execute(f"SELECT * FROM {view} WHERE experiment = ?", [name])
            columns = [d[0] for d in cursor.description]
            fig = draw([dict(zip(columns, r)) for r in cursor.fetchall()])
            if fig is not None:
                fig.canvas.draw()  # ticks and their labels exist only once drawn
                out[name, stem] = fig
    return out


def data_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.lines]


def test_every_figure_of_both_experiments_is_drawn(figures) -> None:
    assert sorted(figures) == sorted((n, stem) for n in GRIDS for stem, *_ in FIGURES)


def test_one_probed_epoch_reads_as_integer_epochs_with_no_offset(figures) -> None:
    for name, epoch in (("once", 2), ("single", 1)):
        fig = figures[name, "probes"]
        axes = data_axes(fig)
        assert len(axes) == 5, name  # every probe measured
        for ax in axes:
            low, high = ax.get_xlim()
            assert high - low >= 2 and low < epoch < high, (name, ax.get_xlim())  # not 1.90 ... 2.10
            ticks = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
            assert str(epoch) in ticks and all(t.isdigit() for t in ticks), (name, ticks)
            for axis in (ax.xaxis, ax.yaxis):
                assert isinstance(axis.get_major_formatter(), plots.PlainTicks)
                assert axis.get_major_formatter().get_offset() == "" and axis.get_offset_text().get_text() == ""
            labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
            assert len(set(labels)) == len(labels) >= 2 and not any("e+" in t or "e-" in t for t in labels)
            points = [line for line in ax.lines if len(line.get_xdata()) == 1 and line.get_marker() not in ("None", "")]
            assert points, "a single probe point must be drawn with a marker"
        assert "mlp3x512" in " ".join(t.get_text() for t in fig.findobj(Text)) or name == "single"


def test_one_epoch_learning_curves_have_integer_steps_and_marked_points(figures) -> None:
    for ax in data_axes(figures["single", "fig1a_learning_curves"]):
        low, high = ax.get_xlim()
        ticks = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
        assert high - low >= 2 and len(ticks) >= 2 and all(t.isdigit() for t in ticks), ticks
        assert all(line.get_marker() not in ("None", "") for line in ax.lines if len(line.get_xdata()) == 1)


def test_plain_ticks_write_each_value_whole() -> None:
    ticks = plots.PlainTicks()
    assert ticks.format_ticks([0.1245, 0.12451, 0.12452]) == ["0.12450", "0.12451", "0.12452"]
    assert ticks.format_ticks([0.0, 0.25, 0.5, 0.75]) == ["0.00", "0.25", "0.50", "0.75"]  # never a rounded 0.2
    assert ticks.format_ticks([0, 20, 40]) == ["0", "20", "40"]
    assert ticks.format_ticks([1e7, 2.5e7]) == ["1.0e7", "2.5e7"] and ticks.get_offset() == ""


def test_no_title_and_no_experiment_name_in_any_figure(figures) -> None:
    for (name, stem), fig in figures.items():
        assert fig._suptitle is None, stem
        texts = [t.get_text() for t in fig.findobj(Text)]
        assert not any(name in t for t in texts), (name, stem)
        for ax in data_axes(fig):
            assert all(ax.get_title(loc=loc) == "" for loc in ("left", "center", "right")), stem
            assert ax.get_xlabel() and ax.get_ylabel(), stem
        assert fig.legends or any(ax.get_legend() for ax in fig.axes), stem


def test_okabe_ito_colours_and_lines_told_apart_without_colour(figures) -> None:
    assert {c.lower() for c in plots.COLORS} == {"#000000", "#e69f00", "#56b4e9", "#009e73", "#f0e442",
                                                 "#0072b2", "#d55e00", "#cc79a7"}
    for (name, stem), fig in figures.items():
        for ax in data_axes(fig):
            assert {to_hex(line.get_color()) for line in ax.lines} <= {c.lower() for c in plots.COLORS} | {GREY}
            look = {to_hex(line.get_color()): line.get_marker() for line in ax.lines
                    if line.get_marker() not in ("None", "", "_", "|") and to_hex(line.get_color()) != GREY}  # not caps
            assert look and len(set(look.values())) == len(look), (name, stem)  # a marker per colour
    styles = [plots.style(i) for i in range(32)]
    assert len({(s["color"], s["marker"], s["linestyle"]) for s in styles}) == 32
    assert len({(s["marker"], s["linestyle"]) for s in styles[:8]}) == 8  # distinct in greyscale too


def png_dpi(data: bytes) -> float:
    """Pixels per inch from the PNG's pHYs chunk (pixels per metre)."""
    at = data.index(b"pHYs")
    x_per_m, _, unit = struct.unpack(">IIB", data[at + 4:at + 13])
    assert unit == 1
    return x_per_m * 0.0254


def test_every_format_side_by_side_and_linked_from_the_page(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = build_report(str(store), "once", str(out), "png, PDF,svg,png")
    assert result.formats == ("png", "pdf", "svg")
    assert sorted(result.figures) == sorted(stem for stem, *_ in FIGURES)
    page = result.html.read_text(encoding="utf-8")
    for stem, files in result.figures.items():
        assert [p.name for p in files] == [f"{stem}.png", f"{stem}.pdf", f"{stem}.svg"]
        png, pdf, svg = (p.read_bytes() for p in files)
        assert png.startswith(b"\x89PNG") and round(png_dpi(png)) == plots.DPI
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType embedded, no Type 3 fonts
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root.findall(".//{*}path")) > 20
        assert not root.findall(".//{*}text")  # glyphs as paths: the same in every viewer
        assert f'<a href="{stem}.pdf">' in page and f'<a href="{stem}.svg">' in page
    again = build_report(str(store), "once", str(out), "pdf")
    assert all(p.suffix == ".pdf" for files in again.figures.values() for p in files)
    assert not list(out.glob("*.png")) and not list(out.glob("*.svg"))  # the older report's files would mislead
    assert (out / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 4  # page still shows them


@pytest.mark.parametrize("fmt, says", [("png,jpg", "unknown --format 'jpg'"), ("", "needs one or more of png, pdf, svg"),
                                       ("png,", "no empty item")])
def test_cli_bad_format_is_one_line_and_writes_nothing(store: Path, tmp_path: Path, fmt: str, says: str) -> None:
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["report", "once", "--store", str(store), "--out", str(out), "--format", fmt])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and says in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output and not out.exists()


def test_cli_report_with_formats(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["report", "single", "--store", str(store), "--out", str(out), "--format", "png,pdf"])
    assert result.exit_code == 0, result.output
    assert "(4 figures as png, pdf beside it)" in result.stdout
    assert len(list(out.glob("*.png"))) == 4 and len(list(out.glob("*.pdf"))) == 4


def test_report_imports_neither_torch_nor_ray(store: Path, tmp_path: Path) -> None:
    code = (f"import sys; import rethink.cli; from rethink.runner.report import build_report; "
            f"build_report({str(store)!r}, 'once', {str(tmp_path / 'r')!r}, 'png,pdf,svg'); "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "r" / "probes.svg").is_file()
