"""Device batch ops: augmentation is a crop of the padded image plus an optional flip; whitening
gives zero-mean unit-variance images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rethink.tasks.batches import AUGMENT_PAD, augment, to_float


def test_augment_is_a_padded_crop_possibly_flipped():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is visible
    out = augment(images, g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (AUGMENT_PAD,) * 4)
    flips = shifts = 0
    for i in range(len(images)):
        found = False
        for flip in (False, True):
            src = padded[i].flip(-1) if flip else padded[i]
            for dy in range(2 * AUGMENT_PAD + 1):
                for dx in range(2 * AUGMENT_PAD + 1):
                    if torch.equal(src[:, dy : dy + 8, dx : dx + 8], out[i]):
                        found = True
                        flips += flip
                        shifts += (dy, dx) != (AUGMENT_PAD, AUGMENT_PAD)
                        break
                if found:
                    break
            if found:
                break
        assert found, f"image {i} is not a crop of its padded original"
    assert 10 < flips < 54 and shifts > 40  # both happen, at random


def test_augment_is_deterministic_in_the_generator():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_whitening_standardizes_each_image():
    images = torch.randint(0, 256, (10, 3, 28, 28), dtype=torch.uint8)
    x = to_float(images, torch.zeros(3), torch.ones(3), whiten=True)
    assert torch.allclose(x.flatten(1).mean(1), torch.zeros(10), atol=1e-5)
    assert torch.allclose(x.flatten(1).std(1, unbiased=False), torch.ones(10), atol=1e-4)
    flat = to_float(torch.full((1, 3, 4, 4), 7, dtype=torch.uint8), torch.zeros(3), torch.ones(3), whiten=True)
    assert torch.isfinite(flat).all() and flat.abs().max() == 0  # constant image: no division by zero


def test_channel_normalization_uses_the_given_statistics():
    images = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    x = to_float(images, torch.tensor([100.0, 50.0, 0.0]), torch.tensor([1.0, 10.0, 50.0]), whiten=False)
    assert torch.allclose(x[:, 0], torch.zeros(2, 4, 4)) and torch.allclose(x[:, 1], torch.full((2, 4, 4), 5.0))
    assert torch.allclose(x[:, 2], torch.full((2, 4, 4), 2.0))
