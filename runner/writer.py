"""A pack's writes to the store, off the training thread. The training loop only appends rows and
hands over snapshots already copied off the device; one background thread serializes and
checksums checkpoints, writes epoch rows and status, refreshes the claims' heartbeats and looks
for a cancel or a takeover, while the next epoch trains.

Order is what keeps a crash harmless: jobs run one at a time in the order given, and a run's
epoch rows are written before any checkpoint of a later or equal epoch, so a store never holds a
checkpoint whose rows are missing (resume relies on that: runner/worker.py `_resume_point`).
Cadence: rows at most every ROWS_EVERY_S (and with every checkpoint and at each run's end); at
most one batch of checkpoints in flight per pack: a second waits for the first to be written."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from rethink.states import StopReason
from rethink.storage.store import Store, now
from rethink.tasks import checkpoint as ckpt
from rethink.tasks.timing import Stopwatch

ROWS_EVERY_S = 5.0  # seconds between writes of a running pack's epoch rows and status


class PackWriter:
    def __init__(self, store: Store, experiment: str, attempts: dict[str, int], status: dict[str, dict],
                 rows: dict[str, list[dict]], watch: Stopwatch) -> None:
        self.store, self.experiment, self.watch = store, experiment, watch
        self.attempts, self.status, self.rows = attempts, status, rows  # owned by the writer from here
        self.stopped: dict[str, StopReason] = {}  # run_id -> CANCELLED | TAKEN_OVER
        self._pending: dict[str, list[dict]] = {}  # rows not yet handed to the thread
        self._snapshots: list[tuple[str, int, dict]] = []
        self._checkpoint_free = threading.Semaphore(1)  # one batch of checkpoints in flight
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._rows_due = time.monotonic() + ROWS_EVERY_S
        self._thread = threading.Thread(target=self._work, name="rethink-writer", daemon=True)
        self._thread.start()

    # -- the training thread's side: cheap, never waits on a write except for back-pressure ---------

    def add_row(self, run_id: str, row: dict) -> None:
        self._pending.setdefault(run_id, []).append(row)

    def add_snapshot(self, run_id: str, epoch: int, state: dict) -> None:
        self._snapshots.append((run_id, epoch, state))

    def end_epoch(self) -> None:
        """After each pack epoch: hand over this epoch's checkpoints, or the rows when due."""
        self._raise_if_failed()
        if self._snapshots:
            with self.watch.part("checkpoint_wait"):  # the previous batch is still being written
                while not self._checkpoint_free.acquire(timeout=0.5):
                    self._raise_if_failed()
            batch, self._snapshots = self._snapshots, []
            self._submit(self._flush_job(), self._checkpoint_job(batch))
        elif time.monotonic() >= self._rows_due and self._pending:
            self._submit(self._flush_job())

    def phase(self, run_id: str, phase: str) -> None:
        """The run is now `phase` (training, probing): its status says so at once, for progress."""
        self._raise_if_failed()
        if run_id not in self.stopped:
            self._submit(lambda: self.put_status(run_id, phase=phase))

    def end_run(self, run_id: str, finish: Callable[[], None]) -> None:
        """A run left the pack: its last rows, then `finish` (status, claim, checkpoints)."""
        self._submit(self._flush_job([run_id]), finish)

    def close(self) -> None:
        """Write everything still pending and stop the thread; raises what a write raised."""
        self._submit(self._flush_job())
        self._jobs.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _submit(self, *jobs: Callable[[], None]) -> None:
        for job in jobs:
            self._jobs.put(job)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- jobs, built on the training thread, run on the writer's -------------------------------------

    def _flush_job(self, run_ids: list[str] | None = None) -> Callable[[], None]:
        taken = {rid: self._pending.pop(rid) for rid in list(self._pending) if run_ids is None or rid in run_ids}
        self._rows_due = time.monotonic() + ROWS_EVERY_S
        return lambda: self._write_rows(taken)

    def _checkpoint_job(self, batch: list[tuple[str, int, dict]]) -> Callable[[], None]:
        def job() -> None:
            try:
                for run_id, epoch, state in batch:
                    if run_id in self.stopped:
                        continue
                    with self.watch.part("checkpoint_bytes"):
                        blob = ckpt.dumps(state)
                    with self.watch.part("store_writes"):
                        self.store.write_checkpoint(run_id, epoch, blob)
            finally:
                self._checkpoint_free.release()

        return job

    def _write_rows(self, new: dict[str, list[dict]]) -> None:
        """Epoch rows and status of the runs with new rows; the claims' heartbeat and the cancel
        and takeover checks ride along (they cost a stat and a listing per run)."""
        with self.watch.part("store_writes"):
            cancelled = self.store.cancel_requested(self.experiment)
            for run_id, rows in new.items():
                if run_id in self.stopped:
                    continue
                if cancelled:
                    self.stopped[run_id] = StopReason.CANCELLED
                    continue
                if not self.store.owns(run_id, self.attempts[run_id]):
                    self.stopped[run_id] = StopReason.TAKEN_OVER
                    continue
                self.rows[run_id].extend(rows)
                self.store.write_epochs(run_id, self.rows[run_id])
                last = self.rows[run_id][-1]
                self.put_status(run_id, epochs_done=last["epoch"], phase="training",
                                train_acc=last.get("train_acc"), test_acc=last.get("test_acc"))

    def put_status(self, run_id: str, **fields: object) -> None:
        """Merge into the run's status as this writer holds it and write it (never read back)."""
        self.status[run_id].update(fields, updated_at=now())
        self.store.put_status(run_id, self.status[run_id])

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is not None:
                continue  # after a failed write, drain without writing more
            try:
                job()
            except BaseException as exc:  # handed to the training thread at its next call
                self._error = exc
