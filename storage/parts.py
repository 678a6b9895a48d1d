"""Where a table's rows live. Each run writes its own files (`epochs/run_id=ID/epochs.parquet`,
`runs/run_id=ID/status.parquet`); compaction folds finished runs' files into few larger parts.
Readers ask `sources` which files to read, and which runs' rows in each are superseded by a
newer source (a run resumed after compaction writes its own file again, which wins)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rethink.storage import layout

if TYPE_CHECKING:
    from rethink.storage.store import Store

Table = Literal["epochs", "status"]


@dataclass(frozen=True)
class Source:
    """Parquet files holding rows of one table.

    glob: relative to the store root, always "<folder>/<entry>/<file>", where <entry> is `*`,
    a prefix followed by `*` (`run_id=*`) or one literal folder name (one part).
    exclude: run ids whose rows in these files must be skipped (a newer source holds them)."""

    glob: str
    exclude: frozenset[str] = field(default_factory=frozenset)


def sources(store: Store, table: Table) -> list[Source]:
    """The sources of `table` ("epochs" or "status") in the store, newest last."""
    return [Source(layout.EPOCHS_GLOB if table == "epochs" else layout.STATUS_GLOB)]
