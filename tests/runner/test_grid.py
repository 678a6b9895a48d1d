"""Grid files expand into the runs a researcher wrote: the product of the axes, content-hashed
ids, flags beating the file, a resolved text that round-trips, and a dry-run table."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from rethink.errors import SpecError
from rethink.runner.dryrun import run_table
from rethink.runner.grid import Grid, Resources, load_grid, parse_grid, run_row
from rethink.storage.schema import EXPERIMENT_RUNS, table
from rethink.tasks.spec import CorruptionSpec, RegularizerSpec, RunSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# DESIGN.md's example grid, verbatim.
DESIGN_GRID = """\
name: fig1-mlp                  # experiment name, required; [a-z0-9_-]+
dataset: cifar10                # cifar10 | cifar100 | synthetic
data: {train_size: 5000, test_size: 1000, crop: 28, whiten: true}   # all optional; sizes pick a
                                # stratified, seeded subset; crop/whiten as in Zhang et al.
model: [mlp1x512, mlp3x512]
corruption:                     # a list of entries: a bare kind, or a kind with levels
  - none
  - {kind: labels, level: [0.2, 0.5, 1.0]}
  - shuffled_pixels
  - random_pixels
  - gaussian
  - {kind: label_noise, level: [0.1, 0.3]}
regularizer:                    # a list of entries: none, or a mapping of regularizer settings
  - none
  - {weight_decay: 0.0005}
  - {dropout: 0.5, augment: true}
seed: [0, 1]
train: {epochs: 50, batch_size: 128, lr: 0.01, momentum: 0.9, lr_decay: 0.95,
        fit_threshold: 0.99, probe_every: 5, checkpoint_every: 1}
resources: {gpus: 1, cpus: 1}   # per task
"""


def render(grid: Grid) -> str:
    console = Console(file=io.StringIO(), width=160)
    console.print(run_table(grid))
    return console.file.getvalue()


def test_design_grid_expands_to_the_product_with_distinct_ids():
    grid = parse_grid(DESIGN_GRID)
    # 1 dataset x 2 models x (1 + 3 + 3 + 2 = 9) corruptions x 3 regularizers x 2 seeds
    assert len(grid.runs) == 1 * 2 * 9 * 3 * 2 == 108
    assert len({run.run_id for run in grid.runs}) == 108
    assert grid.name == "fig1-mlp" and grid.resources == Resources(gpus=1.0, cpus=1.0)
    first = grid.runs[0]
    assert (first.model, first.corruption.kind, first.regularizer.label, first.seed) == ("mlp1x512", "none", "none", 0)
    assert first.data.train_size == 5000 and first.data.crop == 28 and first.data.whiten is True
    assert first.train.epochs == 50 and first.train.probe_every == 5
    assert {run.corruption for run in grid.runs} >= {CorruptionSpec("labels", 0.2), CorruptionSpec("gaussian", 1.0),
                                                     CorruptionSpec("label_noise", 0.3)}
    assert {run.regularizer for run in grid.runs} == {
        RegularizerSpec(), RegularizerSpec(weight_decay=0.0005), RegularizerSpec(dropout=0.5, augment=True)}
    assert parse_grid(DESIGN_GRID).runs == grid.runs  # a stable order


def test_same_config_in_two_experiments_is_the_same_run():
    a = parse_grid(DESIGN_GRID)
    b = parse_grid(DESIGN_GRID.replace("name: fig1-mlp", "name: another-name"))
    assert [run.run_id for run in a.runs] == [run.run_id for run in b.runs]
    assert run_row("fig1-mlp", a.runs[0])["run_id"] == run_row("another-name", b.runs[0])["run_id"]


def test_missing_axes_take_the_defaults():
    grid = parse_grid("name: tiny\n")
    assert grid.runs == (RunSpec(),) and grid.resources == Resources()


def test_values_are_typed_so_equal_configs_hash_equal():
    # YAML reads 5e-4 as a string and 1 as an int; both must give the run written with floats
    written = parse_grid("name: x\nregularizer: {weight_decay: 5e-4}\ntrain: {lr: 1}\nwidth: 2\n").runs[0]
    canonical = parse_grid("name: x\nregularizer: {weight_decay: 0.0005}\ntrain: {lr: 1.0}\nwidth: 2.0\n").runs[0]
    assert written.run_id == canonical.run_id and isinstance(written.train.lr, float)


def test_model_width_and_init_scale_axes():
    grid = parse_grid("""\
name: scales
model:
  - mlp1x512
  - {name: mlp3x512, width: [0.5, 2], init_scale: 0.1}
width: [1, 4]
init_scale: [1, 3]
""")
    combos = [(run.model, run.width, run.init_scale) for run in grid.runs]
    assert combos == [("mlp1x512", 1.0, 1.0), ("mlp1x512", 1.0, 3.0), ("mlp1x512", 4.0, 1.0), ("mlp1x512", 4.0, 3.0),
                      ("mlp3x512", 0.5, 0.1), ("mlp3x512", 2.0, 0.1)]
    assert parse_grid(grid.text).runs == grid.runs


def test_regularizer_settings_and_shorthands():
    grid = parse_grid("""\
name: regs
regularizer:
  - none
  - {weight_decay: [0.0001, 0.001], augment: true}
  - dropout=0.5,early_stopping=3
corruption: [labels:0.5, gaussian]
""")
    assert [run.regularizer.label for run in grid.runs[:4]] == [
        "none", "weight_decay=0.0001+augment", "weight_decay=0.001+augment", "dropout=0.5+early_stopping=3"]
    assert [run.corruption for run in grid.runs[::4]] == [CorruptionSpec("labels", 0.5), CorruptionSpec("gaussian", 1.0)]


def test_overrides_beat_the_file():
    grid = parse_grid(DESIGN_GRID, {
        "name": "quick", "model": "mlp1x512", "seed": [3, 4], "corruption": ["none", {"kind": "labels", "level": 1.0}],
        "regularizer": "none", "train.epochs": 2, "train": {"lr": 0.1}, "data.train_size": 100,
        "resources.gpus": 0.25, "dataset": None, "width": (),  # not given: the file's value stays
    })
    assert grid.name == "quick" and len(grid.runs) == 1 * 2 * 1 * 2
    run = grid.runs[0]
    assert run.train.epochs == 2 and run.train.lr == 0.1 and run.train.probe_every == 5  # others from the file
    assert run.data.train_size == 100 and run.data.crop == 28
    assert {r.seed for r in grid.runs} == {3, 4} and grid.resources == Resources(gpus=0.25, cpus=1.0)
    assert '"train.epochs": 2' in grid.text  # the store keeps what ran and why
    assert parse_grid(grid.text).runs == grid.runs


def test_override_of_a_section_the_file_lacks():
    grid = parse_grid("name: x\n", {"train.epochs": 7, "resources.cpus": 2})
    assert grid.runs[0].train.epochs == 7 and grid.resources.cpus == 2.0


@pytest.mark.parametrize("overrides", [None, {"seed": [5, 6], "train.epochs": 3}])
def test_text_round_trips(overrides):
    grid = parse_grid(DESIGN_GRID, overrides)
    again = parse_grid(grid.text)
    assert again.runs == grid.runs and again.resources == grid.resources and again.name == grid.name
    assert parse_grid(again.text).text.split("\n", 1)[1] == again.text.split("\n", 1)[1]  # a fixed point


def test_load_grid_reads_a_file_and_names_it_in_errors(tmp_path: Path):
    path = tmp_path / "grid.yaml"
    path.write_text(DESIGN_GRID)
    assert load_grid(path).runs == parse_grid(DESIGN_GRID).runs
    path.write_text("name: x\nmodel: [mlp1x512]\ntrain: {epochs: 1.5}\n")
    with pytest.raises(SpecError, match=rf"^{path} line 3: train.epochs must be an integer, got 1.5$"):
        load_grid(path)
    with pytest.raises(SpecError, match="not found"):
        load_grid(tmp_path / "nope.yaml")


def test_ten_thousand_runs_expand_fast():
    levels = ", ".join(f"{i / 49:.6f}" for i in range(50))
    seeds = ", ".join(str(s) for s in range(100))
    text = f"name: big\nmodel: [mlp1x512, mlp3x512]\ncorruption: [{{kind: labels, level: [{levels}]}}]\nseed: [{seeds}]\n"
    start = time.perf_counter()
    grid = parse_grid(text)
    ids = {run.run_id for run in grid.runs}
    elapsed = time.perf_counter() - start
    assert len(grid.runs) == len(ids) == 10_000
    assert elapsed < 10, f"expanding 10,000 runs took {elapsed:.1f} s"


def test_run_row_has_exactly_the_experiment_runs_columns():
    grid = parse_grid(DESIGN_GRID)
    rows = [run_row(grid.name, run) for run in grid.runs]
    assert list(rows[0]) == EXPERIMENT_RUNS.names
    assert table(rows, EXPERIMENT_RUNS).num_rows == 108  # the types fit the schema
    row = next(r for r in rows if r["corruption"] == "labels" and r["regularizer"] != "none")
    assert row["level"] in (0.2, 0.5, 1.0) and row["experiment"] == "fig1-mlp" and row["crop"] == 28
    assert RunSpec.from_dict(json.loads(row["config"])).run_id == row["run_id"]


def test_dry_run_table_lists_every_run():
    grid = parse_grid(DESIGN_GRID)
    t = run_table(grid)
    assert t.row_count == 108 and "108 runs" in str(t.caption) and "1 GPU, 1 CPU" in str(t.caption)
    text = render(grid)
    assert grid.runs[0].run_id in text and grid.runs[-1].run_id in text and "weight_decay=0.0005" in text


def test_dry_run_table_of_a_huge_grid_is_elided():
    seeds = ", ".join(str(s) for s in range(250))
    grid = parse_grid(f"name: many\nseed: [{seeds}]\n")
    t = run_table(grid)
    assert t.row_count == 100 + 1 + 20
    assert "250 runs" in str(t.caption) and "first 100 and last 20" in str(t.caption)
    text = render(grid)
    assert grid.runs[99].run_id in text and grid.runs[100].run_id not in text
    assert grid.runs[-1].run_id in text and "130 more" in text


def test_quickstart_example_is_a_small_cpu_grid():
    grid = load_grid(EXAMPLES / "quickstart.yaml")
    assert grid.name == "quickstart" and len(grid.runs) == 3
    assert grid.resources == Resources(gpus=0.0, cpus=1.0)
    assert [run.corruption.label for run in grid.runs] == ["none", "labels:0.5", "labels:1"]
    assert all(10 <= run.train.epochs <= 20 and run.data.train_size == 1000 for run in grid.runs)


def _dry_run_text(grid: Grid) -> str:
    console = Console(file=io.StringIO(), width=400)
    console.print(run_table(grid))
    return " ".join(console.file.getvalue().split())


def test_dry_run_counts_run_epochs_and_names_repeated_combinations():
    text = """name: dups
dataset: synthetic
model: [mlp1x512, resnet18]
corruption: none
regularizer: [none, {batch_norm: false}]
seed: [0, 1]
train: {epochs: 7}
resources: {cpus: 1, gpus: 0}
"""
    grid = parse_grid(text)
    # batch_norm: false is the MLP's default (the same run) but not resnet18's (another run)
    assert (len(grid.runs), grid.duplicates) == (6, 2)
    shown = _dry_run_text(grid)
    assert "6 runs · 42 run-epochs" in shown and "2 combinations of the axes repeated a run" in shown


def test_dry_run_warns_when_this_machine_cannot_run_a_task():
    grid = parse_grid("name: big\ndataset: synthetic\nmodel: mlp1x512\ncorruption: none\nseed: 0\n"
                      "resources: {cpus: 4096, gpus: 0}\n")
    assert "warning: each task asks for 4096 CPUs" in _dry_run_text(grid)


def test_data_sizes_beyond_the_dataset_are_refused_before_anything_runs():
    with pytest.raises(SpecError, match="more than the 50,000 images of cifar10's train split"):
        parse_grid("name: x\ndataset: cifar10\ndata: {train_size: 60000}\nmodel: mlp1x512\ncorruption: none\nseed: 0\n")
    with pytest.raises(SpecError, match="10,000 images of cifar100's test split"):
        parse_grid("name: x\ndataset: cifar100\ndata: {test_size: 10001}\nmodel: mlp1x512\ncorruption: none\nseed: 0\n")
