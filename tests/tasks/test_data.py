"""Data loading on real files: tiny copies of each layout, and the shared CIFAR-10 copy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rethink.errors import DataError, SpecError
from rethink.tasks import data as data_mod
from rethink.tasks.data import load_dataset, stratified_indices
from rethink.tasks.spec import DataSpec

SHARED = Path("/work/shared/data")


def _assert_matches(ds, tiny) -> None:
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert torch.equal(ds.train.images, torch.from_numpy(tiny.x_train))
    assert torch.equal(ds.train.labels, torch.from_numpy(tiny.y_train))
    assert torch.equal(ds.test.images, torch.from_numpy(tiny.x_test))
    assert torch.equal(ds.test.labels, torch.from_numpy(tiny.y_test))


@pytest.mark.parametrize("layout", ["parquet", "pickle"])
@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_each_layout_loads_shapes_and_labels(make_cifar, layout, name, classes):
    per_class = 6 if classes == 10 else 2
    tiny = make_cifar(layout, name, train_per_class=per_class, test_per_class=1)
    ds = load_dataset(DataSpec(dataset=name), tiny.root)
    assert ds.name == name and ds.num_classes == classes
    assert ds.train.images.shape == (classes * per_class, 3, 32, 32)
    assert ds.test.images.shape == (classes, 3, 32, 32)
    _assert_matches(ds, tiny)


def test_cifar100_parquet_reads_fine_label_column(make_cifar):
    tiny = make_cifar("parquet", "cifar100", train_per_class=1, test_per_class=1, label_column="fine_label")
    ds = load_dataset(DataSpec(dataset="cifar100"), tiny.root)
    assert sorted(ds.train.labels.tolist()) == list(range(100))
    _assert_matches(ds, tiny)


def test_parquet_and_pickle_of_same_pixels_are_equal(make_cifar):
    from_parquet = make_cifar("parquet", seed=3)
    from_pickle = make_cifar("pickle", seed=3)
    a = load_dataset(DataSpec(), from_parquet.root)
    b = load_dataset(DataSpec(), from_pickle.root)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train.labels, b.train.labels) and a.mean == b.mean and a.std == b.std


def test_parquet_is_preferred_when_both_layouts_exist(make_cifar):
    tiny = make_cifar("parquet", seed=1)
    make_cifar("pickle", seed=2, root=tiny.root)
    _assert_matches(load_dataset(DataSpec(), tiny.root), tiny)


def test_jpeg_parquet_decodes_close_to_source(make_cifar):
    # smooth images, since JPEG is lossy and random noise is its worst case
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    x = np.stack([np.stack([np.add.outer(ramp, ramp) / 2] * 3) for _ in range(20)]).astype(np.uint8)
    y = np.arange(20) % 10
    tiny = make_cifar("parquet", fmt="JPEG", arrays=(x, y, x[:10], y[:10]))
    ds = load_dataset(DataSpec(), tiny.root)
    err = (ds.train.images.float() - torch.from_numpy(x).float()).abs().mean()
    assert ds.train.images.shape == (20, 3, 32, 32) and err < 3


def test_mean_and_std_are_per_channel_train_statistics(make_cifar):
    tiny = make_cifar("pickle")
    ds = load_dataset(DataSpec(), tiny.root)
    x = tiny.x_train.astype(np.float64)
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 2, 3)), rtol=1e-9)


# ---- subsets and crops ----------------------------------------------------------------------


def test_stratified_indices_balanced_sorted_and_seeded():
    labels = torch.arange(1000) % 10
    idx = stratified_indices(labels, 25, seed=0)
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    assert counts == [3] * 5 + [2] * 5  # remainder to the lowest labels, deterministically
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 25
    assert torch.equal(idx, stratified_indices(labels, 25, seed=0))
    assert not torch.equal(idx, stratified_indices(labels, 25, seed=1))


def test_stratified_indices_fills_from_other_classes_when_one_runs_out():
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    idx = stratified_indices(labels, 30, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [2, 14, 14]
    assert torch.equal(stratified_indices(labels, 102, seed=5), torch.arange(102))


def test_too_large_subset_raises_spec_error_naming_both_sizes(make_cifar):
    tiny = make_cifar("pickle")
    with pytest.raises(SpecError, match=r"data\.train_size=61 .*60 images"):
        load_dataset(DataSpec(train_size=61), tiny.root)
    with pytest.raises(SpecError, match=r"data\.test_size=21 .*20 images"):
        load_dataset(DataSpec(test_size=21), tiny.root)


def test_subset_then_centre_crop(make_cifar):
    tiny = make_cifar("pickle", train_per_class=6, test_per_class=3)
    ds = load_dataset(DataSpec(train_size=30, test_size=10, crop=28, seed=4), tiny.root)
    assert ds.train.images.shape == (30, 3, 28, 28) and ds.test.images.shape == (10, 3, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [3] * 10
    idx = stratified_indices(torch.from_numpy(tiny.y_train), 30, seed=4).numpy()
    expected = tiny.x_train[idx][..., 2:30, 2:30]
    assert torch.equal(ds.train.images, torch.from_numpy(np.ascontiguousarray(expected)))
    assert torch.equal(ds.train.labels, torch.from_numpy(tiny.y_train[idx]))
    np.testing.assert_allclose(ds.mean, expected.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-9)


# ---- caches -----------------------------------------------------------------------------------


def test_disk_cache_is_read_and_a_changed_source_is_decoded_again(make_cifar, tmp_cache):
    tiny = make_cifar("parquet", seed=1)
    load_dataset(DataSpec(), tiny.root)
    (cache_file,) = tmp_cache.glob("cifar10-parquet-*.npz")
    # Prove the next load reads the cache: plant different pixels under the same key.
    planted = tiny.x_train.copy()
    planted[0] ^= 0xFF
    np.savez(cache_file, x_train=planted, y_train=tiny.y_train, x_test=tiny.x_test, y_test=tiny.y_test)
    data_mod.clear_memory_cache()
    assert torch.equal(load_dataset(DataSpec(), tiny.root).train.images, torch.from_numpy(planted))

    changed = make_cifar("parquet", seed=2, root=tiny.root)  # same paths, new pixels
    for f in tiny.root.glob("cifar10/*.parquet"):
        os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    data_mod.clear_memory_cache()
    _assert_matches(load_dataset(DataSpec(), tiny.root), changed)
    assert len(list(tmp_cache.glob("cifar10-parquet-*.npz"))) == 2


def test_corrupt_cache_file_is_ignored_and_rewritten(make_cifar, tmp_cache):
    tiny = make_cifar("parquet", seed=1)
    load_dataset(DataSpec(), tiny.root)
    (cache_file,) = tmp_cache.glob("*.npz")
    cache_file.write_bytes(b"not a zip file")
    data_mod.clear_memory_cache()
    _assert_matches(load_dataset(DataSpec(), tiny.root), tiny)
    with np.load(cache_file) as f:
        assert np.array_equal(f["x_train"], tiny.x_train)
    assert [p.name for p in tmp_cache.iterdir()] == [cache_file.name]  # no temporary left behind


def test_repeated_loads_in_one_process_share_the_decoded_tensors(make_cifar, tmp_cache):
    tiny = make_cifar("parquet")
    first = load_dataset(DataSpec(), tiny.root)
    for f in tmp_cache.iterdir():
        f.unlink()  # a second read from disk would now have to decode; memory must answer
    second = load_dataset(DataSpec(train_size=20), tiny.root)
    assert load_dataset(DataSpec(), tiny.root).train.images.data_ptr() == first.train.images.data_ptr()
    assert len(second.train) == 20 and not list(tmp_cache.iterdir())


# ---- missing data -----------------------------------------------------------------------------


def test_missing_data_offline_flag_raises_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_dataset(DataSpec(dataset="cifar100"), tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "cifar-100-python/" in message
    assert "--data-dir" in message and "RETHINK_DATA" in message and "RETHINK_OFFLINE" in message


def _online() -> bool:
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="would really download CIFAR-10; this checks the offline failure")
def test_missing_data_failed_download_raises_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset(DataSpec(dataset="cifar10"), empty)
    message = str(info.value)
    assert time.monotonic() - start < 60
    assert "\n" not in message and "Traceback" not in message
    assert str(empty) in message and "cifar10/train.parquet" in message and "cifar-10-batches-py/" in message
    assert "downloading it failed" in message and "--data-dir" in message and "RETHINK_DATA" in message


def test_unreadable_parquet_raises_data_error(make_cifar):
    tiny = make_cifar("parquet")
    (tiny.root / "cifar10" / "train.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read .*train.parquet as Parquet"):
        load_dataset(DataSpec(), tiny.root)


# ---- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_seeded_sized_and_balanced():
    ds = load_dataset(DataSpec(dataset="synthetic"), "unused")
    assert ds.train.images.shape == (1000, 3, 32, 32) and ds.test.images.shape == (500, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.bincount(ds.train.labels).tolist() == [100] * 10
    again = load_dataset(DataSpec(dataset="synthetic"), "unused")
    assert torch.equal(ds.train.images, again.train.images) and torch.equal(ds.test.labels, again.test.labels)
    other = load_dataset(DataSpec(dataset="synthetic", seed=1), "unused")
    assert not torch.equal(ds.train.images, other.train.images)
    small = load_dataset(DataSpec(dataset="synthetic", image_size=8, num_classes=3, train_size=31,
                                  test_size=7, crop=6), "unused")
    assert small.train.images.shape == (31, 3, 6, 6) and small.test.images.shape == (7, 3, 6, 6)
    assert torch.bincount(small.train.labels).tolist() == [11, 10, 10] and small.num_classes == 3


def test_synthetic_is_learnable_by_nearest_class_mean():
    ds = load_dataset(DataSpec(dataset="synthetic", train_size=200, test_size=200), "unused")
    x_train, x_test = ds.train.images.flatten(1).float(), ds.test.images.flatten(1).float()
    centroids = torch.stack([x_train[ds.train.labels == k].mean(0) for k in range(10)])
    assert torch.cdist(centroids, centroids).add(torch.eye(10) * 1e9).min() > 1000  # templates differ
    predicted = torch.cdist(x_test, centroids).argmin(1)
    assert (predicted == ds.test.labels).float().mean() > 0.95


# ---- the shared CIFAR-10 copy -----------------------------------------------------------------

_SECOND_LOAD = """
import json, sys, time
from rethink.tasks.data import load_dataset
from rethink.tasks.spec import DataSpec
start = time.perf_counter()
ds = load_dataset(DataSpec(dataset="cifar10"), sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "train": list(ds.train.images.shape)}))
"""


@pytest.mark.skipif(not (SHARED / "cifar10" / "train.parquet").is_file(), reason="no shared CIFAR-10")
def test_shared_cifar10_loads_whole_and_second_load_is_fast(pytestconfig, monkeypatch):
    # A cache kept in .pytest_cache: the 60k-JPEG decode (~5 s) is paid once per checkout, and
    # the key (source path, size, mtime) still forces a fresh decode if the copy changes.
    cache = pytestconfig.cache.mkdir("rethink-decoded")
    monkeypatch.setenv("RETHINK_CACHE", str(cache))
    ds = load_dataset(DataSpec(dataset="cifar10"), SHARED)  # first load: decodes, fills the cache
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert abs(ds.mean[0] / 255 - 0.4913) < 0.002  # the published CIFAR-10 red mean
    env = {**os.environ, "RETHINK_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", _SECOND_LOAD, str(SHARED)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["train"] == [50000, 3, 32, 32]
    assert result["seconds"] < 2.0, f"second load took {result['seconds']:.2f} s"
