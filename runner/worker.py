"""What one Ray task does: claim the runs of its pack in the store, resume each from its last good
checkpoint, train the pack, and write every epoch row, checkpoint and status back. Knows the
store and the engine; Ray calls it but it does not need Ray."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from rethink.errors import RethinkError
from rethink.storage.store import DamagedFileError, Store, now
from rethink.tasks import checkpoint as ckpt
from rethink.tasks.spec import RunSpec
from rethink.tasks.train import train_pack


class Cancelled(RethinkError):
    """The experiment was cancelled, or another attempt took the run over: stop quietly."""


@dataclass
class PackResult:
    run_id: str
    outcome: str  # done | failed | busy (another owner trains it) | skipped (already done) | cancelled
    error: str | None = None
    resumed_from: int = 0  # epoch of the checkpoint the run started from
    notes: tuple[str, ...] = ()  # damaged files found and discarded


def run_pack(
    store_uri: str, experiment: str, configs: list[dict], data_dir: str, token: str, threads: int = 0
) -> list[dict]:
    """Train the runs in `configs` (RunSpec dicts) that are not done and not owned elsewhere."""
    if threads:
        import torch

        torch.set_num_threads(threads)  # a task owns its CPUs: oversubscribed OpenMP crawls
    store = Store.open(store_uri)
    if store.cancel_requested(experiment):  # queued before a cancel: don't even start
        return [asdict(PackResult(RunSpec.from_dict(c).run_id, "cancelled")) for c in configs]
    results: dict[str, PackResult] = {}
    claimed: list[tuple[RunSpec, int]] = []
    for config in configs:
        spec = RunSpec.from_dict(config)
        status = store.read_status(spec.run_id)
        if status and status.get("status") == "done":
            results[spec.run_id] = PackResult(spec.run_id, "skipped")
            continue
        attempt = store.claim(spec.run_id, token)
        if attempt is None:
            results[spec.run_id] = PackResult(spec.run_id, "busy")
            continue
        if (store.read_status(spec.run_id) or {}).get("status") == "done":  # finished while we claimed
            store.release(spec.run_id, attempt)
            results[spec.run_id] = PackResult(spec.run_id, "skipped")
            continue
        claimed.append((spec, attempt))

    resume: dict[str, bytes] = {}
    rows: dict[str, list[dict]] = {}
    attempts = dict((spec.run_id, attempt) for spec, attempt in claimed)
    for spec, attempt in claimed:
        start, blob, kept_rows, notes = _resume_point(store, spec.run_id)
        rows[spec.run_id] = kept_rows
        if blob is not None:
            resume[spec.run_id] = blob
        results[spec.run_id] = PackResult(spec.run_id, "failed", resumed_from=start, notes=tuple(notes))
        store.write_status(
            spec.run_id, status="running", attempts=attempt, host=socket.gethostname(), pid=os.getpid(),
            started_at=now(), finished_at=None, error=None, stop_reason=None, epochs_done=start, resumed_from=start,
        )

    def on_epoch(run_id: str, row: dict) -> None:
        if store.cancel_requested(experiment):
            raise Cancelled("cancelled")
        if not store.owns(run_id, attempts[run_id]):
            raise Cancelled("taken over by a later attempt")
        rows[run_id].append(row)
        store.write_epochs(run_id, rows[run_id])
        store.write_status(run_id, epochs_done=row["epoch"])

    def on_checkpoint(run_id: str, epoch: int, blob: bytes) -> None:
        store.write_checkpoint(run_id, epoch, blob)

    specs = [spec for spec, _ in claimed]
    outcomes = train_pack(specs, data_dir, on_epoch=on_epoch, on_checkpoint=on_checkpoint, resume=resume) if specs else []
    for outcome in outcomes:
        result = results[outcome.run_id]
        if outcome.error != "taken over by a later attempt":
            store.release(outcome.run_id, attempts[outcome.run_id])
        if outcome.status == "done":
            result.outcome = "done"
            store.write_status(outcome.run_id, status="done", stop_reason=outcome.stop_reason,
                               epochs_done=outcome.epochs_done, finished_at=now())
            for epoch in store.checkpoint_epochs(outcome.run_id):  # finished: its state is no longer needed
                store.delete_checkpoint(outcome.run_id, epoch)
        elif outcome.error == "cancelled" or (outcome.error or "").startswith("taken over"):
            result.outcome = "cancelled"
            if outcome.error == "cancelled":
                store.write_status(outcome.run_id, status="pending", stop_reason="cancelled", error=None)
        else:
            result.error = outcome.error
            store.write_status(outcome.run_id, status="failed", stop_reason="error", error=outcome.error,
                               finished_at=now())
    return [asdict(r) for r in results.values()]


def _resume_point(store: Store, run_id: str) -> tuple[int, bytes | None, list[dict], list[str]]:
    """The newest checkpoint that loads and whose epoch rows are all there: (epoch, blob, rows
    up to that epoch, notes). Damaged files are reported, deleted and the run redone from the
    newest good state (from scratch when there is none)."""
    notes: list[str] = []
    try:
        rows = store.read_epochs(run_id)
    except DamagedFileError as exc:
        notes.append(str(exc))
        rows = []
    for epoch in reversed(store.checkpoint_epochs(run_id)):
        blob = store.read_checkpoint(run_id, epoch)
        try:
            ckpt.loads(blob or b"")
        except ckpt.CheckpointError as exc:
            notes.append(f"checkpoint of epoch {epoch}: {exc}; discarded")
            store.delete_checkpoint(run_id, epoch)
            continue
        kept = [r for r in rows if r["epoch"] <= epoch]
        if [r["epoch"] for r in kept] == list(range(1, epoch + 1)):
            return epoch, blob, kept, notes
        notes.append(f"epoch rows up to {epoch} are incomplete; checkpoint of epoch {epoch} not used")
    return 0, None, [], notes


def run_pack_here(store_uri: str, experiment: str, configs: list[dict], data_dir: Path | str, token: str) -> list[dict]:
    """The same as the Ray task, in this process (tests, pdb)."""
    return run_pack(store_uri, experiment, configs, str(data_dir), token)
