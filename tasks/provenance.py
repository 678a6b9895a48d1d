"""Which code and machine produced a run's rows: the rethink version, the git commit when rethink
runs from a checkout, torch and CUDA versions, and the device. Recorded with each attempt's status,
so a run id whose rows came from different code is visible (`rethink status` says so)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

import rethink

GIT_TIMEOUT_S = 2.0


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout rethink runs from ('<sha>-dirty' with uncommitted changes to tracked
    files); None when installed from a wheel or git is missing."""
    root = Path(rethink.__file__).resolve().parent
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return device.type


def provenance(device: torch.device | str) -> dict[str, str | None]:
    """The status columns of storage/schema.py STATUS that say where a run's rows came from."""
    return {
        "rethink_version": rethink.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": device_name(device),
    }
