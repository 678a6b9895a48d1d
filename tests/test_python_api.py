"""`rethink.open_store`: the store read from Python, through the views and the read-only guard of
`rethink query`, as pandas, polars and Arrow. The stores here are written through
rethink.storage.store.Store, as a grid's workers write them; the README's notebook example and
its plain-reader lines are run exactly as written, in a folder holding `rethink-store`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rethink
from rethink.cli import app
from rethink.errors import RethinkError
from rethink.storage import schema
from rethink.storage.store import Store

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# experiment: [(run_id, corruption, level, status, train_acc per epoch, test_acc per epoch)]
EXPERIMENTS = {
    "quickstart": [
        ("none0", "none", 0.0, "done", [0.5, 0.995, 1.0], [0.30, 0.36, 0.38]),  # fits at epoch 2
        ("half0", "labels", 0.5, "done", [0.3, 0.7, 0.999], [0.20, 0.24, 0.25]),  # fits at 3
        ("rand0", "labels", 1.0, "done", [0.1, 0.4, 0.998], [0.10, 0.09, 0.10]),  # fits at 3
    ],
    "sparsity": [
        ("noise0", "label_noise", 0.1, "running", [0.2, 0.3], [0.15, 0.2]),
    ],
}


def build_store(root: Path, names: tuple[str, ...] = ("quickstart", "sparsity")) -> Path:
    """A store written the way a grid writes one: experiment, epoch rows, then status."""
    store = Store.open(root, create=True)
    for name in names:
        runs = EXPERIMENTS[name]
        config = [{"experiment": name, "run_id": rid, "dataset": "cifar10", "model": "mlp1x512",
                   "corruption": corruption, "level": level, "regularizer": "none", "seed": 0,
                   "epochs": len(train), "fit_threshold": 0.99} for rid, corruption, level, _, train, _ in runs]
        store.save_experiment(name, f"name: {name}\n", config)
        for rid, _, _, status, train, test in runs:
            store.write_epochs(rid, [{"run_id": rid, "epoch": e, "step": 10 * e, "lr": 0.01, "train_loss": 1 - tr,
                                      "train_acc": tr, "test_loss": 1 - te, "test_acc": te, "gap": tr - te}
                                     for e, (tr, te) in enumerate(zip(train, test), start=1)])
            store.write_status(rid, status=status, attempts=1, epochs_done=len(train))
    return root


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return build_store(tmp_path / "rethink-store")


def python(code: str, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet); it prints one JSON object."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_rethink_loads_no_torch_ray_or_duckdb_until_used(store_dir: Path):
    seen = python(f"""
        import json, sys
        import rethink
        before = sorted(m for m in ("torch", "ray", "duckdb") if m in sys.modules)
        store = rethink.open_store({str(store_dir)!r})
        n = len(store.sql("select * from runs"))
        after = sorted(m for m in ("torch", "ray") if m in sys.modules)
        print(json.dumps({{"before": before, "after": after, "runs": n, "duckdb": "duckdb" in sys.modules}}))
    """, store_dir.parent)
    assert seen == {"before": [], "after": [], "runs": 4, "duckdb": True}
    assert "open_store" in dir(rethink)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rethink.nope  # noqa: B018


def test_sql_gives_pandas_polars_and_arrow_with_the_same_rows(store_dir: Path):
    store = rethink.open_store(store_dir)
    result = store.sql("select run_id, corruption, level, epochs_to_fit, final_test_acc from runs "
                       "where experiment = ? order by level", ["quickstart"])
    expected = {"run_id": ["none0", "half0", "rand0"], "corruption": ["none", "labels", "labels"],
                "level": [0.0, 0.5, 1.0], "epochs_to_fit": [2, 3, 3], "final_test_acc": [0.38, 0.25, 0.10]}
    assert result.columns == list(expected) and len(result) == 3
    assert result.arrow().to_pydict() == expected
    frame = result.df()
    assert type(frame).__module__.startswith("pandas")
    assert {k: frame[k].tolist() for k in expected} == expected
    polars_frame = result.pl()
    assert type(polars_frame).__module__.startswith("polars")
    assert polars_frame.to_dict(as_series=False) == expected
    assert result.rows()[0] == {k: v[0] for k, v in expected.items()}
    assert "none0" in repr(result) and "epochs_to_fit" in repr(result)


def test_summary_views_and_named_parameters(store_dir: Path):
    store = rethink.open_store(f"file://{store_dir}")
    fit = store.sql("select level, fitted, epochs_to_fit, epochs_ratio from fit_time "
                    "where experiment = $name order by level", {"name": "quickstart"}).rows()
    assert [(r["level"], r["fitted"], r["epochs_to_fit"], r["epochs_ratio"]) for r in fit] == [
        (0.0, 1, 2.0, 1.0), (0.5, 1, 3.0, 1.5), (1.0, 1, 3.0, 1.5)]
    # the running run of `sparsity` is no finished setting: the summaries leave it out
    assert store.sql("select count(*) as n from gaps where experiment = 'sparsity'").rows() == [{"n": 0}]
    curve = store.sql("select epoch, train_acc from memorization where level = 1.0 order by epoch").pl()
    assert curve["train_acc"].to_list() == [0.1, 0.4, 0.998]


def test_runs_epochs_and_experiments(store_dir: Path):
    store = rethink.open_store(str(store_dir))
    assert store.experiments() == ["quickstart", "sparsity"]
    assert [r["run_id"] for r in store.runs().rows()] == ["half0", "none0", "rand0", "noise0"]
    runs = store.runs("sparsity").df()
    assert runs[["run_id", "status", "epochs_done"]].values.tolist() == [["noise0", "running", 2]]
    assert set(schema.EXPERIMENT_RUNS.names) - {"config"} <= set(runs.columns)
    epochs = store.epochs("quickstart").pl()
    assert epochs.columns == schema.EPOCHS.names
    assert epochs.select("run_id", "epoch").rows() == [(r, e) for r in ("half0", "none0", "rand0") for e in (1, 2, 3)]
    assert len(store.epochs()) == 11
    with pytest.raises(RethinkError, match=r"no experiment 'quickstrat' .*\(experiments: quickstart, sparsity\)"):
        store.runs("quickstrat")


def test_writing_sql_is_refused_with_the_cli_line_and_changes_nothing(store_dir: Path, tmp_path: Path):
    store = rethink.open_store(store_dir)
    before = fingerprint(store_dir)
    runner = CliRunner()
    for sql in ("insert into runs values ('x')",
                "select 1; drop view runs",
                f"copy (select * from runs) to '{store_dir}/stolen.csv'",
                "with x as (delete from epochs returning *) select * from x"):
        with pytest.raises(RethinkError) as refused:
            store.sql(sql)
        cli = runner.invoke(app, ["query", sql, "--store", str(store_dir)])
        assert cli.exit_code == 1 and cli.stderr == f"Error: {refused.value}\n", sql
        assert "only reading queries are allowed" in str(refused.value)
    with pytest.raises(RethinkError, match="read only the store's own files") as outside:
        store.sql(f"select * from read_csv('{tmp_path}/elsewhere.csv')")
    assert "\n" not in str(outside.value)
    with pytest.raises(RethinkError, match="Table with name nosuch does not exist"):
        store.sql("select * from nosuch")
    assert fingerprint(store_dir) == before


def test_a_place_that_is_not_a_readable_store_is_one_rethink_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = {
        str(tmp_path / "missing"): "is not a rethink store",
        str(tmp_path / "empty"): "is not a rethink store",
        str(tmp_path / "file.txt"): "is a file, not a store folder",
        "s3://": "names no bucket",  # a remote store reads (tests/storage/test_s3_reads.py); a bad URI is one line
        "gs:///rethink-store": "names no bucket",
    }
    for place, message in cases.items():
        with pytest.raises(RethinkError) as error:
            rethink.open_store(place)
        assert message in str(error.value) and "\n" not in str(error.value), place
    assert not (tmp_path / "missing").exists() and list((tmp_path / "empty").iterdir()) == []


def test_frames_need_their_library_and_say_so(store_dir: Path):
    seen = python(f"""
        import json, sys
        sys.modules["pandas"] = sys.modules["polars"] = None  # as if neither were installed
        import rethink
        result = rethink.open_store({str(store_dir)!r}).runs("quickstart")
        errors = []
        for method in (result.df, result.pl):
            try:
                method()
            except rethink.errors.RethinkError as exc:
                errors.append(str(exc))
        print(json.dumps({{"errors": errors, "rows": result.arrow().num_rows}}))
    """, store_dir.parent)
    assert seen["rows"] == 3
    assert seen["errors"] == [
        "Result.df() needs pandas, which is not installed: `pip install pandas`, or use .arrow() or .rows()",
        "Result.pl() needs polars, which is not installed: `pip install polars`, or use .arrow() or .rows()"]


# -- the README, as written ------------------------------------------------------------------------


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section whose heading starts with `section`."""
    body = README.split(f"\n{section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_readme_notebook_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (example,) = python_blocks("## From Python")
    build_store(tmp_path / "rethink-store", names=("quickstart",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    seen: dict = {}
    exec(compile(example, "README.md (From Python)", "exec"), seen)  # noqa: S102: the README is ours

    assert seen["names"] == ["quickstart"]
    assert seen["runs"]["run_id"].tolist() == ["half0", "none0", "rand0"]
    fit = seen["fit"]
    assert fit[["corruption", "level", "epochs_to_fit", "epochs_ratio"]].values.tolist() == [
        ["none", 0.0, 2.0, 1.0], ["labels", 0.5, 3.0, 1.5], ["labels", 1.0, 3.0, 1.5]]
    gaps = seen["gaps"].to_dict(as_series=False)
    assert gaps["level"] == [0.0, 0.5, 1.0] and gaps["test_acc"] == [0.38, 0.25, 0.10]
    assert gaps["gap"] == pytest.approx([1.0 - 0.38, 0.999 - 0.25, 0.998 - 0.10])
    curves = seen["curves"]
    assert curves.index.tolist() == [1, 2, 3] and curves.columns.tolist() == [0.0, 0.5, 1.0]
    assert curves[1.0].tolist() == [0.1, 0.4, 0.998]
    assert len(seen["ax"].get_lines()) == 3
    import matplotlib.pyplot as plt

    plt.close("all")


def test_readme_plain_reader_lines_work_without_rethink(tmp_path: Path):
    block = next(b for b in python_blocks("## The store") if "read_parquet(" in b)
    imports, *readers = [line for line in block.splitlines() if line.strip()]
    assert imports.startswith("import ") and len(readers) == 3
    build_store(tmp_path / "rethink-store")
    seen = python(f"""
        import json, sys
        sys.modules["rethink"] = None  # a reader with no rethink installed
        {imports}
        results = []
        for line in {readers!r}:
            value = eval(line)
            if hasattr(value, "fetchall"):  # a DuckDB relation
                value = value.pl()
            if not hasattr(value, "to_pandas"):  # pandas already
                value = polars.from_pandas(value)
            results.append({{"columns": value.columns,
                             "rows": sorted(value.select("run_id", "epoch").rows())}})
        print(json.dumps(results))
    """, tmp_path)
    rows = sorted((rid, e) for runs in EXPERIMENTS.values() for rid, *_, train, _ in runs
                  for e in range(1, len(train) + 1))
    for line, result in zip(readers, seen):
        assert result == {"columns": schema.EPOCHS.names, "rows": [list(r) for r in rows]}, line
