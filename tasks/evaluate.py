"""Measuring a model on a split without training it: loss and accuracy against the labels the run
trains on, against the true labels, and on the corrupted and clean subsets separately."""

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


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, normalize: Normalizer) -> torch.Tensor:
    """Logits for every image, in eval mode, in batches of EVAL_BATCH; float32, or float64 for a
    float64 model (the equivalence tests compare metrics at that precision)."""
    was_training = model.training
    model.eval()
    logits = [model(normalize(images[i : i + EVAL_BATCH])) for i in range(0, len(images), EVAL_BATCH)]
    model.train(was_training)
    out = torch.cat(logits)
    return out if out.dtype == torch.float64 else out.float()


def _accuracy(hits: torch.Tensor, mask: torch.Tensor | None = None) -> float | None:
    if mask is not None:
        if not bool(mask.any()):
            return None  # an empty subset has no accuracy (NULL in the store)
        hits = hits[mask]
    return float(hits.float().mean())


@torch.no_grad()
def measure_train(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    true_labels: torch.Tensor,
    corrupted: torch.Tensor,
    normalize: Normalizer,
) -> dict[str, float | None]:
    logits = predict(model, images, normalize)
    pred = logits.argmax(1)
    hits = pred == labels
    return {
        "train_loss": float(F.cross_entropy(logits, labels)),
        "train_acc": _accuracy(hits),
        "train_acc_corrupted": _accuracy(hits, corrupted),
        "train_acc_clean": _accuracy(hits, ~corrupted),
        "train_acc_true": _accuracy(pred == true_labels),
    }


@torch.no_grad()
def measure(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize: Normalizer, prefix: str
) -> dict[str, float | None]:
    """Loss and accuracy on a split with no corruption bookkeeping (test, held-out)."""
    if len(images) == 0:
        return {f"{prefix}_loss": None, f"{prefix}_acc": None}
    logits = predict(model, images, normalize)
    return {
        f"{prefix}_loss": float(F.cross_entropy(logits, labels)),
        f"{prefix}_acc": _accuracy(logits.argmax(1) == labels),
    }
