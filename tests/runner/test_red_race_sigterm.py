"""SIGTERM (and SIGHUP) stop `rethink submit` the way Ctrl-C does (runner/signals.py): one line, exit 128+N,
never Ray's stack dump; the runs it trained are left pending (interrupted) and resumable, and no
process of its embedded Ray is left. Without the fix Ray's handlers print six lines of
`*** SIGTERM received ***` and exit 1 without saying the grid is resumable."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .conftest import SLOW_GRID, popen_rethink, sql
from .test_orphans import _alive, _descendants


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_of_a_training_submit_is_one_line_and_leaves_it_resumable(tmp_path: Path, signum: int) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(SLOW_GRID.format(name="termed", epochs=200).replace("seed: [0, 1]", "seed: 0"))
    store = tmp_path / "store"
    submit = popen_rethink("submit", str(grid), "--store", str(store), "--quiet")
    try:
        deadline = time.monotonic() + 120
        while not list(store.glob("epochs/run_id=*/epochs.parquet")):
            assert submit.poll() is None and time.monotonic() < deadline, submit.communicate()
            time.sleep(0.2)
        cluster = _descendants(submit.pid) - {submit.pid}
        os.kill(submit.pid, signum)
        _, err = submit.communicate(timeout=90)
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait()
    assert submit.returncode == 128 + signum, err
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert err.splitlines()[-1] == f"Error: terminated ({name}); the grid is resumable: `rethink resume termed`", err
    assert set(sql(store, "SELECT status, stop_reason FROM runs")) == {("pending", "interrupted")}
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in cluster)
