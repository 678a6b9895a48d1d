"""What a grid may ask for: its run count is known from the YAML before anything is expanded,
and refused past storage.limits.MAX_GRID_RUNS at once; every value that can never train (an
empty image, a trillion classes, a seed no generator takes) is refused by the dry run, each bad
field on its own line, before a worker could hang or fail on it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.errors import SpecError
from rethink.runner.grid import count_runs, load_grid, parse_overrides
from rethink.runner.gridfile import load_yaml
from rethink.storage.limits import MAX_GRID_RUNS
from rethink.tasks import spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _dry_run(tmp_path: Path, text: str, *flags: str):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    return CliRunner().invoke(app, ["submit", str(grid), "--dry-run", *flags])


def _axis(n: int, start: float = 1.0) -> str:
    return "[" + ", ".join(f"{start + i / 1000:g}" for i in range(n)) + "]"


@pytest.mark.parametrize("text, flags, runs, bound_s", [
    # 300 seeds x 300 widths x 300 init scales: the product of plain axes
    (f"name: big\nseed: {list(range(300))}\nwidth: {_axis(300)}\ninit_scale: {_axis(300)}\n", (), 27_000_000, 1),
    # inside one entry: a model's own widths x init scales, a regularizer mapping's lists (longer
    # files: reading their YAML takes a good part of a second on a slow machine)
    (f"name: big\nmodel: [{{name: mlp1x512, width: {_axis(3000)}, init_scale: {_axis(3000)}}}]\n", (), 9_000_000, 3),
    (f"name: big\nregularizer: [{{weight_decay: {_axis(2000, 0)}, dropout: {_axis(900, 0)}}}]\n", (), 1_800_000, 3),
    # an override makes the product
    (f"name: big\nwidth: {_axis(1001)}\n", ("--set", f"seed={list(range(1000))}"), 1_001_000, 3),
])
def test_a_grid_past_the_limit_is_refused_before_it_is_expanded(text, flags, runs, bound_s, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    # a process, so that a grid expanded after all fails the test at the timeout instead of hanging it
    done = subprocess.run([sys.executable, "-m", "rethink.cli", "submit", str(grid), "--dry-run", *flags],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stdout == ""  # a SpecError: the grid is wrong
    assert done.stderr == (f"Error: {grid}: this grid makes {runs:,} runs, past rethink's limit of "
                           f"{MAX_GRID_RUNS:,} a grid; split it into several grids\n")
    started = time.monotonic()
    with pytest.raises(SpecError):
        load_grid(grid, parse_overrides(list(flags[1:])))
    took = time.monotonic() - started
    assert took < bound_s, f"{took:.2f} s"  # expanding even the smallest of these takes many seconds


@pytest.mark.parametrize("grid", sorted(EXAMPLES.glob("*.yaml")) + ["union"], ids=str)
def test_the_count_is_what_expanding_makes(grid, tmp_path):
    if grid == "union":  # every shape an axis takes: entries with their own axes, lists in mappings
        grid = tmp_path / "union.yaml"
        grid.write_text("name: u\ndataset: [cifar10, synthetic]\nwidth: [1, 2]\ninit_scale: [0.5, 1]\n"
                        "model: [mlp1x512, {name: resnet18, width: [0.5, 4, 8]}, {name: mlp3x512, init_scale: 2}]\n"
                        "corruption: [none, gaussian, {kind: labels, level: [0.2, 0.8]}, label_noise:0.1]\n"
                        "regularizer: [none, {weight_decay: [0.1, 0.2], augment: [true, false]}, dropout=0.5]\n"
                        "seed: [0, 1, 2]\n")
    expanded = load_grid(grid)
    assert count_runs(load_yaml(Path(grid).read_text(), "g")) == len(expanded.runs) + expanded.duplicates


NEVER_TRAIN = """\
name: x
dataset: synthetic
data:
  image_size: 0
  num_classes: 1000000000000
  seed: -1
  train_size: 100000000
model: {name: mlp1x512, width: 1000}
init_scale: 1e300
seed: [0, 9223372036854775808]
train: {epochs: 10000000, batch_size: 0, lr: .nan, probe_every: -1}
regularizer: [{early_stopping: 1000000}]
"""


def test_values_that_can_never_train_are_each_named_by_the_dry_run(tmp_path):
    result = _dry_run(tmp_path, NEVER_TRAIN)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    problems = result.output.removeprefix("Error: 12 problems: ").strip().split(" | ")
    where = f"{tmp_path / 'grid.yaml'} line"
    assert problems == [
        f"{where} 4: data.image_size must be a positive integer, got 0",
        f"{where} 5: data.num_classes must be at most {spec.MAX_CLASSES:,}, got 1,000,000,000,000",
        f"{where} 6: data.seed must be an integer >= 0, got -1",
        f"{where} 7: data.train_size must be at most {spec.MAX_IMAGES:,}, got 100,000,000",
        f"{where} 8: model: width must be at most {spec.MAX_WIDTH:g}, got 1000",
        f"{where} 9: init_scale must be at most {spec.MAX_INIT_SCALE:g}, got 1e+300",
        f"{where} 10: seed[1]: seed must be at most {spec.MAX_SEED:,}, got 9,223,372,036,854,775,808",
        f"{where} 11: train.epochs must be at most {spec.MAX_EPOCHS:,}, got 10,000,000",
        f"{where} 11: train.batch_size must be a positive integer, got 0",
        f"{where} 11: train.lr must be finite, got nan",
        f"{where} 11: train.probe_every must be an integer >= 0, got -1",
        f"{where} 12: regularizer[0]: early_stopping (a patience in epochs) must be at most "
        f"{spec.MAX_EPOCHS:,}, got 1,000,000",
    ]


@pytest.mark.parametrize("text, message", [
    # what involves two settings, the dataset or the model: checked with the rest, with its line
    ("name: x\ndataset: synthetic\ndata: {image_size: 1024}\n",
     "line 3: data: a synthetic set of 1,500 images and 10 class templates of 1024x1024 pixels"),
    ("name: x\ndataset: [cifar10, synthetic]\ndata: {num_classes: 100000, image_size: 100}\n",
     "line 3: data: a synthetic set of 1,500 images and 100,000 class templates"),
    ("name: x\nmodel: [mlp1x512, inception_small]\ndata: {crop: 5}\n",
     "line 3: inception_small takes images of at least 7 pixels a side, and these are 5"),
])
def test_settings_that_cannot_train_together_are_refused_with_their_line(text, message, tmp_path):
    result = _dry_run(tmp_path, text)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert message in result.output


def test_the_synthetic_budget_counts_the_sizes_the_data_module_uses():
    from rethink.tasks import data

    assert data.SYNTHETIC_SIZES == spec.SYNTHETIC_SIZES
