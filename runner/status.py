"""`rethink status`: counts of runs per state for each experiment, and the failed runs with their
errors, read through the store's SQL views."""

from __future__ import annotations

from rich.table import Table

from rethink.errors import RethinkError
from rethink.storage.store import Store
from rethink.storage.views import connect

STATES = ("pending", "running", "done", "failed")


def status_tables(store_uri: str, name: str | None = None) -> list[Table]:
    store = Store.open(store_uri)
    names = [name] if name else store.experiments()
    if name:
        store.experiment_grid(name)  # one clear line when there is no such experiment
    if not names:
        raise RethinkError(f"store '{store_uri}' has no experiments yet; `rethink submit GRID.yaml` starts one")
    db = connect(store.root)
    counts = Table(title=f"runs in {store_uri}", title_justify="left")
    for column in ("experiment", *STATES, "total", "epochs"):
        counts.add_column(column, justify="left" if column == "experiment" else "right")
    failed = Table(title="failed runs", title_justify="left")
    for column in ("experiment", "run_id", "model", "corruption", "level", "seed", "attempts", "error"):
        failed.add_column(column)
    for experiment in names:
        rows = dict(db.execute(
            "select status, count(*) from runs where experiment = ? group by status", [experiment]
        ).fetchall())
        epochs = db.execute(
            "select coalesce(sum(epochs_done), 0), sum(epochs) from runs where experiment = ?", [experiment]
        ).fetchone()
        counts.add_row(experiment, *(str(rows.get(s, 0)) for s in STATES), str(sum(rows.values())),
                       f"{epochs[0]}/{epochs[1]}")
        for row in db.execute(
            "select run_id, model, corruption, level, seed, attempts, error from runs "
            "where experiment = ? and status = 'failed' order by run_id", [experiment]
        ).fetchall():
            failed.add_row(experiment, *("" if v is None else str(v) for v in row))
    return [counts, failed] if failed.row_count else [counts]
