"""Every remote call waits a bounded time (storage/uri.py): an S3 or GCS endpoint that accepts
connections and never answers, or refuses them, ends `rethink status` in one line saying what to
check, within a few tries of RETHINK_REMOTE_TIMEOUT (set to 1 s here; the default is 10 s), and
boto3's conditional writes are bounded the same way. The real S3 server's tests
(test_s3_store.py, test_s3_reads.py, runner/test_s3_commands.py) show the options still work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from rethink.storage.errors import StoreError
from rethink.storage.objectstore import S3Objects
from rethink.storage.uri import ATTEMPTS, TIMEOUT_ENV

TIMEOUT_S = 1
# A silent endpoint costs ATTEMPTS waits plus the SDK's backoff between them; a process start too.
BOUND_S = ATTEMPTS * TIMEOUT_S + 10


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(store: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, TIMEOUT_ENV: str(TIMEOUT_S), "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_EC2_METADATA_DISABLED": "true"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rethink.cli", "status", "--store", store], env=env,
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("endpoint", ["silent", "closed"])
def test_an_endpoint_that_never_answers_is_one_line_within_the_timeout(scheme, endpoint, silent_port, closed_port):
    port = silent_port if endpoint == "silent" else closed_port
    done, took = _status(f"{scheme}://bkt/x?endpoint_override=127.0.0.1:{port}&scheme=http")
    kind = "S3" if scheme == "s3" else "GCS"
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"Error: cannot reach the {kind} endpoint 127.0.0.1:{port} ")
    assert "check endpoint_override and that the server is up" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    if endpoint == "silent":
        tries = f", {ATTEMPTS} tries" if scheme == "s3" else ""  # GCS: rethink's own probe, one try
        assert f"within {TIMEOUT_S} s (no answer{tries})" in done.stderr
        assert f"{TIMEOUT_ENV} raises the limit" in done.stderr
    assert took < BOUND_S, f"{took:.1f} s"


def test_conditional_writes_on_a_silent_endpoint_are_bounded(silent_port, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, str(TIMEOUT_S))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    objects = S3Objects(f"s3://bkt/x?endpoint_override=127.0.0.1:{silent_port}&scheme=http")
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"cannot create s3://bkt/x/claim: cannot reach the S3 endpoint "
                                         rf"127.0.0.1:{silent_port} within {TIMEOUT_S} s \(no answer, "
                                         rf"{ATTEMPTS} tries\)"):
        objects.create("bkt/x/claim", b"mine")
    assert time.monotonic() - started < BOUND_S
