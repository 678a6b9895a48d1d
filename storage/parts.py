"""Where a table's rows live. Each run writes its own files (`epochs/run_id=ID/epochs.parquet`,
`runs/run_id=ID/status.parquet`); compaction (compact.py) folds finished runs' files into few
larger parts (`epochs/part=GEN/epochs.parquet`, `runs/part=GEN/status.parquet`). Readers ask
`sources` which files to read, and which runs' rows in each are superseded by a newer source.

Precedence, the exactly-once rule: a run's per-run file wins over every part; among parts, the
newest GEN holding the run wins. Each part's footer (key-value metadata `rethink.runs`) lists the
run ids it holds and their row counts, so which runs a part covers costs a footer read, never a
scan. Parts are immutable once written (a GEN is unique), so footers are cached per Store; the
listing of parts is not (a compaction adds and deletes parts), except for the Store's per-run
fallback reads, which check `layout.PARTS_MARKER` (the newest finished GEN) to know when their
cached listing is out of date."""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rethink.storage import layout, limits
from rethink.storage.errors import DamagedFileError

if TYPE_CHECKING:
    from rethink.storage.store import Store

Table = Literal["epochs", "status"]
# A remote store's files under a folder (recursive, files only), as scans.Scan.files lists them.
Listing = Callable[[str], "list[pafs.FileInfo]"]
RUNS_KEY = b"rethink.runs"  # footer key: JSON {run_id: rows} of the runs a part holds


@dataclass(frozen=True)
class Source:
    """Parquet files holding rows of one table.

    glob: relative to the store root, always "<folder>/<entry>/<file>", where <entry> is `*`,
    a prefix followed by `*` (`run_id=*`) or one literal folder name (one part).
    exclude: run ids whose rows in these files must be skipped (a newer source holds them); for
    the per-run files (`run_id=*`), whose files are not even opened (a compaction is deleting them:
    storage/retired.py)."""

    glob: str
    exclude: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Part:
    """One part file: its GEN, path (relative to the store root) and {run_id: rows} it holds."""

    gen: str
    path: str
    runs: dict[str, int]


def sources(store: Store, table: Table, files: Listing | None = None) -> list[Source]:
    """The sources of `table` ("epochs" or "status") in the store: the parts oldest first, then the
    per-run files (newest last: a later source wins over an earlier one for a run both hold).
    Costs one listing of the table's folder, one footer per part not seen before on this Store,
    and a stat per run that a part holds and that also has a per-run folder (locally). `files`:
    a remote store's recursive listing that the caller reads the files from too (scans.Scan.files),
    so that one LIST serves both, and both see the same files."""
    from rethink.storage import retired

    gone = retired.skip(store, files)  # what a compaction is deleting now: never opened (retired.py)
    found = [part for part in list_parts(store, table, files) if part.path not in gone.parts]
    if not found:
        return [Source(layout.run_glob(table))]
    held = set().union(*(part.runs for part in found))
    replaced = gone.runs.get(table, frozenset())
    newer = per_run_ids(store, table, held, files) - replaced
    out = []
    for part in reversed(found):
        out.append(Source(layout.part_glob(table, part.gen), frozenset(newer.intersection(part.runs))))
        newer |= part.runs.keys()
    return [*reversed(out), Source(layout.run_glob(table), replaced)]


def list_parts(store: Store, table: Table, files: Listing | None = None) -> list[Part]:
    """The table's parts in the store now, oldest GEN first (footers cached per Store). A part
    whose footer cannot be read is no source (its runs read as having no rows there, which
    status notes and resume retrains), and is remembered for `damaged_parts`: the views refuse
    to count without it rather than give short counts."""
    cache = _cache(store)["footers"]
    found, damaged = [], {}
    for gen in sorted(g for g in _entries(store, table, layout.PART_PREFIX, files) if layout.GEN_PATTERN.fullmatch(g)):
        path = layout.part_path(table, gen)
        if path not in cache:
            try:
                runs = read_footer(store, path)
            except DamagedFileError as exc:
                damaged[path] = str(exc)
                continue
            if runs is None:
                continue  # gone since the listing (a compaction merged it): not a source
            cache[path] = runs
        found.append(Part(gen, path, cache[path]))
    _cache(store)["damaged"][table] = damaged
    return found


def damaged_parts(store: Store) -> dict[str, str]:
    """{path: why} of the parts the Store's latest listings met and could not read."""
    return {path: why for listed in _cache(store)["damaged"].values() for path, why in listed.items()}


def read_footer(store: Store, path: str) -> dict[str, int] | None:
    """{run_id: rows} from a part's footer; None when the file is absent; DamagedFileError when
    it cannot be read, is past its limits or holds no such list (damaged, or not rethink's)."""
    try:
        with store.open_file(path) as found:  # no link followed; past its size limit: damaged
            if found is None:
                return None
            meta = pq.ParquetFile(found[0]).metadata.metadata or {}
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DamagedFileError(f"{path} is damaged: {' '.join(str(exc).split())}") from None
    try:
        runs = json.loads(meta.get(RUNS_KEY, b"null"))
        held = {str(k): int(v) for k, v in runs.items()} if isinstance(runs, dict) else None
    except (ValueError, TypeError, AttributeError):
        held = None
    if held is None:
        raise DamagedFileError(f"{path} is damaged: its footer holds no list of the runs in it")
    return held


def per_run_ids(store: Store, table: Table, candidates: set[str], files: Listing | None = None) -> set[str]:
    """Which of `candidates` have a per-run file of `table` now (remote: in `files`, when given)."""
    if not candidates:
        return set()
    folder, name = layout.TABLE_FILES[table]
    if store.local:
        listed = _entries(store, table, layout.RUN_PREFIX) & candidates
        return {run_id for run_id in listed if store.exists(f"{folder}/{layout.RUN_PREFIX}{run_id}/{name}")}
    found = set()
    for entry, file_name in _remote_files(store, folder, files):
        if file_name == name and entry.startswith(layout.RUN_PREFIX):
            found.add(entry[len(layout.RUN_PREFIX):])
    return found & candidates


def newest_holding(store: Store, table: Table, run_id: str) -> Part | None:
    """The newest part holding `run_id`, from a listing cached on the Store and refreshed when a
    compaction has finished since (PARTS_MARKER changed). Cached is safe: a compaction deletes a
    run's per-run file only after writing its part and the marker, and after deleting the older
    parts it merged, so a reader that finds no per-run file finds a current part."""
    for part in reversed(_cached_listing(store, table)):
        if run_id in part.runs:
            return part
    return None


def read_run(store: Store, table: Table, run_id: str) -> pa.Table | None:
    """The run's rows from the newest part holding it; None when no part does. A part deleted
    under us (a compaction merged it into a newer one) sends us to the listing again."""
    for _ in range(3):
        part = newest_holding(store, table, run_id)
        if part is None:
            return None
        try:
            return _read_part(store, part.path, run_id)
        except FileNotFoundError:
            _cache(store)["listing"].pop(table, None)
    return None


def run_rows(store: Store, table: Table, run_id: str) -> int | None:
    """How many rows the newest part holding the run has for it (footer only); None when none."""
    part = newest_holding(store, table, run_id)
    return None if part is None else part.runs[run_id]


def _read_part(store: Store, path: str, run_id: str) -> pa.Table:
    """One run's rows of a part. Parts are sorted by run_id in modest row groups, so the filter
    reads the groups whose statistics can hold it. A status part is small and cached whole."""
    import pyarrow.compute as pc  # here only: its import costs 70 ms that `rethink status` would pay

    if path.startswith(layout.TABLE_FILES["status"][0] + "/"):
        whole = _cache(store)["status"].get(path)
        if whole is None:
            whole = store.read_arrow(path)  # within the status part's limits (storage/limits.py)
            if whole is None:
                raise FileNotFoundError(path)
            _cache(store)["status"][path] = whole
        return whole.filter(pc.equal(whole["run_id"], run_id))
    with store.open_file(path) as found:
        if found is None:
            raise FileNotFoundError(path)
        parquet = pq.ParquetFile(found[0])
        groups = _groups_holding(parquet.metadata, run_id)
        limits.check_parquet(path, parquet.metadata, limits.Limit(limits.MAX_EPOCHS_BYTES), groups)
        data = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
    return data.filter(pc.equal(data["run_id"], run_id))


def _groups_holding(meta: pq.FileMetaData, run_id: str) -> list[int]:
    """The row groups whose run_id statistics may hold `run_id` (all, without statistics)."""
    column = meta.schema.to_arrow_schema().get_field_index("run_id")
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics if column >= 0 else None
        if stats is None or not stats.has_min_max or stats.min <= run_id <= stats.max:
            groups.append(i)
    return groups


def _cached_listing(store: Store, table: Table) -> list[Part]:
    cache = _cache(store)
    marker = read_marker(store)
    held = cache["listing"].get(table)
    if held is None or held[0] != marker:
        held = (marker, list_parts(store, table))
        cache["listing"][table] = held
    return held[1]


def read_marker(store: Store) -> str | None:
    """The GEN of the newest part a compaction finished writing; None before the first."""
    blob = store.read(layout.PARTS_MARKER)
    if not blob:
        return None
    try:
        gen = json.loads(blob).get("newest")
    except (ValueError, AttributeError):
        return None
    return gen if isinstance(gen, str) else None


def _entries(store: Store, table: Table, prefix: str, files: Listing | None = None) -> set[str]:
    """The suffixes of the table folder's entries named `prefix` + suffix (GENs or run ids);
    remote with `files`: the entries that hold a file."""
    folder = layout.TABLE_FILES[table][0]
    if store.local:
        names = store.listdir(folder)  # storage/localfs.py: no link followed
    elif files is not None:
        names = [entry for entry, _ in _remote_files(store, folder, files)]
    else:
        names = store.listdir(folder)
    return {name[len(prefix):] for name in names if name.startswith(prefix)}


def list_files(store: Store, folder: str) -> list[pafs.FileInfo]:
    """The files under `folder` of the store (recursive), sorted by path: one listing (a LIST
    request per 1,000 keys on S3, never a HEAD per file)."""
    selector = pafs.FileSelector(store.path(folder), allow_not_found=True, recursive=True)
    infos = store.fs.get_file_info(selector)
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _remote_files(store: Store, folder: str, files: Listing | None) -> list[tuple[str, str]]:
    """(entry, file name) of each file two levels under a remote store's `folder`
    (`<folder>/<entry>/<file>`), from `files` or from one listing of its own."""
    infos = list_files(store, folder) if files is None else files(folder)
    base = store.path(folder) + "/"
    pairs = (info.path[len(base):].split("/") for info in infos if info.path.startswith(base))
    return [(p[0], p[1]) for p in pairs if len(p) == 2]


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache(store: Store) -> dict:
    """Per-Store caches: part footers by path and status parts (immutable: safe forever), and the
    part listing per table with the marker it was taken under."""
    cache = _CACHES.get(store)
    if cache is None:
        cache = {"footers": {}, "status": {}, "listing": {}, "damaged": {}}
        _CACHES[store] = cache
    return cache


def forget(store: Store) -> None:
    """Drop the Store's cached listing (after a compaction it ran itself)."""
    _cache(store)["listing"].clear()
