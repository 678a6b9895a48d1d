"""Checkpoint bytes: damage is detected, and a checkpoint that carries a pickled object (code to
run on load) is refused with one line instead of being loaded."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import torch

from rethink.tasks import checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rethink-pwned",))


def forged(state: dict) -> bytes:
    """What someone who can write the store could write: a valid header and checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return checkpoint.MAGIC + hashlib.sha256(payload).digest() + payload


def test_round_trip_keeps_tensors_and_plain_values():
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "progress": {"epoch": 3, "stop_reason": None},
             "run": {"model": "mlp1x512", "seed": 0}}
    back = checkpoint.loads(checkpoint.dumps(state))
    assert back["model"]["w"].equal(state["model"]["w"]) and back["progress"] == state["progress"]
    assert back["run"] == state["run"]


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = "/tmp/rethink-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.loads(forged({"model": {}, "payload": _RunsCode()}))
    assert not os.path.exists(marker)
    message = str(caught.value)
    assert "\n" not in message and "refused" in message


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_damage_is_detected(damage):
    blob = checkpoint.dumps({"model": {"w": torch.ones(100)}})
    bad = {"truncate": blob[: len(blob) // 2], "flip": blob[:-5] + bytes(5), "empty": b"",
           "foreign": b"PK\x03\x04" + blob[4:]}[damage]
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.loads(bad)
