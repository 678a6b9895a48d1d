"""What one Ray task does: claim the runs of its pack in the store, resume each from its last good
checkpoint, train the pack, and write every epoch row, checkpoint and status back. Knows the
store and the engine; Ray calls it but it does not need Ray."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from rethink.errors import RethinkError
from rethink.runner.heartbeat import Heartbeat
from rethink.runner.outcomes import PackResult
from rethink.runner.writer import PackWriter
from rethink.states import Outcome, RunState, StopReason
from rethink.storage.store import DamagedFileError, Store, now
from rethink.tasks import checkpoint as ckpt
from rethink.tasks.spec import RunSpec
from rethink.tasks.timing import Stopwatch
from rethink.tasks.provenance import provenance
from rethink.tasks.train import RunOutcome, default_device, train_pack

TIMINGS_ENV = "RETHINK_TIMINGS"  # a folder: each task writes where its seconds went (bench/overhead.py)


class Cancelled(RethinkError):
    """The experiment was cancelled, or another attempt took the run over: stop this run quietly.
    The engine reads `stop_reason` and leaves the run resumable instead of failing it."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"stopped: {reason}")
        self.stop_reason = reason


def run_pack(
    store_uri: str, experiment: str, configs: list[dict], data_dir: str, token: str, threads: int = 0
) -> list[PackResult]:
    """Train the runs in `configs` (RunSpec dicts) that are not done and not owned elsewhere."""
    started, started_at = time.perf_counter(), time.time()
    if threads:
        import torch

        torch.set_num_threads(threads)  # a task owns its CPUs: oversubscribed OpenMP crawls
    watch = Stopwatch()
    store = Store.open(store_uri)
    if store.cancel_requested(experiment):  # queued before a cancel: don't even start
        return [PackResult(RunSpec.from_dict(c).run_id, Outcome.CANCELLED) for c in configs]
    with watch.part("claims"):
        results, claimed = _claim(store, [RunSpec.from_dict(c) for c in configs], token)
    resume: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    status: dict[str, dict] = {}
    attempts = {spec.run_id: attempt for spec, attempt in claimed}
    made_by = provenance(default_device()) if claimed else {}
    for spec, attempt in claimed:
        with watch.part("resume"):
            start, state, kept_rows, notes = _resume_point(store, spec)
        rows[spec.run_id] = kept_rows
        if state is not None:
            resume[spec.run_id] = state
        results[spec.run_id] = PackResult(spec.run_id, Outcome.FAILED, resumed_from=start, notes=tuple(notes))
        with watch.part("claims"):
            status[spec.run_id] = store.write_status(
                spec.run_id, status=RunState.RUNNING, attempts=attempt, host=socket.gethostname(), pid=os.getpid(),
                started_at=now(), finished_at=None, error=None, stop_reason=None, epochs_done=start,
                resumed_from=start, phase="loading", train_acc=None, test_acc=None, **made_by,
            )
    writer = PackWriter(store, experiment, attempts, status, rows, watch)
    heartbeat = Heartbeat(store, attempts)  # claims beat on a timer, however long an epoch takes

    def on_epoch(run_id: str, row: dict) -> None:
        if run_id in writer.stopped:
            raise Cancelled(writer.stopped[run_id])
        writer.add_row(run_id, row)

    def on_checkpoint(run_id: str, epoch: int, state: dict) -> None:
        writer.add_snapshot(run_id, epoch, state)

    ended: set[str] = set()

    def on_end(outcome: RunOutcome) -> None:
        ended.add(outcome.run_id)
        writer.end_run(outcome.run_id, lambda: _finish(store, writer, heartbeat, results[outcome.run_id], outcome))

    specs = [spec for spec, _ in claimed]
    try:
        if specs:
            with watch.part("train_pack"):
                train_pack(specs, data_dir, on_epoch=on_epoch, on_checkpoint=on_checkpoint, resume=resume,
                           final_checkpoint=False, stopwatch=watch, on_epoch_end=writer.end_epoch, on_end=on_end,
                           on_phase=writer.phase)
    except Exception as exc:  # the pack as a whole could not go on (its data, a write that failed)
        error = _one_line(exc)
        for spec in specs:
            if spec.run_id not in ended:
                on_end(RunOutcome(spec.run_id, RunState.FAILED, StopReason.ERROR, len(rows[spec.run_id]), error=error))
    finally:
        try:
            with watch.part("close"):
                writer.close()
        except Exception as exc:  # a write failed: say so in every run not yet told, if the store lets us
            _fail_unfinished(store, results, [s.run_id for s in specs], _one_line(exc))
        finally:
            heartbeat.close()  # a Ray worker outlives its task: its thread must not
        _save_timings(watch, token, started_at, time.perf_counter() - started, len(specs))
    return list(results.values())


def _fail_unfinished(store: Store, results: dict[str, PackResult], run_ids: list[str], error: str) -> None:
    for run_id in run_ids:
        result = results[run_id]
        if result.outcome in (Outcome.DONE, Outcome.CANCELLED, Outcome.TAKEN_OVER):
            continue
        result.outcome, result.error = Outcome.FAILED, result.error or f"writing to the store failed: {error}"
        try:
            store.write_status(run_id, status=RunState.FAILED, stop_reason=StopReason.ERROR, error=result.error,
                               finished_at=now())
        except Exception:  # noqa: BLE001 - the store itself is what failed; the driver still hears
            pass


def _claim(store: Store, specs: list[RunSpec], token: str) -> tuple[dict[str, PackResult], list[tuple[RunSpec, int]]]:
    """Claim every run that is not done and not owned by a live attempt elsewhere."""
    results: dict[str, PackResult] = {}
    claimed: list[tuple[RunSpec, int]] = []
    for spec in specs:
        status = store.read_status(spec.run_id)
        if status and status.get("status") == RunState.DONE:
            results[spec.run_id] = PackResult(spec.run_id, Outcome.SKIPPED)
            continue
        attempt = store.claim(spec.run_id, token)
        if attempt is None:
            results[spec.run_id] = PackResult(spec.run_id, Outcome.BUSY)
            continue
        if (store.read_status(spec.run_id) or {}).get("status") == RunState.DONE:  # finished while we claimed
            store.release(spec.run_id, attempt)
            results[spec.run_id] = PackResult(spec.run_id, Outcome.SKIPPED)
            continue
        claimed.append((spec, attempt))
    return results, claimed


def _finish(store: Store, writer: PackWriter, heartbeat: Heartbeat, result: PackResult, outcome: RunOutcome) -> None:
    """On the writer's thread, after the run's last rows: its status, claim and checkpoints."""
    run_id = outcome.run_id
    stopped = writer.stopped.get(run_id)
    heartbeat.drop(run_id)  # before the release: a beat never follows it
    if stopped == StopReason.TAKEN_OVER:  # another attempt owns the run now: its status is theirs
        result.outcome = Outcome.TAKEN_OVER
        return
    # The status first, the claim after: a claim released while the status still said running
    # would let another driver's task take the run and train it again.
    if stopped == StopReason.CANCELLED:
        result.outcome = Outcome.CANCELLED
        writer.put_status(run_id, status=RunState.PENDING, stop_reason=StopReason.CANCELLED, error=None, phase=None)
    elif outcome.status == RunState.DONE:
        result.outcome = Outcome.DONE
        writer.put_status(run_id, status=RunState.DONE, stop_reason=outcome.stop_reason,
                          epochs_done=outcome.epochs_done, finished_at=now(), phase=None)
        for epoch in store.checkpoint_epochs(run_id):  # finished: its state is no longer needed
            store.delete_checkpoint(run_id, epoch)
    else:
        result.error = outcome.error
        writer.put_status(run_id, status=RunState.FAILED, stop_reason=outcome.stop_reason, error=outcome.error,
                          finished_at=now(), phase=None)
    store.release(run_id, writer.attempts[run_id])


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def _save_timings(watch: Stopwatch, token: str, started_at: float, wall_s: float, runs: int) -> None:
    """With $RETHINK_TIMINGS set (bench/overhead.py sets it), where this task's seconds went."""
    folder = os.environ.get(TIMINGS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"{token}.json").write_text(json.dumps(
            watch.as_dict() | {"started_at": started_at, "wall_s": wall_s, "runs": runs, "pid": os.getpid()}))


def _resume_point(store: Store, spec: RunSpec) -> tuple[int, dict | None, list[dict], list[str]]:
    """The newest checkpoint that loads, is this run's, and whose epoch rows are all there:
    (epoch, state, rows up to that epoch, notes). Damaged or foreign checkpoints are reported,
    deleted and the run redone from the newest good state (from scratch when there is none)."""
    notes: list[str] = []
    run_id = spec.run_id
    try:
        rows = store.read_epochs(run_id)
    except DamagedFileError as exc:
        notes.append(str(exc))
        rows = []
    if any(r.get("run_id") != run_id for r in rows) or len({r["epoch"] for r in rows}) < len(rows):
        notes.append("its epoch file holds another run's rows or an epoch twice; redone from scratch")
        rows = []  # rows that are not this run's, once each, cannot be carried on
    for epoch in reversed(store.checkpoint_epochs(run_id)):
        blob = store.read_checkpoint(run_id, epoch)
        try:
            state = ckpt.loads(blob or b"")
            if not isinstance(state, dict) or state.get("run") != spec.identity():
                raise ckpt.CheckpointError("it belongs to another run config (or an older rethink)")
        except ckpt.CheckpointError as exc:
            notes.append(f"checkpoint of epoch {epoch}: {exc}; discarded")
            store.delete_checkpoint(run_id, epoch)
            continue
        kept = [r for r in rows if r["epoch"] <= epoch]
        if [r["epoch"] for r in kept] == list(range(1, epoch + 1)):
            return epoch, state, kept, notes
        notes.append(f"epoch rows up to {epoch} are incomplete; checkpoint of epoch {epoch} not used")
    return 0, None, [], notes


def run_pack_here(store_uri: str, experiment: str, configs: list[dict], data_dir: Path | str,
                  token: str) -> list[PackResult]:
    """The same as the Ray task, in this process (tests, pdb)."""
    return run_pack(store_uri, experiment, configs, str(data_dir), token)
