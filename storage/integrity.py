"""Which store file a failed read tripped on. DuckDB names the file for a bad footer, but a
corrupt page in a per-run file fails with "TProtocolException: Invalid data" and no path, so
the user cannot tell which run to train again. Only on that error path, every file the views
read is decoded whole, page by page, and the first that fails is named."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from rethink.storage import layout
from rethink.storage.errors import StoreError
from rethink.storage.store import Store

BATCH_ROWS = 65_536  # decoded at a time: a large part is checked without holding it whole


def first_damaged(store: Store) -> tuple[str, str] | None:
    """(store-relative path, why) of the first file of the views that cannot be decoded whole;
    None when each one can (the failure lies elsewhere)."""
    for relative in _view_files(store):
        why = _undecodable(store, relative)
        if why is not None:
            return relative, why
    return None


def advice(relative: str) -> str:
    """What to do about the damaged file `relative`, in a clause."""
    entry = relative.split("/")[1] if relative.count("/") == 2 else ""
    if entry.startswith(layout.RUN_PREFIX):
        return f"`rethink resume` of its experiment trains run {entry[len(layout.RUN_PREFIX):]} again"
    if relative.endswith("/runs.parquet"):
        return "`rethink resume` of that experiment writes its run list again from the frozen grid"
    return "`rethink resume` of its experiment trains the runs it holds again; then remove the file"


def _view_files(store: Store) -> list[str]:
    """The Parquet files the views read: run lists, per-run files and parts (no link followed)."""
    found = []
    for folder, name in (("experiments", "runs.parquet"), *layout.TABLE_FILES.values()):
        for entry in store.listdir(folder):
            if entry.startswith(("name=", layout.RUN_PREFIX, layout.PART_PREFIX)):
                found.append(f"{folder}/{entry}/{name}")
    return found


def _undecodable(store: Store, relative: str) -> str | None:
    try:
        with store.open_file(relative) as opened:
            if opened is None:
                return None
            for _ in pq.ParquetFile(opened[0]).iter_batches(batch_size=BATCH_ROWS):
                pass
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, StoreError) as exc:
        return " ".join(str(exc).split())[:200]
    return None
