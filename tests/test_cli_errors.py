"""Malformed grid files, flags, SQL and store paths: each gets one line on stderr that starts with
`Error:`, a non-zero exit, no traceback — and leaves the store byte-for-byte unchanged."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.runner.grid import parse_grid, run_row
from rethink.runner.worker import run_pack
from rethink.storage.store import Store

GOOD = """\
name: good
dataset: synthetic
data: {train_size: 40, test_size: 20, image_size: 8}
model: mlp1x512
corruption: [none, {kind: labels, level: 1.0}]
train: {epochs: 2, batch_size: 20}
resources: {cpus: 1, gpus: 0}
"""

BAD_GRIDS = {
    "unknown model": "name: x\nmodel: [nosuchnet]\n",
    "level 2": "name: x\ndataset: synthetic\nmodel: mlp1x512\ncorruption: [{kind: labels, level: 2}]\n",
    "yaml syntax": "name: [unclosed\n",
    "unknown key": "name: x\nmodels: mlp1x512\n",
    "empty axis": "name: x\nmodel: []\n",
    "duplicate model": "name: x\nmodel: [mlp1x512, mlp1x512]\n",
    "missing name": "model: mlp1x512\n",
    "bad name": "name: Fig 1\n",
    "seed not a number": "name: x\nseed: abc\n",
    "fractional epochs": "name: x\ntrain: {epochs: 1.5}\n",
    "unknown regularizer": "name: x\nregularizer: [{weightdecay: 0.1}]\n",
    "not a mapping": "- name: x\n",
    "negative gpus": "name: x\nresources: {gpus: -1}\n",
    "unknown corruption": "name: x\ncorruption: [blur]\n",
    "same name, other grid": GOOD.replace("epochs: 2", "epochs: 3"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real store with one finished two-run experiment, trained in-process (no Ray needed)."""
    root = tmp_path_factory.mktemp("store")
    grid = parse_grid(GOOD)
    s = Store.open(root, create=True)
    s.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    results = run_pack(str(root), grid.name, [r.to_dict() for r in grid.runs], "unused", token="t")
    assert [r.outcome if hasattr(r, "outcome") else r["outcome"] for r in results] == ["done", "done"]
    return root


def fingerprint(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def cases(store, tmp_path) -> dict[str, list[str]]:
    s = str(store)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    grids = {}
    for label, text in BAD_GRIDS.items():
        path = tmp_path / f"{label.replace(' ', '_').replace(',', '')}.yaml"
        path.write_text(text)
        grids[f"grid: {label}"] = ["submit", str(path), "--store", s]
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    return grids | {
        "grid file missing": ["submit", str(tmp_path / "nope.yaml"), "--store", s],
        "--set without =": ["submit", str(good), "--store", s, "--set", "train.epochs"],
        "--set unknown key": ["submit", str(good), "--store", s, "--set", "train.epoch=3"],
        "--set bad level": ["submit", str(good), "--store", s, "--set", "corruption=[labels:7]"],
        "--pack-size -1": ["submit", str(good), "--store", s, "--pack-size", "-1"],
        "store is a file": ["submit", str(good), "--store", str(tmp_path / "afile")],
        "store is someone's folder": ["submit", str(good), "--store", str(tmp_path / "full")],
        "query: not a store": ["query", "select 1", "--store", str(tmp_path / "full")],
        "query: COPY TO": ["query", f"COPY runs TO '{tmp_path}/leak.csv'", "--store", s],
        "query: COPY into store": ["query", f"COPY runs TO '{s}/leak.csv'", "--store", s],
        "query: DROP": ["query", "DROP VIEW runs", "--store", s],
        "query: CREATE": ["query", "CREATE TABLE t AS SELECT 1", "--store", s],
        "query: two statements": ["query", "select 1; delete from runs", "--store", s],
        "query: syntax": ["query", "selec nothing", "--store", s],
        "query: unknown column": ["query", "select nosuch from runs", "--store", s],
        "query: outside file": ["query", "select * from read_csv('/etc/passwd')", "--store", s],
        "query: format": ["query", "select 1", "--store", s, "--format", "xml"],
        "query: out in store": ["query", "select 1", "--store", s, "--format", "csv", "--out", f"{s}/x.csv"],
        "resume unknown": ["resume", "nosuch", "--store", s],
        "cancel unknown": ["cancel", "nosuch", "--store", s],
        "status unknown": ["status", "nosuch", "--store", s],
        "train bad corruption": ["train", "--corruption", "labels:2"],
    }


def test_every_bad_input_is_one_line_and_leaves_the_store_alone(store, tmp_path):
    before = fingerprint(store)
    runner = CliRunner()
    all_cases = cases(store, tmp_path)
    assert len(all_cases) >= 20
    for label, args in all_cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code != 0, f"{label}: exit 0\n{result.output}"
        assert result.stderr.startswith("Error: "), f"{label}: {result.stderr!r}"
        assert result.stderr.count("\n") == 1, f"{label}: more than one line: {result.stderr!r}"
        assert "Traceback" not in result.output, label
        assert fingerprint(store) == before, f"{label} changed the store"
    assert not (tmp_path / "leak.csv").exists() and not (store / "leak.csv").exists()
    assert not (tmp_path / "full" / "store.json").exists()


def test_query_and_status_succeed_on_the_same_store(store):
    runner = CliRunner()
    result = runner.invoke(app, ["query", "select count(*) as n from epochs", "--store", str(store), "--format", "csv"])
    assert result.exit_code == 0 and result.stdout.strip().splitlines()[-1] == "4"
    result = runner.invoke(app, ["status", "good", "--store", str(store)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "good" in result.stdout and "4/4" in result.stdout
