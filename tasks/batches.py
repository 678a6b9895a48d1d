"""Batch operations on the device: a batch is an index lookup into a uint8 tensor that already
lives there; augmentation and normalization are tensor ops on the whole batch (no DataLoader,
no per-sample Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_PAD = 4  # pixels of zero padding before the random crop (Zhang et al., He et al.)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding, then a horizontal flip with probability 1/2.

    One crop offset per image, drawn from `generator` (the run's own stream), so a resumed run
    draws the same offsets as one that never stopped."""
    n, _, h, w = images.shape
    pad = AUGMENT_PAD
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=images.device)
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


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
