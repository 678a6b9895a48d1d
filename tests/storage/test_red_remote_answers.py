"""An S3 or GCS endpoint that answers, but not in HTTP (closes the connection at once, or sends
bytes that are not HTTP), is one line naming the endpoint and what to check (storage/uri.py
`network_failure`), never the SDK's raw curl text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest


def _server(reply: bytes | None) -> Iterator[int]:
    """A port that answers each connection with `reply` (None: closes it at once)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            with conn:
                if reply is not None:
                    conn.settimeout(2)
                    try:
                        conn.recv(65536)
                        conn.sendall(reply)
                    except OSError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.fixture(scope="module")
def closing_port() -> Iterator[int]:
    yield from _server(None)


@pytest.fixture(scope="module")
def garbage_port() -> Iterator[int]:
    yield from _server(b"\x00\xffnot http\r\n\r\n" * 8)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("endpoint", ["closing", "garbage"])
def test_an_endpoint_that_answers_no_http_is_one_line_saying_what_to_check(scheme, endpoint, closing_port,
                                                                            garbage_port):
    port = closing_port if endpoint == "closing" else garbage_port
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-m", "rethink.cli", "status", "--store",
                           f"{scheme}://bkt/x?endpoint_override=127.0.0.1:{port}&scheme=http"],
                          env=env, capture_output=True, text=True, timeout=60)
    kind = "S3" if scheme == "s3" else "GCS"
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"Error: cannot reach the {kind} endpoint 127.0.0.1:{port} ("), done.stderr
    assert "check endpoint_override and that the server is up" in done.stderr
    assert "curlCode" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
