"""`rethink status`: counts of runs per state for each experiment, the failed runs with their
errors, and what the counts alone would hide: runs marked running whose owner is gone, done runs
whose epoch rows are missing or unreadable, and runs of one experiment made by different code.
It reads local and remote stores alike, through the SQL views (storage/reader.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
from rich.table import Table
from rich.text import Text

from rethink.errors import RethinkError
from rethink.runner.damage import SUSPECT_CONFIGS, config_problem, epochs_problem
from rethink.states import RunState
from rethink.storage.errors import QueryError
from rethink.storage.layout import ExperimentPaths
from rethink.storage.reader import Reader
from rethink.storage.store import DamagedFileError, Store
from rethink.text import one_line, rich_text

STATES = tuple(RunState)
NOTED_RUNS = 5  # runs named one note each for one kind of damage; the rest are counted in one note


def status_tables(store_uri: str, name: str | None = None) -> list[Table | Text]:
    store = Store.open(store_uri)
    names = [name] if name else store.experiments()
    if name:
        store.experiment_grid(name)  # one clear line when there is no such experiment
    if not names:
        raise RethinkError(f"store '{store_uri}' has no experiments yet; `rethink submit GRID.yaml` starts one")
    counts = Table(title=rich_text(f"runs in {store_uri}"), title_justify="left")
    for column in ("experiment", *STATES, "total", "epochs"):
        counts.add_column(str(column), justify="left" if column == "experiment" else "right")
    failed = Table(title="failed runs", title_justify="left")
    for column in ("experiment", "run_id", "model", "corruption", "level", "seed", "attempts", "error"):
        failed.add_column(column)
    notes: list[str] = []
    try:  # every experiment's rows first: a retry (files of an older schema) starts afresh
        seen = Reader(store).run(lambda db: _read_views(db, names), summaries=False)
    except QueryError as exc:  # a damaged file the views cannot read: count from the status files
        notes = [f"the store's rows cannot all be read ({exc}); counts come from the runs' status files"]
        for experiment in names:
            _from_status_files(store, experiment, counts, failed, notes)
    else:
        for experiment in names:
            _show_views(seen[experiment], store, experiment, counts, failed, notes)
        for experiment in names:
            _note_configs(store, experiment, notes, seen[experiment].suspects)
    out: list[Table | Text] = [counts, failed] if failed.row_count else [counts]
    return out + [rich_text(f"note: {one_line(note)}") for note in notes]


@dataclass
class _Views:
    """What the views say of one experiment."""

    states: dict[str, int] = field(default_factory=dict)  # runs per state
    done: int = 0  # epochs done, over its runs
    planned: int | None = None  # epochs planned (None: no run)
    failed: list[tuple] = field(default_factory=list)  # run_id, model, corruption, level, seed, attempts, error
    running: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # done runs with fewer epoch rows than epochs done
    twice: list[str] = field(default_factory=list)  # runs whose file holds an epoch more than once
    foreign: list[str] = field(default_factory=list)  # runs whose file holds rows of another run
    odd: list[str] = field(default_factory=list)  # runs whose status row rethink never writes
    versions: set[str] = field(default_factory=set)  # the code versions its runs record
    suspects: list[dict] = field(default_factory=list)  # run-list rows SQL could not confirm (damage.py)


# One query for every experiment shown (each reads every epochs file of a store not yet
# compacted), counted in SQL by state: 10,000 runs fetched as Python rows cost more than the
# query. Only the failed runs come back one by one.
_COUNTS = """SELECT experiment, status, count(*), sum(coalesce(epochs_done, 0)), sum(epochs),
       list(run_id ORDER BY run_id) FILTER (WHERE status = 'running'),
       list(run_id ORDER BY run_id) FILTER (WHERE status = 'done' AND coalesce(epoch_rows, 0) < epochs_done),
       list(run_id ORDER BY run_id) FILTER (WHERE duplicate_rows > 0),
       list(run_id ORDER BY run_id) FILTER (WHERE foreign_rows > 0),
       list(run_id ORDER BY run_id) FILTER (WHERE status NOT IN ('pending', 'running', 'done', 'failed')
                                           OR epochs_done < 0 OR attempts < 0),
       list(DISTINCT coalesce(git_commit, rethink_version)) FILTER (WHERE rethink_version IS NOT NULL),
       list([run_id, model, corruption, level::VARCHAR, seed::VARCHAR, attempts::VARCHAR, error] ORDER BY run_id)
           FILTER (WHERE status = 'failed')
FROM runs WHERE list_contains(?::VARCHAR[], experiment) GROUP BY experiment, status"""


def _read_views(db: duckdb.DuckDBPyConnection, names: list[str]) -> dict[str, _Views]:
    seen = {name: _Views() for name in names}
    for experiment, state, runs, done, planned, running, lost, twice, foreign, odd, versions, failed in db.execute(
            _COUNTS, [names]).fetchall():
        views = seen[experiment]
        views.states[state] = runs
        views.done += done or 0
        if planned is not None:
            views.planned = (views.planned or 0) + planned
        views.running += running or []
        views.lost += lost or []
        views.twice += twice or []
        views.foreign += foreign or []
        views.odd += odd or []
        views.versions.update(versions or [])
        views.failed += [tuple(row) for row in failed or []]
    for experiment, run_id, config in db.execute(SUSPECT_CONFIGS, [names]).fetchall():
        seen[experiment].suspects.append({"run_id": run_id, "config": config})
    return seen


def _show_views(views: _Views, store: Store, experiment: str, counts: Table, failed: Table,
                notes: list[str]) -> None:
    rows = views.states
    counts.add_row(rich_text(experiment), *(str(rows.get(s, 0)) for s in STATES), str(sum(rows.values())),
                   f"{views.done}/{views.planned or 0}")
    if not rows:  # no grid has no runs: its run list lost them
        notes.append(f"{experiment}: its run list (runs.parquet) holds no runs; `rethink resume {experiment}` "
                     "writes it again from the frozen grid")
    for row in views.failed:
        failed.add_row(rich_text(experiment), *(rich_text(one_line("" if v is None else v)) for v in row))
    _note_orphans(store, experiment, views.running, notes)
    lost, versions = views.lost, sorted(views.versions)
    if lost:
        notes.append(f"{experiment}: {_some(lost)} marked done but missing epoch rows; "
                     f"`rethink resume {experiment}` trains them again")
    if views.twice:
        notes.append(f"{experiment}: {_some(views.twice)} damaged: an epoch file holds an epoch twice (duplicate "
                     f"rows; the views count each once); `rethink resume {experiment}` rewrites them")
    if views.foreign:
        notes.append(f"{experiment}: {_some(views.foreign)} damaged: an epoch file holds rows of another run "
                     f"(the views leave them out); `rethink resume {experiment}` rewrites them")
    if views.odd:
        notes.append(f"{experiment}: {_some(sorted(views.odd))} damaged: a status file holds a state, epoch or attempt "
                     f"count rethink never writes; `rethink resume {experiment}` trains them again")
    if len(versions) > 1:
        notes.append(f"{experiment}: its runs come from {len(versions)} code versions ({', '.join(versions)}); "
                     "compare them with `rethink query \"select git_commit, rethink_version, count(*) from runs "
                     f"where experiment = '{experiment}' group by all\"`")


def _from_status_files(store: Store, experiment: str, counts: Table, failed: Table, notes: list[str]) -> None:
    """Counts without SQL: one status file per run (slower, but reads no epoch rows)."""
    try:
        configs = store.experiment_rows(experiment)
    except DamagedFileError as exc:
        counts.add_row(rich_text(experiment), *("?" for _ in STATES), "?", "?")
        notes.append(f"{experiment}: its run list cannot be read ({exc}); `rethink resume {experiment}` "
                     "writes it again from the frozen grid")
        return
    tally = {s: 0 for s in STATES}
    done_epochs, running, damaged = 0, [], []
    for row in configs:
        status = store.read_status(row["run_id"]) or {}
        state = RunState(status.get("status") or RunState.PENDING)
        tally[state] += 1
        done_epochs += status.get("epochs_done") or 0
        if state == RunState.RUNNING:
            running.append(row["run_id"])
        # a run not done may lag its status by an epoch: only damage is noted for it, not loss
        problem = epochs_problem(store, row["run_id"], (status.get("epochs_done") or 0) if state == RunState.DONE else 0)
        if problem is not None:
            damaged.append((row["run_id"], problem))
        if state == RunState.FAILED:
            failed.add_row(*(rich_text(one_line(v)) for v in (
                experiment, row["run_id"], row["model"], row["corruption"], row["level"], row["seed"],
                status.get("attempts") or 0, status.get("error") or "")))
    for run_id, problem in damaged[:NOTED_RUNS]:
        notes.append(f"{experiment}: run {run_id} damaged: {problem}; `rethink resume {experiment}` trains it again")
    if len(damaged) > NOTED_RUNS:
        notes.append(f"{experiment}: {_some([run_id for run_id, _ in damaged[NOTED_RUNS:]])} more with damaged "
                     f"epoch rows; `rethink resume {experiment}` trains them again")
    total = sum(row["epochs"] for row in configs)
    counts.add_row(rich_text(experiment), *(str(tally[s]) for s in STATES), str(len(configs)),
                   f"{done_epochs}/{total}")
    _note_orphans(store, experiment, running, notes)
    _note_configs(store, experiment, notes, configs)


def _note_configs(store: Store, experiment: str, notes: list[str], rows: list[dict] | None = None) -> None:
    """One note per run-list row that cannot be trusted (runner/damage.py), and one for a run
    list that cannot be read at all."""
    try:
        if rows is None:
            rows = store.experiment_rows(experiment)
        else:  # rows SQL could not confirm; the file's own limits are checked from its footer
            store.check_table(ExperimentPaths(experiment).runs)
    except DamagedFileError as exc:
        notes.append(f"{experiment}: its run list cannot be read ({exc}); `rethink resume {experiment}` "
                     "writes it again from the frozen grid")
        return
    damaged = [(row.get("run_id"), problem) for row in rows if (problem := config_problem(row)) is not None]
    for run_id, problem in damaged[:NOTED_RUNS]:
        notes.append(f"{experiment}: run {run_id} damaged: {problem}; resume cannot train it")
    if len(damaged) > NOTED_RUNS:  # a note a run would bury the rest: the others are counted
        rest = [str(run_id) for run_id, _ in damaged[NOTED_RUNS:]]
        notes.append(f"{experiment}: {_some(rest)} more damaged in runs.parquet; resume cannot train them")


def _note_orphans(store: Store, experiment: str, running: list[str], notes: list[str]) -> None:
    """Runs whose status says running but whose claim has no live owner (its process died)."""
    orphans = [run_id for run_id in running if store.claim_holder(run_id) is None]
    if orphans:
        notes.append(f"{experiment}: {_some(orphans)} marked running but no live process holds them; "
                     f"`rethink resume {experiment}` restarts them from their last checkpoint")


def _some(run_ids: list[str], shown: int = 3) -> str:
    head = ", ".join(run_ids[:shown]) + (f" and {len(run_ids) - shown} more" if len(run_ids) > shown else "")
    return f"{len(run_ids)} run{'s' if len(run_ids) != 1 else ''} ({head})"

