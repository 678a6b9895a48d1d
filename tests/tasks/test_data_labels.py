"""A Parquet dataset whose label column is not class indices (strings, floats, empty or out
of range) is one line naming the file and the column, before any training."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rethink.cli import app

BAD_LABELS = {
    "strings": lambda n: pa.array([str(i % 10) for i in range(n)]),
    "floats": lambda n: pa.array([float(i % 10) for i in range(n)]),
    "empty labels": lambda n: pa.array([None] + [i % 10 for i in range(1, n)], type=pa.int64()),
    "negative": lambda n: pa.array([-1] * n, type=pa.int64()),
    "past the classes": lambda n: pa.array([10] * n, type=pa.int64()),
    "lists": lambda n: pa.array([[i % 10] for i in range(n)]),
}


@pytest.mark.parametrize("label", BAD_LABELS)
def test_a_bad_label_column_is_one_line(make_cifar, label: str) -> None:
    data = make_cifar("parquet")
    path = data.root / "cifar10" / "train.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(1, "label", BAD_LABELS[label](table.num_rows)), path)
    result = CliRunner().invoke(app, ["train", "--dataset", "cifar10", "--data-dir", str(data.root),
                                      "--epochs", "1", "--device", "cpu"])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr and "'label'" in result.stderr


def test_integer_labels_of_any_width_load(make_cifar) -> None:
    from rethink.tasks.data import load_dataset
    from rethink.tasks.spec import DataSpec

    data = make_cifar("parquet")  # int16 labels
    dataset = load_dataset(DataSpec(dataset="cifar10"), data.root)
    assert sorted(set(dataset.train.labels.tolist())) == list(range(10))
