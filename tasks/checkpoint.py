"""Checkpoint bytes: a torch-serialized state behind a header and a SHA-256 of the payload, so a
truncated or damaged checkpoint is detected on load instead of resuming from garbage."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch

from rethink.errors import RethinkError

MAGIC = b"RETHINK-CKPT-1\n"
DIGEST_BYTES = 32


class CheckpointError(RethinkError):
    """A checkpoint that is truncated, damaged or not for this run."""


def dumps(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def loads(blob: bytes) -> dict[str, Any]:
    """Back to a state dict on the CPU (RNG states must live there; load_state_dict moves the rest)."""
    head = len(MAGIC) + DIGEST_BYTES
    if not blob.startswith(MAGIC) or len(blob) <= head:
        raise CheckpointError("checkpoint is truncated or not a rethink checkpoint")
    digest, payload = blob[len(MAGIC) : head], blob[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint is truncated or damaged (checksum mismatch)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
