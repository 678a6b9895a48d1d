"""A worker's claim heartbeat, on a timer: every run a pack holds is beaten every
`claims.beat_interval()` (a tenth of RETHINK_CLAIM_TIMEOUT) from a thread of its own, whatever
the length of an epoch. Beating only at epoch boundaries let an epoch longer than the claim
timeout make a live owner look stale: another driver took the run over, again and again, and
`status` called it orphaned.

A beat never overwrites a claim someone else took: it stops for a run once a later attempt
exists, and on S3 it is a PUT conditional on the claim's version (Claims._beat). A run leaves the
heartbeat when it is finished (before its claim is released) or taken over; the thread ends
with the pack."""

from __future__ import annotations

import threading

from rethink.storage.claims import beat_interval
from rethink.storage.store import Store


class Heartbeat:
    """Beats the claims of `attempts` ({run_id: attempt}) until each is dropped or `close`."""

    def __init__(self, store: Store, attempts: dict[str, int]) -> None:
        self.store = store
        self._held = dict(attempts)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rethink-heartbeat", daemon=True)
        if self._held:
            self._thread.start()

    def drop(self, run_id: str) -> None:
        """Stop beating `run_id` (it ended, or another attempt holds it now)."""
        with self._lock:
            self._held.pop(run_id, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(beat_interval()):
            with self._lock:
                held = list(self._held.items())
            for run_id, attempt in held:
                if self._stop.is_set():
                    return
                with self._lock:  # a run dropped meanwhile (finished, released) is not beaten again
                    if run_id not in self._held:
                        continue
                    try:
                        if not self.store.beat(run_id, attempt):
                            self._held.pop(run_id, None)
                    except Exception:  # noqa: BLE001 - retried next beat; stale only after the timeout
                        continue
