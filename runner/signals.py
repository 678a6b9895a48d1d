"""SIGTERM (and SIGHUP, a closed terminal, unless ignored as under nohup) stops a driver the way
Ctrl-C does. `kill PID` (or a scheduler ending a job) used to meet Ray's handlers instead: the
core worker's C++ one printed a stack dump of six lines, then Ray's Python one exited with a bare
code and no line saying the grid is resumable; SIGHUP ended the driver with its runs left
`running`. While a grid runs, either raises `Terminated` (a KeyboardInterrupt) in the main
thread, so the scheduler's one interrupt path stops the tasks, leaves the runs pending and ends
Ray (its watchdog sweeps what is left); the user's own handlers come back afterwards."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_armed: list[int] = []  # the signals taken as an interrupt while a grid runs in this process
_received: int | None = None  # the one that came (Ray's C code may re-raise it as a plain KeyboardInterrupt)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C's KeyboardInterrupt would be."""


def interrupt(signum: int, frame: object = None) -> None:
    """The handler: note which signal came, and raise Terminated."""
    global _received
    _received = signum
    raise Terminated()


def received(exc: BaseException) -> int | None:
    """The signal that caused this interrupt: SIGTERM/SIGHUP's number, None for Ctrl-C."""
    return _received if isinstance(exc, KeyboardInterrupt) else None


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (and SIGHUP, unless ignored) raise Terminated; main thread only:
    elsewhere Python cannot set handlers, and the caller's stay."""
    global _received
    if threading.current_thread() is not threading.main_thread() or _armed:
        yield
        return
    wanted = [signal.SIGTERM] + [s for s in [getattr(signal, "SIGHUP", None)]
                                  if s is not None and signal.getsignal(s) == signal.SIG_DFL]
    before = {signum: signal.signal(signum, interrupt) for signum in wanted}
    _armed[:], _received = wanted, None
    try:
        yield
    finally:
        _armed.clear()
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def rearm() -> None:
    """After ray.init, which sets Ray's own SIGTERM handlers (Python's and the core worker's)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _armed:
            signal.signal(signum, interrupt)
