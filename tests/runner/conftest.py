"""Fixtures for the runner: one real local Ray for the session, tiny synthetic grids, helpers that
read a store back through its SQL views."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rethink.storage.views import connect

TINY_GRID = """\
name: {name}
dataset: synthetic
data: {{train_size: 128, test_size: 64, image_size: 8}}
model: [mlp1x512, mlp3x512]
corruption:
  - none
  - {{kind: labels, level: [0.5, 1.0]}}
seed: [0, 1]
train: {{epochs: {epochs}, batch_size: 32, lr: 0.01, checkpoint_every: 1}}
resources: {{cpus: 1, gpus: 0}}
"""

# A grid whose CIFAR-10 runs raise on the worker (its data dir holds damaged Parquet, see
# damaged_cifar) while its synthetic runs train: 6 done, 6 failed.
RAISING_GRID = TINY_GRID.replace("dataset: synthetic", "dataset: [synthetic, cifar10]").replace(
    "model: [mlp1x512, mlp3x512]", "model: mlp1x512")


def damaged_cifar(folder: Path) -> Path:
    """A data dir whose cifar10 files are not Parquet: a run on it fails only when it loads them."""
    for split in ("train", "test"):
        (folder / "cifar10").mkdir(parents=True, exist_ok=True)
        (folder / "cifar10" / f"{split}.parquet").write_bytes(b"not parquet")
    return folder


# A slower single-model grid, for killing things while it trains (≈ 0.1-0.3 s per epoch here).
SLOW_GRID = """\
name: {name}
dataset: synthetic
data: {{train_size: 800, test_size: 200, image_size: 32}}
model: mlp3x512
corruption: [none, {{kind: labels, level: 1.0}}]
seed: [0, 1]
train: {{epochs: {epochs}, batch_size: 32, lr: 0.01, checkpoint_every: 1}}
resources: {{cpus: 1, gpus: 0}}
"""


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def sql(store: Path, query: str) -> list[tuple]:
    return connect(str(store)).execute(query).fetchall()


def rethink(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process (its own embedded Ray)."""
    env = {**os.environ, "RETHINK_DATA": "unused"}
    return subprocess.run([sys.executable, "-m", "rethink.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def popen_rethink(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RETHINK_DATA": "unused"}
    return subprocess.Popen([sys.executable, "-m", "rethink.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
