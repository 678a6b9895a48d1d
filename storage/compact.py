"""Compaction: finished runs' per-run files (`epochs/run_id=ID/epochs.parquet`,
`runs/run_id=ID/status.parquet`) folded into one pair of parts (`epochs/part=GEN/epochs.parquet`,
`runs/part=GEN/status.parquet`), so that reading 10,000 runs costs a few files, not 20,000.

Why this shape:
- Parts sit where the plain readers already look (`epochs/*/*.parquet`), so the README's DuckDB,
  pandas and polars lines read them unchanged; each part's footer lists the runs it holds, so
  rethink learns a part's runs from its footer alone (storage/parts.py).
- Precedence (parts.py) makes every intermediate state exact for rethink's own reads: a per-run
  file wins over any part, the newest GEN wins among parts. So the protocol only ever adds a
  winner before removing what it supersedes, and a crash at any step leaves views exact:
    1. take the compaction lock (`compaction/lock=NNNN.json`; one compaction at a time, so two
       never merge the same parts into diverging copies; a dead holder's lock is stale);
    2. pick the runs to fold: the experiment's runs that have per-run files, plus any run that a
       part holds and that has a per-run file again (re-run after compaction, or a compaction
       killed half-way), each finished (done, failed, cancelled) with no live claim;
    3. choose the older parts to merge: every part holding a run the new part will hold (so no
       run stays in two parts), and size-tiered, every part with no more rows than the new part
       so far (parts grow geometrically: few parts, each row rewritten O(log n) times, and a
       compaction with little to do merges only small parts);
    4. write the new epochs part, then the status part (GEN newer than all), then the record
       `compaction/retired=GEN.json` of the files the part replaces, then the marker
       `compaction/newest.json` that tells cached readers to list parts again (storage/retired.py:
       how a query running meanwhile never reads a file that step 5 or 6 deletes);
    5. delete the merged parts;
    6. delete each folded run's per-run files, unless the run was claimed again or the file
       rewritten since it was read (then it stays, wins, and the next compaction folds it);
       then the marker again, then the record.
  The next compaction finishes a killed one: first the deletions of any record left (after
  writing the marker again), then its other leftovers: per-run files of runs held in parts
  (step 2 picks them up) and runs held in two parts (step 3 merges those).
- Plain readers have no precedence: between steps 4 and 6 they see a folded run's rows twice
  (its per-run file and the new part); once compaction has finished, once.

$RETHINK_COMPACT_STOP_AT=<step> makes the process exit at once after that step (kill tests)."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rethink.states import RunState, StopReason
from rethink.storage import envtime, layout, parts, retired, schema
from rethink.storage.claims import gone_from_here, parse_owner
from rethink.storage.store import DamagedFileError, Store, StoreError

STOP_ENV = "RETHINK_COMPACT_STOP_AT"
LOCK_TIMEOUT_S = envtime.seconds("RETHINK_COMPACT_LOCK_TIMEOUT", 3600.0)  # a holder this quiet is gone
THREADS = 8  # per-run files read and deleted at once
ROW_GROUP = 65_536  # rows per row group: a reader of one run's rows reads one or two groups
SCHEMAS = {"epochs": schema.EPOCHS, "status": schema.STATUS}


class CompactionBusy(StoreError):
    """Another compaction holds the store's compaction lock."""


@dataclass
class Compaction:
    """What one compaction did."""

    experiment: str
    runs: int = 0  # runs whose per-run files were folded into the new part
    rows: int = 0  # epoch rows those files held
    merged: int = 0  # older parts merged into the new one
    kept: int = 0  # runs folded whose files changed meanwhile: kept, folded next time
    skipped: int = 0  # runs with files of their own not folded: unfinished, running or damaged
    files_before: int = 0  # epochs and status files: the per-run files looked at, all parts
    files_after: int = 0
    gen: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.gen is None:
            why = f" ({_runs(self.skipped)} unfinished or running)" if self.skipped else ""
            return f"{self.experiment}: nothing to compact{why}"
        merged = f", {self.merged} older part{'s' if self.merged != 1 else ''} merged" if self.merged else ""
        left = f"; {_runs(self.skipped)} unfinished or running left as they are" if self.skipped else ""
        return (f"{self.experiment}: folded {_runs(self.runs)} "
                f"({self.rows:,} epoch rows) into part {self.gen}{merged}; "
                f"epochs and status files {self.files_before:,} → {self.files_after:,}{left}")


def _runs(n: int) -> str:
    return f"{n:,} run{'s' if n != 1 else ''}"


@dataclass
class _Run:
    run_id: str
    attempt: int  # newest claim's number when read: a higher one later means it was resumed
    tables: dict[str, pa.Table]  # table -> its per-run rows, for the tables it has a file of
    idents: dict[str, tuple]  # per-run path -> identity when read


def compact(store: Store, name: str) -> Compaction:
    """Fold experiment `name`'s finished runs into a new part (see the module docstring)."""
    run_ids = {row["run_id"] for row in store.experiment_rows(name)}  # an unknown name: one line
    with _locked(store):
        result = _compact(store, name, run_ids)
    parts.forget(store)
    return result


def _compact(store: Store, name: str, run_ids: set[str]) -> Compaction:
    result = Compaction(name)
    _finish_records(store)
    found = {table: parts.list_parts(store, table) for table in SCHEMAS}
    held = {run for table in SCHEMAS for part in found[table] for run in part.runs}
    files = {table: parts.per_run_ids(store, table, run_ids | held) for table in SCHEMAS}
    result.files_before = sum(map(len, files.values())) + sum(map(len, found.values()))
    folded = []
    with ThreadPoolExecutor(THREADS) as pool:  # small files: their latency, not their bytes, costs
        for run in pool.map(lambda run_id: _read_run(store, run_id, [t for t in SCHEMAS if run_id in files[t]]),
                            sorted(files["epochs"] | files["status"])):
            if run is None:
                result.skipped += 1
            else:
                folded.append(run)
    _stop_at("read")
    gens, runs_of, rows_of = _gens(found)
    merged = _to_merge(gens, runs_of, rows_of, folded)
    if not folded and not merged:
        result.files_after = result.files_before
        return result
    gen = _new_gen(store, gens)
    written = 0
    for table in SCHEMAS:
        data = _part_table(store, table, found[table], merged, folded)
        if data.num_rows:
            _write_part(store, layout.part_path(table, gen), data)
            written += 1
        _stop_at(f"{table}_part")
    record = retired.record_path(gen)
    retired.write(store, gen, [part.path for table in SCHEMAS for part in found[table] if part.gen in merged],
                  {run.run_id: (run.attempt, run.idents) for run in folded})
    _stop_at("recorded")
    store.write(layout.PARTS_MARKER, retired.new_marker(gen))  # from here on, readers rerun or skip
    _stop_at("marker")
    for table in SCHEMAS:
        for part in found[table]:
            if part.gen in merged:
                store.delete(part.path)
                _remove_folder(store, part.path)
    _stop_at("parts_deleted")
    deleted = 0
    with ThreadPoolExecutor(THREADS) as pool:
        for run, gone in zip(folded, pool.map(lambda run: _delete_run(store, run), folded)):
            deleted += gone
            result.kept += gone < len(run.idents)
            _stop_at("run_deleted")
    _stop_at("runs_deleted")
    store.write(layout.PARTS_MARKER, retired.new_marker(gen))  # a reader that failed meanwhile sees a change
    store.delete(record)
    result.gen, result.merged = gen, len(merged)
    result.runs = len(folded)
    result.rows = sum(run.tables["epochs"].num_rows for run in folded if "epochs" in run.tables)
    result.files_after = result.files_before - deleted - sum(
        1 for table in SCHEMAS for part in found[table] if part.gen in merged) + written
    return result


def _finish_records(store: Store) -> None:
    """Finish the deletions of a compaction killed before it deleted its record: the marker
    first (a reader that listed the store before that record sees the change and reruns), then
    its parts and runs' files (each as step 6 deletes them), then the record."""
    left = retired.records(store)
    if not left:
        return
    gens = [retired.gen_of(record.path) for record in left] + [parts.read_marker(store) or ""]
    store.write(layout.PARTS_MARKER, retired.new_marker(max(gens)))
    for record in left:
        for path in record.parts:
            store.delete(path)
            _remove_folder(store, path)
        for run_id, (attempt, idents) in record.runs.items():
            _delete_run(store, _Run(run_id, attempt, {}, dict(idents)))
    store.write(layout.PARTS_MARKER, retired.new_marker(max(gens)))
    for record in left:
        store.delete(record.path)


def _read_run(store: Store, run_id: str, tables: list[str]) -> _Run | None:
    """The run's per-run files, when it is finished and no live attempt holds it; None otherwise
    (and for a damaged file: resume redoes such a run, compaction leaves it be)."""
    if store.claim_holder(run_id) is not None:
        return None
    newest = store.newest_claim(run_id)
    run = _Run(run_id, newest[0] if newest else 0, {}, {})
    for table in tables:
        folder, file = layout.TABLE_FILES[table]
        relative = f"{folder}/{layout.RUN_PREFIX}{run_id}/{file}"
        ident = _ident(store, relative)  # before reading: a rewrite in between shows as a change
        if ident is None:
            continue
        try:
            data = store.read_arrow(relative)  # within its limits, following no link (store.py)
            if data is None:
                continue
            run.tables[table] = _conform(data, SCHEMAS[table], run_id)
        except (pa.ArrowException, OSError, ValueError, DamagedFileError):
            return None
        run.idents[relative] = ident
    if not run.idents:
        return None
    status = run.tables["status"].to_pylist() if "status" in run.tables else None
    row = (status or [None])[0] if status is not None else store.read_status(run_id)
    if not row or not _finished(row):
        return None
    return run


def _finished(row: dict) -> bool:
    return row.get("status") in (RunState.DONE, RunState.FAILED) or (
        row.get("status") == RunState.PENDING and row.get("stop_reason") == StopReason.CANCELLED)


def _conform(data: pa.Table, table_schema: pa.Schema, run_id: str) -> pa.Table:
    """The rows in exactly `table_schema` (columns an older rethink did not write are null); a
    column of another type, an unknown column or another run's rows is an error (damaged)."""
    unknown = set(data.column_names) - set(table_schema.names)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}")
    out = _conform_any(data, table_schema)
    if data.num_rows and not pc.all(pc.equal(out["run_id"], run_id)).as_py():
        raise ValueError("rows of another run")
    return out


def _gens(found: dict[str, list[parts.Part]]) -> tuple[list[str], dict[str, set[str]], dict[str, int]]:
    """Every GEN with a part, oldest first; the runs each GEN holds (either table); its epoch rows."""
    runs_of: dict[str, set[str]] = {}
    rows_of: dict[str, int] = {}
    for table, listed in found.items():
        for part in listed:
            runs_of.setdefault(part.gen, set()).update(part.runs)
            rows_of[part.gen] = rows_of.get(part.gen, 0) + (sum(part.runs.values()) if table == "epochs" else 0)
    return sorted(runs_of), runs_of, rows_of


def _to_merge(gens: list[str], runs_of: dict[str, set[str]], rows_of: dict[str, int],
              folded: list[_Run]) -> set[str]:
    """The GENs to merge into the new part: those holding a run it will hold (repeated until
    none is left, which also merges runs a killed compaction left in two parts), and the ones no
    bigger than it (size tiers)."""
    count: dict[str, int] = {}
    for gen in gens:
        for run in runs_of[gen]:
            count[run] = count.get(run, 0) + 1
    holds = {run.run_id for run in folded} | {run for run, n in count.items() if n > 1}
    new_rows = sum(run.tables["epochs"].num_rows for run in folded if "epochs" in run.tables)
    merged: set[str] = set()
    while True:
        more = {gen for gen in gens if gen not in merged and runs_of[gen] & holds}
        if holds and not more:
            size = new_rows + sum(rows_of[g] for g in merged)
            more = {gen for gen in gens if gen not in merged and rows_of[gen] <= size}
        if not more:
            return merged
        merged |= more
        for gen in more:
            holds |= runs_of[gen]


def _part_table(store: Store, table: str, listed: list[parts.Part], merged: set[str],
                folded: list[_Run]) -> pa.Table:
    """The new part's rows of `table`: each folded run's per-run rows, and for every other run of
    a merged part, its rows in the newest part holding it; sorted by run, then epoch."""
    newest: dict[str, parts.Part] = {}
    for part in listed:
        for run in part.runs:
            newest[run] = part
    own = {run.run_id for run in folded if table in run.tables}
    pieces = [run.tables[table] for run in folded if table in run.tables]
    for part in listed:
        if part.gen not in merged:
            continue
        keep = [run for run in part.runs if newest[run] is part and run not in own]
        if not keep:
            continue
        with store.fs.open_input_file(store.path(part.path)) as f:
            data = _conform_any(pq.read_table(f), SCHEMAS[table])
        pieces.append(data.filter(pc.is_in(data["run_id"], pa.array(keep, pa.string()))))
    data = pa.concat_tables(pieces) if pieces else SCHEMAS[table].empty_table()
    keys = [("run_id", "ascending")] + ([("epoch", "ascending")] if table == "epochs" else [])
    return data.sort_by(keys)


def _conform_any(data: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """`data` with exactly the columns of `table_schema`, in order; missing ones null."""
    columns = [data[f.name].cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
               for f in table_schema]
    return pa.Table.from_arrays(columns, schema=table_schema)


def _write_part(store: Store, relative: str, data: pa.Table) -> None:
    """One part, whole or not at all, its footer listing {run_id: rows}."""
    runs: dict[str, int] = {}
    for run_id in data["run_id"].to_pylist():
        runs[run_id] = runs.get(run_id, 0) + 1
    meta = dict(data.schema.metadata or {}) | {parts.RUNS_KEY: json.dumps(runs).encode()}
    buffer = io.BytesIO()
    pq.write_table(data.replace_schema_metadata(meta), buffer, row_group_size=ROW_GROUP)
    store.write(relative, buffer.getvalue())


def _new_gen(store: Store, gens: list[str]) -> str:
    """A GEN after every existing one (and the marker's): a UTC time to the microsecond, moved
    past the newest when this machine's clock is behind, plus 8 random hex digits."""
    at = datetime.now(timezone.utc)
    latest = max([*gens, parts.read_marker(store) or ""])
    if latest:
        after = datetime.strptime(latest[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
        at = max(at, after + timedelta(microseconds=1))
    return f"{at:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


def _delete_run(store: Store, run: _Run) -> int:
    """Delete the run's folded per-run files, epochs first; none when it was claimed again since
    it was read. Returns how many went."""
    newest = store.newest_claim(run.run_id)
    if (newest[0] if newest else 0) != run.attempt or store.claim_holder(run.run_id) is not None:
        return 0
    gone = 0
    for relative in sorted(run.idents, key=lambda r: not r.startswith("epochs/")):
        if not _delete_if_same(store, relative, run.idents[relative]):
            continue
        gone += 1
        _stop_at("run_epochs_deleted" if relative.startswith("epochs/") else "run_status_deleted")
        _remove_folder(store, relative)
    return gone


def _delete_if_same(store: Store, relative: str, ident: tuple) -> bool:
    """Delete the file if it is still the one read. Locally it is first renamed aside, so a
    rewrite landing in between is seen and put back (never lost); elsewhere it is compared,
    then deleted. Locally every step goes through storage/localfs.py: no link is followed."""
    if store.files is None:
        if _ident(store, relative) != ident:
            return False
        store.delete(relative)
        return True
    folder, name = relative.rsplit("/", 1)
    aside = f".{name}.compact-{uuid.uuid4().hex[:8]}.tmp"
    with store._writing(relative):
        if not store.files.rename(relative, aside):
            return False
        same = _local_ident(store, f"{folder}/{aside}") == ident
        if not same:
            store.files.link(f"{folder}/{aside}", name)  # the rewrite goes back, unless a newer one is there
        store.files.delete(f"{folder}/{aside}")
    return same


def _ident(store: Store, relative: str) -> tuple | None:
    """What tells a file from its rewrite: inode, mtime and size locally; mtime and size
    elsewhere. None when it is absent."""
    if store.files is not None:
        with store._reading(relative):
            return _local_ident(store, relative)
    info = store.fs.get_file_info(store.path(relative))
    if info.type != pafs.FileType.File:
        return None
    return (info.mtime_ns, info.size)


def _local_ident(store: Store, relative: str) -> tuple | None:
    """A local file's (inode, mtime, size), its own (a link's, never its target's); None when absent."""
    assert store.files is not None
    st = store.files.stat(relative)
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


def _remove_folder(store: Store, relative: str) -> None:
    """Remove the file's folder when it is empty now (locally; object stores have no folders)."""
    if store.files is not None:
        store.files.rmdir(relative.rsplit("/", 1)[0])


@contextmanager
def _locked(store: Store) -> Iterator[None]:
    """Hold the store's compaction lock: create the next `compaction/lock=NNNN.json` exclusively,
    unless the highest one has a live holder (CompactionBusy)."""
    numbers = [n for n in map(layout.lock_of, store.listdir(layout.COMPACT_LOCKS)) if n is not None]
    top = max(numbers, default=0)
    if top:
        holder = _live_holder(store, layout.compact_lock(top))
        if holder is not None:
            raise CompactionBusy(
                f"another compaction of store '{store.uri}' is running (host {holder.get('host')}, pid "
                f"{holder.get('pid')}, since {holder.get('at')}); run `rethink compact` again when it ends")
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "at": datetime.now(timezone.utc).isoformat()}
    if not store._create_exclusive(layout.compact_lock(top + 1), json.dumps(owner).encode()):
        raise CompactionBusy(f"another compaction of store '{store.uri}' started just now; "
                             "run `rethink compact` again when it ends")
    _stop_at("locked")
    try:
        yield
    finally:
        for number in range(top + 1, 0, -1):
            if number == top + 1 or number in numbers:
                store.delete(layout.compact_lock(number))


def _live_holder(store: Store, relative: str) -> dict | None:
    """The lock's holder while it may still be at work: not a process gone from this host, not
    silent for LOCK_TIMEOUT_S; a damaged lock holds nothing."""
    holder = parse_owner(store.read(relative) or b"{}")
    if not holder or gone_from_here(holder):
        return None
    info = store.fs.get_file_info(store.path(relative))
    if info.mtime is not None and time.time() - info.mtime.timestamp() > LOCK_TIMEOUT_S:
        return None
    return holder


def _stop_at(step: str) -> None:
    """Kill tests: exit at once, as SIGKILL would, right after `step`."""
    if os.environ.get(STOP_ENV) == step:
        os._exit(77)
