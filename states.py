"""The words a run's life is told in, one enumeration each: where a run stands in the store, why
it stopped, and what a task reports back to its driver for each run. Plain strings underneath
(`str` enums), so they go into Parquet, JSON and SQL unchanged and compare equal to the strings
older stores hold; torch-free, so the driver, the store and the engine all share them."""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """An enum whose members print as their value ('done', not 'RunState.DONE')."""

    __str__ = str.__str__
    __format__ = str.__format__


class RunState(_Word):
    """A run's status row in the store."""

    PENDING = "pending"  # not started, or stopped and resumable (cancel, interrupt, lost rows)
    RUNNING = "running"  # an attempt holds its claim
    DONE = "done"  # every epoch it will train is in the store
    FAILED = "failed"  # it raised; `error` says why, and `rethink resume` retries it


class StopReason(_Word):
    """Why a run's latest attempt stopped."""

    COMPLETED = "completed"  # trained every epoch
    EARLY_STOPPED = "early_stopped"  # patience ran out on the held-out split
    DIVERGED = "diverged"  # loss became NaN or infinite
    ERROR = "error"  # the run (or its whole pack) raised
    WORKER_DIED = "worker_died"  # its process died more often than Ray retries a task
    CANCELLED = "cancelled"  # `rethink cancel`
    INTERRUPTED = "interrupted"  # the driver was stopped (Ctrl-C) before the run ended
    TAKEN_OVER = "taken_over"  # another attempt claimed the run while this one trained
    ROWS_LOST = "rows_lost"  # marked done, but its epoch rows were missing or unreadable: redone


class Outcome(_Word):
    """What a task reports to its driver about one run of its pack."""

    DONE = "done"
    FAILED = "failed"
    BUSY = "busy"  # another live attempt trains it: the driver waits for that one
    SKIPPED = "skipped"  # already done before this task
    CANCELLED = "cancelled"  # stopped by a cancel request; stays resumable
    TAKEN_OVER = "taken_over"  # another attempt owns it now; that attempt reports it
