"""Zhang et al. (ICLR 2017) §2 corruptions as pure seeded functions, applied once before epoch 0.

Every function returns new tensors and never writes into its inputs. A corruption is fixed by
(dataset name, kind, level, seed) through a sha256-derived generator seed, so every worker, in
any process, draws the same corrupted set. The test set's labels are never touched; the image
kinds transform test images too (as in the paper), so a model is tested on the same kind of input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rethink.tasks.data import Dataset, Split
from rethink.tasks.spec import CorruptionSpec

_PERM_CHUNK = 8192  # images per block of per-image permutations (bounds the int64 index memory)


@dataclass(frozen=True)
class CorruptedData:
    train: Split  # images and the labels the run trains on
    true_labels: torch.Tensor  # int64 (N,), the uncorrupted train labels
    corrupted: torch.Tensor  # bool (N,): True where the sample is corrupted
    test: Split  # test labels are never corrupted


def corrupt(dataset: Dataset, corruption: CorruptionSpec, seed: int) -> CorruptedData:
    """The training set a run sees under `corruption`, with the mask of the samples it changed.

    - none, label_noise: unchanged (label_noise acts per step, see `noisy_labels`); mask all False.
    - labels p: each label replaced w.p. p by a uniform label (may equal the old one); the mask
      marks labels that actually changed, about p * (1 - 1/K) of them.
    - shuffled_pixels / random_pixels / gaussian: train and test images transformed; mask all True.
    """
    train, test = dataset.train, dataset.test
    true = train.labels
    n = len(true)
    g = corruption_generator(dataset.name, corruption.kind, corruption.level, seed)
    kind = corruption.kind
    if kind in ("none", "label_noise"):
        return CorruptedData(train, true, torch.zeros(n, dtype=torch.bool), test)
    if kind == "labels":
        labels = _replace_labels(true, corruption.level, dataset.num_classes, g)
        return CorruptedData(Split(train.images, labels), true, labels != true, test)
    if kind == "shuffled_pixels":
        h, w = train.images.shape[-2:]
        perm = torch.randperm(h * w, generator=g)
        images = (_permute_pixels(train.images, perm), _permute_pixels(test.images, perm))
    elif kind == "random_pixels":
        images = (_random_pixels(train.images, g), _random_pixels(test.images, g))
    elif kind == "gaussian":
        images = (_gaussian_like(train.images, dataset, g), _gaussian_like(test.images, dataset, g))
    else:  # CorruptionSpec validates kinds; this guards a kind added there but not here
        raise ValueError(f"corruption kind {kind!r} has no implementation")
    return CorruptedData(Split(images[0], true), true, torch.ones(n, dtype=torch.bool),
                         Split(images[1], test.labels))


def noisy_labels(labels: torch.Tensor, rate: float, num_classes: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Label noise for one SGD step (Cornacchia et al.): each label replaced w.p. `rate` by a
    uniform label, drawn afresh on every call. Runs on `labels.device`; the generator must live
    on that device too."""
    return _replace_labels(labels, rate, num_classes, generator)


def corruption_generator(name: str, kind: str, level: float, seed: int) -> torch.Generator:
    """A CPU generator seeded from sha256(name, kind, level, seed): stable across processes and
    Python versions, unlike `hash()`."""
    text = f"{name}|{kind}|{float(level)!r}|{int(seed)}"
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _replace_labels(labels: torch.Tensor, p: float, k: int, g: torch.Generator) -> torch.Tensor:
    replace = torch.rand(labels.shape, generator=g, device=labels.device) < p
    drawn = torch.randint(0, k, labels.shape, generator=g, device=labels.device, dtype=labels.dtype)
    return torch.where(replace, drawn, labels)


def _permute_pixels(images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The same permutation of the H*W positions in every image; channels move together."""
    n, c, h, w = images.shape
    return images.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def _random_pixels(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A different permutation of the H*W positions for every image, in blocks to bound memory."""
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    out = torch.empty_like(flat)
    for start in range(0, n, _PERM_CHUNK):
        block = flat[start:start + _PERM_CHUNK]
        order = torch.argsort(torch.rand(len(block), h * w, generator=g), dim=1)
        out[start:start + len(block)] = block.gather(2, order[:, None, :].expand(-1, c, -1))
    return out.reshape(n, c, h, w)


def _gaussian_like(images: torch.Tensor, dataset: Dataset, g: torch.Generator) -> torch.Tensor:
    """float32 noise with the dataset's per-channel train mean and std, pixel units, unclipped
    so its moments match exactly in expectation."""
    mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.randn(images.shape, generator=g) * std + mean
