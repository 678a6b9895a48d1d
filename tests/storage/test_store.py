"""The store on real files: opening and refusing, frozen experiments, claims that let exactly one
owner train a run, epoch rows that are replaced and never duplicated, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rethink.storage.layout import RunPaths
from rethink.storage.store import DamagedFileError, Store, StoreError


def test_open_creates_and_refuses(tmp_path):
    with pytest.raises(StoreError, match="is not a rethink store"):
        Store.open(tmp_path / "new")
    store = Store.open(tmp_path / "new", create=True)
    assert (tmp_path / "new" / "store.json").exists()
    assert Store.open(tmp_path / "new").root == store.root
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not empty and not a rethink store"):
        Store.open(tmp_path / "full", create=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(tmp_path / "afile", create=True)


def test_experiment_is_frozen(tmp_path):
    store = Store.open(tmp_path, create=True)
    store.save_experiment("fig1", "name: fig1\n", [{"experiment": "fig1", "run_id": "a"}])
    store.save_experiment("fig1", "name: fig1\n", [{"experiment": "fig1", "run_id": "a"}])  # same: no-op
    with pytest.raises(StoreError, match="different grid"):
        store.save_experiment("fig1", "name: fig1\nseed: 3\n", [])
    assert store.experiments() == ["fig1"]
    assert [r["run_id"] for r in store.experiment_rows("fig1")] == ["a"]
    with pytest.raises(StoreError, match="no experiment 'nope'.*fig1"):
        store.experiment_grid("nope")


def test_epoch_rows_are_replaced_not_duplicated(tmp_path):
    store = Store.open(tmp_path, create=True)
    rows = [{"run_id": "r", "epoch": e, "train_acc": e / 10} for e in (1, 2, 3)]
    store.write_epochs("r", rows)
    store.write_epochs("r", rows[:2] + [{"run_id": "r", "epoch": 2, "train_acc": 0.9}] + rows[2:])
    back = store.read_epochs("r")
    assert [r["epoch"] for r in back] == [1, 2, 3] and back[1]["train_acc"] == 0.9
    assert back[0]["act_sparsity"] is None  # probe columns exist, null until measured
    (tmp_path / RunPaths("r").epochs).write_bytes(b"PAR1 truncated")
    with pytest.raises(DamagedFileError):
        store.read_epochs("r")


def test_writes_leave_no_temporary_files(tmp_path):
    store = Store.open(tmp_path, create=True)
    for epoch in range(1, 6):
        store.write_checkpoint("r", epoch, b"x" * epoch)
        store.write_status("r", status="running", epochs_done=epoch)
    assert store.checkpoint_epochs("r") == [4, 5]  # only the newest two are kept
    assert store.read_checkpoint("r", 5) == b"xxxxx"
    assert store.read_status("r")["epochs_done"] == 5
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_one_claim_wins_and_a_dead_owner_is_taken_over(tmp_path):
    store = Store.open(tmp_path, create=True)
    assert store.claim("r", token="a") == 1
    assert store.claim("r", token="b") is None  # this live process holds it
    assert store.claim_holder("r")["token"] == "a"
    assert store.claim("r", token="a") == 2  # the same task, retried by Ray, takes it back
    assert not store.owns("r", 1) and store.owns("r", 2)
    store.release("r", 2)
    assert store.claim_holder("r") is None and store.claim("r", token="c") == 3
    # a claim held by a process that has died is stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = tmp_path / RunPaths("s").claim(1)
    claim.parent.mkdir(parents=True)
    claim.write_text('{"token": "x", "host": "%s", "pid": %s}' % (os.uname().nodename, dead.stdout.strip()))
    assert store.claim_holder("s") is None
    assert store.claim("s", token="y") == 2


def test_concurrent_claims_give_one_owner(tmp_path):
    Store.open(tmp_path, create=True)
    code = (
        "import sys; from rethink.storage.store import Store; "
        "s = Store.open(sys.argv[1]); print(s.claim('r', token=sys.argv[2]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"t{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(6)]
    answers = [p.communicate()[0].strip() for p in procs]
    # each process exits after claiming, so later ones may take over a dead owner's claim,
    # but no attempt number is ever given twice
    numbers = [a for a in answers if a != "None"]
    assert numbers and len(numbers) == len(set(numbers))


def test_the_same_grid_from_another_path_is_the_same_experiment(tmp_path):
    """The frozen grid's header names the file it came from; another path to the same grid (a
    second checkout, another working directory) is the same experiment, another grid is not."""
    from rethink.runner.grid import parse_grid

    text = "name: same\ndataset: synthetic\nmodel: mlp1x512\nseed: [0, 1]\n"
    store = Store.open(tmp_path, create=True)
    first = parse_grid(text, source="/one/grid.yaml")
    store.save_experiment("same", first.text, [])
    assert "/one/grid.yaml" in first.text.splitlines()[0]
    assert store.check_experiment("same", parse_grid(text, source="/two/grid.yaml").text)
    with pytest.raises(StoreError, match="different grid"):
        store.check_experiment("same", parse_grid(text.replace("[0, 1]", "[0, 2]"), source="/one/grid.yaml").text)
