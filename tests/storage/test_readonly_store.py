"""A store that cannot be written (a read-only mount, a full disk, a folder where a file goes) fails
each write in one line from Store.write/delete, and `rethink cancel`, `resume` and `compact` on it
say so in one line with no traceback. And `--store=~/runs` is $HOME/runs for every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.runner.grid import parse_grid, run_row
from rethink.storage.store import Store, StoreError

GRID = "name: ro\ndataset: synthetic\ndata: {train_size: 64, test_size: 32, image_size: 8}\nmodel: mlp1x512\n" \
       "width: 0.05\nseed: [0, 1]\ntrain: {epochs: 1, batch_size: 32}\nresources: {cpus: 1, gpus: 0}\n"


def make_store(root: Path) -> Store:
    grid = parse_grid(GRID)
    store = Store.open(root, create=True)
    store.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    return store


@pytest.fixture
def read_only(tmp_path: Path):
    """A store on a tmpfs mounted read-only (needs root and mount permission: skipped otherwise)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({tried.stderr.strip() or 'mount failed'})")
    try:
        make_store(mount / "s")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "s"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_write_that_fails_is_one_store_line(tmp_path: Path) -> None:
    """The root: any OSError of a local write or delete becomes a StoreError in words."""
    store = make_store(tmp_path / "s")
    (tmp_path / "s" / "runs" / "run_id=r" / "status.parquet").mkdir(parents=True)
    with pytest.raises(StoreError, match=r"^cannot write runs/run_id=r/status.parquet in store '.*/s': it is a folder$"):
        store.write("runs/run_id=r/status.parquet", b"x")


def test_a_read_only_store(read_only: Path) -> None:
    store = Store.open(read_only)
    with pytest.raises(StoreError, match=r"^cannot write experiments/name=ro/cancel.json in store '.*': "
                                         r"the filesystem is read-only$"):
        store.request_cancel("ro")
    with pytest.raises(StoreError, match="the filesystem is read-only"):
        store.delete("experiments/name=ro/grid.yaml")
    env = {**os.environ, "RETHINK_DATA": "unused"}
    for args in (["cancel", "ro"], ["compact", "ro"], ["resume", "ro", "--quiet"]):
        done = subprocess.run([sys.executable, "-m", "rethink.cli", *args, "--store", str(read_only)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "the filesystem is read-only" in errors[0], (args, done.stderr)


def test_a_tilde_store_is_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    make_store(tmp_path / "home" / "runs")
    for args in (["status", "--store=~/runs"], ["cancel", "ro", "--store=~/runs"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert Store.open("~/runs").cancel_requested("ro")
    assert Store.open("~/runs").uri == str(tmp_path / "home" / "runs")
    assert not (tmp_path / "~").exists()
