"""What a store can hold that rethink never wrote, told in one sentence per run: a run-list row
whose config is not JSON, lacks a key, or does not hash to its run id; an epoch file (or a part's
rows of a run) that cannot be read whole, holds another run's rows or one epoch twice, or fewer
rows than the status counts. `rethink status` notes these, and `resume` redoes what they touch
(scheduler.rows_intact) or names what it cannot (api.resume)."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from rethink.errors import RethinkError
from rethink.storage import parts
from rethink.storage.layout import RunPaths
from rethink.storage.store import DamagedFileError, Store
from rethink.tasks.spec import NOT_IDENTITY, RunSpec


def config_problem(row: dict) -> str | None:
    """Why the run-list `row` cannot be trusted as the run it names; None when it can. The
    hash is checked on the parsed JSON first (15 µs), the dataclass only built to word a miss."""
    run_id, text = row.get("run_id"), row.get("config")
    try:
        config = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return "its config in runs.parquet is not JSON"
    if not isinstance(config, dict):
        return "its config in runs.parquet is not a JSON object"
    if _quick_id(config) == run_id:
        return None
    try:
        spec = RunSpec.from_dict(config)
    except KeyError as exc:
        return f"its config in runs.parquet lacks the key {exc.args[0]!r}"
    except (RethinkError, TypeError, ValueError, AttributeError) as exc:
        return f"its config in runs.parquet is not a valid run ({' '.join(str(exc).split())})"
    if spec.run_id != run_id:
        return f"its config in runs.parquet hashes to run id {spec.run_id}, not to its own"
    return None


def _not_identity_pattern() -> str:
    """A regex matching the settings that are not a run's identity (`"checkpoint_every":"60s",`)
    in a compact JSON text, for SUSPECT_CONFIGS."""
    names = "|".join(name for names in NOT_IDENTITY.values() for name in names)
    return f'"({names})":("[^"]*"|[^,}}]*),?'


# The run-list rows whose run id DuckDB cannot confirm in one vectorized pass: it re-serializes
# each config compactly (as RunSpec.run_id does; the stored text has sorted keys), drops the
# settings that are not identity and hashes it. 10,000 rows take ≈ 20 ms, against ≈ 0.3 s for
# config_problem on each; a row it cannot confirm (damaged, or spelled in a way its compact
# form does not reproduce, e.g. non-ASCII text) gets config_problem's exact check. Parameter:
# the experiments' names.
SUSPECT_CONFIGS = f"""SELECT experiment, run_id, config FROM run_list
WHERE list_contains(?::VARCHAR[], experiment)
  AND (CASE WHEN json_valid(config)
            THEN left(sha256(regexp_replace(json(config), '{_not_identity_pattern()}', '')), 16)
       END) IS DISTINCT FROM run_id"""


def _quick_id(config: dict) -> str | None:
    """RunSpec.run_id of a config as rethink writes it (RunSpec.to_dict), without building it."""
    try:
        identity = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
        for section, names in NOT_IDENTITY.items():
            for name in names:
                identity[section].pop(name, None)
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def usable_specs(rows: list[dict]) -> tuple[list[RunSpec], dict[str, str]]:
    """The runs of a run list that can be trusted, and {run id: why not} for the others."""
    specs, bad, seen = [], {}, set()
    for row in rows:
        if row.get("run_id") in seen:
            continue  # a row twice in the run list is one run (the views count it once too)
        seen.add(row.get("run_id"))
        problem = config_problem(row)
        if problem is None:
            specs.append(RunSpec.from_dict(json.loads(row["config"])))
        else:
            bad[str(row.get("run_id"))] = problem
    return specs, bad


def epochs_problem(store: Store, run_id: str, epochs_done: int) -> str | None:
    """Why the run's epoch rows (its file, else the newest part holding it) cannot stand for
    `epochs_done` finished epochs; None when they can. Reads them whole: a footer alone passes a
    corrupt page, and a run's rows are small."""
    try:
        rows = _rows(store, run_id)
    except DamagedFileError as exc:
        return f"its epoch rows cannot be read ({exc})"
    if rows is None or rows.num_rows == 0:
        return "it has no epoch rows" if epochs_done else None
    owners = set(rows.column("run_id").to_pylist())
    if owners - {run_id}:
        return f"its epoch file holds rows of another run ({', '.join(sorted(map(str, owners - {run_id})))[:60]})"
    epochs = rows.column("epoch").to_pylist()
    if len(set(epochs)) < len(epochs):
        return f"its epoch file holds an epoch twice ({len(epochs) - len(set(epochs))} duplicate rows)"
    if len(epochs) < epochs_done:
        return f"it has {len(epochs)} epoch rows but its status counts {epochs_done} epochs done"
    return None


def _rows(store: Store, run_id: str) -> pa.Table | None:
    relative = RunPaths(run_id).epochs
    blob = store.read(relative)
    try:
        if blob is not None:
            import pyarrow.parquet as pq

            return pq.read_table(pa.BufferReader(blob))  # every column: a rotten page anywhere counts
        return parts.read_run(store, "epochs", run_id)
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise DamagedFileError(f"{relative if blob is not None else 'its compacted part'} is damaged: "
                               f"{' '.join(str(exc).split())}") from None
