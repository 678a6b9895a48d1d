"""Red-team roots of the second pass (issue 19): every error line the CLI prints has its
credentials masked (cli._line over text.redacted), a --cluster address is refused in one line
without echoing a user, password or query, a `--set` key is checked whatever its value, a
--checkpoint where no file can be made fails before training, and the Python API refuses
arguments that do not fit its functions with RethinkError, never a bare TypeError."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rethink
from rethink.cli import app
from rethink.errors import UsageError

SECRET = "SeCrEt9"
RETHINK = [sys.executable, "-c", "from rethink.cli import main; main()"]


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args", [
    # a library's message that quotes a URI from the SQL (DuckDB's refusal names the file)
    ["query", f"select * from read_parquet('s3://KEY:{SECRET}@bucket/x.parquet')"],
    ["query", f"select * from 'http://u:{SECRET}@127.0.0.1:1/x.csv'"],
    # the dashboard address: a user:password, a token in the query, a fragment; a broken IPv6 host
    ["status", "--cluster", f"http://u:{SECRET}@127.0.0.1:1"],
    ["logs", "x", "--cluster", f"http://127.0.0.1:1/?token={SECRET}"],
    ["status", "--cluster", f"u:{SECRET}@127.0.0.1:1"],
    ["status", "--cluster", "http://[::1"],
])
def test_error_lines_never_print_a_credential(args: list[str], tmp_path: Path) -> None:
    from rethink.storage.store import Store

    Store.open(tmp_path, create=True)
    result = CliRunner().invoke(app, [*args, *(["--store", str(tmp_path)] if args[0] == "query" else [])])
    assert SECRET not in _one_error_line(result)


def test_text_redacted_masks_users_and_secret_values_in_any_case() -> None:
    from rethink.text import redacted

    shown = redacted(f"ray://u:{SECRET}@h:1 and s3://b/p?Secret_Key={SECRET}&region=x and HTTPS://K@host/")
    assert SECRET not in shown and "ray://***@h:1" in shown and "region=x" in shown and "HTTPS://***@host" in shown


def test_set_refuses_an_unknown_key_whatever_its_value(tmp_path: Path) -> None:
    """`None` or `[]` mean "not given" for a known key; for a misspelt one they hid the typo."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndataset: synthetic\nmodel: mlp1x512\ntrain: {epochs: 1}\n")
    for item in ("regularizer.augment=[]", "resources.memory=null", "bogus=null"):
        result = CliRunner().invoke(app, ["submit", str(grid), "--dry-run", "--set", item])
        assert result.exit_code == 2 and "unknown override" in _one_error_line(result)
    result = CliRunner().invoke(app, ["submit", str(grid), "--dry-run", "--set", "seed=[]"])
    assert result.exit_code == 0, result.output


def test_checkpoint_where_no_file_can_be_made_fails_before_training(tmp_path: Path) -> None:
    """As root, os.access says /proc is writable; the check makes a real temporary file. A real
    subprocess: the line must come from the CLI's one place, before a single epoch."""
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    started = time.monotonic()
    proc = subprocess.run([*RETHINK, "train", "--dataset", "synthetic", "--epochs", "1", "--train-size", "64",
                           "--test-size", "32", "--checkpoint", "/proc/rethink-test.ckpt"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and lines == [lines[-1]] and lines[-1].startswith("Error: cannot use --checkpoint"), proc.stderr
    assert "epoch" not in proc.stderr.lower() and time.monotonic() - started < 60


def test_python_api_refuses_arguments_that_do_not_fit_with_usage_error(tmp_path: Path) -> None:
    from rethink.storage.store import Store

    Store.open(tmp_path, create=True)
    store = rethink.open_store(tmp_path)
    calls = [lambda: rethink.open_store(), lambda: rethink.open_store(str(tmp_path), 5),
             lambda: rethink.open_store(f"{tmp_path}\x00"), lambda: store.sql(), lambda: store.sql("select 1", None, 5),
             lambda: store.runs(bogus=1), lambda: store.experiments(1), lambda: store.sql("select 1").rows(2)]
    for call in calls:
        with pytest.raises(UsageError) as excinfo:
            call()
        assert "\x00" not in str(excinfo.value)
    assert store.sql(query="select 1 as a").rows() == [{"a": 1}]


def test_an_error_quoting_store_text_shows_its_control_characters(tmp_path: Path) -> None:
    """DuckDB's conversion error quotes the value: a hostile model name from the run list reaches
    a notebook's traceback through str(RethinkError), which shows it visibly (errors.py)."""
    from rethink.runner.grid import parse_grid, run_row
    from rethink.storage.store import Store

    grid = parse_grid("name: g\ndataset: synthetic\nmodel: mlp1x512\ntrain: {epochs: 1}\n")
    store = Store.open(tmp_path, create=True)
    store.save_experiment(grid.name, grid.text, [run_row(grid.name, r) | {"model": "m\x1b]0;t\x07\x1b[2J\u202e"}
                                                 for r in grid.runs])
    with pytest.raises(rethink.RethinkError) as excinfo:
        rethink.open_store(tmp_path).sql("select model::int from runs")
    shown = str(excinfo.value)
    assert "m\\x1b]0;t\\x07\\x1b[2J\\u202e" in shown and not any(c in shown for c in "\x1b\x07\u202e")
    result = CliRunner().invoke(app, ["query", "select model::int from runs", "--store", str(tmp_path)])
    assert "\\x1b[2J" in _one_error_line(result)


def test_a_stray_experiment_folder_is_not_an_experiment(tmp_path: Path) -> None:
    """A folder rethink never writes (`name=` with ESC, upper case, invalid UTF-8) made every
    `rethink status` fail on the name rule; it is not listed at all (Store.experiments)."""
    from rethink.runner.grid import parse_grid, run_row
    from rethink.storage.store import Store

    grid = parse_grid("name: g\ndataset: synthetic\nmodel: mlp1x512\ntrain: {epochs: 1}\n")
    Store.open(tmp_path, create=True).save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    for stray in (b"name=x\x1b[2J[red]", b"name=Y\xff", b"name=" + b"a" * 200):
        os.makedirs(os.path.join(os.fsencode(tmp_path), b"experiments", stray))
    assert rethink.open_store(tmp_path).experiments() == ["g"]
    result = CliRunner().invoke(app, ["status", "--store", str(tmp_path)])
    assert result.exit_code == 0 and "\x1b" not in result.output, result.output


@pytest.mark.parametrize("args", [["train", "--data-dir", "~rethink-no-such-user/data"],
                                  ["status", "--store=~rethink-no-such-user/runs"],
                                  ["submit", "~rethink-no-such-user/g.yaml", "--dry-run"]])
def test_a_tilde_of_no_user_is_one_line(args: list[str]) -> None:
    """`~nosuch` is left as is by expanduser, and pathlib raised RuntimeError on it later."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "names no user" in _one_error_line(result)


def test_output_in_an_encoding_without_its_characters_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii (or a latin-1 terminal): the dry run's `–` and a store name's
    characters are written as escapes by the guarded stdout (streams.py), never a
    UnicodeEncodeError. A real subprocess: only the real stdout is guarded."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndataset: synthetic\nmodel: mlp1x512\ntrain: {epochs: 1}\n")
    for encoding in ("ascii", "latin-1"):
        proc = subprocess.run([*RETHINK, "submit", str(grid), "--dry-run"], capture_output=True, timeout=60,
                              env={**os.environ, "PYTHONIOENCODING": encoding})
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr and b"1 run" in proc.stdout, proc.stderr


def test_rethink_data_of_no_user_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETHINK_DATA", "~rethink-no-such-user/data")
    result = CliRunner().invoke(app, ["train", "--epochs", "1"])
    assert "RETHINK_DATA" in _one_error_line(result)


def test_report_names_its_folder_as_text(tmp_path: Path) -> None:
    """`wrote FOLDER/report.html`: the folder is the user's --out, echoed through cli._line."""
    from rethink.runner.grid import parse_grid, run_row
    from rethink.runner.worker import run_pack
    from rethink.storage.store import Store

    grid = parse_grid("name: g\ndataset: synthetic\ndata: {train_size: 32, test_size: 16, image_size: 8}\n"
                      "model: mlp1x512\ntrain: {epochs: 1, batch_size: 16, probe_every: 0}\n")
    store = tmp_path / "store"
    Store.open(store, create=True).save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    run_pack(str(store), grid.name, [r.to_dict() for r in grid.runs], "unused", token="t")
    out = tmp_path / "r\x1b]0;t\x07\x1b[2J"
    result = CliRunner().invoke(app, ["report", "g", "--store", str(store), "--out", str(out)])
    assert result.exit_code == 0 and (out / "report.html").is_file(), result.output
    assert "r\\x1b]0;t\\x07\\x1b[2J/report.html" in result.stdout and "\x1b" not in result.stdout
