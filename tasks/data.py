"""Datasets as uint8 CPU tensors, decoded once and cached.

A data dir is read as is when it holds either layout: the Parquet one (`cifar10/train.parquet`,
`cifar10/test.parquet`, columns `image` = encoded bytes and `label`) or torchvision's extracted
one (`cifar-10-batches-py/`, `cifar-100-python/`). Otherwise torchvision downloads the archive
there and we read what it extracted. torchvision's own dataset classes are never used to read:
they md5-check the files and refuse the tiny copies the tests write.

Decoded Parquet images are cached on disk (`$RETHINK_CACHE`, else `~/.cache/rethink/decoded`)
keyed by the source files' path, size and mtime, and in this process, so the many runs of one
worker decode nothing twice. The tensors handed out may be shared between loads: treat them as
read-only (corruptions and the training loop make new tensors).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rethink.errors import DataError, SpecError
from rethink.tasks.spec import DataSpec

CACHE_FORMAT = 1  # bump when the cached arrays change meaning
SYNTHETIC_SIZES = (1000, 500)  # train, test when the spec leaves them unset
SYNTHETIC_NOISE = 48.0  # std of the per-sample noise around a class template, pixel units
_MEMORY_SLOTS = 4  # full decoded datasets kept in this process

_CIFAR = {
    # name: (classes, parquet folder, pickle folder, pickle train files, pickle test files, label key)
    "cifar10": (10, "cifar10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": (100, "cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels"),
}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W) on CPU; float32 only after a gaussian corruption
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per-channel mean of the train images, pixel units (0..255)
    std: tuple[float, ...]  # per-channel std of the train images, pixel units


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, train y, test x, test y
_memory: OrderedDict[str, _Arrays] = OrderedDict()


def load_dataset(spec: DataSpec, data_dir: str | Path) -> Dataset:
    """The dataset `spec` names, subset (stratified, seeded) and centre-cropped as it asks."""
    if spec.dataset == "synthetic":
        train, test = _synthetic(spec)
        num_classes = spec.num_classes
    else:
        num_classes = _CIFAR[spec.dataset][0]
        x_train, y_train, x_test, y_test = _load_cifar(spec.dataset, Path(data_dir).expanduser())
        train = _subset(Split(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                        spec.train_size, spec.seed, "data.train_size")
        test = _subset(Split(torch.from_numpy(x_test), torch.from_numpy(y_test)),
                       spec.test_size, spec.seed, "data.test_size")
    if spec.crop is not None:
        train, test = _center_crop(train, spec.crop), _center_crop(test, spec.crop)
    mean, std = channel_stats(train.images)
    return Dataset(spec.dataset, train, test, num_classes, mean, std)


def stratified_indices(labels: torch.Tensor, size: int, seed: int, *, name: str = "size") -> torch.Tensor:
    """`size` sorted indices into `labels`, per class as equal as the class counts allow.

    Quotas are filled evenly; a remainder goes one each to the lowest labels that still have
    images left. Within a class, a seeded permutation picks which images."""
    total = len(labels)
    if size > total:
        raise SpecError(f"{name}={size} is larger than the {total} images available")
    classes, counts = torch.unique(labels.cpu(), sorted=True, return_counts=True)
    quota = [0] * len(classes)
    remaining = size
    while remaining > 0:
        open_ = [k for k in range(len(classes)) if quota[k] < counts[k]]
        share, extra = divmod(remaining, len(open_))
        for rank, k in enumerate(open_):
            take = min(int(counts[k]) - quota[k], share + (rank < extra))
            quota[k] += take
            remaining -= take
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls, q in zip(classes, quota):
        members = torch.nonzero(labels.cpu() == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:q]])
    return torch.sort(torch.cat(picked)).values


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std in pixel units; uint8 goes through a
    256-bin histogram so 150M pixels need no float copy."""
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c].reshape(-1)
        if channel.dtype == torch.uint8:
            counts = torch.bincount(channel, minlength=256).double()
            values = torch.arange(256, dtype=torch.float64)
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = (counts * (values - mean) ** 2).sum() / n
        else:
            channel = channel.double()
            mean, var = channel.mean(), channel.var(unbiased=False)
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def clear_memory_cache() -> None:
    """Forget the datasets decoded in this process (the disk cache stays)."""
    _memory.clear()


# ---- subsets, crops, synthetic ----------------------------------------------------------------


def _subset(split: Split, size: int | None, seed: int, name: str) -> Split:
    if size is None:
        return split
    idx = stratified_indices(split.labels, size, seed, name=name)
    return Split(split.images[idx], split.labels[idx])


def _center_crop(split: Split, crop: int) -> Split:
    h, w = split.images.shape[-2:]
    if crop > min(h, w):
        raise SpecError(f"data.crop={crop} is larger than the {h}x{w} images")
    top, left = (h - crop) // 2, (w - crop) // 2
    return Split(split.images[..., top:top + crop, left:left + crop].contiguous(), split.labels)


def _synthetic(spec: DataSpec) -> tuple[Split, Split]:
    """Learnable noise: a fixed random template per class, each sample = template + Gaussian
    noise, clipped to uint8. Balanced labels in a seeded order."""
    k, side = spec.num_classes, spec.image_size
    sizes = (spec.train_size or SYNTHETIC_SIZES[0], spec.test_size or SYNTHETIC_SIZES[1])
    templates = torch.rand(k, 3, side, side, generator=_seeded(spec.seed, "templates")) * 255
    splits = []
    for part, n in zip(("train", "test"), sizes):
        g = _seeded(spec.seed, part)
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        noisy = templates[labels] + SYNTHETIC_NOISE * torch.randn(n, 3, side, side, generator=g)
        splits.append(Split(noisy.round().clamp(0, 255).to(torch.uint8), labels.long()))
    return splits[0], splits[1]


def _seeded(seed: int, purpose: str) -> torch.Generator:
    digest = hashlib.sha256(f"synthetic|{purpose}|{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# ---- finding and reading CIFAR ----------------------------------------------------------------


def _load_cifar(name: str, data_dir: Path) -> _Arrays:
    _, pq_folder, pk_folder, pk_train, pk_test, _ = _CIFAR[name]
    parquet = [data_dir / pq_folder / "train.parquet", data_dir / pq_folder / "test.parquet"]
    pickles = [data_dir / pk_folder / f for f in pk_train + pk_test]
    if all(p.is_file() for p in parquet):
        key = _source_key(name, "parquet", parquet)
        return _remember(key, lambda: _cached_parquet(key, name, *parquet))
    if not all(p.is_file() for p in pickles):
        _download(name, data_dir)
        missing = [str(p) for p in pickles if not p.is_file()]
        if missing:
            raise DataError(f"the {name} download left no {missing[0]}; remove {data_dir / pk_folder} and retry")
    key = _source_key(name, "pickle", pickles)
    return _remember(key, lambda: _read_pickles(name, data_dir / pk_folder))


def _remember(key: str, load) -> _Arrays:
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    arrays = load()
    _memory[key] = arrays
    while len(_memory) > _MEMORY_SLOTS:
        _memory.popitem(last=False)
    return arrays


def _source_key(name: str, layout: str, files: list[Path]) -> str:
    stats = []
    for f in files:
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    text = json.dumps([CACHE_FORMAT, name, layout, stats])
    return f"{name}-{layout}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _download(name: str, data_dir: Path) -> None:
    """Let torchvision fetch and verify the archive into `data_dir`; one sentence on failure."""
    pq_folder, pk_folder = _CIFAR[name][1], _CIFAR[name][2]
    where = (f"no {name} in {data_dir} (looked for {pq_folder}/train.parquet and {pk_folder}/)")
    fix = "point --data-dir or RETHINK_DATA at a folder holding either layout"
    if os.environ.get("RETHINK_OFFLINE", "") not in ("", "0"):
        raise DataError(f"{where} and RETHINK_OFFLINE is set, so nothing was downloaded; {fix}")
    try:
        import torchvision  # slow to import (seconds): only when a download is needed

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(root=str(data_dir), train=True, download=True)
    except Exception as e:  # network, disk, checksum: all end the same way for the user
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise DataError(f"{where} and downloading it failed ({reason}); {fix}") from None


def _read_pickles(name: str, folder: Path) -> _Arrays:
    """torchvision's extracted layout: pickles holding `data` (N x 3072 uint8, channel-major)."""
    _, _, _, train_files, test_files, label_key = _CIFAR[name]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            try:
                with open(folder / f, "rb") as fh:
                    batch = pickle.load(fh, encoding="latin1")
                data = np.asarray(batch["data"], dtype=np.uint8)
                labels = np.asarray(batch[label_key], dtype=np.int64)
            except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"cannot read {folder / f} as a CIFAR pickle ({type(e).__name__}: {e})") from None
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
                raise DataError(f"{folder / f} does not hold N x 3072 images with N labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    return (*read(train_files), *read(test_files))


def _cache_dir() -> Path:
    return Path(os.environ.get("RETHINK_CACHE") or Path.home() / ".cache" / "rethink" / "decoded")


def _cached_parquet(key: str, name: str, train: Path, test: Path) -> _Arrays:
    path = _cache_dir() / f"{key}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = (*_read_parquet(name, train), *_read_parquet(name, test))
        _write_cache(path, arrays)
    return arrays


def _read_cache(path: Path) -> _Arrays | None:
    """The cached arrays, or None when missing or unreadable (it is then rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    except Exception:  # missing, truncated, not a zip, wrong keys: decode again
        return None
    x_train, y_train, x_test, y_test = arrays
    ok = (x_train.dtype == np.uint8 and x_test.dtype == np.uint8 and x_train.ndim == 4
          and x_test.ndim == 4 and y_train.dtype == np.int64 and y_test.dtype == np.int64
          and len(x_train) == len(y_train) and len(x_test) == len(y_test))
    return arrays if ok else None


def _write_cache(path: Path, arrays: _Arrays) -> None:
    """Atomic: a temporary file in the same folder, then rename. A cache that cannot be
    written (read-only home, full disk) only costs the next process a decode."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _read_parquet(name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
        label = "fine_label" if "fine_label" in columns else "label"
        if "image" not in columns or label not in columns:
            raise DataError(f"{path} needs columns 'image' and 'label'; it has {', '.join(columns)}")
        table = pq.read_table(path, columns=["image", label])
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read {path} as Parquet ({e})") from None
    images = table.column("image")
    if pa.types.is_struct(images.type):  # Hugging Face style {bytes, path}
        images = pa.chunked_array([chunk.field("bytes") for chunk in images.chunks])
    labels = _labels(name, path, label, table.column(label))  # checked before the slow decoding
    return _decode(images.to_pylist(), path), labels


def _labels(name: str, path: Path, label: str, column: "pa.ChunkedArray") -> np.ndarray:
    """Class indices 0..classes-1 as int64; strings, floats, empty or out-of-range labels are one
    line naming the file and the column (not a crash deep in training)."""
    import pyarrow as pa

    classes = _CIFAR[name][0]
    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: column '{label}' holds {column.type}, not class indices; "
                        f"write it as integers 0..{classes - 1}")
    if column.null_count:
        raise DataError(f"{path}: column '{label}' has {column.null_count} empty labels; every image needs one")
    labels = column.to_numpy().astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{path}: column '{label}' holds {labels.min()}..{labels.max()}; "
                        f"{name} labels are 0..{classes - 1}")
    return labels


def _decode(blobs: list[bytes], source: Path) -> np.ndarray:
    """Encoded images (JPEG, PNG, ...) -> uint8 (N, 3, H, W). One thread: for 32x32 images
    PIL's per-call overhead dominates, and threads or a 2-process pool measured slower here."""
    if not blobs:
        raise DataError(f"{source} holds no images")
    first = _decode_one(blobs[0], source, 0)
    out = np.empty((len(blobs),) + first.shape, dtype=np.uint8)  # NHWC while filling
    for i, blob in enumerate(blobs):
        img = _decode_one(blob, source, i)
        if img.shape != first.shape:
            raise DataError(f"image {i} in {source} is {img.shape}, the first is {first.shape}")
        out[i] = img
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _decode_one(blob: bytes, source: Path, index: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except Exception as e:  # PIL raises many kinds for a bad blob
        raise DataError(f"image {index} in {source} cannot be decoded ({type(e).__name__})") from None
