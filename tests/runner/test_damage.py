"""Damage a store can hold that rethink never wrote: `rethink status` names each damaged run in
one line and keeps counting; `rethink resume` redoes what it can and names what it cannot; store
text is shown as text. Real submits of a tiny grid, damage planted with pyarrow, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rethink.storage.layout import ExperimentPaths, RunPaths
from tests.runner.conftest import rethink, sql

GRID = """\
name: dmg
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
corruption: [none, {kind: labels, level: 1.0}]
seed: [0, 1, 2]
train: {epochs: 3, batch_size: 32, lr: 0.01, checkpoint_every: 1}
resources: {cpus: 1, gpus: 0}
"""


def _submit(tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    monkeypatch.setenv("RETHINK_COMPACT", "0")  # the runs' own files are what gets damaged
    (tmp_path / "g.yaml").write_text(GRID)
    store = tmp_path / "s"
    done = rethink("submit", str(tmp_path / "g.yaml"), "--store", str(store), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    return store, sorted(r for (r,) in sql(store, "select run_id from runs"))


def _bit_rot(path: Path) -> None:
    """Flip bytes in the first data page of `epoch` (a column status reads): the footer still
    reads, the page does not."""
    meta = pq.ParquetFile(path).metadata.row_group(0).column(1)
    blob = bytearray(path.read_bytes())
    start = meta.data_page_offset + 8
    blob[start:start + 24] = bytes(b ^ 0xFF for b in blob[start:start + 24])
    path.write_bytes(bytes(blob))


def test_every_kind_of_damage_is_one_status_line_and_resume_redoes_what_it_can(tmp_path, monkeypatch):
    store, runs = _submit(tmp_path, monkeypatch)
    rotted, twice, foreign, lost, bad_json, bad_id = runs
    _bit_rot(store / RunPaths(rotted).epochs)
    rows = pq.read_table(store / RunPaths(twice).epochs)
    pq.write_table(pa.concat_tables([rows, rows.slice(0, 1)]), store / RunPaths(twice).epochs)
    other = pq.read_table(store / RunPaths(lost).epochs)  # the last epoch lost, and its rows planted
    pq.write_table(other.slice(0, 2), store / RunPaths(lost).epochs)
    pq.write_table(pa.concat_tables([pq.read_table(store / RunPaths(foreign).epochs), other.slice(2, 1)]),
                   store / RunPaths(foreign).epochs)
    listed = store / ExperimentPaths("dmg").runs
    table = pq.read_table(listed).to_pylist()
    for row in table:
        if row["run_id"] == bad_json:
            row["config"] = "{not json"
        if row["run_id"] == bad_id:
            config = json.loads(row["config"])
            config["seed"] = 99
            row["config"] = json.dumps(config)
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(listed)), listed)

    status = rethink("status", "dmg", "--store", str(store))
    out = " ".join(status.stdout.split())
    assert status.returncode == 0 and "Traceback" not in status.stdout + status.stderr, status.stderr
    assert "│ dmg" in status.stdout  # counts still come, from what can be read
    for run_id, what in ((rotted, "cannot be read"), (twice, "twice"), (foreign, "another run"),
                         (bad_json, "not JSON"), (bad_id, "hashes to run id")):
        assert f"run {run_id} damaged: " in out and what in out.split(f"run {run_id} damaged: ")[1][:200], run_id
    assert lost in out

    resumed = rethink("resume", "dmg", "--store", str(store), "--quiet")
    both = resumed.stdout + resumed.stderr
    assert resumed.returncode == 1 and "Traceback" not in both, both[-2000:]
    assert f"failed {bad_json}: not resumed: its config in runs.parquet is not JSON" in both
    assert f"failed {bad_id}: not resumed:" in both and "4 done" in resumed.stdout  # the damaged four redone
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(18, 18)]
    again = " ".join(rethink("status", "dmg", "--store", str(store)).stdout.split())
    assert "damaged" not in again.replace(f"run {bad_json} damaged", "").replace(f"run {bad_id} damaged", "")


def test_a_run_list_that_is_not_parquet_is_written_again_and_status_stays_up(tmp_path, monkeypatch):
    store, runs = _submit(tmp_path, monkeypatch)
    (store / ExperimentPaths("dmg").runs).write_bytes(b"PAR1 not really")
    status = rethink("status", "--store", str(store))
    assert status.returncode == 0 and "Traceback" not in status.stdout + status.stderr
    assert "run list cannot be read" in " ".join(status.stdout.split())
    resumed = rethink("resume", "dmg", "--store", str(store), "--quiet")
    assert resumed.returncode == 0 and "6 already done" in resumed.stdout, resumed.stderr[-2000:]
    assert sorted(r for (r,) in sql(store, "select run_id from runs")) == runs


def test_store_text_is_shown_as_text_by_status(tmp_path, monkeypatch):
    store, runs = _submit(tmp_path, monkeypatch)
    path = store / RunPaths(runs[0]).status
    rows = pq.read_table(path).to_pylist()
    rows[0].update(status="failed", stop_reason="error",
                   error="<img src=x onerror=alert(1)> [/red] \x1b]0;owned\x07\x1b[2J [i]x")
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    status = rethink("status", "dmg", "--store", str(store))
    assert status.returncode == 0 and "Traceback" not in status.stdout + status.stderr, status.stderr
    assert "\x1b]0;" not in status.stdout and "\x1b[2J" not in status.stdout
    flat = "".join(status.stdout.split())
    assert "[/red]" in flat and "[i]x" in flat and "\\x1b]0" in flat  # the escape shown, not acted on


def test_configs_are_confirmed_in_sql_and_many_damaged_ones_are_counted_not_listed(tmp_path, monkeypatch):
    """status confirms a real run list in one SQL pass (damage.SUSPECT_CONFIGS finds no row to
    check in Python), and past NOTED_RUNS damaged rows it names five and counts the rest."""
    from rethink.runner.damage import SUSPECT_CONFIGS
    from rethink.runner.status import NOTED_RUNS
    from rethink.storage.reader import Reader
    from rethink.storage.store import Store

    store, run_ids = _submit(tmp_path, monkeypatch)
    suspects = Reader(Store.open(store)).run(lambda db: db.execute(SUSPECT_CONFIGS, [["dmg"]]).fetchall())
    assert suspects == []
    runs = store / ExperimentPaths("dmg").runs
    rows = pq.read_table(runs).to_pylist()
    for row in rows:  # every row damaged: the run id of another config
        config = json.loads(row["config"])
        config["seed"] += 100
        row["config"] = json.dumps(config, sort_keys=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(runs)), runs)
    status = rethink("status", "dmg", "--store", str(store))
    assert status.returncode == 0 and "Traceback" not in status.stderr
    said = " ".join(status.stdout.split())  # notes wrap at the terminal's width
    assert said.count("hashes to run id") == NOTED_RUNS < len(run_ids)
    assert f"dmg: {len(run_ids) - NOTED_RUNS} run" in said and "more damaged in runs.parquet" in said
