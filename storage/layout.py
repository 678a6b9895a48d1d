"""Every path in a store, in one place. A store is a local directory or a pyarrow filesystem URI;
paths here are relative to its root, Hive-partitioned so DuckDB, pandas and polars read them:

    store.json                                   marks the folder as a rethink store
    driver.json                                  the running driver's lease, only on stores without
                                                 exclusive create (gs://, hdfs://, mock://)
    experiments/name=NAME/grid.yaml              the frozen grid file, as resolved at submit
    experiments/name=NAME/runs.parquet           one row per run of the experiment: its config
    experiments/name=NAME/cancel.json            present while a cancel is requested
    runs/run_id=ID/status.parquet                one row: state, attempts, error, timestamps
    runs/run_id=ID/claims/attempt=NNNN.json      who trains the run; the highest attempt owns it
    epochs/run_id=ID/epochs.parquet              one row per finished epoch, rewritten whole
    checkpoints/run_id=ID/epoch=NNNN.ckpt        resumable state every checkpoint_every epochs
    epochs/part=GEN/epochs.parquet               compacted: epoch rows of many finished runs
    runs/part=GEN/status.parquet                 compacted: their status rows (same GEN, same runs)
    compaction/newest.json                       the GEN of the newest part a compaction finished
    compaction/lock=NNNN.json                    held while a compaction runs; the highest owns it
    compaction/retired=GEN.json                  while a compaction deletes: the files part GEN replaced

A part's footer lists the runs it holds. A run's per-run file wins over any part, and the newest
GEN holding a run wins among parts (storage/parts.py, storage/compact.py). The `*` globs below
match per-run files and parts alike: what plain readers read; rethink's views read
`parts.sources`, which says which runs to skip in which part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rethink.errors import SpecError

MARKER = "store.json"
DRIVER_LEASE = "driver.json"  # Store.driver_lease: one driver at a time where creates are not exclusive
NAME_MAX = 100  # characters: `name=NAME` stays far inside a file name's 255 bytes
NAME_PATTERN = re.compile(rf"[a-z0-9_-]{{1,{NAME_MAX}}}")  # use with fullmatch, or check_name
NAME_RULE = f"match [a-z0-9_-]+ (lower-case letters, digits, _ and -) and be at most {NAME_MAX} characters"


def check_name(name: object) -> str:
    """The experiment name, or a SpecError saying the rule: the one check every command and
    every experiment path goes through, so a name never climbs out of the store ('../x')."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return name
    shown = repr(name) if not isinstance(name, str) or len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
    raise SpecError(f"name must {NAME_RULE} (e.g. fig1-mlp), got {shown}")


@dataclass(frozen=True)
class ExperimentPaths:
    name: str

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def folder(self) -> str:
        return f"experiments/name={self.name}"

    @property
    def grid(self) -> str:
        return f"{self.folder}/grid.yaml"

    @property
    def runs(self) -> str:
        return f"{self.folder}/runs.parquet"

    @property
    def cancel(self) -> str:
        return f"{self.folder}/cancel.json"


@dataclass(frozen=True)
class RunPaths:
    run_id: str

    @property
    def status(self) -> str:
        return f"runs/run_id={self.run_id}/status.parquet"

    @property
    def claims(self) -> str:
        return f"runs/run_id={self.run_id}/claims"

    def claim(self, attempt: int) -> str:
        return f"{self.claims}/attempt={attempt:04d}.json"

    @property
    def epochs(self) -> str:
        return f"epochs/run_id={self.run_id}/epochs.parquet"

    @property
    def checkpoints(self) -> str:
        return f"checkpoints/run_id={self.run_id}"

    def checkpoint(self, epoch: int) -> str:
        return f"{self.checkpoints}/epoch={epoch:04d}.ckpt"


# Glob patterns (relative to the store root). STATUS_GLOB and EPOCHS_GLOB match per-run files
# and parts alike; read them through parts.sources, which says what to skip.
STATUS_GLOB = "runs/*/status.parquet"
EPOCHS_GLOB = "epochs/*/epochs.parquet"
EXPERIMENT_RUNS_GLOB = "experiments/*/runs.parquet"

# Compacted parts (storage/compact.py). GEN sorts by time: YYYYMMDDTHHMMSSffffffZ-<8 hex>.
RUN_PREFIX = "run_id="
PART_PREFIX = "part="
TABLE_FILES = {"epochs": ("epochs", "epochs.parquet"), "status": ("runs", "status.parquet")}  # folder, file
PARTS_MARKER = "compaction/newest.json"
COMPACT_LOCKS = "compaction"
GEN_PATTERN = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")


def run_glob(table: str) -> str:
    """The per-run files of `table` ("epochs" or "status")."""
    folder, name = TABLE_FILES[table]
    return f"{folder}/{RUN_PREFIX}*/{name}"


def part_path(table: str, gen: str) -> str:
    folder, name = TABLE_FILES[table]
    return f"{folder}/{PART_PREFIX}{gen}/{name}"


part_glob = part_path  # one part: its path is its own glob (a GEN holds no glob characters)


def retired_record(gen: str) -> str:
    """The record of the files part GEN replaced, while its compaction deletes them (retired.py)."""
    return f"{COMPACT_LOCKS}/retired={gen}.json"


def compact_lock(number: int) -> str:
    return f"{COMPACT_LOCKS}/lock={number:04d}.json"


def lock_of(name: str) -> int | None:
    match = re.fullmatch(r"lock=(\d+)\.json", name)
    return int(match.group(1)) if match else None


def attempt_of(claim_name: str) -> int | None:
    match = re.fullmatch(r"attempt=(\d+)\.json", claim_name)
    return int(match.group(1)) if match else None


def epoch_of(checkpoint_name: str) -> int | None:
    match = re.fullmatch(r"epoch=(\d+)\.ckpt", checkpoint_name)
    return int(match.group(1)) if match else None
