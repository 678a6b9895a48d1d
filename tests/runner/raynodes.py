"""Real Ray nodes on this machine for the tests: a head and worker nodes, each `ray start --block`
(the venv's `ray` by absolute path, the venv's bin kept off PATH as on a head nobody activated) in a
session of its own with a short private temp dir, its own free ports and a token made here
(nothing is written to ~/.ray). A node is stopped with SIGKILL to its process group and then to
whatever else is left of its session (workers, agents, job drivers): never `ray stop`, which
would end every Ray on the machine, other people's included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

BIN = Path(sys.executable).parent  # the venv's ray, python and rethink
START_TIMEOUT_S = 90  # two cores shared with other test runs: a node may take long to come up


def free_ports(n: int) -> list[int]:
    """n distinct free ports, held together while chosen so they differ."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid`: Ray's workers and job drivers leave a node's process
    group (each takes its own) but stay in the session that `start_new_session` made."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def stop_session(proc: subprocess.Popen) -> None:
    """SIGKILL the node's group, then whatever of its session remains (workers, drivers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while (pids := session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def path_without_venv() -> str:
    """This PATH less the venv's bin, and less any other folder with a `rethink` in it (a
    developer's activated venv): what a head started as `/venv/bin/ray start` has."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != BIN.resolve() and not Path(p, "rethink").exists())


def node_env(token: str, **extra: str) -> dict[str, str]:
    """The environment of a node: the token (Ray then requires it from every client), no
    RAY_ADDRESS of ours, and the venv's bin off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "VIRTUAL_ENV")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=path_without_venv(), **extra)
    return env


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def raylet_pid(self) -> int | None:
        """The raylet of this node: the process of this node's session named `raylet`."""
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                pass
        return None

    def freeze(self) -> None:
        """SIGSTOP every process of the node, as a machine that hangs: none trains another epoch
        or writes another row (a worker whose raylet is gone can go on training for a while)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        stop_session(self.proc)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def start_node(name: str, args: list[str], temp_dir: Path, env: dict[str, str]) -> Node:
    """`ray start --block ARGS` for one node, its output in temp_dir/NAME.log."""
    log = temp_dir / f"{name}.log"
    # Each node's own short temp dir: Ray puts unix sockets under it (path limit ~107 chars) and
    # must not share /tmp/ray with other tests' embedded clusters.
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--temp-dir", str(temp_dir / name), "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(free_ports(1)[0]), *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Node(name, proc, log)


@dataclass
class Cluster:
    head: Node
    gcs: str  # the address drivers join (`--address`), 127.0.0.1:PORT
    url: str  # the head's dashboard and Jobs API, http://127.0.0.1:PORT
    token: str
    temp_dir: Path
    env: dict[str, str]
    workers: dict[str, Node] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_worker(self, name: str, num_cpus: int = 1) -> Node:
        """A worker node with `num_cpus` CPUs and a custom resource named after it (node_NAME)."""
        node = start_node(name, ["--address", self.gcs, "--node-ip-address", "127.0.0.1", "--num-cpus",
                                 str(num_cpus), "--resources", json.dumps({f"node_{name}": 1})],
                          self.temp_dir, self.env)
        self.workers[name] = node
        return node

    def alive_nodes(self) -> list[dict]:
        reply = requests.get(f"{self.url}/api/v0/nodes", headers=self.headers, timeout=5)
        reply.raise_for_status()
        return [n for n in reply.json()["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int) -> None:
        """Until `count` nodes (head included) are alive in the head's view."""
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: object = None
        while time.monotonic() < deadline:
            for node in [self.head, *self.workers.values()]:
                if not node.alive():
                    raise RuntimeError(f"ray start ({node.name}) exited {node.proc.returncode}: {node.tail()}")
            try:
                seen = len(self.alive_nodes())
                if seen >= count:
                    return
            except (requests.RequestException, KeyError, ValueError) as exc:
                seen = exc
            time.sleep(0.5)
        raise RuntimeError(f"{count} Ray nodes did not come up in {START_TIMEOUT_S} s (last: {seen}); "
                           f"head: {self.head.tail()}")

    def stop(self) -> None:
        for node in [*self.workers.values(), self.head]:
            node.stop()


def start_head(temp_dir: Path, token: str, num_cpus: int, **env: str) -> Cluster:
    """A head on loopback ports, once its Jobs API answers (the dashboard starts last)."""
    gcs, dashboard, client = free_ports(3)
    environment = node_env(token, **env)
    head = start_node("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host",
                               "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
                               str(client), "--num-cpus", str(num_cpus)], temp_dir, environment)
    cluster = Cluster(head, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", token, temp_dir, environment)
    try:
        wait_for_jobs_api(cluster)
    except BaseException:
        head.stop()
        raise
    return cluster


def wait_for_jobs_api(cluster: Cluster) -> None:
    """Until the dashboard's job module answers (it starts a moment after /api/version)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not cluster.head.alive():
            raise RuntimeError(f"ray start exited {cluster.head.proc.returncode}: {cluster.head.tail()}")
        try:
            if requests.get(f"{cluster.url}/api/jobs/", headers=cluster.headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the head's Jobs API did not answer in {START_TIMEOUT_S} s: {cluster.head.tail()}")
