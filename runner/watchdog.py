"""No process of a driver's embedded Ray cluster outlives the driver, however it ends.

Ray's own fate-sharing stops most of an embedded cluster when its driver dies, but not all: after
a `kill -9` of `rethink submit`, `ray::DashboardAgent` and `ray::RuntimeEnvAgent` ran on, parented
to init. So `started` (around scheduler.connect_ray's start of an embedded cluster) starts
a watchdog: this file, run as a tiny stdlib-only script in a session of its own (a group kill or
Ctrl-C of the driver does not reach it). Its stdin is the read end of a pipe whose write end only
the driver holds (not inherited by any process the driver starts). When the driver dies, however
it dies, the kernel closes that end; the watchdog reads EOF and SIGKILLs every process of that
cluster, then exits. On a normal shutdown the driver closes the pipe itself (`stop`), which
sweeps whatever Ray left running.

Which processes are that cluster's, by two marks, since neither alone finds them all:
- while `ray.init` starts it, the driver's environment holds RETHINK_RAY_OWNER=<a fresh random
  id>, which the Ray processes inherit (gcs_server, raylet, the workers the raylet starts later)
  and /proc/PID/environ keeps; but a process that retitles itself (`ray::DashboardAgent`) may
  overwrite that area, and its command line with it;
- so once the cluster is up, the driver tells the watchdog its session folder (`tell`): a process
  whose command line names that folder, or a `ray::` process with a file open in it (its logs),
  is the cluster's too.
The session folder holds a time and the driver's pid, the mark a random id: nothing is ever
killed by name, so other sessions' Rays on the machine (other drivers, other users, tests) are
never touched. Without /proc (not Linux) nothing is started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

MARK = "RETHINK_RAY_OWNER"  # env var naming the driver whose embedded cluster a process belongs to
SWEEP_S = 10.0  # longest a watchdog keeps sweeping once its driver is gone
_current: tuple[subprocess.Popen, str] | None = None  # this process's watchdog and its mark


@contextmanager
def started() -> Iterator[None]:
    """Start a watchdog, and mark the processes started inside this block as its to sweep. The
    mark is set only while the cluster starts: a process the driver starts later (a subprocess
    of a notebook) is not the cluster's."""
    global _current
    stop()
    if not os.path.isdir("/proc/self"):
        yield
        return
    import uuid

    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != MARK}
    proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), mark, str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    _current = (proc, mark)
    before = os.environ.get(MARK)
    os.environ[MARK] = mark
    try:
        yield
    except BaseException:
        stop()
        raise
    finally:
        if before is None:
            os.environ.pop(MARK, None)
        else:
            os.environ[MARK] = before


def tell(session_dir: str | None) -> None:
    """Name the running cluster's session folder to the watchdog (one line on the pipe)."""
    if _current is not None and session_dir:
        try:
            _current[0].stdin.write(f"{session_dir}\n".encode())
            _current[0].stdin.flush()
        except OSError:
            pass


def stop(timeout: float = 5.0) -> None:
    """After Ray's shutdown: close the pipe, so the watchdog sweeps what is left, and reap it."""
    global _current
    if _current is None:
        return
    proc, _ = _current
    _current = None
    try:
        proc.stdin.close()
        proc.wait(timeout)
    except (OSError, subprocess.TimeoutExpired):
        pass


# -- the watchdog process (stdlib only: it runs as `python -I watchdog.py MARK DRIVER_PID`) --------


def marked(mark: str, exclude: set[int], session_dir: str | None = None) -> list[int]:
    """PIDs of the cluster (see the module docstring) among the processes this user may read."""
    needle = f"{MARK}={mark}".encode()
    folder = session_dir.rstrip("/").encode() if session_dir else None
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                ours = needle in f.read().split(b"\0")
            if not ours and folder is not None:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    command = f.read()
                ours = folder + b"/" in command or command.endswith(folder) or (
                    command.startswith(b"ray::") and _has_open_file_in(name, folder))
        except OSError:  # gone, or not ours to read
            continue
        if ours:
            found.append(int(name))
    return found


def _has_open_file_in(pid: str, folder: bytes) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}".encode()).startswith(folder + b"/"):
                return True
        except OSError:
            continue
    return False


def sweep(mark: str, exclude: set[int], session_dir: str | None = None) -> int:
    """SIGKILL the marked processes until two looks in a row find none (a dying raylet may still
    start a worker), for at most SWEEP_S. Returns how many were killed."""
    killed, quiet, deadline = 0, 0, time.monotonic() + SWEEP_S
    while quiet < 2 and time.monotonic() < deadline:
        pids = marked(mark, exclude, session_dir)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        quiet = 0 if pids else quiet + 1
        time.sleep(0.05 if pids else 0.1)
    return killed


def main(argv: list[str]) -> None:
    mark, driver = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heard = b""
    try:
        while chunk := os.read(0, 4096):  # the session folder, then nothing until EOF
            heard += chunk
    except OSError:
        pass
    lines = [line for line in heard.decode(errors="replace").splitlines() if line.startswith("/")]
    sweep(mark, {os.getpid(), driver}, lines[-1] if lines else None)


if __name__ == "__main__":
    main(sys.argv[1:])
