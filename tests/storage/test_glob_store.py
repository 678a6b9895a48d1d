"""A store folder is a path, never a pattern: `[`, `]`, `*` and `?` in its name are plain
characters for `rethink query` and `rethink status`, and a sibling folder the pattern would
match is never read."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.storage.query import run_query

from .conftest import CURVES, build_store, epoch_rows, fingerprint


@pytest.mark.parametrize("name", ["s[1]*", "s?", "s]x[", "s[!a]"])
def test_a_store_named_like_a_glob_is_read_literally(tmp_path: Path, name: str) -> None:
    store = build_store(tmp_path / name)
    # What the name would match as a pattern: a store with one run only.
    decoy = build_store(tmp_path / "s1-decoy", runs=[{"experiment": "decoy", "run_id": "d1"}],
                        epochs={"d1": epoch_rows("d1", *CURVES["r1"])}, statuses={})
    build_store(tmp_path / "sx", runs=[{"experiment": "decoy", "run_id": "d2"}], epochs={}, statuses={})
    before = fingerprint(store), fingerprint(decoy)
    text = run_query(str(store), "SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM epochs", fmt="csv")
    assert text.splitlines() == ["n,runs", "9,3"]
    assert run_query(str(store), "SELECT DISTINCT experiment FROM runs ORDER BY 1", fmt="csv") == "experiment\nfig1\nfig2"
    result = CliRunner().invoke(app, ["status", "--store", str(store)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "fig1" in result.stdout and "decoy" not in result.stdout
    assert (fingerprint(store), fingerprint(decoy)) == before


def test_an_empty_store_named_like_a_glob_reads_as_empty(tmp_path: Path) -> None:
    store = build_store(tmp_path / "e[*]", runs=[], epochs={}, statuses={})
    assert run_query(str(store), "SELECT count(*) AS n FROM runs", fmt="csv") == "n\n0"
