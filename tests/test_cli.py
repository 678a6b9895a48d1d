"""The `rethink` command as a user runs it: success and error paths per command, exit codes and
the exact first line of each error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.tasks.train import EPOCH_COLUMNS

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--train-size", "60", "--test-size", "30", "--batch-size", "16"]


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_train_json_prints_one_object_per_epoch():
    result = invoke("train", *TINY, "--epochs", "3", "--corruption", "labels:0.5", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(tuple(r) == EPOCH_COLUMNS for r in rows)
    assert "after 3 epochs" in result.stderr


def test_train_table_shows_the_epochs():
    result = invoke("train", *TINY, "--epochs", "2", "--regularizer", "weight_decay=5e-4,augment")
    assert result.exit_code == 0, result.output
    assert "train acc" in result.stderr and "weight_decay=0.0005+augment" in result.stderr


def test_train_resumes_from_its_checkpoint(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    first = invoke("train", *TINY, "--epochs", "2", "--json", "--checkpoint", str(ckpt))
    assert first.exit_code == 0 and ckpt.exists()
    more = invoke("train", *TINY, "--epochs", "2", "--json", "--checkpoint", str(ckpt))
    assert more.exit_code == 0 and more.stdout == ""  # already finished: nothing retrained


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--model", "nosuchnet"], 2, "Error: unknown model 'nosuchnet'; valid: mlp1x512"),
        (["--corruption", "labels:1.5"], 2, "Error: level of labels must be in [0, 1], got 1.5"),
        (["--corruption", "labels"], 2, "Error: corruption 'labels' needs a level, e.g. labels:0.5"),
        (["--regularizer", "l2=3"], 2, "Error: unknown regularizer 'l2'"),
        (["--epochs", "0"], 2, "Error: train.epochs must be a positive integer, got 0"),
        (["--epochs", "many"], 2, "Error: Invalid value for '--epochs'"),
        (["--no-such-flag"], 2, "Error: No such option: --no-such-flag"),
        (["--dataset", "mnist"], 2, "Error: unknown dataset 'mnist'"),
        (["--crop", "40"], 2, "Error: data.crop=40 is larger than the 32-pixel images"),
        (["--optimizer", "rmsprop"], 2, "Error: unknown optimizer 'rmsprop'"),
    ],
)
def test_train_bad_options_give_one_line(args, code, message):
    result = invoke("train", *TINY, "--epochs", "1", *args)
    assert result.exit_code == code
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_train_missing_dataset_says_where_to_point(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_OFFLINE", "1")
    result = invoke("train", "--dataset", "cifar100", "--epochs", "1", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error:") and "--data-dir" in result.stderr
    assert result.stderr.count("\n") == 1


def test_train_damaged_checkpoint_is_one_line_and_left_alone(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    result = invoke("train", *TINY, "--epochs", "1", "--checkpoint", str(ckpt))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: run ") and "not a rethink checkpoint" in result.stderr
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0 and "train" in result.stdout
