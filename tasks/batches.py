"""Batch operations on the device, shared by the side-by-side and the stacked loop: a batch is an
index lookup into a uint8 tensor that already lives there; augmentation, normalization and the
loss are tensor ops on the whole batch (no DataLoader, no per-sample Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_PAD = 4  # pixels of zero padding before the random crop (Zhang et al., He et al.)
AugmentDraws = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (dy, dx, flip), one of each per image


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding, then a horizontal flip with probability 1/2.

    One crop offset per image, drawn from `generator` (the run's own stream), so a resumed run
    draws the same offsets as one that never stopped."""
    return apply_augment(images, augment_draws(len(images), generator, images.device))


def augment_draws(n: int, generator: torch.Generator, device: torch.device) -> AugmentDraws:
    """The random part of `augment` for n images, in its order: row offsets, column offsets, flips.
    A stacked pack draws each run's from the run's own generator, then augments them all at once."""
    span = 2 * AUGMENT_PAD + 1
    dy = torch.randint(0, span, (n,), generator=generator, device=device)
    dx = torch.randint(0, span, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def apply_augment(images: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
    """Zero-pad, crop at the drawn offsets and flip where drawn: one gather for the whole batch."""
    dy, dx, flip = draws
    n, channels, h, w = images.shape
    pad, device = AUGMENT_PAD, images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=device)[None, :]  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=device)[None, :]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Mean cross entropy with label smoothing over the batch axis (-2 of the logits), as
    F.cross_entropy(label_smoothing=eps) computes it: (1 - eps) * nll + eps * mean(-log p).
    Logits (b, K) give a scalar; stacked logits (R, b, K) with a (R,) `smoothing` give (R,)."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)
    if isinstance(smoothing, torch.Tensor):
        eps = smoothing.to(logp.dtype).view(*smoothing.shape, *([1] * (nll.dim() - smoothing.dim())))
    elif smoothing == 0:
        return nll.mean(-1)
    else:
        eps = smoothing
    return ((1 - eps) * nll + eps * -logp.mean(-1)).mean(-1)


def to_float(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    whiten: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (or float, for gaussian images) pixels -> normalized floats for the model.

    whiten=True is Zhang et al.'s per-image standardization (TensorFlow's
    per_image_standardization: subtract the image mean, divide by max(std, 1/sqrt(#pixels)));
    otherwise per-channel normalization with the training set's mean and std."""
    x = images.to(dtype)
    if whiten:
        flat = x.flatten(1)
        mu = flat.mean(dim=1)
        sigma = flat.std(dim=1, unbiased=False).clamp_min(1.0 / flat.shape[1] ** 0.5)
        return (x - mu[:, None, None, None]) / sigma[:, None, None, None]
    return (x - mean.to(dtype)[None, :, None, None]) / std.to(dtype)[None, :, None, None]
