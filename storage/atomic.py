"""Atomic file writes: every file goes to a temporary name in its own folder, then is renamed, so a
reader sees the whole file or none of it and a crash never leaves half a file. Only regular files
are written: renaming onto a device, FIFO or folder would replace it (as root, /dev/null)."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, ContextManager, Iterator

from rethink.errors import PathError, os_errors


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (same-folder temp file, fsync, rename)."""
    with open_atomic(path) as f:
        f.write(data)


@contextmanager
def open_atomic(path: str | Path, name: str | None = None) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without error (fsync, rename) and
    vanishes otherwise: write as much as you like, as it comes. The temporary file is created on
    entry, so a path that cannot be written fails before any work. With `name` (how the user gave
    the path, e.g. "--out x.csv"), an OSError of creating, syncing or renaming becomes one line
    (errors.path_error); without it, OSErrors pass through. The block's own errors pass as is."""
    path = Path(path)

    def words() -> ContextManager[None]:
        return os_errors("write", name) if name else nullcontext()

    with words():
        check_regular(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            with words():
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared and read
                f.flush()
                os.fsync(f.fileno())
        with words():
            check_regular(path)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_regular(path: Path) -> None:
    """Refuse a path that exists and is not a regular file (symbolic links followed)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there yet (or a file on the way: mkdir says so)
    if stat.S_ISDIR(mode):
        raise PathError(f"cannot write {path}: it is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise PathError(f"cannot write {path}: it is a device, pipe or socket, not a regular file; "
                        "rethink writes regular files only")
