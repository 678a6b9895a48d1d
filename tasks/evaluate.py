"""Measuring a run without training it: loss and accuracy against the labels the run trains on,
against the true labels, and on the corrupted and clean subsets separately, on the training set,
the test set and the held-out split.

Measuring is two steps: logits (one model's `predict`, or one vmapped forward for a whole stacked
pack in tasks/stacked.py), then `split_metrics`, which both paths share. The metrics of a split
stay on the device until one `.tolist()` brings them all back (one host sync per split, not one
per number)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rethink.tasks.batches import to_float

EVAL_BATCH = 1000  # examples per forward pass when measuring; memory only, not results


@dataclass(frozen=True)
class Normalizer:
    """How the run turns stored pixels into model inputs (fixed for the whole run)."""

    mean: torch.Tensor
    std: torch.Tensor
    whiten: bool
    dtype: torch.dtype = torch.float32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(images, self.mean, self.std, self.whiten, self.dtype)


@dataclass(frozen=True)
class Split:
    """Images and the labels a run is measured against on one split. `true_labels` and
    `corrupted` only for the training split (the memorization columns)."""

    name: str  # train | test | val: the columns' prefix
    images: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor | None = None
    corrupted: torch.Tensor | None = None
    corrupted_count: int = 0  # counted once on the host, so an empty subset needs no sync


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, normalize: Normalizer) -> torch.Tensor:
    """Logits for every image, in eval mode, in batches of EVAL_BATCH; float32, or float64 for a
    float64 model (the equivalence tests compare metrics at that precision)."""
    was_training = model.training
    model.eval()
    logits = [model(normalize(images[i : i + EVAL_BATCH])) for i in range(0, len(images), EVAL_BATCH)]
    model.train(was_training)
    return as_metric_dtype(torch.cat(logits))


def as_metric_dtype(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


@torch.no_grad()
def split_metrics(split: Split, logits: torch.Tensor | None) -> dict[str, float | None]:
    """The split's columns from its logits (None: the split is empty)."""
    p = split.name
    if logits is None or len(split.labels) == 0:
        return {f"{p}_loss": None, f"{p}_acc": None}
    pred = logits.argmax(1)
    hits = (pred == split.labels).to(logits.dtype)
    values = {f"{p}_loss": F.cross_entropy(logits, split.labels), f"{p}_acc": hits.mean()}
    if split.corrupted is not None:
        n, k = len(hits), split.corrupted_count
        corrupted_hits = (hits * split.corrupted).sum()
        values[f"{p}_acc_corrupted"] = corrupted_hits / k if k else None
        values[f"{p}_acc_clean"] = (hits.sum() - corrupted_hits) / (n - k) if n - k else None
        values[f"{p}_acc_true"] = (pred == split.true_labels).to(logits.dtype).mean()
    present = [key for key, value in values.items() if value is not None]
    numbers = torch.stack([values[key] for key in present]).tolist()  # one sync for the split
    return {key: (numbers[present.index(key)] if key in present else None) for key in values}


def measure_split(model: torch.nn.Module, split: Split | None, normalize: Normalizer,
                  name: str) -> dict[str, float | None]:
    """One model on one split; a missing split (no held-out data) gives NULL columns."""
    if split is None:
        return {f"{name}_loss": None, f"{name}_acc": None}
    return split_metrics(split, predict(model, split.images, normalize) if len(split.images) else None)
