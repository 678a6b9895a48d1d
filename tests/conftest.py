"""Shared fixtures: an isolated decode cache for every test, and writers of tiny CIFAR copies in
each on-disk layout rethink reads (Parquet of encoded images; torchvision's extracted pickles)."""

from __future__ import annotations

import io
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own decode cache and starts with no dataset held in memory."""
    cache = tmp_path_factory.mktemp("rethink-cache")
    monkeypatch.setenv("RETHINK_CACHE", str(cache))
    monkeypatch.delenv("RETHINK_OFFLINE", raising=False)
    data = sys.modules.get("rethink.tasks.data")  # not imported here: storage tests need no torch
    if data is not None:
        data.clear_memory_cache()
    return cache


@dataclass
class TinyCifar:
    root: Path  # the data dir to hand to load_dataset
    x_train: np.ndarray  # uint8 (N, 3, 32, 32)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray


def tiny_arrays(num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0):
    """Random uint8 CIFAR-shaped images with balanced labels in a shuffled order."""
    rng = np.random.default_rng(seed)
    out = []
    for per_class in (train_per_class, test_per_class):
        n = num_classes * per_class
        out.append(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8))
        out.append(rng.permutation(np.arange(n) % num_classes).astype(np.int64))
    return tuple(out)


def encode(image: np.ndarray, fmt: str) -> bytes:
    """One (3, H, W) uint8 image as PNG or JPEG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format=fmt)
    return buf.getvalue()


def write_parquet(root: Path, folder: str, split: str, x: np.ndarray, y: np.ndarray,
                  fmt: str = "PNG", label_column: str = "label", extra: dict | None = None) -> Path:
    """`root/folder/split.parquet` with an `image` column of encoded bytes, like ../shared/data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"image": pa.array([encode(img, fmt) for img in x], type=pa.binary()),
               label_column: pa.array(y, type=pa.int16())}
    columns.update(extra or {})
    path = root / folder / f"{split}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_pickles(root: Path, name: str, x_train: np.ndarray, y_train: np.ndarray,
                  x_test: np.ndarray, y_test: np.ndarray) -> Path:
    """torchvision's extracted layout: `cifar-10-batches-py/` (5 train batches + test_batch) or
    `cifar-100-python/` (train, test, with fine and coarse labels)."""

    def dump(path: Path, x: np.ndarray, y: np.ndarray, label_key: str) -> None:
        batch = {"data": x.reshape(len(x), -1), label_key: [int(v) for v in y],
                 "filenames": [f"img_{i}.png" for i in range(len(x))]}
        if label_key == "fine_labels":
            batch["coarse_labels"] = [int(v) // 5 for v in y]
        with open(path, "wb") as fh:
            pickle.dump(batch, fh)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (xb, yb) in enumerate(zip(np.array_split(x_train, 5), np.array_split(y_train, 5)), 1):
            dump(folder / f"data_batch_{i}", xb, yb, "labels")
        dump(folder / "test_batch", x_test, y_test, "labels")
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(folder / "train", x_train, y_train, "fine_labels")
        dump(folder / "test", x_test, y_test, "fine_labels")
    return folder


@pytest.fixture
def make_cifar(tmp_path: Path) -> Callable[..., TinyCifar]:
    """Factory: make_cifar("parquet" | "pickle", name="cifar10", ...) writes a tiny copy and
    returns its data dir with the arrays it holds."""
    count = iter(range(1000))

    def make(layout: str, name: str = "cifar10", train_per_class: int = 6, test_per_class: int = 2,
             seed: int = 0, fmt: str = "PNG", label_column: str = "label", root: Path | None = None,
             arrays: tuple | None = None) -> TinyCifar:
        classes = 10 if name == "cifar10" else 100
        arrays = arrays or tiny_arrays(classes, train_per_class, test_per_class, seed)
        root = root or tmp_path / f"data{next(count)}"
        if layout == "parquet":
            write_parquet(root, name, "train", arrays[0], arrays[1], fmt, label_column)
            write_parquet(root, name, "test", arrays[2], arrays[3], fmt, label_column)
        else:
            write_pickles(root, name, *arrays)
        return TinyCifar(root, *arrays)

    return make


# -- a real S3 server (tests/s3server.py) ------------------------------------------------------

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """SeaweedFS on loopback for the whole session; the tests that use it skip, saying why,
    where it cannot start."""
    from tests import s3server

    try:
        server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    except s3server.ServerUnavailable as exc:
        pytest.skip(f"no S3 server here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store URI in a fresh bucket of the session's S3 server, its keys in the environment
    (as a cluster's workers have them)."""
    from tests import s3server

    for key, value in s3server.CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return s3_server.uri(s3_server.new_bucket())
