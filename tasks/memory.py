"""Host memory for a training process. A pack's epoch allocates and frees the same large blocks
over and over (stacked parameters, optimizer state, gradients, activations); glibc hands blocks
above its mmap threshold back to the kernel on free, so every epoch faults them in again. On the
2-core CPU box that was a fifth of the CPU time in the kernel, and the wall time of a 33-run pack
varied by a third from run to run (bench/RESULTS.md). Keeping freed memory for reuse is what
GPU allocators do too; the process keeps its peak footprint, which a Ray worker (one pack after
another of the same shape) reuses. Set RETHINK_KEEP_MEMORY=0 to leave glibc's defaults."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused after free
TRIM_THRESHOLD = 1 << 31  # never give back less than 2 GiB of free heap top

_done = False


def retain_freed_memory() -> bool:
    """Once per process, on Linux with glibc: reuse freed blocks instead of unmapping them.
    Returns whether the setting is in effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("RETHINK_KEEP_MEMORY", "1") in ("0", "false", "no"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
