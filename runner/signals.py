"""SIGTERM stops a driver the way Ctrl-C does. `kill PID` (or a scheduler ending a job) used to
meet Ray's handlers instead: the core worker's C++ one printed a stack dump of six lines, then
Ray's Python one exited with a bare code and no line saying the grid is resumable. While a grid
runs, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so the scheduler's
one interrupt path stops the tasks, leaves the runs pending and ends Ray (its watchdog sweeps
what is left); the user's own handler comes back afterwards."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_armed = False  # True while a grid runs in this process with SIGTERM as an interrupt
_received = False  # a SIGTERM came while armed (Ray's C code may re-raise it as a plain KeyboardInterrupt)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be."""


def _raise(signum: int, frame: object) -> None:
    global _received
    _received = True
    raise Terminated()


def terminated(exc: BaseException) -> bool:
    """Whether this interrupt came from SIGTERM."""
    return isinstance(exc, Terminated) or _received


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated (main thread only: elsewhere Python cannot
    set handlers, and the caller's stay)."""
    global _armed, _received
    if threading.current_thread() is not threading.main_thread() or _armed:
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise)
    _armed, _received = True, False
    try:
        yield
    finally:
        _armed = False
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def rearm() -> None:
    """After ray.init, which sets Ray's own SIGTERM handlers (Python's and the core worker's)."""
    if _armed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
