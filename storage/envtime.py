"""Durations from the environment (RETHINK_CLAIM_TIMEOUT, RETHINK_COMPACT_LOCK_TIMEOUT), checked
where they are read. Read as bare floats, `abc` ended every command in a ValueError traceback,
and 0, a negative number or nan was taken: a claim stale the moment it was made (every live run
taken over again and again, the heartbeat thread spinning) or one never stale."""

from __future__ import annotations

import math
import os

from rethink.storage.errors import StoreError

MAX_S = 7 * 24 * 3600.0  # a week: longer than any wait rethink means


def seconds(name: str, default: float, most: float = MAX_S, example: float | None = None) -> float:
    """$name as seconds in (0, most], `default` when unset or blank; otherwise one line, which
    shows the default (or `example`, where the default is no good example)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= most:
        shown = f"e.g. {example:g}" if example is not None else f"default {default:g}"
        raise StoreError(f"{name} must be a number of seconds in (0, {most:g}] ({shown}), got {text[:40]!r}")
    return value
