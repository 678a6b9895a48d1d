"""The limits on what rethink expands and reads: sized to what rethink itself writes, far above any
real grid or store, so a hostile or damaged file (a sparse 40 GB checkpoint, a five-million-row
run list that compresses to 860 KB) is refused in one line instead of exhausting memory."""

from __future__ import annotations

import os

MAX_GRID_RUNS = 1_000_000  # runs in one grid: the largest real grids here have 10^4


def _env_bytes(name: str, default: int) -> int:
    """A byte limit from the environment (a positive integer), else `default`."""
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


MAX_CHECKPOINT_BYTES = _env_bytes("RETHINK_MAX_CHECKPOINT_BYTES", 4 << 30)  # one run's checkpoint
