"""A run list that lost every row (a runs.parquet of no rows, which no grid makes) used to read
as an experiment of no runs: `status` showed `0/None` and said nothing, and `resume` refused
with "run : its run list is empty" although the frozen grid makes the rows again. A run list
holding a run twice made `resume` count it twice. Both now read as the grid they came from."""

from __future__ import annotations

from pathlib import Path

from rethink.runner.api import _run_list
from rethink.runner.damage import usable_specs
from rethink.runner.grid import parse_grid, run_row
from rethink.runner.status import status_tables
from rethink.storage.layout import ExperimentPaths
from rethink.storage.schema import EXPERIMENT_RUNS
from rethink.storage.store import Store

GRID = """name: rl
dataset: synthetic
data: {train_size: 64, test_size: 32}
model: mlp1x512
width: 0.05
corruption: [none, {kind: labels, level: 1.0}]
seed: [0, 1]
train: {epochs: 2, batch_size: 32}
resources: {cpus: 1, gpus: 0}
"""


def frozen(root: Path) -> tuple[Store, str, object]:
    grid = parse_grid(GRID)
    store = Store.open(root, create=True)
    store.save_experiment("rl", grid.text, [run_row("rl", run) for run in grid.runs])
    return store, grid.text, grid


def test_a_run_list_of_no_rows_is_noted_and_written_again_from_the_grid(tmp_path: Path, capsys) -> None:
    store, text, grid = frozen(tmp_path / "store")
    store.write_table(ExperimentPaths("rl").runs, [], EXPERIMENT_RUNS)

    notes = [t.plain for t in status_tables(store.uri) if hasattr(t, "plain")]
    assert any("holds no runs" in note and "rethink resume rl" in note for note in notes), notes

    runs, unusable = _run_list(store, "rl", text, grid)
    assert sorted(spec.run_id for spec in runs) == sorted(run.run_id for run in grid.runs) and not unusable
    assert "written again from its frozen grid" in capsys.readouterr().err
    assert len(store.experiment_rows("rl")) == len(grid.runs)


def test_a_run_listed_twice_is_one_run(tmp_path: Path) -> None:
    store, _, grid = frozen(tmp_path / "store")
    rows = store.experiment_rows("rl")
    runs, unusable = usable_specs(rows + rows[:1])
    assert len(runs) == len(grid.runs) == len({spec.run_id for spec in runs}) and not unusable


def test_a_frozen_grid_of_bytes_that_are_not_text_is_one_line(tmp_path: Path) -> None:
    """It used to end every command naming the experiment in a UnicodeDecodeError traceback."""
    from tests.runner.conftest import rethink

    store, _, _ = frozen(tmp_path / "store")
    (Path(store.root) / ExperimentPaths("rl").grid).write_bytes(bytes(range(256)) * 4)
    for args in (["status", "rl"], ["compact", "rl"], ["resume", "rl", "--quiet"], ["cancel", "rl"]):
        done = rethink(*args, "--store", store.uri)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1, (args, done.stderr[-2000:])
        assert "grid.yaml is damaged: it is not UTF-8 text" in lines[0], lines
