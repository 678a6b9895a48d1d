"""What `submit` and `resume` show while they wait: a Rich progress bar of runs (done / running /
failed) and epochs, a line per run in flight (its label, epoch k/N, latest train/test accuracy
and what it is doing: loading, training, probing), elapsed time and an ETA from the epochs
trained so far; or, with --quiet, plain log lines for a cluster's driver log.

Everything shown comes from the store: the status file each running run's worker rewrites with
its rows (runner/writer.py), and the phase it announces before probing (tasks/train.py). So it is
shown as data (rethink/text.py): the bar's columns take no Rich markup, and run labels, phases
and errors have their control characters shown visibly, on one line."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TaskProgressColumn, TextColumn
from rich.progress import Progress as RichProgress

from rethink.states import RunState
from rethink.tasks.spec import RunSpec
from rethink.text import one_line

REFRESH_S = 2.0  # how often the status of running runs is read back from the store, at most
REFRESH_SHARE = 0.1  # and no more often than keeps the reading to this share of the driver's time
READERS = 16  # status files read at once from a remote store (a GET each)
SUMMARY_EVERY_S = 60.0  # --quiet: a summary line this often, for cluster logs
SHOWN_RUNS = 8  # per-run lines at most; the rest are counted


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_label(run: RunSpec) -> str:
    """'1a2b3c4d mlp1x512 labels p=0.5 none seed 0', safe to print (a resumed run's spec is read
    back from the store)."""
    return one_line(f"{run.run_id[:8]} {run.model} {run.corruption.label} {run.regularizer.label} seed {run.seed}")


class Progress:
    def __init__(self, name: str, total: int, epochs: int, quiet: bool):
        self.name, self.quiet = name, quiet
        self.done = self.failed = 0
        self.total, self.total_epochs = total, epochs
        self.finished_epochs = 0  # epochs of runs that have ended
        self.carried: dict[str, int] = {}  # epochs a run to resume already has, until it runs again
        self.running: dict[str, dict] = {}  # run_id -> its status as last read
        self.last_refresh = 0.0
        self.refresh_every = REFRESH_S  # grows when reading back takes long (many runs on S3)
        self.started = self.last_summary = time.monotonic()
        self.rate_from: tuple[float, int] | None = None  # (time, epochs) when training was first seen
        self.bar = RichProgress(
            # markup=False: the text is formatted from store values, never parsed as Rich markup
            TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[states]}", markup=False), TaskProgressColumn(),
            console=Console(stderr=True), disable=quiet,
        )
        self.runs = self.bar.add_task(f"{name} runs", total=total, states="")
        self.epochs = self.bar.add_task(f"{name} epochs", total=epochs, states="")
        self.lines: dict[str, TaskID] = {}  # run_id -> its line in the bar

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    # -- what the scheduler tells ------------------------------------------------------------------

    def advance_done(self, runs: int, epochs: int) -> None:
        """Runs already done before this command (a resume starts from what is done)."""
        self.done += runs
        self.finished_epochs += epochs
        self._show()

    def carry(self, run: RunSpec, epochs_done: int) -> None:
        """A run to resume that has `epochs_done` epochs from an earlier attempt."""
        if epochs_done:
            self.carried[run.run_id] = min(int(epochs_done), run.train.epochs)
            self._show()

    def finished(self, run: RunSpec, ok: bool, error: str | None = None) -> None:
        self.running.pop(run.run_id, None)
        self.carried.pop(run.run_id, None)
        if run.run_id in self.lines:
            self.bar.remove_task(self.lines.pop(run.run_id))
        self.finished_epochs += run.train.epochs
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.quiet:  # one plain line per finished run: what a cluster's driver log shows
            what = "done" if ok else f"failed: {error}"
            print(one_line(f"{self.name}: [{self.done + self.failed}/{self.total}] run {run.run_id} "
                           f"({run.model} {run.corruption.label} {run.regularizer.label} seed {run.seed}) {what}"),
                  file=sys.stderr, flush=True)
        self._show()

    def say(self, message: str) -> None:
        """What is happening before the first epoch (starting Ray, waiting for workers)."""
        message = one_line(message)
        if self.quiet:
            print(f"{self.name}: {message}", file=sys.stderr, flush=True)
        else:
            self.bar.update(self.runs, states=message)

    def note(self, message: str) -> None:
        """A line that stays (such as a wait on a run another process holds): printed above the
        bar, or plain with --quiet."""
        message = f"{self.name}: {one_line(message)}"
        if self.quiet:
            print(message, file=sys.stderr, flush=True)
        else:
            self.bar.console.print(message, markup=False, highlight=False, emoji=False)

    def tick(self) -> None:
        """--quiet: a summary line every SUMMARY_EVERY_S while the grid runs."""
        if self.quiet and time.monotonic() - self.last_summary >= SUMMARY_EVERY_S:
            self.last_summary = time.monotonic()
            print(f"{self.name}: {self.done} done, {self.failed} failed, "
                  f"{self.total - self.done - self.failed} to go; {self.epochs_done()}/{self.total_epochs} epochs; "
                  f"{self._timing()}", file=sys.stderr, flush=True)

    def refresh(self, store, in_flight: list[RunSpec]) -> None:
        """Read back the status of the runs in flight (one small file each), every REFRESH_S or
        less often: the driver schedules tasks between reads, so a read-back that takes long
        (hundreds of runs on S3, a GET each) is spaced out to REFRESH_SHARE of its time. A remote
        store's files are read READERS at a time. With --quiet it is read only for the minute
        summary: the driver leaves the CPUs to the tasks."""
        now = time.monotonic()
        if now - self.last_refresh < self.refresh_every or (self.quiet and now - self.last_summary < SUMMARY_EVERY_S):
            return
        ids = [run.run_id for run in in_flight]
        if store.local or len(ids) < 2:
            statuses = [store.read_status(run_id) for run_id in ids]
        else:
            with ThreadPoolExecutor(min(READERS, len(ids))) as pool:
                statuses = list(pool.map(store.read_status, ids))
        took = time.monotonic() - now
        self.last_refresh = time.monotonic()
        self.refresh_every = max(REFRESH_S, took / REFRESH_SHARE)
        running = {run_id: status for run_id, status in zip(ids, statuses)
                   if (status or {}).get("status") == RunState.RUNNING}
        self.running = running
        for run_id in running:
            self.carried.pop(run_id, None)  # its status now says where it restarted from
        if running and self.rate_from is None:
            self.rate_from = (now, self.epochs_done())
        self._show_runs({run.run_id: run for run in in_flight})
        self._show()

    # -- what is shown -----------------------------------------------------------------------------

    def epochs_done(self) -> int:
        running = sum(int(status.get("epochs_done") or 0) for status in self.running.values())
        return self.finished_epochs + running + sum(self.carried.values())

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate epochs have been trained since the first run started; None
        until an epoch has been trained in this command."""
        if self.rate_from is None:
            return None
        since, at = self.rate_from
        trained, elapsed = self.epochs_done() - at, time.monotonic() - since
        if trained <= 0 or elapsed <= 0:
            return None
        return (self.total_epochs - self.epochs_done()) * elapsed / trained

    def _timing(self) -> str:
        eta = self.eta_seconds()
        return f"{clock(time.monotonic() - self.started)} elapsed" + (f", about {clock(eta)} left" if eta is not None else "")

    def _show(self) -> None:
        states = f"done {self.done} · running {len(self.running)} · failed {self.failed}"
        self.bar.update(self.runs, completed=self.done + self.failed, states=states)
        self.bar.update(self.epochs, completed=self.epochs_done(), states=self._timing())

    def _show_runs(self, specs: dict[str, RunSpec]) -> None:
        """A line per running run (SHOWN_RUNS at most, the rest counted in the last one)."""
        if self.quiet:
            return
        shown = [run_id for run_id in self.running if run_id in specs][:SHOWN_RUNS]
        for run_id in [r for r in self.lines if r not in shown]:
            self.bar.remove_task(self.lines.pop(run_id))
        hidden = len(self.running) - len(shown)
        for i, run_id in enumerate(shown):
            run, status = specs[run_id], self.running[run_id]
            line = describe(status)
            if hidden and i == len(shown) - 1:
                line += f"   (+{hidden} more running)"
            if run_id not in self.lines:
                self.lines[run_id] = self.bar.add_task(f"  {run_label(run)}", total=run.train.epochs, states="")
            self.bar.update(self.lines[run_id], completed=int(status.get("epochs_done") or 0), states=line)


def describe(status: dict) -> str:
    """A running run's latest accuracies and what it does now, from its status row."""
    parts = []
    for key, name in (("train_acc", "train"), ("test_acc", "test")):
        if status.get(key) is not None:
            parts.append(f"{name} {status[key]:.3f}")
    parts.append(status.get("phase") or "training")
    return one_line(" · ".join(parts))
