"""Where a pack's seconds go, by part (train, measure, probe, snapshot; the worker adds its own),
so `bench/overhead.py` can show the bookkeeping around training. Adding up costs nothing a
training step would notice: two perf_counter calls per part per epoch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Seconds and counts per named part; safe to add to from the worker's writer thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.counts[name] = self.counts.get(name, 0) + 1

    def as_dict(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {"seconds": dict(self.seconds), "counts": dict(self.counts)}
