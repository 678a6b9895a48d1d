"""A real multi-node Ray cluster on this machine, the store on a real S3 server (SeaweedFS).

One cluster serves the module: a head with no CPUs (the drivers attach to it; nothing trains there)
and two worker nodes with one CPU each, every node `ray start --block` in a session of its own with
a private temp dir (tests/runner/raynodes.py). Drivers are `rethink submit --address HEAD` processes.
The tests check what a user of a cluster relies on: every run done, one epoch row per (run, epoch)
— also when a node is lost mid-grid — and each run trained once when two drivers submit the same
grid at the same moment.

Which task trained what: every node runs with $RETHINK_TIMINGS set, so each task writes
`TOKEN.json` with the number of runs it claimed and trained (`runs`); a claim names its task's
token. A run trained twice under one claim object (two writers of the same attempt) thus shows as
a trainer whose token no claim carries."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from rethink.runner.grid import parse_grid
from rethink.storage.layout import attempt_of
from rethink.storage.store import Store, StoreError
from rethink.tasks.spec import RunSpec
from tests import s3server
from tests.runner import raynodes
from tests.runner.raynodes import Cluster

GRID = """\
name: {name}
dataset: synthetic
data: {{train_size: {train_size}, test_size: 32, image_size: {image_size}}}
model: mlp1x512
seed: {seeds}
train: {{epochs: {epochs}, batch_size: 32, lr: 0.01, checkpoint_every: 1}}
resources: {{cpus: 1, gpus: 0}}
"""
DRIVER_TIMEOUT_S = 240  # generous: two cores shared with other test runs
# Lost nodes are noticed in about a second instead of Ray's default ~30 s of failed health checks.
FAST_FAILURE = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclass
class Grid:
    path: Path
    runs: list[RunSpec]


@pytest.fixture(scope="module")
def nodes(s3_server) -> Iterator[Cluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rkm-", dir="/tmp"))
    env = {**s3server.CREDENTIALS, **FAST_FAILURE, "RETHINK_TIMINGS": str(temp_dir / "timings"),
           "RETHINK_CACHE": str(temp_dir / "cache"), "RETHINK_DATA": str(temp_dir / "data")}
    cluster = None
    try:
        try:
            cluster = raynodes.start_head(temp_dir, secrets.token_hex(16), num_cpus=0, **env)
            cluster.add_worker("a")
            cluster.add_worker("b")
            cluster.wait_for_nodes(3)
        except RuntimeError as exc:
            pytest.skip(f"no Ray cluster here: {' '.join(str(exc).split())[:500]}")
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def make_grid(folder: Path, name: str, seeds: int, epochs: int, train_size: int = 64, image_size: int = 8) -> Grid:
    text = GRID.format(name=name, seeds=list(range(seeds)), epochs=epochs, train_size=train_size,
                       image_size=image_size)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return Grid(path, parse_grid(text).runs)


def submit(cluster: Cluster, grid: Grid, store: str) -> subprocess.Popen:
    """`rethink submit GRID --address HEAD --store URI` as its own process, a driver joining the
    cluster with its token (and the S3 keys the test's environment holds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, RETHINK_DATA="unused")
    return subprocess.Popen([sys.executable, "-m", "rethink.cli", "submit", str(grid.path), "--address", cluster.gcs,
                             "--store", store, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def finish(driver: subprocess.Popen) -> str:
    """The driver's output once it exited 0 (killed, with its output, when it hangs)."""
    try:
        output, _ = driver.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        output, _ = driver.communicate()
        pytest.fail(f"the driver did not finish in {DRIVER_TIMEOUT_S} s: {output[-3000:]}")
    assert driver.returncode == 0, output[-3000:]
    return output


def assert_done_once_per_epoch(store_uri: str, grid: Grid) -> None:
    """Every run done, its epoch rows exactly 1..epochs: one row per (run, epoch), read back as a
    user would, through `rethink query` on the S3 store."""
    rows = query(store_uri, "select r.run_id, r.status, count(e.epoch) as n, count(distinct e.epoch) as d, "
                            "min(e.epoch) as lo, max(e.epoch) as hi "
                            "from runs r left join epochs e using (run_id) group by r.run_id, r.status")
    got = {row["run_id"]: (row["status"], row["n"], row["d"], row["lo"], row["hi"]) for row in rows}
    want = {run.run_id: ("done", run.train.epochs, run.train.epochs, 1, run.train.epochs) for run in grid.runs}
    assert got == want
    totals = query(store_uri, "select count(*) as n, count(distinct (run_id, epoch)) as d from epochs")
    assert totals == [{"n": sum(r.train.epochs for r in grid.runs), "d": sum(r.train.epochs for r in grid.runs)}]


def query(store_uri: str, sql: str) -> list[dict]:
    """`rethink query SQL --store URI --format json` in its own process."""
    result = subprocess.run([sys.executable, "-m", "rethink.cli", "query", sql, "--store", store_uri, "--format", "json"],
                            capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def trainers(cluster: Cluster, since: float) -> dict[str, int]:
    """Tokens of the tasks started since `since` that trained runs, with how many they trained."""
    out = {}
    for path in Path(cluster.env["RETHINK_TIMINGS"]).glob("*.json"):
        record = json.loads(path.read_text())
        if record["started_at"] >= since and record["runs"]:
            out[path.stem] = record["runs"]
    return out


def claims(s3_server, store_uri: str, run_id: str) -> dict[str, dict]:
    """The run's claim objects (`runs/run_id=ID/claims/attempt=NNNN.json`) listed through S3."""
    parts = urlsplit(store_uri)
    prefix = f"{parts.path.strip('/')}/runs/run_id={run_id}/claims/"
    client = s3_server.client()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=parts.netloc, Prefix=prefix).get("Contents", [])]
    # pyarrow may leave an empty `claims/` folder marker: only attempt=NNNN.json objects are claims
    return {key.rsplit("/", 1)[1]: json.loads(client.get_object(Bucket=parts.netloc, Key=key)["Body"].read())
            for key in keys if attempt_of(key.rsplit("/", 1)[1]) is not None}


# ---- the tests (in this order: the last one loses a node) --------------------------------------


def test_grid_on_two_worker_nodes_completes(nodes, s3_store, tmp_path):
    grid = make_grid(tmp_path, "multi", seeds=4, epochs=2)
    output = finish(submit(nodes, grid, s3_store))
    assert "multi: 4 done, 0 failed" in output
    assert_done_once_per_epoch(s3_store, grid)


def test_two_drivers_at_once_train_each_run_once(nodes, s3_server, s3_store, tmp_path):
    grid = make_grid(tmp_path, "twice", seeds=4, epochs=2)
    since = time.time()
    drivers = [submit(nodes, grid, s3_store), submit(nodes, grid, s3_store)]
    outputs = [finish(driver) for driver in drivers]
    assert_done_once_per_epoch(s3_store, grid)
    trained = trainers(nodes, since)
    claimed_by_trainers = set()
    for run in grid.runs:
        found = claims(s3_server, s3_store, run.run_id)
        mine = {name: claim for name, claim in found.items() if claim.get("token") in trained}
        assert len(mine) == 1, (run.run_id, found, trained)  # one attempt trained it ...
        ((_, claim),) = mine.items()
        assert claim.get("released"), (run.run_id, found)  # ... to its end: not taken over
        claimed_by_trainers.add(claim["token"])
    # A task that trained but whose claim no object shows wrote over another's: trained twice.
    assert set(trained) == claimed_by_trainers and sum(trained.values()) == len(grid.runs), (trained, outputs)


def test_losing_a_worker_node_mid_grid_still_finishes_every_run_once(nodes, s3_store, tmp_path):
    grid = make_grid(tmp_path, "lost", seeds=4, epochs=16, train_size=512, image_size=16)
    victim_node = nodes.workers["a"]
    driver = submit(nodes, grid, s3_store)
    try:
        victim = wait_for_a_run_mid_way_on(victim_node, s3_store, grid, driver)
        raylet = victim_node.raylet_pid()
        assert raylet is not None, victim_node.pids()
        victim_node.freeze()  # the machine hangs first: its run cannot finish there any more
        left = Store.open(s3_store).read_status(victim) or {}
        assert left.get("status") == "running", left  # so it must be trained again elsewhere
        os.kill(raylet, signal.SIGKILL)
        victim_node.stop()  # then it is lost, and everything on it
    except BaseException:
        os.killpg(driver.pid, signal.SIGKILL)
        raise
    output = finish(driver)
    assert "lost: 4 done, 0 failed" in output
    assert_done_once_per_epoch(s3_store, grid)
    status = Store.open(s3_store).read_status(victim) or {}
    assert status.get("attempts", 0) >= 2, status  # it was trained again elsewhere, from where it was


def wait_for_a_run_mid_way_on(node: raynodes.Node, store_uri: str, grid: Grid, driver: subprocess.Popen) -> str:
    """The id of a run that a worker of `node` is training and that has epoch rows but not all."""
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    store = None
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        try:
            store = store or Store.open(store_uri)
        except StoreError:  # the driver has not made it yet
            time.sleep(0.2)
            continue
        for run in grid.runs:
            status = store.read_status(run.run_id) or {}
            if status.get("status") != "running" or not status.get("pid"):
                continue
            try:
                on_node = os.getsid(int(status["pid"])) == node.proc.pid
            except OSError:
                continue
            if on_node and 1 <= (store.epoch_rows(run.run_id) or 0) < run.train.epochs - 1:
                return run.run_id
        time.sleep(0.2)
    pytest.fail(f"no run was seen training on node {node.name} in {DRIVER_TIMEOUT_S} s")
