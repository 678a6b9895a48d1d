"""Where the views' rows come from: a table's files, as one SELECT for DuckDB. The reader
(reader.py) asks `parts.sources` which files hold a table; each Source becomes one SELECT here,
less the rows of the runs it excludes, and the sources are stitched with UNION ALL BY NAME.

Local stores: DuckDB reads the files itself, `read_parquet` over the source's glob (the fast
path; the lock then admits the store's folder and nothing else).

Remote stores (s3://, any pyarrow filesystem): DuckDB cannot reach them, since its httpfs
extension is downloaded on first use and these machines are offline. So the store's own pyarrow
filesystem lists each folder once, recursively (one LIST request per 1,000 keys, never a HEAD
per file), and each source's rows are handed to DuckDB as Arrow, registered on the connection:
- a source of up to IN_MEMORY_BYTES (the listing gives the sizes) is read whole when connecting,
  one GET per file, many at once: then a command's many queries (status, report) run in memory;
- a larger one becomes a lazy pyarrow dataset (the sizes again spare a HEAD per file), scanned
  by each query for the columns and rows it reads.
Either way DuckDB itself opens no file, and the rows come in the table's declared schema: a file
written before a column existed reads it as NULL, with no pass over every file's schema (what
`union_by_name` costs locally)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rethink.storage.parts import Source, list_files
from rethink.storage.store import Store

GLOB_CHARS = "[]*?"
# A remote source up to this size (Parquet bytes) is read whole when connecting (a report's dozen
# queries then fetch nothing again); a larger one stays lazy, each query fetching what it reads.
IN_MEMORY_BYTES = 64 * 2**20
READAHEAD = 16  # files fetched at once while reading a source whole: small files cost latency
WHOLE_FILE_BYTES = 2**20  # a file up to this size is fetched in one GET


class Scan:
    """The tables of one store as SQL, for one connection. `folder`: the store's local folder
    (resolved), or None for a remote store."""

    def __init__(self, store: Store, folder: str | None):
        self.store, self.folder = store, folder
        self._listed: dict[str, list[pafs.FileInfo]] = {}  # remote: folder -> its files, listed once
        self._registered = 0

    def table(self, con: duckdb.DuckDBPyConnection, sources: Sequence[Source], table_schema: pa.Schema,
              union_by_name: bool | None) -> str:
        """SELECT every column of `table_schema` (and any a local file adds) from `sources`, the
        rows of each source's excluded runs left out; zero typed rows while no file exists."""
        selects = []
        for source in sources:
            skip = source.exclude if split(source.glob)[1].endswith("*") else frozenset()  # never opened
            if self.folder is not None:
                select = self._local(con, source.glob, table_schema, union_by_name, skip)
            else:
                select = self._remote(con, source.glob, table_schema, skip)
            if select is None:
                continue
            if self.folder is not None and split(source.glob)[1].startswith("run_id="):
                # which run's file each row is in (views.py: the path wins over the column)
                select = (f"SELECT * EXCLUDE (filename), split_part(filename, '/', -2)[8:] AS file_run_id FROM "
                          f"({select.replace('hive_partitioning = false)', 'hive_partitioning = false, filename = true)')})")
            if source.exclude:
                runs = ", ".join(literal(run_id) for run_id in sorted(source.exclude))
                select = f"SELECT * FROM ({select}) WHERE run_id NOT IN ({runs})"
            selects.append(select)
        return "\n    UNION ALL BY NAME\n    ".join(selects) if selects else empty(table_schema)

    # -- local: DuckDB reads the files ----------------------------------------------------------

    def _local(self, con: duckdb.DuckDBPyConnection, glob: str, table_schema: pa.Schema,
               union_by_name: bool | None, skip: frozenset[str] = frozenset()) -> str | None:
        """`union_by_name` says how the files are stitched together. True: DuckDB reads every
        file's schema first, so files written before a column existed mix with newer ones (at
        10,000 runs that costs seconds per query). False: the first file's schema stands for all,
        and a query reading a column some other file lacks fails loudly (`is_schema_mismatch`).
        None: False, unless the first file lacks a column of the current schema that another
        file has."""
        first = next(self._local_matches(glob, skip), None)
        if first is None:
            return None
        files = self._local_files(glob, skip)
        try:
            present = set(pq.read_schema(first).names)  # once: a part's footer is large
            missing = [name for name in table_schema.names if name not in present]
        except (pa.ArrowException, OSError):  # not Parquet: DuckDB names the file when it reads it
            missing = table_schema.names
        if union_by_name is None:
            # Files differ where a newer rethink added columns. If the first file lacks some, one
            # look at every file's schema (once, here) tells whether any file has them.
            union_by_name = bool(missing) and con.execute(
                f"SELECT count(*) > 0 FROM parquet_schema({files}) WHERE name IN ({', '.join(map(literal, missing))})"
            ).fetchall()[0][0]
        read = (f"SELECT * FROM read_parquet({files}, "
                f"union_by_name = {str(union_by_name).lower()}, hive_partitioning = false)")
        # The first file names and types the columns; where it lacks some, the empty typed rows
        # add them, as NULL. Otherwise the scan stays plain.
        return f"{empty(table_schema)}\n    UNION ALL BY NAME\n    {read}" if missing else read

    def _local_files(self, glob: str, skip: frozenset[str] = frozenset()) -> str:
        """The SQL for the files of `glob`. A store folder whose path holds a glob character
        (`s[1]*`) is a folder, not a pattern, and a literal entry is one folder: their files are
        listed here, one by one, since the read-only lock (allowed_directories) checks a
        pattern's text as a path. So are the files of a glob with runs to `skip` (parts.Source)."""
        entry = split(glob)[1]
        if not any(c in self.folder for c in GLOB_CHARS) and entry.endswith("*") and not skip:
            return literal(f"{self.folder}/{glob}")
        return "[" + ", ".join(literal(str(path)) for path in self._local_matches(glob, skip)) + "]"

    def _local_matches(self, glob: str, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
        """The files of `glob` under the store's folder (taken literally), in DuckDB's sorted
        order, less those of the runs in `skip` (entries `<prefix>ID`)."""
        folder, entry, name = split(glob)
        files = self.store.files
        assert files is not None
        try:  # a link among the entries is refused: DuckDB would follow it out of the store
            entries = [e for e in files.listdir(folder, links=False) if matches(entry, e) and not skipped(entry, e, skip)]
        except NotADirectoryError:
            return
        for found in entries:
            if self.store.exists(f"{folder}/{found}/{name}"):
                yield Path(self.folder, folder, found, name)

    # -- remote: pyarrow reads the files, DuckDB scans them through Arrow ------------------------

    def _remote(self, con: duckdb.DuckDBPyConnection, glob: str, table_schema: pa.Schema,
                skip: frozenset[str] = frozenset()) -> str | None:
        folder, entry, name = split(glob)
        base = self.store.path(folder) + "/"
        files = []
        for info in self.files(folder):
            parts = info.path[len(base):].split("/")
            if len(parts) == 2 and parts[1] == name and matches(entry, parts[0]) and not skipped(entry, parts[0], skip):
                files.append(info)
        if not files:
            return None
        if sum(info.size for info in files) <= IN_MEMORY_BYTES:
            rows: object = self._read_whole(files, table_schema)
        else:
            import pyarrow.dataset as ds  # here only: its import alone (pandas with it) takes 0.3 s

            fmt = ds.ParquetFileFormat()
            fragments = [fmt.make_fragment(info.path, self.store.fs, file_size=info.size) for info in files]
            rows = ds.FileSystemDataset(fragments, table_schema, fmt, self.store.fs)
        view = f"rethink_{folder}_{self._registered}"  # a name user SQL could read: store rows only
        self._registered += 1
        con.register(view, rows)
        return f"SELECT * FROM {view}"

    def _read_whole(self, files: list[pafs.FileInfo], table_schema: pa.Schema) -> pa.Table:
        """Every file's rows, READAHEAD files at a time, in the declared schema. A small file is
        one GET; a larger one (a compacted part) its column chunks fetched side by side, which
        took a third of one GET's time for 9 MB here (after a HEAD for its size)."""

        def read(info: pafs.FileInfo) -> pa.Table:
            if info.size is not None and info.size <= WHOLE_FILE_BYTES:
                with self.store.fs.open_input_stream(info.path) as f:
                    data = pq.ParquetFile(pa.BufferReader(f.read())).read()
            else:
                with self.store.fs.open_input_file(info.path) as f:
                    data = pq.ParquetFile(f, pre_buffer=True).read()
            return conform(data, table_schema)

        with ThreadPoolExecutor(READAHEAD) as pool:
            return pa.concat_tables(pool.map(read, files))

    def files(self, folder: str) -> list[pafs.FileInfo]:
        """The files under `folder` of a remote store, sorted by path; one listing per folder and
        connection, shared with parts.sources (reader.connect)."""
        if folder not in self._listed:
            self._listed[folder] = list_files(self.store, folder)
        return self._listed[folder]


def split(glob: str) -> tuple[str, str, str]:
    """A source's glob as (folder, entry, file): every glob in parts.py is `<folder>/<entry>/<file>`."""
    pieces = glob.split("/")
    if len(pieces) != 3 or any(c in pieces[0] + pieces[2] for c in GLOB_CHARS):
        raise ValueError(f"unexpected glob {glob!r}: want <folder>/<entry>/<file>")
    return pieces[0], pieces[1], pieces[2]


def matches(entry: str, name: str) -> bool:
    """An entry pattern is `*`, a prefix followed by `*` (`run_id=*`), or one literal name."""
    if entry.endswith("*") and "*" not in entry[:-1]:
        return name.startswith(entry[:-1])
    return name == entry


def conform(data: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """`data` in the columns and types of `table_schema`: a column it lacks (an older file) as
    NULL, one it has beyond them dropped."""
    columns = [data[f.name].cast(f.type) if f.name in data.column_names else pa.nulls(len(data), f.type)
               for f in table_schema]
    return pa.Table.from_arrays(columns, schema=table_schema.remove_metadata())


def empty(table_schema: pa.Schema) -> str:
    """Zero rows with the columns and types of `table_schema`."""
    return "SELECT " + ", ".join(
        f"CAST(NULL AS {_sql_type(field.type)}) AS {identifier(field.name)}" for field in table_schema
    ) + " WHERE false"


def _sql_type(arrow: pa.DataType) -> str:
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "VARCHAR"
    if pa.types.is_boolean(arrow):
        return "BOOLEAN"
    if pa.types.is_integer(arrow):
        return {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[arrow.bit_width]
    if pa.types.is_floating(arrow):
        return "FLOAT" if arrow.bit_width == 32 else "DOUBLE"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMPTZ" if arrow.tz else "TIMESTAMP"
    raise TypeError(f"no DuckDB type for {arrow}")


def skipped(entry: str, name: str, skip: frozenset[str]) -> bool:
    """Whether entry `name` of pattern `entry` (`run_id=*`) is the folder of a run in `skip`."""
    return bool(skip) and entry.endswith("*") and name[len(entry) - 1:] in skip


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
