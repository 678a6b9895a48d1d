"""The worker's background writer: a worker killed while a checkpoint is being written (and right
after one) resumes to the rows of a run never interrupted, one row per (run, epoch); damaged,
foreign or code-carrying checkpoints are discarded, never loaded; rows and status are batched;
the checkpoint cadence is not part of a run's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rethink.runner import api, writer
from rethink.runner.grid import parse_grid
from rethink.runner.worker import run_pack
from rethink.storage.store import Store
from rethink.tasks import checkpoint
from rethink.tasks.train import TIMING_COLUMNS, train_pack

from .conftest import TINY_GRID, sql

GRID = TINY_GRID.format(name="writer", epochs=6).replace("checkpoint_every: 1", "checkpoint_every: 2")

# Runs the Ray task's own function in a fresh process whose store dies at a chosen moment of its
# N-th checkpoint write, on the writer thread, while the training thread goes on.
KILLER = textwrap.dedent("""
    import os, signal, sys, tempfile, json
    from pathlib import Path
    from rethink.storage.store import Store
    from rethink.runner.worker import run_pack
    store_path, config, when, nth = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    seen = []
    original = Store.write_checkpoint

    def dying_write(self, run_id, epoch, blob, keep=2):
        seen.append(epoch)
        if len(seen) == nth and when == "during":  # half a file under a temporary name, then death
            folder = Path(self.path(f"checkpoints/run_id={run_id}"))
            fd, _ = tempfile.mkstemp(prefix=f".epoch={epoch:04d}.ckpt.", suffix=".tmp", dir=folder)
            os.write(fd, blob[: len(blob) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, run_id, epoch, blob, keep)
        if len(seen) == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    Store.write_checkpoint = dying_write
    run_pack(store_path, "writer", [config], "unused", token="killed")
""")


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def reference_rows(run) -> list[dict]:
    rows: list[dict] = []
    train_pack([run], "unused", device="cpu", on_epoch=lambda _, row: rows.append(row))
    return rows


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_worker_killed_at_a_background_checkpoint_resumes_exactly(tmp_path, when):
    grid = parse_grid(GRID)
    run = grid.runs[0]
    store = Store.open(tmp_path, create=True)
    store.save_experiment("writer", grid.text, [])
    killed = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path), json.dumps(run.to_dict()), when, "2"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "RETHINK_DATA": "unused"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert store.checkpoint_epochs(run.run_id) == ([2] if when == "during" else [2, 4])
    (result,) = run_pack(str(tmp_path), "writer", [run.to_dict()], "unused", token="second")
    assert result.outcome == "done" and result.resumed_from == (2 if when == "during" else 4)
    assert untimed(store.read_epochs(run.run_id)) == untimed(reference_rows(run))
    assert sql(tmp_path, "select count(*), count(distinct epoch) from epochs") == [(6, 6)]
    assert store.checkpoint_epochs(run.run_id) == []  # a finished run keeps no state


def forged(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return checkpoint.MAGIC + hashlib.sha256(payload).digest() + payload


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rethink-pwned-worker",))


def test_foreign_and_code_carrying_checkpoints_are_discarded_not_loaded(tmp_path):
    grid = parse_grid(GRID)
    run, other = grid.runs[0], grid.runs[1]
    states: dict[int, dict] = {}
    train_pack([other], "unused", device="cpu", on_epoch=lambda *_: None,
               on_checkpoint=lambda _, epoch, state: states.__setitem__(epoch, state))
    store = Store.open(tmp_path, create=True)
    store.save_experiment("writer", grid.text, [])
    store.write_epochs(run.run_id, reference_rows(run)[:4])
    store.write_checkpoint(run.run_id, 2, checkpoint.dumps(states[2]))  # another run's state
    store.write_checkpoint(run.run_id, 4, forged({"run": run.identity(), "x": _RunsCode()}))
    if os.path.exists("/tmp/rethink-pwned-worker"):
        os.remove("/tmp/rethink-pwned-worker")
    (result,) = run_pack(str(tmp_path), "writer", [run.to_dict()], "unused", token="t")
    assert not os.path.exists("/tmp/rethink-pwned-worker")
    assert result.outcome == "done" and result.resumed_from == 0
    notes = " ".join(result.notes)
    assert "epoch 4" in notes and "refused" in notes and "epoch 2" in notes and "another run" in notes
    assert untimed(store.read_epochs(run.run_id)) == untimed(reference_rows(run))


def test_rows_and_status_are_written_in_batches(tmp_path, monkeypatch):
    grid = parse_grid(GRID.replace("epochs: 6", "epochs: 12"))
    run = grid.runs[0]
    store = Store.open(tmp_path, create=True)
    store.save_experiment("writer", grid.text, [])
    writes = {"epochs": 0, "status": 0}
    for method, key in (("write_epochs", "epochs"), ("put_status", "status")):
        original = getattr(Store, method)

        def counted(self, *args, _original=original, _key=key, **kwargs):
            writes[_key] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Store, method, counted)
    monkeypatch.setattr(writer, "ROWS_EVERY_S", 3600.0)
    (result,) = run_pack(str(tmp_path), "writer", [run.to_dict()], "unused", token="t")
    assert result.outcome == "done"
    # 12 epochs: rows with each of the 5 checkpoints (2, 4 ... 10; none at the end) and when the
    # run ends, never once per epoch
    assert writes["epochs"] == 6, writes
    assert writes["status"] == 1 + 1 + 6 + 1, writes  # running (loading), training, with each batch of rows, done
    assert len(store.read_epochs(run.run_id)) == 12


def test_grids_that_differ_only_in_checkpoint_cadence_share_their_runs(ray_local, tmp_path):
    first = parse_grid(GRID.replace("name: writer", "name: cadence-a").replace("epochs: 6", "epochs: 2"))
    second = parse_grid(GRID.replace("name: writer", "name: cadence-b").replace("epochs: 6", "epochs: 2")
                        .replace("checkpoint_every: 2", 'checkpoint_every: "30s"'))
    assert [r.run_id for r in first.runs] == [r.run_id for r in second.runs]
    assert first.runs[0].train.checkpoint_every != second.runs[0].train.checkpoint_every
    done = api.submit(first, str(tmp_path), "unused", quiet=True)
    again = api.submit(second, str(tmp_path), "unused", quiet=True)
    assert (done.done, again.done, again.skipped) == (12, 0, 12)
    assert sql(tmp_path, "select count(*) from epochs") == [(24,)]


def test_a_checkpoint_survives_a_cadence_change():
    """The cadence is no part of the state's identity: a run resumes under another cadence."""
    run = parse_grid(GRID).runs[0]
    states: dict[int, dict] = {}
    train_pack([run], "unused", device="cpu", on_epoch=lambda *_: None,
               on_checkpoint=lambda _, epoch, state: states.__setitem__(epoch, state))
    later = dataclasses.replace(run, train=dataclasses.replace(run.train, checkpoint_every="10m"))
    rows: list[dict] = []
    (outcome,) = train_pack([later], "unused", device="cpu", on_epoch=lambda _, row: rows.append(row),
                            resume={later.run_id: checkpoint.dumps(states[4])})
    assert outcome.status == "done" and [r["epoch"] for r in rows] == [5, 6]
    assert untimed(rows) == untimed(reference_rows(run)[4:])
