"""Ray's own stderr while a driver joins a cluster, held back and read. Joining a head that
requires a token without the right one made Ray's C++ client print `Failed to get cluster ID
from GCS server: Unauthenticated ...` once a second for 20 s, then ray.init failed with a
message naming neither the token nor the fix. Its lines are written straight to file
descriptor 2, where no Python logging setting reaches, so the descriptor itself is redirected
for the join: on success what Ray said is passed on unchanged; on failure it is read for the
reason and the whole becomes one line (scheduler.connect_ray)."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

HELD_BYTES = 1 << 20  # more than Ray says in a failed join's retries


@contextmanager
def held_stderr() -> Iterator[list[str]]:
    """Inside the block, file descriptor 2 goes to a temporary file; after it, the list holds
    its lines. The caller decides whether to `replay` them."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to redirect: nothing to hold
        yield said
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield said
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            said.extend(held.read(HELD_BYTES).decode(errors="replace").splitlines())


def replay(said: list[str]) -> None:
    """Pass what Ray said on to stderr, as it would have gone."""
    if said:
        try:
            sys.stderr.write("\n".join(said) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def refused_token(said: list[str]) -> bool:
    """Whether the cluster turned the driver away for its token."""
    return any("InvalidAuthToken" in line or "Unauthenticated" in line for line in said)
