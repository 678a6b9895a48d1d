"""No process of a driver's embedded Ray outlives it: a real `rethink submit`, SIGKILLed while it
trains, leaves none of its cluster's processes running (runner/watchdog.py). Only that submit's
processes are looked at (its descendants, and whatever carries its cluster's mark): other tests'
Rays may be running on this machine at the same time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rethink.runner import watchdog
from .conftest import TINY_GRID, popen_rethink


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _mark_of(pids: set[int]) -> str | None:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                for item in f.read().split(b"\0"):
                    if item.startswith(f"{watchdog.MARK}=".encode()):
                        return item.split(b"=", 1)[1].decode()
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_submit_leaves_no_ray_process(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(TINY_GRID.format(name="orphans", epochs=200).replace("seed: [0, 1]", "seed: 0"))
    store = tmp_path / "store"
    submit = popen_rethink("submit", str(grid), "--store", str(store), "--quiet")
    try:
        deadline = time.monotonic() + 120
        while not list(store.glob("runs/run_id=*/status.parquet")):
            assert submit.poll() is None and time.monotonic() < deadline, submit.communicate()
            time.sleep(0.2)
        time.sleep(3)
        cluster = _descendants(submit.pid) - {submit.pid}
        mark = _mark_of(cluster)
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in cluster if _alive(pid)}
        assert mark and any(b"raylet" in n for n in names.values()), names
        assert any(n.startswith(b"ray::") for n in names.values()), names  # workers and agents are there
        os.kill(submit.pid, signal.SIGKILL)
        submit.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            left = {pid for pid in cluster if _alive(pid)} | set(watchdog.marked(mark, {os.getpid()}))
            if not left:
                break
            time.sleep(0.5)
        assert not left, {pid: (names.get(pid) or b"")[:80] for pid in left}
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait()
