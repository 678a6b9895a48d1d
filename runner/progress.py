"""What `submit` and `resume` show while they wait: a Rich progress bar of runs (done / running /
failed) and epochs with an ETA, or plain log lines with --quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from rethink.tasks.spec import RunSpec

REFRESH_S = 2.0  # how often the epochs of running runs are read back from the store
SUMMARY_EVERY_S = 60.0  # --quiet: a summary line this often, for cluster logs


class Progress:
    def __init__(self, name: str, total: int, epochs: int, quiet: bool):
        self.name, self.quiet = name, quiet
        self.done = self.failed = 0
        self.finished_epochs = 0  # epochs of runs that have ended
        self.running_epochs: dict[str, int] = {}
        self.last_refresh = 0.0
        self.total = total
        self.started = self.last_summary = time.monotonic()
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"), TaskProgressColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=quiet,
        )
        self.runs = self.bar.add_task(f"{name} runs", total=total, states="")
        self.epochs = self.bar.add_task(f"{name} epochs", total=epochs, states="")

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def advance_done(self, runs: int, epochs: int) -> None:
        self.done += runs
        self.finished_epochs += epochs
        self._show()

    def finished(self, run: RunSpec, ok: bool, error: str | None = None) -> None:
        self.running_epochs.pop(run.run_id, None)
        self.finished_epochs += run.train.epochs
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.quiet:  # one plain line per finished run: what a cluster's driver log shows
            what = "done" if ok else f"failed: {error}"
            print(f"{self.name}: [{self.done + self.failed}/{self.total}] run {run.run_id} "
                  f"({run.model} {run.corruption.label} {run.regularizer.label} seed {run.seed}) {what}",
                  file=sys.stderr, flush=True)
        self._show()

    def say(self, message: str) -> None:
        """What is happening before the first epoch (starting Ray, waiting for workers)."""
        if self.quiet:
            print(f"{self.name}: {message}", file=sys.stderr, flush=True)
        else:
            self.bar.update(self.runs, states=message)

    def tick(self) -> None:
        """--quiet: a summary line every SUMMARY_EVERY_S while the grid runs."""
        if self.quiet and time.monotonic() - self.last_summary >= SUMMARY_EVERY_S:
            self.last_summary = time.monotonic()
            elapsed = int(time.monotonic() - self.started)
            print(f"{self.name}: {self.done} done, {self.failed} failed, "
                  f"{self.total - self.done - self.failed} to go; {elapsed // 60}:{elapsed % 60:02d} elapsed",
                  file=sys.stderr, flush=True)

    def refresh(self, store, running: list[RunSpec]) -> None:
        """Read back how far the running runs are (one small file per running run); nothing with
        --quiet, which shows no bar: the driver leaves the CPUs to the tasks."""
        if self.quiet or time.monotonic() - self.last_refresh < REFRESH_S:
            return
        self.last_refresh = time.monotonic()
        self.running_epochs = {}
        for run in running:
            status = store.read_status(run.run_id) or {}
            if status.get("status") == "running":
                self.running_epochs[run.run_id] = int(status.get("epochs_done") or 0)
        self._show()

    def _show(self) -> None:
        states = f"done {self.done} · running {len(self.running_epochs)} · failed {self.failed}"
        self.bar.update(self.runs, completed=self.done + self.failed, states=states)
        self.bar.update(self.epochs, completed=self.finished_epochs + sum(self.running_epochs.values()))
