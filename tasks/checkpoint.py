"""Checkpoint bytes: a torch-serialized state behind a header and a SHA-256 of the payload, so a
truncated or damaged checkpoint is detected on load instead of resuming from garbage.

A state holds tensors, numbers, strings and plain containers only, and is loaded with
`weights_only=True`: bytes read from a shared store can carry no code to run. (The checksum
guards against damage, not against whoever can write the store; refusing objects does that.)"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import torch

from rethink.errors import RethinkError

MAGIC = b"RETHINK-CKPT-1\n"
DIGEST_BYTES = 32


class CheckpointError(RethinkError):
    """A checkpoint that is truncated, damaged, unsafe or not for this run."""


def dumps(state: dict[str, Any]) -> bytes:
    """Serialize a state already copied off the device (see RunState.snapshot); runs on the
    worker's background writer thread, beside training."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    return b"".join((MAGIC, hashlib.sha256(payload).digest(), payload))


def loads(blob: bytes) -> dict[str, Any]:
    """Back to a state dict on the CPU (RNG states must live there; load_state_dict moves the rest)."""
    head = len(MAGIC) + DIGEST_BYTES
    if not blob.startswith(MAGIC) or len(blob) <= head:
        raise CheckpointError("checkpoint is truncated or not a rethink checkpoint")
    view = memoryview(blob)
    digest, payload = view[len(MAGIC) : head], view[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint is truncated or damaged (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError("checkpoint holds objects other than tensors and plain values; refused "
                              "(loading it could run code)") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"checkpoint cannot be read: {' '.join(str(exc).split())[:200]}") from None
