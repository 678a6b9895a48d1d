"""Claims beat on a timer, not at epoch ends (runner/heartbeat.py): a real `rethink submit` whose
epochs last longer than the claim timeout keeps every run's claim live all along (what `status`
and a takeover judge by), so nothing is taken over and each run is trained by one attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rethink.storage import claims as claims_module
from rethink.storage.store import Store

TIMEOUT_S = 1.0
# One model on one CPU thread: ≈ 2-10 s an epoch here, several claim timeouts.
SLOW_GRID = """\
name: slow
dataset: synthetic
data: {train_size: 16000, test_size: 64, image_size: 32}
model: mlp1x512
corruption: none
seed: [0, 1]
train: {epochs: 2, batch_size: 32, lr: 0.01, checkpoint_every: 1}
resources: {cpus: 1, gpus: 0}
"""


def test_epochs_longer_than_the_claim_timeout_keep_their_owner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(claims_module, "CLAIM_TIMEOUT_S", TIMEOUT_S)  # as the workers read it
    grid, root = tmp_path / "g.yaml", tmp_path / "store"
    grid.write_text(SLOW_GRID)
    env = {**os.environ, "RETHINK_CLAIM_TIMEOUT": str(TIMEOUT_S), "RETHINK_COMPACT": "0", "RETHINK_DATA": "unused"}
    submit = subprocess.Popen([sys.executable, "-m", "rethink.cli", "submit", str(grid), "--store", str(root),
                               "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    seen_running, orphaned = 0, []
    try:
        while submit.poll() is None:
            if (root / "store.json").exists():
                store = Store.open(root)
                for status in root.glob("runs/run_id=*/status.parquet"):
                    run_id = status.parent.name.removeprefix("run_id=")
                    row = store.read_status(run_id) or {}
                    if row.get("status") == "running" and row.get("phase") == "training":
                        seen_running += 1
                        if store.claim_holder(run_id) is None and (store.read_status(run_id) or {}).get(
                                "status") == "running":  # still running, yet its claim looks stale
                            orphaned.append((run_id, store.claim_age(run_id)))
            time.sleep(0.25)
        out = submit.communicate(timeout=30)[0]
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, 9)
            submit.wait()
    assert submit.returncode == 0, out
    assert seen_running, "no run was seen training"
    assert not orphaned, f"live runs looked stale to status and to a takeover: {orphaned}"
    store = Store.open(root)
    for status in root.glob("runs/run_id=*/status.parquet"):
        run_id = status.parent.name.removeprefix("run_id=")
        row = store.read_status(run_id)
        assert (row["status"], row["attempts"]) == ("done", 1), row
        assert store.listdir(f"runs/run_id={run_id}/claims") == ["attempt=0001.json"]
        epochs = store.read_epochs(run_id)
        assert max(r["wall_s"] for r in epochs) > TIMEOUT_S, "epochs were shorter than the timeout: no test"
        assert json.loads(store.read(f"runs/run_id={run_id}/claims/attempt=0001.json"))["released"]


def test_a_resume_waiting_on_a_held_run_says_whose_it_is_and_how_long(tmp_path: Path) -> None:
    from rethink.runner.scheduler import Summary, _relaunch_free
    store = Store.open(tmp_path / "store", create=True)
    said, launched = [], []

    class Progress:
        note = said.append

    class Run:
        run_id = "ab12cd34ef567890"

    assert store.claim(Run.run_id, "another driver's task") == 1  # live: this pid holds it
    busy = _relaunch_free(store, [Run], launched.append, Summary(), Progress, {})
    assert busy == [Run] and not launched
    assert len(said) == 1 and said[0].startswith(f"run ab12cd34 is held by host {os.uname().nodename} "
                                                 f"pid {os.getpid()} (claim beat 0 s ago); waiting up to ")
    assert said[0].endswith(" s for it to finish or go stale")
    waits: dict[str, str] = {}
    for _ in range(2):
        _relaunch_free(store, [Run], launched.append, Summary(), Progress, waits)
    assert len(said) == 2  # said once per holder, not at every look
