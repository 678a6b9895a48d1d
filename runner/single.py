"""One run in this process, no Ray and no store (`rethink train`): the in-process backend a
researcher can step through with pdb."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

from rethink.errors import SpecError, os_errors
from rethink.runner.console import EpochTable
from rethink.storage.atomic import open_atomic
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
    check_device(device)
    blob = _read_checkpoint(checkpoint) if checkpoint else None
    resume = {spec.run_id: blob} if blob is not None else None

    def save(run_id: str, epoch: int, state: dict) -> None:
        if checkpoint:
            with open_atomic(checkpoint, name=f"--checkpoint {checkpoint}") as f:  # an OSError: one line
                f.write(dumps(state))

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


DEVICES = "cpu, cuda, cuda:N (N a GPU index)"


def check_device(device: str | None) -> None:
    """Refuse a --device this machine cannot train on, before any data is loaded."""
    if device is None:
        return
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if not match:
        raise SpecError(f"--device {device!r} is not a device rethink trains on; use one of {DEVICES}")
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise SpecError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise SpecError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")


def _read_checkpoint(path: Path) -> bytes | None:
    """The checkpoint's bytes, or None when there is none yet. A folder, a device, or a place no
    file can be written (under a file, /proc) is one line before training, not at the first save."""
    with os_errors("use --checkpoint", path):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            folder = next(p for p in path.absolute().parents if p.exists())
            if not folder.is_dir():
                raise SpecError(f"--checkpoint {path} cannot be written ({folder} is not a writable folder): "
                                "give a path in a folder you can write") from None
            tempfile.TemporaryFile(dir=folder).close()  # a real try: root may write anywhere but /proc, /sys
            return None
        if stat.S_ISDIR(mode):
            raise SpecError(f"--checkpoint {path} is a folder: give a file name, e.g. {path / 'run.ckpt'}")
        if not stat.S_ISREG(mode):
            raise SpecError(f"--checkpoint {path} is not a regular file (a device, pipe or socket): give a file name")
        return path.read_bytes()
