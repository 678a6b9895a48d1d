"""The SQL face of a store: DuckDB views `epochs` and `runs` over its Parquet files (the
summaries of summaries.py are built on these two), and the statement check of the read-only
guard. Connecting, and locking the connection to the store's files, is reader.py's.

Read-only takes two locks, because neither holds alone (COMPONENTS.md, DuckDB 2.0): only reading
statement types pass `check_read_only`, and the connection may touch no file outside the store
(reader.py), which alone would still let `COPY ... TO '<store>/x'` write into the store."""

from __future__ import annotations

import re

import duckdb

from rethink.storage import schema
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.scans import empty
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
per_run AS (                -- one pass over the epoch rows, by the run whose file holds them
    SELECT file_run_id AS run_id,
           max(epoch) FILTER (WHERE run_id = file_run_id) AS epochs_done,
           count(*) FILTER (WHERE run_id = file_run_id) AS epoch_rows,
           sum(copies - 1) FILTER (WHERE run_id = file_run_id) AS duplicate_rows,
           sum(copies) FILTER (WHERE run_id <> file_run_id) AS foreign_rows,{fit_columns}
           arg_max(train_acc, epoch) FILTER (WHERE run_id = file_run_id) AS final_train_acc,
           arg_max(test_acc, epoch) FILTER (WHERE run_id = file_run_id) AS final_test_acc,
           max(test_acc) FILTER (WHERE run_id = file_run_id) AS best_test_acc,
           arg_max(coalesce(gap, train_acc - test_acc), epoch) FILTER (WHERE run_id = file_run_id) AS final_gap
    FROM epoch_copies
    GROUP BY file_run_id
),
progress AS (               -- each config beside its run's epochs (grouped: see above)
    SELECT c.run_id, c.experiment,
           any_value(COLUMNS(c.* EXCLUDE (run_id, experiment, config))),
           any_value(p.epochs_done) AS epochs_done,
           any_value(p.epoch_rows) AS epoch_rows,
           any_value(p.duplicate_rows) AS duplicate_rows,
           any_value(p.foreign_rows) AS foreign_rows,
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
SELECT p.* EXCLUDE (epochs_done, epoch_rows, duplicate_rows, foreign_rows, epochs_to_fit, steps_to_fit, final_train_acc, final_test_acc,
                    best_test_acc, final_gap, config),
       coalesce(s.status, 'pending') AS status,
       coalesce(s.attempts, 0) AS attempts,
       -- a done run's status counts its epochs too: rows fewer than that are rows lost
       coalesce(CASE WHEN s.status = 'done' THEN greatest(p.epochs_done, s.epochs_done) END,
                p.epochs_done, s.epochs_done, 0) AS epochs_done,
       coalesce(p.epoch_rows, 0) AS epoch_rows,  -- rows in the store (fewer than epochs_done: rows lost)
       coalesce(p.duplicate_rows, 0) AS duplicate_rows,  -- extra copies of an epoch in its file (damage)
       coalesce(p.foreign_rows, 0) AS foreign_rows,  -- rows of other runs in its file (damage)
       p.epochs_to_fit, p.steps_to_fit,
       p.final_train_acc, p.final_test_acc, p.best_test_acc, p.final_gap,
       s.stop_reason, s.error, s.started_at, s.finished_at,
       s.rethink_version, s.git_commit, s.torch_version, s.cuda_version, s.device, p.config
FROM progress p
LEFT JOIN state s ON s.run_id = p.run_id
"""


# Every (run, epoch) once, as the views count it. A row belongs to the run whose file holds it
# (`file_run_id`: the path `epochs/run_id=ID/` of a per-run file; a part's rows are the runs its
# footer lists, so there the column stands): the layout is what rethink wrote where, while a
# run_id column that disagrees with its file is a copied or mis-merged file, and counting it for
# the run it names would count that run's epochs twice or invent epochs it never trained. So
# `epochs` keeps only a file's own rows, and `runs` counts the others as `foreign_rows`. Copies
# of one epoch in a file (an append, a hand merge) are kept once: the one with the most steps,
# then the latest wall time (copies equal in both are one measurement written twice), the rest
# counted as `duplicate_rows`. A window on (run, epoch) costs little next to reading the files
# (bench/store_query.py: see the README).
EPOCH_COPIES_SQL = """
CREATE OR REPLACE VIEW epoch_copies AS
SELECT *, count(*) OVER (PARTITION BY file_run_id, run_id, epoch) AS copies
FROM (SELECT * EXCLUDE (file_run_id), coalesce(file_run_id, run_id) AS file_run_id
      FROM (SELECT *, CAST(NULL AS VARCHAR) AS file_run_id FROM ({empty})
            UNION ALL BY NAME
            {{rows}}))
QUALIFY row_number() OVER (PARTITION BY file_run_id, run_id, epoch ORDER BY step DESC, wall_s DESC) = 1
""".format(empty=empty(schema.EPOCHS))

EPOCHS_SQL = """
CREATE VIEW epochs AS
SELECT * EXCLUDE (file_run_id, copies) FROM epoch_copies WHERE run_id = file_run_id
"""


def connect(root: str, union_by_name: bool | None = None) -> duckdb.DuckDBPyConnection:
    """A locked connection with the views over the store at `root` (a local folder or a store
    URI): reader.connect, kept here for the callers that know it by this name."""
    from rethink.storage.reader import connect as reader_connect

    return reader_connect(root, union_by_name)


def create_views(con: duckdb.DuckDBPyConnection, epochs: str, config: str, status: str,
                 summaries: bool = True) -> None:
    """Create `epochs`, `runs` and (`summaries`) the summaries on `con`, given the SELECT of each
    table's rows (scans.Scan.table): the same SQL for every kind of store, only the sources differ.

    DuckDB binds a view when it is created, and binding `epochs` or `runs` lists all their files
    (0.15 s each at 10,000 runs). So the views built on them are created over empty stand-ins
    first, then the two are replaced: they bind again at each query anyway. The views fit the
    store as it was then (which tables have files, the fit thresholds its experiments use):
    connect again to see experiments submitted since."""
    con.execute(EPOCH_COPIES_SQL.format(rows=empty(schema.EPOCHS)))
    con.execute(EPOCHS_SQL)
    con.execute(RUNS_SQL.format(config=empty(schema.EXPERIMENT_RUNS), status=empty(schema.STATUS), **_fit_sql([])))
    if summaries:  # memorization, fit_time, gaps, probes: storage/summaries.py
        create_summaries(con)
    con.execute(EPOCH_COPIES_SQL.format(rows=epochs))
    con.execute(f"CREATE OR REPLACE VIEW run_list AS {config}")  # the run lists as stored, for checks
    thresholds = [row[0] for row in con.execute(
        f"SELECT DISTINCT coalesce(fit_threshold, {DEFAULT_FIT_THRESHOLD}) FROM ({config}) ORDER BY 1").fetchall()]
    con.execute(RUNS_SQL.format(config=config, status=status, **_fit_sql(thresholds)))


def _fit_sql(thresholds: list[float]) -> dict[str, str]:
    """The epochs-to-fit parts of RUNS_SQL: per_run counts them for every threshold the store
    uses, and each run picks the count for its own threshold."""
    literals = [f"{float(t)!r}::DOUBLE" for t in thresholds or [DEFAULT_FIT_THRESHOLD]]
    own = "run_id = file_run_id AND"
    columns = "".join(f"\n           min(epoch) FILTER (WHERE {own} train_acc >= {t}) AS fit_epoch_{i},"
                      f"\n           min(step) FILTER (WHERE {own} train_acc >= {t}) AS fit_step_{i},"
                      for i, t in enumerate(literals))

    def pick(kind: str) -> str:
        whens = " ".join(f"WHEN {t} THEN p.fit_{kind}_{i}" for i, t in enumerate(literals))
        return f"CASE coalesce(c.fit_threshold, {DEFAULT_FIT_THRESHOLD}) {whens} END"

    return {"fit_columns": columns, "epochs_to_fit": pick("epoch"), "steps_to_fit": pick("step")}


def is_schema_mismatch(exc: BaseException) -> bool:
    """DuckDB's error for a file lacking a column that the first file has: the query needs a
    connection made with `union_by_name=True`."""
    return isinstance(exc, duckdb.Error) and "schema mismatch" in str(exc)


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
