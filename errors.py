"""The one root of every error a user may cause; cli.py turns it into one line and exit code.
OS errors on paths the user gave become sentences here too (`path_error`, `os_errors`)."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator


class RethinkError(Exception):
    """A problem the user can fix: bad option, bad grid, missing data, bad SQL."""

    exit_code = 1

    def __str__(self) -> str:
        """The message with its control characters shown visibly (`\\x1b`): it may quote a store's
        text or a path (DuckDB's "Could not convert string '...'"), and a traceback in a terminal
        or notebook prints it as is. The CLI then puts it on one line."""
        from rethink.text import visible

        return visible(super().__str__(), keep="\n\t")


class SpecError(RethinkError):
    """A run, grid or command-line option that does not describe a valid run."""

    exit_code = 2


class DataError(RethinkError):
    """A dataset that cannot be found, downloaded or read."""


class PathError(RethinkError):
    """A file or folder the user named that cannot be read or written there."""


class UsageError(RethinkError):
    """A function of the Python API called with a value of the wrong kind (the CLI's own usage
    errors are click's): refused before anything is read or written."""

    exit_code = 2


# What each OS error means for a path the user gave, as the end of a sentence.
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted there",
    errno.ENOENT: "a folder on the way does not exist or cannot hold files (e.g. /proc, /sys)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "something that is not a folder is already there",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.ENAMETOOLONG: "a name in the path is too long for the filesystem",
    errno.ELOOP: "too many symbolic links",
    errno.EXDEV: "it is on another filesystem than its temporary file",
    errno.EBUSY: "it is busy",
    errno.ENXIO: "it is a device that cannot be opened for this",
}


def path_error(exc: OSError, doing: str, path: object) -> PathError:
    """An OSError met while `doing` something to `path` (e.g. "write", "create the store"),
    as one sentence that names the path, the cause and what to do."""
    return PathError(f"cannot {doing} {path}: {os_reason(exc)}; choose another path")


def os_reason(exc: OSError) -> str:
    """What an OSError means, as the end of a sentence ("the filesystem is read-only")."""
    return _REASONS.get(exc.errno or 0) or " ".join((exc.strerror or str(exc) or type(exc).__name__).split())


def os_error(exc: OSError) -> PathError:
    """An OSError that no caller worded (the CLI's last safety net), as one sentence."""
    if exc.filename is not None:
        return path_error(exc, "use", exc.filename)
    return PathError(f"the operating system refused an operation: {os_reason(exc)}")


@contextmanager
def os_errors(doing: str, path: object) -> Iterator[None]:
    """Turn any OSError raised inside into `path_error(...)`: the one place that words them."""
    try:
        yield
    except OSError as exc:
        raise path_error(exc, doing, path) from None


class Interrupted(RethinkError):
    """The user stopped a command (Ctrl-C) while it ran; nothing half-done was kept."""

    exit_code = 130
