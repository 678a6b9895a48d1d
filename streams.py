"""The `rethink` command's standard output, guarded in one place. Every write to stdout (click's
echo, Rich's Console, print, the rows `rethink query` streams) ends in `_Stdout.write`, so a full
disk or a closed stdout is one line and a non-zero exit, and a reader that went away
(`rethink query ... | head`) a quiet end, never a traceback from wherever the write happened to
be, nor an "Exception ignored" from Python's own flush at exit."""

from __future__ import annotations

import atexit
import io
import os
import sys

from rethink.errors import RethinkError, os_reason


class OutputError(RethinkError):
    """Standard output cannot take what the command prints: full, closed, or an I/O error."""


class ReaderGone(Exception):
    """The reader of stdout closed its end (`| head`): it has what it wanted, and the command
    ends quietly with exit 0. Not an OSError, so no `except OSError` on the way takes it for a
    failure of the store."""


class _Stdout(io.RawIOBase):
    """fd 1 as a raw stream whose failures are the errors above. After the first failure the
    rest of the output is dropped: its one line is said already, and no later flush (Python's
    at exit included) fails again."""

    name = "<stdout>"

    def __init__(self, closed: bool) -> None:
        super().__init__()
        self._closed_at_start, self._failed = closed, False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return not self._closed_at_start and os.isatty(1)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = memoryview(data).nbytes
        if self._failed:
            return size
        if self._closed_at_start:
            self._failed = True
            raise OutputError("standard output is closed, so nothing can be printed; "
                              "redirect it instead (e.g. > FILE or > /dev/null)")
        try:
            return os.write(1, data)
        except BrokenPipeError:
            self._failed = True
            raise ReaderGone() from None
        except OSError as exc:
            self._failed = True
            raise OutputError(f"cannot write to standard output: {os_reason(exc)}") from None


def reserve_std_fds() -> set[int]:
    """Open /dev/null on each of fds 0, 1 and 2 that is closed, so that no file the command opens
    later (DuckDB's, a Parquet part, an atomic temporary file) gets one of them and receives what
    is printed. Returns the fds that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
    return closed


def guard_stdout() -> None:
    """Put the guarded stdout in place of the process's own, once. Never over a stream someone
    else installed (a test's capture, click's CliRunner): that one is theirs."""
    closed = reserve_std_fds()
    if 2 in closed and sys.stderr is None:  # error lines then go to /dev/null; the exit code says it
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    own = sys.stdout
    if own is not sys.__stdout__:
        return
    raw = _Stdout(1 in closed or own is None)
    # A character the output's encoding lacks (PYTHONIOENCODING=ascii, a latin-1 terminal: Rich's
    # box lines, `…`, a store's text) is written as its \\u escape, never a UnicodeEncodeError.
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=getattr(own, "encoding", None) or "utf-8",
                                  errors="backslashreplace", line_buffering=raw.isatty())
    atexit.register(flush_quietly)  # runs before Python's own flush, which then finds nothing left


def flush() -> None:
    """Write out what stdout holds: raises OutputError or ReaderGone as any write does."""
    if sys.stdout is not None:
        sys.stdout.flush()


def flush_quietly() -> None:
    """Write out what stdout holds, or drop it where it cannot go (another error is being said)."""
    try:
        flush()
    except (RethinkError, ReaderGone, OSError, ValueError):
        pass
