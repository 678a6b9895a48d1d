"""Progress that tells the truth: a line per run in flight (label, epoch k/N, latest accuracies,
loading / training / probing) read from the status its worker writes; an ETA from the epochs
trained in this command; a resume's bar starting from what earlier attempts left; and, in a
terminal, the bar's lines during a real submit."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time


from rethink.runner import progress as progress_module
from rethink.runner.grid import parse_grid
from rethink.runner.progress import Progress, describe
from rethink.runner.worker import run_pack
from rethink.storage.store import Store
from rethink.tasks.train import train_pack

from .conftest import TINY_GRID

GRID = parse_grid(TINY_GRID.format(name="prog", epochs=4))


def read_back_every_call(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "REFRESH_S", 0.0)
    monkeypatch.setattr(progress_module, "REFRESH_SHARE", float("inf"))  # no spacing by read time


def running_status(store: Store, run_id: str, **fields: object) -> None:
    store.put_status(run_id, {"run_id": run_id, "status": "running", "attempts": 1, **fields})


def line_states(bar: Progress) -> dict[str, tuple[str, float, float]]:
    return {task.description.strip(): (task.fields["states"], task.completed, task.total) for task in bar.bar.tasks}


def test_a_line_per_running_run_with_its_epoch_accuracies_and_phase(tmp_path, monkeypatch):
    read_back_every_call(monkeypatch)
    store = Store.open(tmp_path, create=True)
    a, b, c = GRID.runs[:3]
    running_status(store, a.run_id, epochs_done=3, phase="probing", train_acc=0.5, test_acc=0.125)
    running_status(store, b.run_id, epochs_done=0, phase="loading")
    store.put_status(c.run_id, {"run_id": c.run_id, "status": "pending", "attempts": 0})  # queued, not running
    bar = Progress("prog", total=len(GRID.runs), epochs=4 * len(GRID.runs), quiet=False)
    bar.refresh(store, [a, b, c])
    lines = line_states(bar)
    label_a = next(label for label in lines if label.startswith(a.run_id[:8]))
    assert a.model in label_a and f"seed {a.seed}" in label_a
    assert lines[label_a] == ("train 0.500 · test 0.125 · probing", 3, 4)
    assert next(v for k, v in lines.items() if k.startswith(b.run_id[:8]))[0] == "loading"
    assert not any(k.startswith(c.run_id[:8]) for k in lines)  # only runs in flight and running
    assert "running 2" in lines["prog runs"][0]
    # a run that finishes leaves its line
    bar.finished(a, ok=True)
    assert not any(k.startswith(a.run_id[:8]) for k in line_states(bar))


def test_at_most_a_few_run_lines_and_the_rest_are_counted(tmp_path, monkeypatch):
    read_back_every_call(monkeypatch)
    monkeypatch.setattr(progress_module, "SHOWN_RUNS", 2)
    store = Store.open(tmp_path, create=True)
    for run in GRID.runs[:5]:
        running_status(store, run.run_id, epochs_done=1, phase="training")
    bar = Progress("prog", total=len(GRID.runs), epochs=4 * len(GRID.runs), quiet=False)
    bar.refresh(store, GRID.runs[:5])
    run_lines = [v[0] for k, v in line_states(bar).items() if not k.startswith("prog ")]
    assert len(run_lines) == 2 and run_lines[-1].endswith("(+3 more running)")


class SlowRemoteStore:
    """A real store whose status reads take as long as a GET to a far S3 (local=False: read in
    parallel), counting them."""

    local = False

    def __init__(self, store: Store, seconds: float):
        self.store, self.seconds, self.reads = store, seconds, 0

    def read_status(self, run_id: str) -> dict | None:
        self.reads += 1
        time.sleep(self.seconds)
        return self.store.read_status(run_id)


def test_a_slow_read_back_is_read_in_parallel_and_spaced_out(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_module, "REFRESH_S", 0.0)
    runs = GRID.runs[:8]
    store = Store.open(tmp_path, create=True)
    for run in runs:
        running_status(store, run.run_id, epochs_done=2, phase="training")
    slow = SlowRemoteStore(store, 0.2)
    bar = Progress("prog", total=len(GRID.runs), epochs=4 * len(GRID.runs), quiet=False)
    t0 = time.monotonic()
    bar.refresh(slow, runs)
    took = time.monotonic() - t0
    assert slow.reads == 8 and took < 8 * 0.2 / 2, took  # side by side, not one after another
    assert bar.epochs_done() == 16 and len(bar.running) == 8
    assert bar.refresh_every >= took / progress_module.REFRESH_SHARE * 0.9
    bar.refresh(slow, runs)  # at once again: too soon for a read-back that slow
    assert slow.reads == 8


def test_eta_comes_from_epochs_trained_in_this_command(tmp_path, monkeypatch):
    read_back_every_call(monkeypatch)
    store = Store.open(tmp_path, create=True)
    run = GRID.runs[0]
    bar = Progress("prog", total=1, epochs=10, quiet=False)
    bar.carry(run, 4)  # a resume: 4 epochs from an earlier attempt count as done, not as speed
    assert bar.epochs_done() == 4 and bar.eta_seconds() is None
    running_status(store, run.run_id, epochs_done=4, phase="training")
    bar.refresh(store, [run])
    assert bar.eta_seconds() is None  # no epoch trained yet in this command
    since, at = bar.rate_from
    bar.rate_from = (since - 10.0, at)  # as if the run had started 10 s ago
    running_status(store, run.run_id, epochs_done=6, phase="training")
    bar.refresh(store, [run])
    eta = bar.eta_seconds()  # 2 epochs in ~10 s, 4 to go: ~20 s
    assert eta is not None and 19 < eta < 22
    assert "left" in line_states(bar)["prog epochs"][0]


def test_quiet_summary_counts_epochs_and_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "SUMMARY_EVERY_S", 0.0)
    store = Store.open(tmp_path, create=True)
    run = GRID.runs[0]
    running_status(store, run.run_id, epochs_done=2, phase="training")
    bar = Progress("prog", total=2, epochs=8, quiet=True)
    bar.refresh(store, [run])
    bar.tick()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("prog: 0 done, 0 failed, 2 to go; 2/8 epochs;") and "elapsed" in line


def test_describe_reads_status_rows_from_older_stores():
    assert describe({"status": "running", "epochs_done": 2}) == "training"  # no phase or accuracies stored


def test_the_engine_announces_training_then_probing(tmp_path):
    text = TINY_GRID.format(name="phases", epochs=2).replace("lr: 0.01", "lr: 0.01, probe_every: 2")
    run = parse_grid(text).runs[0]
    seen: list[tuple[str, str]] = []
    train_pack([run], "unused", on_epoch=lambda *_: None, on_phase=lambda r, p: seen.append((r, p)))
    assert seen == [(run.run_id, "training"), (run.run_id, "probing")]  # probes at epoch 2 only


def test_a_finished_runs_status_keeps_its_final_accuracies_and_no_phase(tmp_path):
    grid = parse_grid(TINY_GRID.format(name="final", epochs=3))
    run = grid.runs[0]
    store = Store.open(tmp_path, create=True)
    store.save_experiment("final", grid.text, [])
    (result,) = run_pack(str(tmp_path), "final", [run.to_dict()], "unused", token="t")
    assert result.outcome == "done"
    status, last = store.read_status(run.run_id), store.read_epochs(run.run_id)[-1]
    assert status["phase"] is None
    assert (status["train_acc"], status["test_acc"]) == (last["train_acc"], last["test_acc"])


def test_a_submit_in_a_terminal_shows_a_line_per_run(tmp_path):
    """In a terminal (a pty, as tmux gives), the bar shows per-run lines while runs train."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY_GRID.format(name="tty", epochs=30).replace("model: [mlp1x512, mlp3x512]", "model: mlp3x512")
                    .replace("image_size: 8", "image_size: 32").replace("train_size: 128", "train_size: 512"))
    main, child = pty.openpty()
    env = {**os.environ, "RETHINK_DATA": "unused", "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "rethink.cli", "submit", str(grid), "--store", str(tmp_path / "s")],
                            stdin=child, stdout=child, stderr=child, env=env, start_new_session=True)
    os.close(child)
    out, started, first = b"", time.monotonic(), None
    try:
        while proc.poll() is None and time.monotonic() - started < 240:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:
                    break
                first = first or time.monotonic() - started
                out += chunk
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        os.close(main)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "starting an embedded Ray cluster" in text
    assert "mlp3x512 labels:1 none seed" in text and "· training" in text and "train 0." in text, text[-3000:]
    assert "elapsed" in text
