"""The limits on what rethink expands and reads: sized to what rethink itself writes, far above any
real grid or store, so a hostile or damaged file (a sparse 40 GB checkpoint, a five-million-row
run list that compresses to 860 KB) is refused in one line instead of exhausting memory.

Every read of a store file (storage/store.py, parts.py) asks `limit_for` first and checks the
file's size before reading it; a Parquet file's row count and decoded size are checked from its
footer before a row is decoded (`check_parquet`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rethink.storage.errors import DamagedFileError

if TYPE_CHECKING:  # pyarrow is not imported for the limits alone (the dry run reads MAX_GRID_RUNS)
    import pyarrow.parquet as pq

MAX_GRID_RUNS = 1_000_000  # runs in one grid: the largest real grids here have 10^4


def _env_bytes(name: str, default: int) -> int:
    """A byte limit from the environment (a positive integer), else `default`."""
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


CHECKPOINT_ENV = "RETHINK_MAX_CHECKPOINT_BYTES"
MAX_CHECKPOINT_BYTES = _env_bytes(CHECKPOINT_ENV, 4 << 30)  # one run's checkpoint: a big ResNet's is 0.1 GB
SMALL_FILE_BYTES = 1 << 20  # store.json, claims, leases, cancel.json, compaction markers and locks
MAX_GRID_FILE_BYTES = 16 << 20  # a frozen grid.yaml (the grid file itself is read up to 1 MiB)
MAX_STATUS_BYTES = 1 << 20  # a run's status.parquet: one row, its error cut to 500 characters
MAX_RUNS_BYTES = 1 << 30  # runs.parquet, on disk and decoded: a run's config is under 1 KB
MAX_EPOCH_ROWS = 1_000_000  # one run's epoch rows (its epochs file, or its rows in a part)
MAX_EPOCHS_BYTES = 1 << 30  # one run's epochs, on disk and decoded: a row is under 1 KB
MAX_STATUS_PART_ROWS = 10 * MAX_GRID_RUNS  # a compacted status part: runs of all experiments
MAX_STATUS_PART_BYTES = 4 << 30  # read whole and kept while a command runs


@dataclass(frozen=True)
class Limit:
    """The most rethink reads of one kind of store file: bytes on disk (and, for Parquet,
    decoded), rows (Parquet), and the environment variable that raises it, if any."""

    bytes: int
    rows: int | None = None
    env: str | None = None

    def refuse(self, relative: str, size: int, what: str = "bytes") -> DamagedFileError:
        """The one line for a file of `size` (`what`: bytes, rows, bytes decoded) past this limit."""
        most = self.rows if what == "rows" else self.bytes
        raise_it = f"; to read it anyway, raise {self.env}" if self.env else ""
        return DamagedFileError(
            f"{relative} holds {size:,} {what}, more than the {most:,} rethink reads for such a file "
            f"(none it writes is that large){raise_it}; it is damaged or not rethink's: remove it")


def limit_for(relative: str) -> Limit:
    """The limit for the store file `relative` (a path of storage/layout.py), by its name."""
    name = relative.rsplit("/", 1)[-1]
    folder = relative.split("/", 1)[0]
    if name.endswith(".ckpt"):
        return Limit(MAX_CHECKPOINT_BYTES, env=CHECKPOINT_ENV)
    if name == "grid.yaml":
        return Limit(MAX_GRID_FILE_BYTES)
    if name == "runs.parquet":
        return Limit(MAX_RUNS_BYTES, rows=MAX_GRID_RUNS)
    if name == "epochs.parquet":
        if "/part=" in relative:  # a part is read a run at a time (part_run_limit); this bounds the file
            return Limit(64 << 30)
        return Limit(MAX_EPOCHS_BYTES, rows=MAX_EPOCH_ROWS)
    if name == "status.parquet":
        if "/part=" in relative:
            return Limit(MAX_STATUS_PART_BYTES, rows=MAX_STATUS_PART_ROWS)
        return Limit(MAX_STATUS_BYTES, rows=1_000)
    if folder == "epochs":  # any other Parquet file a reader may meet there
        return Limit(MAX_EPOCHS_BYTES, rows=MAX_EPOCH_ROWS)
    return Limit(SMALL_FILE_BYTES)


def check_size(relative: str, size: int) -> Limit:
    """The file's limit, after refusing a `size` (bytes on disk) past it."""
    limit = limit_for(relative)
    if size > limit.bytes:
        raise limit.refuse(relative, size)
    return limit


def check_parquet(relative: str, meta: pq.FileMetaData, limit: Limit | None = None,
                  groups: list[int] | None = None) -> None:
    """Refuse a Parquet file whose footer says it holds more rows, or decodes to more bytes,
    than `limit` (the file's, by default) allows: checked before a row is decoded, so a small
    file of millions of repeated values is refused, not expanded. `groups`: the row groups to be
    read, when not all."""
    limit = limit or limit_for(relative)
    chosen = range(meta.num_row_groups) if groups is None else groups
    rows = sum(meta.row_group(i).num_rows for i in chosen)
    if limit.rows is not None and rows > limit.rows:
        raise limit.refuse(relative, rows, "rows")
    decoded = sum(meta.row_group(i).total_byte_size for i in chosen)
    if decoded > limit.bytes:
        raise limit.refuse(relative, decoded, "bytes decoded")
