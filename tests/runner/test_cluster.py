"""`--cluster`: a grid submitted as a Ray Job to a real head on this machine, which requires a
token as a secured cluster does; its status and logs read back; each failure one line.

The head is `/venv/bin/ray start --head --block` with the venv's bin off its PATH, in a session of
its own, with a private temp dir, its own free ports and a token made here (nothing is written to
~/.ray); tests/runner/raynodes.py starts it. It is stopped with SIGKILL to its process group and to
the leftover processes of its session: never `ray stop`, which would end every Ray on the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.errors import RethinkError
from rethink.runner import cluster
from rethink.runner.grid import parse_grid
from rethink.storage.views import connect
from tests.runner import raynodes
from tests.runner.raynodes import Cluster, free_ports

GRID = """\
name: {name}
dataset: synthetic
data: {{train_size: 64, test_size: 32, image_size: 8}}
model: mlp1x512
seed: [0, 1]
train: {{epochs: 2, batch_size: 32, lr: 0.01}}
resources: {{cpus: 1, gpus: 0}}
"""
JOB_TIMEOUT_S = 120
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def head() -> Iterator[Cluster]:
    """A head whose PATH lacks the venv's bin (started by the absolute path of the venv's `ray`),
    as on a head nobody activated an environment for: the job must find rethink anyway."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
    nodes = None
    try:
        nodes = raynodes.start_head(temp_dir, secrets.token_hex(16), num_cpus=2, RETHINK_DATA=str(temp_dir / "data"))
        yield nodes
    finally:
        if nodes is not None:
            nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def with_token(head: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    return head


@pytest.fixture
def without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token anywhere the client looks (this machine may have a ~/.ray/auth_token)."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def wait_for_job(head: Cluster, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.url, headers={"Authorization": f"Bearer {head.token}"})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(submission_id).value) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {submission_id} still {status}: {client.get_job_logs(submission_id)}"
        time.sleep(0.5)
    assert status == "SUCCEEDED", client.get_job_logs(submission_id)
    return status


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.fixture(scope="module")
def finished(head: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """One grid submitted as a job and run to its end: (message, store, submission id)."""
    store = tmp_path_factory.mktemp("cluster") / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_TOKEN", head.token)
        message = cluster.submit_job(head.url, parse_grid(GRID.format(name="remote")), str(store), None, 1)
    submission_id = message.split(" as job ")[1].split(".")[0]
    wait_for_job(head, submission_id)
    return message, store, submission_id


def test_submitted_grid_runs_on_the_cluster(finished):
    message, store, submission_id = finished
    assert submission_id.startswith("rethink-remote-")
    assert "rethink status --cluster http://127.0.0.1:" in message and "rethink logs remote --cluster" in message
    assert connect(str(store)).execute("select count(*), count(distinct run_id) from epochs").fetchall() == [(4, 2)]
    assert connect(str(store)).execute("select count(*) from runs where status = 'done'").fetchall() == [(2,)]


def test_a_head_without_rethink_on_its_path_runs_the_job(head, finished):
    """The head's PATH has no rethink (nor the venv's python): the job still ran, through the
    Python that runs Ray there."""
    assert shutil.which("rethink", path=head.env["PATH"]) is None
    assert str(raynodes.BIN) not in head.env["PATH"].split(os.pathsep)
    assert wait_for_job(head, finished[2]) == "SUCCEEDED"


def run_job_script(tmp_path: Path, worker_command: str | None, *args: str) -> subprocess.CompletedProcess:
    """The job's entrypoint script under a parent shell whose command line carries
    `--python_worker_command=...` as the raylet's does (or not at all), with no rethink on PATH."""
    script = tmp_path / cluster.JOB_SCRIPT_NAME
    script.write_text(cluster.JOB_SCRIPT)
    parent = ["sh", "-c", 'sh "$0" "$@"; status=$?; exit $status', str(script), *args]
    if worker_command is not None:  # after the script's own arguments, where the script ignores it
        parent = ["sh", "-c", 'shift; sh "$0" "$@"; status=$?; exit $status', str(script),
                  f"--python_worker_command={worker_command} /ray/default_worker.py --x=1", *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(parent, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def test_job_script_runs_rethink_with_the_raylets_python(tmp_path):
    result = run_job_script(tmp_path, sys.executable, "--help")
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout and "Usage" in result.stdout


def test_job_script_refuses_a_python_without_rethink_in_one_line(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = run_job_script(tmp_path, str(fake), "--help")
    assert result.returncode == 127 and result.stdout == ""
    assert result.stderr.startswith(f"Error: rethink is not installed in {fake}, the Python that runs Ray on this head")
    assert result.stderr.count("\n") == 1


def test_job_script_without_a_python_or_rethink_says_how_to_fix_the_head(tmp_path):
    result = run_job_script(tmp_path, None, "--help")
    assert result.returncode == 127
    assert result.stderr.startswith("Error: cannot find the Python that runs Ray on this head")
    assert "ray start --head" in result.stderr and result.stderr.count("\n") == 1


def test_job_table_lists_it_as_succeeded(finished, with_token):
    _, _, submission_id = finished
    table = cluster.job_table(with_token.url, "remote")
    columns = {c.header: [str(cell) for cell in c.cells] for c in table.columns}  # cells are Rich Text
    assert columns["submission id"] == [submission_id]
    assert columns["experiment"] == ["remote"] and columns["status"] == ["SUCCEEDED"]
    assert columns["started"][0] and columns["ended"][0]
    assert cluster.job_table(with_token.url, "nosuch").row_count == 0


def test_job_logs_are_the_drivers_output(finished, with_token):
    text = cluster.job_logs(with_token.url, "remote")
    assert "remote: 2 done, 0 failed" in text


def test_logs_of_an_experiment_without_jobs_names_those_with_jobs(finished, with_token):
    with pytest.raises(RethinkError) as excinfo:
        cluster.job_logs(with_token.url, "nosuch")
    assert one_line_error(excinfo).endswith("experiments with jobs there: remote")


def test_without_a_token_the_error_says_how_to_give_one(head, without_token):
    with pytest.raises(RethinkError) as excinfo:
        cluster.submit_job(head.url, parse_grid(GRID.format(name="notoken")), "/tmp/store", None, 1)
    message = one_line_error(excinfo)
    assert message.startswith(f"the cluster at {head.url} requires a token") and "RAY_AUTH_TOKEN" in message


def test_a_wrong_token_is_refused(head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 32)
    with pytest.raises(RethinkError) as excinfo:
        cluster.job_table(head.url, None)
    assert "refused the token from $RAY_AUTH_TOKEN" in one_line_error(excinfo)


def test_unreachable_address_is_one_line():
    (port,) = free_ports(1)
    with pytest.raises(RethinkError) as excinfo:
        cluster.job_table(f"http://127.0.0.1:{port}", None)
    assert one_line_error(excinfo).startswith(f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}: ")


@pytest.mark.parametrize("address", ["ray://head:10001", "ftp://head", "http://", "head:port", "http://head:8265/x"])
def test_bad_address_format_is_refused_before_any_request(address):
    with pytest.raises(RethinkError) as excinfo:
        cluster.normalize_address(address)
    assert one_line_error(excinfo).startswith("--cluster takes the address of the Ray dashboard")


@pytest.mark.parametrize("address, url", [("head", "http://head:8265"), ("10.0.0.5:9000", "http://10.0.0.5:9000"),
                                          ("https://ray.example.org/", "https://ray.example.org:8265")])
def test_address_forms(address, url):
    assert cluster.normalize_address(address) == url


def test_a_relative_store_is_refused_before_any_request():
    with pytest.raises(RethinkError) as excinfo:
        cluster.submit_job("http://127.0.0.1:1", parse_grid(GRID.format(name="rel")), "./rethink-store", None, 1)
    assert "every node of the cluster can write" in one_line_error(excinfo)


def test_token_sources_in_rays_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert cluster.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert cluster.find_token() == ("home", "~/.ray/auth_token")
    (tmp_path / "tok").write_text("file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert cluster.find_token() == ("file", "$RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert cluster.find_token() == ("env", "$RAY_AUTH_TOKEN")


# ---- the commands ----------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_status_cluster_lists_the_jobs(finished, with_token):
    result = invoke("status", "--cluster", with_token.url)
    assert result.exit_code == 0, result.output
    assert finished[2] in result.stdout and "SUCCEEDED" in result.stdout


def test_cli_logs_cluster_prints_the_log(finished, with_token):
    result = invoke("logs", "remote", "--cluster", with_token.url)
    assert result.exit_code == 0, result.output
    assert "remote: 2 done" in result.stdout


@pytest.mark.parametrize("command", [["status"], ["logs", "remote"]])
def test_cli_bad_cluster_is_one_line(command):
    result = invoke(*command, "--cluster", "ray://head:10001")
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: --cluster takes the address") and result.stderr.count("\n") == 1


def test_cli_submit_cluster_unreachable_is_one_line(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(name="cli"))
    (port,) = free_ports(1)
    result = invoke("submit", str(grid), "--cluster", f"127.0.0.1:{port}", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the Ray Jobs API") and result.stderr.count("\n") == 1


def test_cluster_yaml_passes_the_cluster_launchers_schema():
    """What `ray up` checks before it asks a cloud for anything: defaults merged, then the schema."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(cluster.__file__).parents[1] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    workers = [t for t in config["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert workers and config["head_node_type"] in config["available_node_types"]
    assert any("--dashboard-port=8265" in c for c in config["head_start_ray_commands"])
