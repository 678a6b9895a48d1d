"""The `epochs` and `runs` views over a hand-made store, their lock, and the read-only check."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.errors import RethinkError
from rethink.storage import layout, schema, summaries
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.views import check_read_only, connect, is_schema_mismatch

from .conftest import CURVES, epoch_rows, write_table

# DESIGN.md, "SQL views (at least these columns)".
RUNS_COLUMNS = """run_id experiment dataset model corruption level regularizer weight_decay dropout augment
    seed status attempts epochs_done epochs_to_fit final_train_acc final_test_acc best_test_acc final_gap
    error""".split()
EPOCHS_COLUMNS = """run_id epoch step lr train_loss train_acc train_acc_corrupted train_acc_clean
    train_acc_true test_loss test_acc gap wall_s examples_per_s act_sparsity jacobian_norm grad_sqnorm
    functional_dim param_norm""".split()
PROBES = ["act_sparsity", "jacobian_norm", "grad_sqnorm", "functional_dim", "param_norm"]


def columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()]


def runs_by_key(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict]:
    cursor = con.execute("SELECT * FROM runs")
    names = [d[0] for d in cursor.description]
    return {(row["experiment"], row["run_id"]): row for row in (dict(zip(names, r)) for r in cursor.fetchall())}


def test_views_have_every_column_the_design_names(store: Path) -> None:
    con = connect(str(store))
    assert set(RUNS_COLUMNS) <= set(columns(con, "runs"))
    assert columns(con, "epochs")[: len(schema.EPOCHS)] == schema.EPOCHS.names
    assert set(EPOCHS_COLUMNS) <= set(columns(con, "epochs"))


def test_epochs_has_one_row_per_run_and_epoch(store: Path) -> None:
    con = connect(str(store))
    assert con.execute("SELECT count(*) FROM epochs").fetchone() == (4 + 3 + 2,)
    per_run = dict(con.execute("SELECT run_id, count(*) FROM epochs GROUP BY run_id").fetchall())
    assert per_run == {"r1": 4, "r2": 3, "r4": 2}
    assert con.execute("SELECT max(epoch), min(epoch) FROM epochs WHERE run_id = 'r1'").fetchone() == (4, 1)


def test_runs_has_one_row_per_experiment_and_run(store: Path) -> None:
    con = connect(str(store))
    assert sorted(runs_by_key(con)) == [("fig1", "r1"), ("fig1", "r2"), ("fig1", "r3"), ("fig2", "r3"), ("fig2", "r4")]


def test_runs_summarizes_each_runs_epochs(store: Path) -> None:
    runs = runs_by_key(connect(str(store)))
    r1, r2, r4 = runs["fig1", "r1"], runs["fig1", "r2"], runs["fig2", "r4"]
    assert (r1["epochs_done"], r1["epochs_to_fit"], r1["steps_to_fit"]) == (4, 3, 30)  # 0.995 >= 0.99
    assert (r1["final_train_acc"], r1["final_test_acc"], r1["best_test_acc"]) == (1.0, 0.62, 0.65)
    assert r1["final_gap"] == pytest.approx(0.38)
    assert (r2["epochs_done"], r2["epochs_to_fit"]) == (3, 3)  # its own threshold: 0.95 >= 0.9
    assert (r2["final_test_acc"], r2["best_test_acc"]) == (0.09, 0.1)
    assert r2["final_gap"] == pytest.approx(0.86)
    assert (r4["epochs_done"], r4["epochs_to_fit"], r4["steps_to_fit"]) == (2, None, None)  # never fits
    assert (r4["final_train_acc"], r4["final_test_acc"]) == (0.6, 0.55)


def test_runs_carries_config_and_status(store: Path) -> None:
    runs = runs_by_key(connect(str(store)))
    r1, r2, r4 = runs["fig1", "r1"], runs["fig1", "r2"], runs["fig2", "r4"]
    assert (r1["status"], r1["attempts"], r1["stop_reason"], r1["error"]) == ("done", 1, "completed", None)
    assert (r2["status"], r2["attempts"], r2["regularizer"], r2["weight_decay"]) == ("running", 2, "weight_decay=0.0005", 0.0005)
    assert (r4["corruption"], r4["dropout"], r4["augment"], r4["dataset"]) == ("shuffled_pixels", 0.5, True, "cifar10")


def test_a_run_without_status_file_is_pending(store: Path) -> None:
    r4 = runs_by_key(connect(str(store)))["fig2", "r4"]
    assert (r4["status"], r4["attempts"], r4["error"]) == ("pending", 0, None)


def test_a_failed_run_without_epochs_shows_its_error(store: Path) -> None:
    runs = runs_by_key(connect(str(store)))
    for experiment in ("fig1", "fig2"):  # the same run in two experiments: same state in both
        r3 = runs[experiment, "r3"]
        assert (r3["status"], r3["attempts"], r3["epochs_done"]) == ("failed", 3, 0)
        assert r3["error"] == "RuntimeError: CUDA out of memory"
        assert (r3["final_test_acc"], r3["epochs_to_fit"], r3["best_test_acc"]) == (None, None, None)


def test_an_empty_store_gives_zero_rows_not_an_error(make_store, tmp_path: Path) -> None:
    root = make_store(tmp_path / "empty", runs=[], epochs={}, statuses={})
    con = connect(str(root))
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert con.execute("SELECT count(*), avg(test_acc) FROM epochs").fetchone() == (0, None)
    assert set(RUNS_COLUMNS) <= set(columns(con, "runs"))
    assert columns(con, "epochs") == schema.EPOCHS.names


def test_runs_before_any_epoch_or_status_are_pending(make_store, tmp_path: Path) -> None:
    root = make_store(tmp_path / "fresh", epochs={}, statuses={})
    rows = connect(str(root)).execute("SELECT DISTINCT status, attempts, epochs_done FROM runs").fetchall()
    assert rows == [("pending", 0, 0)]


def make_mixed(make_store, root: Path, old_run: str) -> Path:
    """A new-style epochs file for r1 beside an old-style one for `old_run`."""
    root = make_store(root, runs=[{"experiment": "e", "run_id": "r1"}, {"experiment": "e", "run_id": old_run}],
                      epochs={"r1": epoch_rows("r1", *CURVES["r1"])}, statuses={})
    write_old_epochs(root, old_run)
    return root


def write_old_epochs(root: Path, run_id: str) -> None:
    """An epochs file from before the probes existed: the design's columns less the probes."""
    rows = epoch_rows(run_id, [0.2, 0.4], [0.3, 0.35])
    old = pa.schema([f for f in schema.EPOCHS if f.name in EPOCHS_COLUMNS and f.name not in PROBES])
    write_table(root, layout.RunPaths(run_id).epochs, pa.Table.from_pylist(
        [{k: v for k, v in row.items() if k in old.names} for row in rows], schema=old))


@pytest.mark.parametrize("old_run", ["a0", "z9"])  # read first, then after the newer files
def test_old_epochs_files_without_probes_mix_with_new_ones(make_store, tmp_path: Path, old_run: str) -> None:
    root = make_mixed(make_store, tmp_path / "mixed", old_run)
    con = connect(str(root), union_by_name=True)
    assert columns(con, "epochs")[: len(schema.EPOCHS)] == schema.EPOCHS.names
    rows = dict(con.execute("SELECT run_id, count(param_norm) FROM epochs GROUP BY run_id").fetchall())
    assert rows == {"r1": 4, old_run: 0}  # the old file's probes read as NULL
    assert con.execute(f"SELECT final_test_acc FROM runs WHERE run_id = '{old_run}'").fetchone() == (0.35,)


def test_first_file_decides_the_fast_read_and_a_mismatch_is_loud(make_store, tmp_path: Path) -> None:
    root = make_mixed(make_store, tmp_path / "mixed", "z9")  # r1's schema is read for all files
    con = connect(str(root))
    assert con.execute("SELECT count(*) FROM epochs").fetchone() == (6,)  # columns both files have
    with pytest.raises(duckdb.Error) as caught:
        con.execute("SELECT sum(param_norm) FROM epochs").fetchall()
    assert is_schema_mismatch(caught.value)
    write_old_epochs(root, "a0")  # an old file first: the default reads every file's schema
    con = connect(str(root))
    assert con.execute("SELECT count(param_norm), count(*) FROM epochs").fetchone() == (4, 8)


def test_a_store_older_than_the_schema_reads_fast_with_the_new_columns_null(make_store, tmp_path: Path) -> None:
    root = make_store(tmp_path / "old", runs=[{"experiment": "e", "run_id": "a"}, {"experiment": "e", "run_id": "b"}],
                      epochs={}, statuses={})
    write_old_epochs(root, "a")
    write_old_epochs(root, "b")
    con = connect(str(root))
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'epoch_copies'").fetchone()[0]
    assert "union_by_name = false" in view  # no file has the probes: no need to read every schema
    assert columns(con, "epochs") == schema.EPOCHS.names
    assert con.execute("SELECT count(*), count(param_norm) FROM epochs").fetchone() == (4, 0)


def test_views_created_before_the_real_tables_read_them(store: Path) -> None:
    con = connect(str(store))  # the summaries are bound over empty stand-ins, then those replaced
    for view in summaries.VIEWS:
        con.execute(f"SELECT * FROM {view}").fetchall()
    assert con.execute("SELECT sum(runs) FROM fit_time").fetchone() == (1,)  # r1: the one run done


def test_the_per_level_summary_reads_no_status_file(store: Path) -> None:
    con = connect(str(store))
    summary = "SELECT corruption, level, avg(final_test_acc), avg(epochs_to_fit) FROM runs GROUP BY ALL"
    plan = con.execute(f"EXPLAIN ANALYZE {summary}").fetchall()[0][1]
    assert "epochs.parquet" in plan and "status.parquet" not in plan


def test_connection_reads_only_the_store(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    con = connect(str(store))
    for sql in [f"SELECT * FROM read_csv('{outside}')", "SELECT * FROM read_csv('/etc/passwd')",
                f"SELECT * FROM read_csv('{store}/../outside.csv')", f"COPY (SELECT 1) TO '{tmp_path}/x.csv'",
                "SELECT * FROM glob('/etc/*')"]:
        with pytest.raises(duckdb.PermissionException):
            con.execute(sql).fetchall()
    for sql in ["SET enable_external_access = true", "SET allowed_directories = ['/']"]:
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute(sql)
    assert con.execute("SELECT count(*) FROM epochs").fetchone() == (9,)  # the views still read
    assert not (tmp_path / "x.csv").exists()


REFUSED = {
    "COPY (SELECT 1) TO '/tmp/x.csv'": "COPY",
    "copy epochs to 'store/epochs.csv' (header)": "COPY",
    "CREATE TABLE t AS SELECT 1": "CREATE",
    "CREATE OR REPLACE VIEW runs AS SELECT 1": "CREATE",
    "DROP VIEW runs": "DROP",
    "INSERT INTO t VALUES (1)": "INSERT",
    "UPDATE t SET a = 1": "UPDATE",
    "DELETE FROM t": "DELETE",
    "ATTACH 'other.db'": "ATTACH",
    "DETACH other": "DETACH",
    "INSTALL httpfs": "INSTALL",
    "LOAD httpfs": "LOAD",
    "FORCE INSTALL httpfs": "FORCE",
    "UPDATE EXTENSIONS": "UPDATE",
    "PRAGMA version": "PRAGMA",
    "SET threads = 1": "SET",
    "RESET threads": "RESET",
    "EXPORT DATABASE '/tmp/dump'": "EXPORT",
    "IMPORT DATABASE '/tmp/dump'": "IMPORT",
    "CHECKPOINT": "CHECKPOINT",
    "CALL pragma_version()": "CALL",
    "SELECT 1; COPY (SELECT 1) TO 'x.csv'": "COPY",
    "select 1;\n-- then\ncopy epochs to 'x.parquet'": "COPY",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'": "COPY",  # ANALYZE runs what it explains
    "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO 'x.csv'": "COPY",
    "COPY (PIVOT epochs ON epoch USING sum(test_acc)) TO 'x.csv'": "COPY",
    "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x": "INSERT",
    "/* hidden */ COPY (SELECT 1) TO 'x.csv'": "COPY",
}


@pytest.mark.parametrize("sql", REFUSED)
def test_check_read_only_refuses_every_write_naming_it(sql: str) -> None:
    with pytest.raises(ReadOnlyError) as caught:
        check_read_only(sql)
    message = str(caught.value)
    assert isinstance(caught.value, RethinkError) and "\n" not in message
    assert message.startswith("only reading queries are allowed") and message.endswith(f"got {REFUSED[sql]}")


@pytest.mark.parametrize("sql", [
    "SELECT 1", "select * from runs where status = 'failed'", "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
    "FROM epochs SELECT run_id", "DESCRIBE runs", "SUMMARIZE epochs", "SHOW TABLES", "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE SELECT count(*) FROM epochs", "PIVOT epochs ON epoch USING sum(test_acc)",
    "SELECT 'copy' AS word, \"set\" FROM (SELECT 1 AS \"set\")", "-- a note\nSELECT 1; SELECT 2",
    "VALUES (1), (2)", "SELECT * FROM pragma_version()",
])
def test_check_read_only_lets_reads_through(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize("sql", ["selec 1", "SELECT * FROM", "SELECT (1", ""])
def test_unparsable_sql_is_a_one_line_query_error(sql: str) -> None:
    with pytest.raises(QueryError) as caught:
        check_read_only(sql)
    message = str(caught.value)
    assert "\n" not in message and "LINE 1" not in message and message
    if sql:
        assert re.match(r"Parser Error: ", message)


def test_no_temp_directory_opens_a_way_out_of_the_store(store: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB admits its temp directory beside `allowed_directories`. It was once the fixed
    `$TMPDIR/rethink-duckdb-$UID`: a symlink there to /etc let read_text read /etc/passwd. Now
    the connection has none (reader.py); DuckDB's own default, `.tmp` in the working folder, is
    refused too."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "secret").write_text("s3cret")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    (tmp / f"rethink-duckdb-{os.getuid()}").symlink_to(secrets)
    (tmp / ".tmp").symlink_to(secrets)
    monkeypatch.chdir(tmp)
    for path in (tmp / f"rethink-duckdb-{os.getuid()}" / "secret", tmp / ".tmp" / "secret", ".tmp/secret",
                 secrets / "secret"):
        result = CliRunner().invoke(app, ["query", f"select * from read_text('{path}')", "--store", str(store)])
        assert result.exit_code == 1 and "read only the store's own files" in result.stderr, result.output
        assert "s3cret" not in result.output
    con = connect(str(store))
    assert con.execute("SELECT current_setting('temp_directory')").fetchall() == [("",)]
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute(f"SET temp_directory = '{secrets}'")
