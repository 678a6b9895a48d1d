"""Zhang et al. §2 corruptions: statistics, determinism, and that inputs stay untouched."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from rethink.tasks.corruption import corrupt, corruption_generator, noisy_labels
from rethink.tasks.data import Dataset, Split, channel_stats, load_dataset
from rethink.tasks.spec import CorruptionSpec, DataSpec

ALL_KINDS = [CorruptionSpec(), CorruptionSpec("labels", 0.5), CorruptionSpec("label_noise", 0.3),
             CorruptionSpec("shuffled_pixels", 1.0), CorruptionSpec("random_pixels", 1.0),
             CorruptionSpec("gaussian", 1.0)]


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_dataset(DataSpec(dataset="synthetic", train_size=4000, test_size=300), "unused")


def _position_coded(n: int, side: int = 32) -> Dataset:
    """Images whose channels 0 and 1 spell each pixel's position (pos = c0 + 256 * c1) and whose
    channel 2 is random in 0..63: a permutation can be read back from any output image, and
    the three channels have clearly different moments."""
    pos = torch.arange(side * side)
    coded = torch.stack([pos % 256, pos // 256]).to(torch.uint8).view(1, 2, side, side)
    noise = torch.randint(0, 64, (n, 1, side, side), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    images = torch.cat([coded.expand(n, -1, -1, -1), noise], dim=1).contiguous()
    labels = torch.arange(n) % 10
    train, test = Split(images, labels), Split(images[: n // 2].clone(), labels[: n // 2].clone())
    mean, std = channel_stats(images)
    return Dataset("coded", train, test, 10, mean, std)


def _positions(images: torch.Tensor) -> torch.Tensor:
    """(N, H*W) source position of every output pixel of position-coded images."""
    return images[:, 0].flatten(1).long() + 256 * images[:, 1].flatten(1).long()


def _binomial_ok(observed: float, q: float, n: int) -> bool:
    return abs(observed - q) <= 4.5 * math.sqrt(q * (1 - q) / n) + 1e-12


# ---- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_changed_label_fraction_is_p_times_one_minus_one_over_k(synthetic, p):
    out = corrupt(synthetic, CorruptionSpec("labels", p), seed=0)
    n, k = len(synthetic.train), synthetic.num_classes
    assert torch.equal(out.corrupted, out.train.labels != out.true_labels)
    assert _binomial_ok(out.corrupted.float().mean().item(), p * (1 - 1 / k), n)
    assert torch.equal(out.true_labels, synthetic.train.labels)
    assert out.train.labels.dtype == torch.int64 and out.train.labels.min() >= 0 and out.train.labels.max() < k
    assert torch.equal(out.train.images, synthetic.train.images)


def test_random_labels_are_uniform_over_classes(synthetic):
    labels = corrupt(synthetic, CorruptionSpec("labels", 1.0), seed=3).train.labels
    counts = torch.bincount(labels, minlength=10).double()
    expected = len(labels) / 10
    assert ((counts - expected) ** 2 / expected).sum() < 33.7  # chi-square, 9 dof, p = 1e-4


def test_label_corruption_is_deterministic_and_seeded(synthetic):
    spec = CorruptionSpec("labels", 0.5)
    a, b = corrupt(synthetic, spec, seed=7), corrupt(synthetic, spec, seed=7)
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.train.labels, corrupt(synthetic, spec, seed=8).train.labels)
    assert not torch.equal(a.train.labels, corrupt(synthetic, CorruptionSpec("labels", 0.6), 7).train.labels)


@pytest.mark.parametrize("spec", ALL_KINDS, ids=lambda s: s.label)
def test_test_labels_are_never_corrupted(synthetic, spec):
    out = corrupt(synthetic, spec, seed=0)
    assert torch.equal(out.test.labels, synthetic.test.labels)
    assert out.corrupted.dtype == torch.bool and out.corrupted.shape == synthetic.train.labels.shape


@pytest.mark.parametrize("spec", ALL_KINDS, ids=lambda s: s.label)
def test_inputs_are_not_mutated(spec):
    ds = _position_coded(64)
    before = [t.clone() for t in (ds.train.images, ds.train.labels, ds.test.images, ds.test.labels)]
    corrupt(ds, spec, seed=0)
    after = (ds.train.images, ds.train.labels, ds.test.images, ds.test.labels)
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_generator_seed_is_a_stable_hash_of_name_kind_level_seed():
    digest = hashlib.sha256(b"cifar10|labels|0.5|3").digest()
    expected = int.from_bytes(digest[:8], "little") >> 1
    assert corruption_generator("cifar10", "labels", 0.5, 3).initial_seed() == expected
    assert corruption_generator("cifar10", "gaussian", 1, 0).initial_seed() == \
        corruption_generator("cifar10", "gaussian", 1.0, 0).initial_seed()
    assert corruption_generator("cifar100", "labels", 0.5, 3).initial_seed() != expected


@pytest.mark.parametrize("spec", [CorruptionSpec(), CorruptionSpec("label_noise", 0.4)], ids=lambda s: s.label)
def test_none_and_label_noise_change_nothing_up_front(synthetic, spec):
    out = corrupt(synthetic, spec, seed=0)
    assert torch.equal(out.train.labels, synthetic.train.labels) and not out.corrupted.any()
    assert torch.equal(out.train.images, synthetic.train.images)
    assert torch.equal(out.test.images, synthetic.test.images)


# ---- pixels -----------------------------------------------------------------------------------


def test_shuffled_pixels_is_one_permutation_for_every_image():
    ds = _position_coded(40)
    out = corrupt(ds, CorruptionSpec("shuffled_pixels", 1.0), seed=0)
    train_pos, test_pos = _positions(out.train.images), _positions(out.test.images)
    perm = train_pos[0]
    assert torch.equal(torch.sort(perm).values, torch.arange(1024))
    assert not torch.equal(perm, torch.arange(1024))
    assert (train_pos == perm).all() and (test_pos == perm).all()  # same for train and test
    # channel 2 moved with the others: its pixel at i is the source's pixel at perm[i]
    assert torch.equal(out.train.images[:, 2].flatten(1), ds.train.images[:, 2].flatten(1)[:, perm])
    assert out.corrupted.all() and torch.equal(out.train.labels, ds.train.labels)
    assert out.train.images.dtype == torch.uint8 and out.train.images.shape == ds.train.images.shape
    again = corrupt(ds, CorruptionSpec("shuffled_pixels", 1.0), seed=0)
    other = corrupt(ds, CorruptionSpec("shuffled_pixels", 1.0), seed=1)
    assert torch.equal(again.train.images, out.train.images)
    assert not torch.equal(_positions(other.train.images)[0], perm)


def test_random_pixels_is_a_different_permutation_per_image():
    ds = _position_coded(40)
    out = corrupt(ds, CorruptionSpec("random_pixels", 1.0), seed=0)
    for images, source in ((out.train.images, ds.train.images), (out.test.images, ds.test.images)):
        pos = _positions(images)
        assert (torch.sort(pos, dim=1).values == torch.arange(1024)).all()  # each a permutation
        assert len({tuple(row.tolist()) for row in pos}) == len(pos)  # all different
        moved = torch.gather(source[:, 2].flatten(1), 1, pos)
        assert torch.equal(images[:, 2].flatten(1), moved)  # channels move together
    assert out.corrupted.all()
    assert torch.equal(corrupt(ds, CorruptionSpec("random_pixels", 1.0), seed=0).train.images, out.train.images)
    assert not torch.equal(corrupt(ds, CorruptionSpec("random_pixels", 1.0), seed=1).train.images,
                           out.train.images)


def test_pixel_permutations_keep_each_images_pixel_multiset():
    small = load_dataset(DataSpec(dataset="synthetic", train_size=200, test_size=50), "unused")
    for kind in ("shuffled_pixels", "random_pixels"):
        out = corrupt(small, CorruptionSpec(kind, 1.0), seed=0)
        for split, source in ((out.train, small.train), (out.test, small.test)):
            assert torch.equal(torch.sort(split.images.flatten(2), dim=2).values,
                               torch.sort(source.images.flatten(2), dim=2).values)
            assert not torch.equal(split.images, source.images)


# ---- gaussian ---------------------------------------------------------------------------------


def test_gaussian_matches_the_datasets_channel_moments():
    ds = _position_coded(400)  # channel (mean, std): (127.5, 73.9), (1.5, 1.1), (~31.5, ~18.5)
    out = corrupt(ds, CorruptionSpec("gaussian", 1.0), seed=0)
    for images, n in ((out.train.images, len(ds.train)), (out.test.images, len(ds.test))):
        assert images.dtype == torch.float32 and images.shape == (n, 3, 32, 32)
        mean, std = channel_stats(images)
        for c in range(3):
            pixels = n * 32 * 32
            assert abs(mean[c] - ds.mean[c]) < 5 * ds.std[c] / math.sqrt(pixels)
            assert abs(std[c] / ds.std[c] - 1) < 5 / math.sqrt(2 * pixels)
    assert out.corrupted.all() and torch.equal(out.train.labels, ds.train.labels)
    assert torch.equal(out.test.labels, ds.test.labels)
    assert (out.train.images < 0).any()  # not clipped to pixel range
    again = corrupt(ds, CorruptionSpec("gaussian", 1.0), seed=0)
    assert torch.equal(again.train.images, out.train.images)


# ---- per-step label noise ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_noisy_labels_statistics(rate):
    labels = torch.arange(20000) % 10
    g = torch.Generator().manual_seed(0)
    noisy = noisy_labels(labels, rate, 10, g)
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    assert noisy.min() >= 0 and noisy.max() < 10
    assert _binomial_ok((noisy != labels).float().mean().item(), rate * 0.9, len(labels))
    assert torch.equal(labels, torch.arange(20000) % 10)  # input untouched


def test_noisy_labels_are_fresh_each_call_and_reproducible():
    labels = torch.arange(5000) % 10
    g = torch.Generator().manual_seed(1)
    first, second = noisy_labels(labels, 0.3, 10, g), noisy_labels(labels, 0.3, 10, g)
    assert not torch.equal(first, second)
    replay = torch.Generator().manual_seed(1)
    assert torch.equal(noisy_labels(labels, 0.3, 10, replay), first)
    assert torch.equal(noisy_labels(labels, 0.3, 10, replay), second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noisy_labels_on_the_gpu():
    labels = (torch.arange(20000) % 10).cuda()
    noisy = noisy_labels(labels, 0.5, 10, torch.Generator(device="cuda").manual_seed(0))
    assert noisy.device == labels.device
    assert _binomial_ok((noisy != labels).float().mean().item(), 0.45, len(labels))
