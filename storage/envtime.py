"""Durations from the environment (RETHINK_CLAIM_TIMEOUT, RETHINK_COMPACT_LOCK_TIMEOUT), checked
where they are read. Read as bare floats, `abc` ended every command in a ValueError traceback,
and 0, a negative number or nan was taken: a claim stale the moment it was made (every live run
taken over again and again, the heartbeat thread spinning) or one never stale."""

from __future__ import annotations

import math
import os

from rethink.storage.errors import StoreError

MAX_S = 7 * 24 * 3600.0  # a week: longer than any wait rethink means


def seconds(name: str, default: float) -> float:
    """$name as seconds in (0, MAX_S], `default` when unset or blank; otherwise one line."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_S:
        raise StoreError(f"{name} must be a number of seconds in (0, {MAX_S:g}] (default {default:g}), "
                         f"got {text[:40]!r}")
    return value
