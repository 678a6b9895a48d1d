"""The SQL face of a store: DuckDB views `epochs` and `runs` over its Parquet files (the
summaries of summaries.py are built on these two), and the guard that keeps `rethink query`
read-only.

Read-only takes two locks, because neither holds alone (COMPONENTS.md, DuckDB 2.0): only reading
statement types pass `check_read_only`, and the connection may touch no file outside the store
(`allowed_directories` + `enable_external_access=false`), which alone would still let
`COPY ... TO '<store>/x'` write into the store."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rethink.storage import layout, schema
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.summaries import create_summaries

READ_TYPES = ("SELECT", "WITH", "DESCRIBE", "SUMMARIZE", "EXPLAIN", "SHOW")

# Keywords that start a statement which writes or loads. A reading statement type can still hide
# one (a data-modifying CTE `WITH x AS (INSERT ... RETURNING *)`, `COPY (PIVOT ...) TO`, which
# DuckDB types MULTI, `EXPLAIN ANALYZE COPY ...`, which runs the COPY).
_WRITE_WORDS = frozenset("""insert update delete merge copy create drop alter attach detach
    export import install load pragma checkpoint vacuum truncate call set reset""".split())

DEFAULT_FIT_THRESHOLD = 0.99  # DESIGN.md: epochs to fit = first epoch with train_acc >= 0.99

# One row per (experiment, run): its config, its epoch rows folded into the per-run summary of
# DESIGN.md, then where it stands. Speed at 10,000 runs (one epochs file and one status file
# each) shapes it: the epoch rows are read once and grouped by run with no join (a join on
# every epoch row measured slower), so epochs to fit are counted for each fit threshold
# the store uses ({fit_columns}, made by `_fit_sql`) and each run then picks its own; and the
# status join sits alone on top of a grouping, so that an aggregate over `runs` that reads no
# status column (the per-level summary) skips the status files altogether.
RUNS_SQL = """
CREATE OR REPLACE VIEW runs AS
WITH config AS (            -- experiments/*/runs.parquet: one row per (experiment, run)
    {config}
),
state AS (                  -- runs/*/status.parquet: where each run stands
    SELECT run_id, any_value(status) AS status, any_value(attempts) AS attempts,
           any_value(epochs_done) AS epochs_done, any_value(stop_reason) AS stop_reason,
           any_value(error) AS error, any_value(started_at) AS started_at,
           any_value(finished_at) AS finished_at, any_value(rethink_version) AS rethink_version,
           any_value(git_commit) AS git_commit, any_value(torch_version) AS torch_version,
           any_value(cuda_version) AS cuda_version, any_value(device) AS device
    FROM ({status})
    GROUP BY run_id
),
per_run AS (                -- one pass over the epoch rows
    SELECT run_id,
           max(epoch) AS epochs_done, count(*) AS epoch_rows,{fit_columns}
           arg_max(train_acc, epoch) AS final_train_acc,
           arg_max(test_acc, epoch) AS final_test_acc,
           max(test_acc) AS best_test_acc,
           arg_max(coalesce(gap, train_acc - test_acc), epoch) AS final_gap
    FROM epochs
    GROUP BY run_id
),
progress AS (               -- each config beside its run's epochs (grouped: see above)
    SELECT c.run_id, c.experiment,
           any_value(COLUMNS(c.* EXCLUDE (run_id, experiment, config))),
           any_value(p.epochs_done) AS epochs_done,
           any_value(p.epoch_rows) AS epoch_rows,
           any_value({epochs_to_fit}) AS epochs_to_fit,
           any_value({steps_to_fit}) AS steps_to_fit,
           any_value(p.final_train_acc) AS final_train_acc,
           any_value(p.final_test_acc) AS final_test_acc,
           any_value(p.best_test_acc) AS best_test_acc,
           any_value(p.final_gap) AS final_gap,
           any_value(c.config) AS config
    FROM config c
    LEFT JOIN per_run p ON p.run_id = c.run_id
    GROUP BY c.run_id, c.experiment
)
SELECT p.* EXCLUDE (epochs_done, epoch_rows, epochs_to_fit, steps_to_fit, final_train_acc, final_test_acc,
                    best_test_acc, final_gap, config),
       coalesce(s.status, 'pending') AS status,
       coalesce(s.attempts, 0) AS attempts,
       coalesce(p.epochs_done, s.epochs_done, 0) AS epochs_done,
       coalesce(p.epoch_rows, 0) AS epoch_rows,  -- rows in the store (fewer than epochs_done: rows lost)
       p.epochs_to_fit, p.steps_to_fit,
       p.final_train_acc, p.final_test_acc, p.best_test_acc, p.final_gap,
       s.stop_reason, s.error, s.started_at, s.finished_at,
       s.rethink_version, s.git_commit, s.torch_version, s.cuda_version, s.device, p.config
FROM progress p
LEFT JOIN state s ON s.run_id = p.run_id
"""


def connect(root: str, union_by_name: bool | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views `epochs` and `runs` over the store at the
    local path `root`, locked so that it reads the store's files and nothing else.

    `union_by_name` says how the per-run files are stitched together. True: DuckDB reads every
    file's schema first, so files written before a column existed mix with newer ones; at 10,000
    runs that costs seconds per query (every footer at bind, and again while optimizing). False:
    the first file's schema stands for all (a column it lacks reads as NULL), and a query reading
    a column that some other file lacks fails loudly (`is_schema_mismatch`). None (default):
    False, unless the first file lacks a column of the current schema that another file has.

    The views fit the store as it was when connected (which tables have files yet, the fit
    thresholds its experiments use): connect again to see experiments submitted since."""
    root = os.path.abspath(root)
    con = duckdb.connect(":memory:")
    try:
        # DuckDB binds a view when it is created, and binding `epochs` or `runs` lists all their
        # files (0.15 s each at 10,000 runs). So the views built on them are created over empty
        # stand-ins first, then the two are replaced: they bind again at each query anyway.
        con.execute(f"CREATE VIEW epochs AS {_empty(schema.EPOCHS)}")
        con.execute(RUNS_SQL.format(config=_empty(schema.EXPERIMENT_RUNS), status=_empty(schema.STATUS),
                                    **_fit_sql([])))
        create_summaries(con)  # memorization, fit_time, gaps, probes: storage/summaries.py
        epochs = _source(con, root, layout.EPOCHS_GLOB, schema.EPOCHS, union_by_name)
        con.execute(f"CREATE OR REPLACE VIEW epochs AS {epochs}")
        config = _source(con, root, layout.EXPERIMENT_RUNS_GLOB, schema.EXPERIMENT_RUNS, True)
        thresholds = [row[0] for row in con.execute(
            f"SELECT DISTINCT coalesce(fit_threshold, {DEFAULT_FIT_THRESHOLD}) FROM ({config}) ORDER BY 1").fetchall()]
        status = _source(con, root, layout.STATUS_GLOB, schema.STATUS, union_by_name)
        con.execute(RUNS_SQL.format(config=config, status=status, **_fit_sql(thresholds)))
        _lock(con, root)
    except BaseException:
        con.close()
        raise
    return con


def _fit_sql(thresholds: list[float]) -> dict[str, str]:
    """The epochs-to-fit parts of RUNS_SQL: per_run counts them for every threshold the store
    uses, and each run picks the count for its own threshold."""
    literals = [f"{float(t)!r}::DOUBLE" for t in thresholds or [DEFAULT_FIT_THRESHOLD]]
    columns = "".join(f"\n           min(epoch) FILTER (WHERE train_acc >= {t}) AS fit_epoch_{i},"
                      f"\n           min(step) FILTER (WHERE train_acc >= {t}) AS fit_step_{i},"
                      for i, t in enumerate(literals))

    def pick(kind: str) -> str:
        whens = " ".join(f"WHEN {t} THEN p.fit_{kind}_{i}" for i, t in enumerate(literals))
        return f"CASE coalesce(c.fit_threshold, {DEFAULT_FIT_THRESHOLD}) {whens} END"

    return {"fit_columns": columns, "epochs_to_fit": pick("epoch"), "steps_to_fit": pick("step")}


def is_schema_mismatch(exc: BaseException) -> bool:
    """DuckDB's error for a file lacking a column that the first file has: the query needs a
    connection made with `union_by_name=True`."""
    return isinstance(exc, duckdb.Error) and "schema mismatch" in str(exc)


def _lock(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """Only the store's folder readable from now on, and no setting may be changed back."""
    # A query that spills writes temporary files under `temp_directory`, '.tmp' in the working
    # folder by default: keep them out of the store when the user runs from inside it.
    spill = os.path.join(tempfile.gettempdir(), f"rethink-duckdb-{os.getuid()}")
    if os.path.commonpath([spill, root]) == root:
        spill = ""  # the temp folder is inside the store: no spilling at all
    con.execute(f"SET temp_directory = {_literal(spill)}")
    con.execute(f"SET allowed_directories = [{_literal(root + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _source(con: duckdb.DuckDBPyConnection, root: str, glob: str, table_schema: pa.Schema,
            union_by_name: bool | None) -> str:
    """SELECT every column of `table_schema` from the files matching `glob`; zero typed rows
    while no file exists."""
    empty = _empty(table_schema)
    first = _first_file(root, glob)
    if first is None:
        return empty
    files = _files(root, glob)
    try:
        missing = [name for name in table_schema.names if name not in pq.read_schema(first).names]
    except (pa.ArrowException, OSError):  # not Parquet: DuckDB names the file when it reads it
        missing = table_schema.names
    if union_by_name is None:
        # Files differ where a newer rethink added columns. If the first file lacks some, one
        # look at every file's schema (once, here) tells whether any file has them.
        union_by_name = bool(missing) and con.execute(
            f"SELECT count(*) > 0 FROM parquet_schema({files}) WHERE name IN ({', '.join(map(_literal, missing))})"
        ).fetchone()[0]
    read = (f"SELECT * FROM read_parquet({files}, "
            f"union_by_name = {str(union_by_name).lower()}, hive_partitioning = false)")
    # The first file names and types the columns; where it lacks some, the empty typed rows
    # add them, as NULL. Otherwise the scan stays plain.
    return f"{empty}\n    UNION ALL BY NAME\n    {read}" if missing else read


def _files(root: str, glob: str) -> str:
    """The SQL for the files of `glob` under `root`. A store folder whose path holds a glob
    character (`s[1]*`) is a folder, not a pattern: its files are listed here, one by one, since
    the read-only lock (allowed_directories) checks the pattern's text as a path."""
    if not any(c in root for c in "[]*?"):
        return _literal(f"{root}/{glob}")
    return "[" + ", ".join(_literal(str(path)) for path in _matches(root, glob)) + "]"


def _empty(table_schema: pa.Schema) -> str:
    """Zero rows with the columns and types of `table_schema`."""
    return "SELECT " + ", ".join(
        f"CAST(NULL AS {_sql_type(field.type)}) AS {_identifier(field.name)}" for field in table_schema
    ) + " WHERE false"


def _first_file(root: str, glob: str) -> Path | None:
    """The file DuckDB reads first for `glob` (it sorts the matches); None when none exists."""
    return next(_matches(root, glob), None)


def _matches(root: str, glob: str) -> Iterator[Path]:
    """The files of `glob` under the folder `root` (taken literally), in DuckDB's sorted order."""
    folder, star, name = glob.split("/")  # the layout's globs are all "<folder>/*/<file>"
    if star != "*":
        raise ValueError(f"unexpected glob {glob!r}")
    try:
        entries = sorted(entry.name for entry in os.scandir(os.path.join(root, folder)))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        candidate = Path(root, folder, entry, name)
        if candidate.is_file():
            yield candidate


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


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_read_only(sql: str) -> None:
    """Refuse SQL that is not a read (every statement of it), naming the statement; a syntax
    error becomes a one-line QueryError. File access outside the store is refused by the lock."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:  # ParserException: the SQL does not parse
        raise QueryError(one_line(exc)) from None
    if not statements:
        raise QueryError("no SQL statement given")
    for statement in statements:
        _check_statement(_kind(statement), statement.query)


def _kind(statement: duckdb.Statement) -> str:
    try:
        return statement.type.name
    except ValueError:  # a type the Python API has no name for (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"


def _check_statement(kind: str, text: str) -> None:
    words = _words(text)
    if kind == "EXPLAIN":
        inner = _after_explain(text)
        try:
            statements = duckdb.extract_statements(inner)
        except (duckdb.Error, ValueError):
            raise ReadOnlyError(_refusal(words[1:2] or ["EXPLAIN"])) from None
        if len(statements) != 1:
            raise ReadOnlyError(_refusal(["EXPLAIN"]))
        return _check_statement(_kind(statements[0]), statements[0].query)
    if kind not in ("SELECT", "MULTI"):  # MULTI: PIVOT, which DuckDB runs as several steps
        raise ReadOnlyError(_refusal(words[:1] or [kind]))
    for word in words:
        if word in _WRITE_WORDS:
            raise ReadOnlyError(_refusal([word]))


def _refusal(words: list[str]) -> str:
    return f"only reading queries are allowed ({', '.join(READ_TYPES)}); got {words[0].upper()}"


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) of each token, comments left out: DuckDB's own tokenizer."""
    raw = duckdb.tokenize(text)
    ends = [start for start, _ in raw[1:]] + [len(text)]
    tokens = [(kind.name, text[start:end].strip()) for (start, kind), end in zip(raw, ends)]
    return [(kind, word) for kind, word in tokens if kind != "comment"]


def _words(text: str) -> list[str]:
    """The keywords of `text`, lower case, in order (identifiers, strings and comments skipped)."""
    found = []
    for kind, token in _tokens(text):
        match = re.match(r"[A-Za-z_]+", token)
        if kind == "keyword" and match:
            found.append(match.group(0).lower())
    return found


def _after_explain(text: str) -> str:
    """The statement an EXPLAIN explains: drop `EXPLAIN`, `ANALYZE` and an `(option, ...)` list."""
    raw = [(start, kind.name) for start, kind in duckdb.tokenize(text) if kind.name != "comment"]
    i, depth = 1, 0  # raw[0] is EXPLAIN
    while i < len(raw):
        start, _ = raw[i]
        token = text[start:].lstrip()
        if depth == 0 and re.match(r"(?i)analy[sz]e\b", token):
            i += 1
        elif token.startswith("("):
            depth += 1
            i += 1
        elif token.startswith(")") and depth:
            depth -= 1
            i += 1
        elif depth:
            i += 1
        else:
            return text[start:]
    return ""


def one_line(exc: BaseException) -> str:
    """DuckDB's message without its `LINE 1:` caret block, squashed to one line."""
    message = re.split(r"\n\s*LINE \d+:", str(exc), maxsplit=1)[0]
    return " ".join(message.split())
