"""A driver lease (store kinds without exclusive create: gs://, mock://) is never overwritten by a
holder that was paused past the timeout and came back: it re-reads the lease before each beat,
stops beating once another driver holds it, and stops its grid in one line naming that driver."""

from __future__ import annotations

import json
import time

import pytest

from rethink.storage import claims as claims_module
from rethink.storage.layout import DRIVER_LEASE
from rethink.storage.store import Store, StoreError


def test_a_paused_driver_that_comes_back_leaves_the_new_lease_alone(monkeypatch) -> None:
    monkeypatch.setattr(claims_module, "LEASE_SETTLE_S", 0.05)
    monkeypatch.setattr(claims_module, "CLAIM_TIMEOUT_S", 0.5)  # a beat every 0.05 s
    first = Store.open("mock://store", create=True)
    assert not first.exclusive
    newer = {"token": "t2", "host": "other-host", "pid": 4242, "at": "now"}
    with pytest.raises(StoreError) as info:
        with first.driver_lease():
            first.check_lease()  # ours: fine
            # paused past the timeout, another driver took the lease over meanwhile
            first.write(DRIVER_LEASE, json.dumps(newer).encode())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                first.check_lease()  # what the scheduler calls every second
                time.sleep(0.02)
    assert str(info.value).startswith("lost the store's driver lease to host other-host pid 4242")
    assert "\n" not in str(info.value)
    time.sleep(0.2)
    assert json.loads(first.read(DRIVER_LEASE)) == newer  # neither overwritten nor deleted
