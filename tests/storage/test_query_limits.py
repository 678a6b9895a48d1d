"""A query can be stopped (Ctrl-C, --timeout) at once, streams results of any size to --out,
and writes only regular files where it may: each refusal is one `Error:` line."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.storage.errors import QueryError
from rethink.storage.query import run_query

from .conftest import fingerprint

SLOW = "SELECT sum(hash(i)) FROM range(10000000000) t(i)"  # minutes of work on any machine


def one_line_error(args: list[str], store: Path) -> str:
    before = fingerprint(store)
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, repr(result.stderr)
    assert fingerprint(store) == before
    return result.stderr


@pytest.mark.parametrize("with_out", [False, True])
def test_ctrl_c_stops_a_running_query_at_once(store: Path, tmp_path: Path, with_out: bool) -> None:
    args = [sys.executable, "-m", "rethink.cli", "query", SLOW, "--store", str(store)]
    out = tmp_path / "out"
    out.mkdir()
    if with_out:
        args += ["--format", "csv", "--out", str(out / "x.csv")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130 and stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert list(out.iterdir()) == []  # no result, no temporary


def test_timeout_bounds_a_query(store: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError, match="query took longer than 0.5 s"):
        run_query(str(store), SLOW, timeout=0.5)
    assert time.monotonic() - started < 5
    assert run_query(str(store), "SELECT 42 AS n", fmt="csv", timeout=30) == "n\n42"  # fast ones pass


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout_is_one_line(store: Path, timeout: str) -> None:
    one_line_error(["query", "select 1", "--store", str(store), "--timeout", timeout], store)


def test_csv_out_streams_instead_of_holding_every_row(store: Path, tmp_path: Path) -> None:
    """250,000 rows held at once as Python values and text would take about 50 MB."""
    out = tmp_path / "big.csv"
    tracemalloc.start()
    try:
        run_query(str(store), "SELECT i, i * 2 AS j FROM range(250000) t(i)", fmt="csv", out=str(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 25e6, peak
    with out.open() as f:
        rows = sum(1 for _ in csv.reader(f))
    assert rows == 1 + 250_000


def test_json_out_is_one_streamed_array(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    run_query(str(store), "SELECT i FROM range(200000) t(i)", fmt="json", out=str(out))
    rows = json.loads(out.read_text())
    assert len(rows) == 200000 and rows[-1] == {"i": 199999}
    assert run_query(str(store), "SELECT 1 AS i WHERE false", fmt="json") == "[]"


def test_out_to_a_device_is_refused_and_the_device_stays(store: Path) -> None:
    """As root, the atomic rename once replaced /dev/null with a regular file."""
    line = one_line_error(["query", "select 1", "--store", str(store), "--format", "csv", "--out", "/dev/null"], store)
    assert "not a regular file" in line and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def bad_outs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    return {
        "a FIFO": str(tmp_path / "fifo"),
        "a folder": str(tmp_path),
        "under a regular file": str(tmp_path / "afile" / "x.csv"),
        "under /dev/null": "/dev/null/x.csv",
        "in /proc": "/proc/x.csv",
        "in /sys": "/sys/x.csv",
        "a name too long": str(tmp_path / ("a" * 300 + ".csv")),
        "a terminal device": "/dev/tty",
    }


def test_out_paths_that_cannot_be_written_are_one_line_each(store: Path, tmp_path: Path) -> None:
    for label, out in bad_outs(tmp_path).items():
        line = one_line_error(["query", "select 1", "--store", str(store), "--format", "csv", "--out", out], store)
        assert out in line or label == "a folder", f"{label}: {line}"
    assert (tmp_path / "afile").read_text() == "x" and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_results_to_stdout_stream_too(store: Path, fmt: str) -> None:
    """Without --out, CSV and JSON go out batch by batch: the same text as when held whole."""
    sql = "SELECT i, i * 2 AS j FROM range(250000) t(i)"
    chunks: list[str] = []
    tracemalloc.start()
    try:
        assert run_query(str(store), sql, fmt=fmt, echo=lambda _: chunks.append(len(_)) or None) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chunks) > 3 and peak < 25e6, (len(chunks), peak)
    whole: list[str] = []
    run_query(str(store), sql, fmt=fmt, echo=whole.append)
    assert "".join(whole) == run_query(str(store), sql, fmt=fmt) + "\n"
    small: list[str] = []
    run_query(str(store), "SELECT 1 AS i WHERE false", fmt=fmt, echo=small.append)
    assert "".join(small) == run_query(str(store), "SELECT 1 AS i WHERE false", fmt=fmt) + "\n"


def test_a_query_piped_into_head_ends_quietly(store: Path) -> None:
    command = (f"{sys.executable} -m rethink.cli query 'SELECT i FROM range(3000000) t(i)' --format csv "
               f"--store {store} | head -3")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["i", "0", "1"]
    assert result.returncode == 0 and "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
