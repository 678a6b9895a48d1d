"""What a task hands back to its driver: one PackResult per run of its pack. Ray carries these
objects as they are (not dicts rebuilt by hand), so this module stays torch-free: the driver
unpickles them without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass

from rethink.states import Outcome


@dataclass
class PackResult:
    run_id: str
    outcome: Outcome
    error: str | None = None
    resumed_from: int = 0  # epoch of the checkpoint the run started from
    notes: tuple[str, ...] = ()  # damaged or foreign files found and discarded
