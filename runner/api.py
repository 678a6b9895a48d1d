"""The runner's surface, one function per command: submit a grid, resume or cancel an experiment,
report where it stands. cli.py calls these and prints what they return."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rethink.runner.damage import usable_specs
from rethink.runner.grid import Grid, parse_grid, run_row
from rethink.runner.scheduler import Summary, run_experiment
from rethink.storage.layout import ExperimentPaths
from rethink.storage.schema import EXPERIMENT_RUNS
from rethink.storage.store import DamagedFileError, Store, StoreError
from rethink.tasks.spec import RunSpec
from rethink.text import one_line


def submit(
    grid: Grid, store_uri: str, data_dir: Path | str, *, address: str | None = None, quiet: bool = False,
    pack_size: int = 0,
) -> Summary:
    """Freeze the grid into the store and train every run of it that is not done yet."""
    store = Store.open(store_uri, create=True)
    store.check_experiment(grid.name, grid.text)  # a name clash is refused before anything runs

    def prepare() -> None:
        store.save_experiment(grid.name, grid.text, [run_row(grid.name, run) for run in grid.runs])
        store.clear_cancel(grid.name)

    with store.driver_lease():  # one driver at a time where the store has no exclusive create
        return _compacted(store, grid.name, run_experiment(
            store, grid.name, list(grid.runs), grid.resources, data_dir,
            address=address, quiet=quiet, pack_size=pack_size, prepare=prepare))


def resume(
    name: str, store_uri: str, data_dir: Path | str, *, address: str | None = None, quiet: bool = False,
    pack_size: int = 0,
) -> Summary:
    """Finish every run of experiment `name` that is not done, each from its last checkpoint."""
    store = Store.open(store_uri)
    text = store.experiment_grid(name)
    grid = parse_grid(text, source=f"{name}/grid.yaml")
    runs, unusable = _run_list(store, name, text, grid)
    store.clear_cancel(name)
    with store.driver_lease():
        summary = _compacted(store, name, run_experiment(
            store, name, runs, grid.resources, data_dir, address=address, quiet=quiet, pack_size=pack_size))
    summary.failed += len(unusable)  # named, one line each, and the exit is not 0
    summary.errors.update({run_id: f"not resumed: {why}" for run_id, why in unusable.items()})
    return summary


def _run_list(store: Store, name: str, text: str, grid: Grid) -> tuple[list[RunSpec], dict[str, str]]:
    """The runs to resume, and {run id: why not} for rows of the run list that cannot be trusted
    (runner/damage.py). A run list that is absent (the submit that froze the grid died first) or
    not Parquet is written again from the frozen grid, which makes the same rows."""
    path, frozen = ExperimentPaths(name).runs, [run_row(name, run) for run in grid.runs]
    try:
        rows = store.experiment_rows(name)
    except DamagedFileError as exc:
        print(f"note: {one_line(exc)}; written again from {name}'s frozen grid", file=sys.stderr)
        store.write_table(path, frozen, EXPERIMENT_RUNS)
        rows = store.experiment_rows(name)
    if not rows:  # absent, or a file of no rows (no grid has none): the frozen grid makes them again
        if store.exists(path):
            print(f"note: {name}'s run list holds no runs; written again from its frozen grid", file=sys.stderr)
            store.write_table(path, frozen, EXPERIMENT_RUNS)
        else:
            store.save_experiment(name, text, frozen)
        rows = store.experiment_rows(name)
    runs, unusable = usable_specs(rows)
    if not runs:
        first, why = next(iter(unusable.items()), ("", "its run list is empty"))
        raise StoreError(f"nothing of experiment '{name}' can be resumed: run {one_line(first)}: {one_line(why)}"
                         + (f" (and {len(unusable) - 1} more)" if len(unusable) > 1 else ""))
    return runs, unusable


def _compacted(store: Store, name: str, summary: Summary) -> Summary:
    """Fold the experiment's finished runs into parts now that its grid has ended (cheap when
    there is little to do: storage/compact.py). It never fails a grid: an error is one warning."""
    from rethink.storage.compact import compact

    if os.environ.get("RETHINK_COMPACT") == "0":  # off: every run keeps its own files
        return summary
    try:
        compact(store, name)
    except Exception as exc:  # noqa: BLE001 - the runs are trained and stored; only folding failed
        print(f"warning: {name}: results left uncompacted ({' '.join(str(exc).split())}); "
              f"`rethink compact {name}` folds them", file=sys.stderr)
    return summary


def cancel(name: str, store_uri: str) -> None:
    """Ask the experiment's driver and workers to stop; finished epochs and checkpoints stay."""
    Store.open(store_uri).request_cancel(name)
