"""One run in this process, no Ray and no store (`rethink train`): the in-process backend a
researcher can step through with pdb."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rethink.runner.console import EpochTable
from rethink.storage.atomic import write_bytes
from rethink.tasks.checkpoint import dumps
from rethink.tasks.train import RunOutcome, train_pack
from rethink.tasks.spec import RunSpec


def run_one(
    spec: RunSpec,
    data_dir: Path,
    *,
    checkpoint: Path | None = None,
    device: str | None = None,
    as_json: bool = False,
) -> RunOutcome:
    """Train `spec` to its end, printing each epoch (a live table, or JSON lines with as_json).
    With `checkpoint`, resume from that file when it exists and rewrite it atomically."""
    resume = {spec.run_id: checkpoint.read_bytes()} if checkpoint and checkpoint.exists() else None

    def save(run_id: str, epoch: int, state: dict) -> None:
        if checkpoint:
            write_bytes(checkpoint, dumps(state))

    def print_json(run_id: str, row: dict) -> None:
        print(json.dumps(row), flush=True)

    if as_json:
        outcome = train_pack([spec], data_dir, on_epoch=print_json, on_checkpoint=save, resume=resume, device=device)[0]
    else:
        c, title = spec.corruption.label, f"{spec.model} on {spec.data.dataset}"
        with EpochTable(f"{title}, corruption {c}, regularizer {spec.regularizer.label} (run {spec.run_id})") as table:
            outcome = train_pack(
                [spec], data_dir, on_epoch=lambda _, row: table.add(row), on_checkpoint=save, resume=resume, device=device
            )[0]
    if outcome.status == "done":
        fit = f"fit at epoch {outcome.epochs_to_fit}" if outcome.epochs_to_fit else "did not fit"
        best = "–" if outcome.best_test_acc is None else f"{outcome.best_test_acc:.3f}"
        print(f"run {spec.run_id}: {outcome.stop_reason} after {outcome.epochs_done} epochs, {fit}, best test acc {best}",
              file=sys.stderr)
    return outcome
