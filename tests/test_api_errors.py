"""The Python API's refusals are `rethink.RethinkError`, as the README says: an argument of the
wrong kind is one sentence naming the call and what it takes, never a bare TypeError or DuckDB's
own error; `import rethink` gives the name without loading torch, Ray or DuckDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rethink
from rethink.errors import UsageError
from rethink.storage.errors import QueryError
from rethink.storage.results import StoreReader
from rethink.storage.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StoreReader:
    """A store of one experiment with one finished run of two epochs, written through Store."""
    root = tmp_path_factory.mktemp("store")
    s = Store.open(root, create=True)
    s.save_experiment("fig1", "name: fig1\n", [{"experiment": "fig1", "run_id": "r0", "dataset": "cifar10",
                                               "model": "mlp1x512", "corruption": "none", "level": 0.0,
                                               "regularizer": "none", "seed": 0, "epochs": 2}])
    s.write_epochs("r0", [{"run_id": "r0", "epoch": e, "train_acc": 0.5 * e, "test_acc": 0.3} for e in (1, 2)])
    s.write_status("r0", status="done", attempts=1, epochs_done=2)
    return rethink.open_store(root)


def test_rethink_error_is_at_the_top_level_and_import_stays_light() -> None:
    probe = ("import sys; from rethink import RethinkError; from rethink.errors import RethinkError as E; "
             "assert RethinkError is E; heavy = {'torch', 'ray', 'duckdb', 'pyarrow'} & set(sys.modules); "
             "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "RethinkError" in rethink.__all__


CALLS = {
    "open_store(123)": (lambda s, root: rethink.open_store(123), "open_store() takes", "int 123"),
    "open_store(None)": (lambda s, root: rethink.open_store(None), "open_store() takes", "got None"),
    "open_store(bytes)": (lambda s, root: rethink.open_store(bytes(root)), "open_store() takes", "bytes"),
    "open_store('')": (lambda s, root: rethink.open_store(""), "open_store() needs", "empty string"),
    "sql(5)": (lambda s, root: s.sql(5), "sql() takes the SQL as a str", "int 5"),
    "sql(params=7)": (lambda s, root: s.sql("select 1", params=7), "sql() takes params", "int 7"),
    "sql(params='ab')": (lambda s, root: s.sql("select ?", params="ab"), "sql() takes params", "str 'ab'"),
    "sql(params={1})": (lambda s, root: s.sql("select ?", params={1}), "sql() takes params", "set {1}"),
    "sql(params={1: 1})": (lambda s, root: s.sql("select $a", params={1: 1}), "dict with str keys", "{1: 1}"),
    "runs(experiment=3)": (lambda s, root: s.runs(experiment=3), "an experiment is named by a str", "int 3"),
    "epochs(['fig1'])": (lambda s, root: s.epochs(["fig1"]), "an experiment is named by a str", "list"),
}


@pytest.mark.parametrize("label", CALLS)
def test_an_argument_of_the_wrong_kind_is_a_usage_error(store, label: str) -> None:
    call, says, names = CALLS[label]
    with pytest.raises(rethink.RethinkError) as caught:
        call(store, Path(store.root))
    assert type(caught.value) is UsageError and says in str(caught.value) and names in str(caught.value)


def test_what_duckdb_or_the_store_refuses_is_a_rethink_error_too(store) -> None:
    """Right kinds, wrong values: an unknown experiment names the known ones; a placeholder
    without its value and a value DuckDB cannot hold are QueryErrors, not duckdb's exceptions."""
    with pytest.raises(QueryError, match=r"no experiment 'fig2' .* \(experiments: fig1\)"):
        store.runs("fig2")
    with pytest.raises(QueryError, match="count mismatch"):
        store.sql("select ? as a", [1, 2])
    with pytest.raises(QueryError):
        store.sql("select ? as a", [object()])
    assert store.sql("select ?::int as a, ?::int as b", (1, 2)).rows() == [{"a": 1, "b": 2}]
    assert store.sql("select $a::int as a", {"a": 1}).rows() == [{"a": 1}]
    assert store.runs("fig1").rows()[0]["run_id"] == "r0"
