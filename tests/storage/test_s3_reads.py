"""Every reading command on a store in S3 (SeaweedFS on loopback: tests/s3server.py) answers as it
does on the same store in a local folder: `rethink query`, every view, `rethink status`,
`rethink report` and `rethink.open_store`; and the read-only guard holds there too. The store is
the hand-made one of conftest.py, written locally and copied into a fresh bucket."""

from __future__ import annotations

import re
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import rethink
from rethink.cli import app
from rethink.storage import layout, scans, schema
from rethink.storage.compact import compact
from rethink.storage.query import run_query
from rethink.storage.reader import connect
from rethink.storage.store import Store
from rethink.storage.summaries import VIEWS

from .conftest import build_store, epoch_rows, write_table

EVERY_VIEW = ("runs", "epochs", *VIEWS)


def with_grids(root: Path) -> Path:
    """The frozen grid file of each experiment (status and report read it; conftest writes none)."""
    for name in ("fig1", "fig2"):
        (root / layout.ExperimentPaths(name).grid).write_text(f"name: {name}\n")
    return root


def upload(local: Path, uri: str) -> str:
    """Copy the store folder `local` into the (empty) place `uri` names; returns `uri`."""
    fs, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), root, destination_filesystem=fs)
    return uri


@pytest.fixture(scope="module")
def stores(s3_server, tmp_path_factory: pytest.TempPathFactory):
    """The default tiny store, in a local folder and in a bucket, shared by the tests that only
    read it (a bucket and an upload cost seconds on this server)."""
    from tests import s3server

    with pytest.MonkeyPatch.context() as env:
        for key, value in s3server.CREDENTIALS.items():
            env.setenv(key, value)
        local = with_grids(build_store(tmp_path_factory.mktemp("s3-reads") / "store"))
        yield local, upload(local, s3_server.uri(s3_server.new_bucket()))


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_query_counts_the_same_rows_as_the_local_store(stores: tuple[Path, str]) -> None:
    local, remote = stores
    answers = [cli("query", "select count(*) as n from epochs", "--store", str(place), "--format", "csv")
               for place in (local, remote)]
    assert [a.exit_code for a in answers] == [0, 0], answers[1].output
    assert answers[1].stdout == answers[0].stdout and answers[0].stdout.split() == ["n", "9"]
    out = local.parent / "epochs.parquet"  # --out is a local file, whatever the store
    written = cli("query", "select * from epochs order by all", "--store", remote, "--format", "parquet", "--out", str(out))
    assert written.exit_code == 0 and pq.read_table(out).num_rows == 9, written.output


@pytest.fixture(params=["whole", "lazy"])
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a remote source is read (scans.py): whole when small, else a lazy dataset."""
    if request.param == "lazy":
        monkeypatch.setattr(scans, "IN_MEMORY_BYTES", 0)
    return request.param


def test_every_view_gives_the_same_rows_and_types(stores: tuple[Path, str], reads: str) -> None:
    local, remote = stores
    assert_same_views(local, remote)
    assert run_query(remote, "SELECT count(*) AS n FROM runs WHERE status = 'failed'", fmt="csv") == "n\n2"


def assert_same_views(local: Path, remote: str) -> None:
    """Every view has the same columns, types and rows in both places (one connection each)."""
    here, there = connect(str(local)), connect(remote)
    for view in EVERY_VIEW:
        for sql in (f"DESCRIBE {view}", f"SELECT * FROM {view} ORDER BY ALL"):
            assert there.execute(sql).fetchall() == here.execute(sql).fetchall(), sql


def test_status_shows_the_true_counts(stores: tuple[Path, str]) -> None:
    local, remote = stores
    seen = [cli("status", "--store", str(place)) for place in (local, remote)]
    assert [s.exit_code for s in seen] == [0, 0], seen[1].output
    rows = [[line for line in s.stdout.splitlines() if re.search(r"\bfig[12]\b|^note:", line)] for s in seen]
    assert rows[1] == rows[0]
    fig1 = next(line for line in rows[1] if "│ fig1 " in line)
    assert "7/12" in fig1 and "0/None" not in fig1  # r1: 4 epochs, r2: 3, r3: none; 3 runs of 4 epochs


def test_report_reads_s3_and_writes_locally(stores: tuple[Path, str], tmp_path: Path) -> None:
    local, remote = stores
    made = {where: cli("report", "fig1", "--store", str(place), "--out", str(tmp_path / where))
            for where, place in (("here", local), ("there", remote))}
    assert made["there"].exit_code == 0, made["there"].output
    assert made["there"].stdout.splitlines()[0] == made["here"].stdout.splitlines()[0]  # the header
    assert made["there"].stderr == made["here"].stderr  # the notes
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == sorted(p.name for p in (tmp_path / "here").iterdir())
    page = (tmp_path / "there" / "report.html").read_text()
    assert "RuntimeError: CUDA out of memory" in page and remote.split("?")[0] in page


def test_open_store_reads_s3_as_a_local_folder(stores: tuple[Path, str]) -> None:
    local, remote = stores
    there, here = rethink.open_store(remote), rethink.open_store(local)
    assert there.experiments() == here.experiments() == ["fig1", "fig2"]
    sql = "SELECT run_id, status, final_test_acc, epochs_to_fit FROM runs WHERE experiment = ? ORDER BY run_id"
    assert there.sql(sql, ["fig1"]).df().equals(here.sql(sql, ["fig1"]).df())
    assert there.epochs("fig2").rows() == here.epochs("fig2").rows()


def test_writing_and_reaching_outside_are_refused_on_s3(stores: tuple[Path, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, remote = stores
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("s3cret")
    for sql, said in [("COPY (select 1) TO 'x.csv'", "got COPY"),
                      ("select * from read_text('/etc/passwd')", "read only the store's own files"),
                      (f"select * from read_csv('{tmp_path}/secret.txt')", "read only the store's own files")]:
        result = cli("query", sql, "--store", remote)
        assert result.exit_code == 1 and said in result.stderr, (sql, result.output)
        assert result.stderr.count("\n") == 1 and "s3cret" not in result.output
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(rethink.errors.RethinkError, match="only reading queries"):
        rethink.open_store(remote).sql("COPY (select 1) TO 'x.csv'")
    # Past the statement check, the connection itself can open no file, yet scans the store.
    con = connect(remote)
    for sql in ["COPY (SELECT 1) TO 'x.csv'", "SELECT * FROM read_text('/etc/passwd')",
                f"SELECT * FROM read_csv('{tmp_path}/secret.txt')", "SELECT * FROM glob('/tmp/*')"]:
        with pytest.raises(duckdb.PermissionException):
            con.execute(sql).fetchall()
    for sql in ["SET enable_external_access = true", "SET allowed_directories = ['/']", "SET temp_directory = '/tmp'"]:
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute(sql)
    assert con.execute("SELECT count(*) FROM epochs").fetchall() == [(9,)]
    assert not (tmp_path / "x.csv").exists()


def test_files_of_an_older_schema_read_with_the_new_columns_null(s3_store: str, tmp_path: Path, reads: str) -> None:
    runs = [{"experiment": "e", "run_id": "a"}, {"experiment": "e", "run_id": "b"}]
    local = build_store(tmp_path / "old", runs=runs, epochs={"b": epoch_rows("b", [0.5, 0.9], [0.4, 0.5])},
                        statuses={})
    old = pa.schema([f for f in schema.EPOCHS if f.name not in ("param_norm", "act_sparsity", "jacobian_norm")])
    rows = [{k: v for k, v in row.items() if k in old.names} for row in epoch_rows("a", [0.2, 0.4], [0.3, 0.35])]
    write_table(local, layout.RunPaths("a").epochs, pa.Table.from_pylist(rows, schema=old))  # read first
    remote = upload(local, s3_store)
    sql = "SELECT run_id, count(*) AS n, count(param_norm) AS probed FROM epochs GROUP BY ALL ORDER BY ALL"
    assert run_query(remote, sql, fmt="csv") == run_query(str(local), sql, fmt="csv") == "run_id,n,probed\na,2,0\nb,2,2"


def test_compacted_parts_and_a_newer_per_run_file_count_once(s3_store: str, tmp_path: Path, reads: str) -> None:
    local = with_grids(build_store(tmp_path / "store"))
    compact(Store.open(str(local)), "fig1")  # r1 (done) and r3 (failed) fold into a part
    assert list((local / "epochs").glob(f"{layout.PART_PREFIX}*/epochs.parquet"))
    rerun = epoch_rows("r1", [0.7, 0.8], [0.6, 0.61])  # r1 trained again: its own file wins over the part
    write_table(local, layout.RunPaths("r1").epochs, schema.table(rerun, schema.EPOCHS))
    remote = upload(local, s3_store)
    sql = "SELECT run_id, count(*) AS n, max(train_acc) AS best FROM epochs GROUP BY ALL ORDER BY ALL"
    assert run_query(remote, sql, fmt="csv") == run_query(str(local), sql, fmt="csv")
    assert run_query(remote, sql, fmt="csv").splitlines()[1] == "r1,2,0.8"
    assert_same_views(local, remote)


def test_status_and_a_query_on_s3_take_well_under_the_budget(stores: tuple[Path, str]) -> None:
    """The small store; bench/ measures 1,000 runs. Generous bounds: a shared 2-core machine."""
    _, remote = stores
    for args in (["status", "--store", remote], ["query", "select count(*) from runs", "--store", remote]):
        start = time.perf_counter()
        assert cli(*args).exit_code == 0
        assert time.perf_counter() - start < 5, args
