"""Remote clusters through the Ray Job Submission API (`--cluster http://HEAD:8265`).

`rethink submit --cluster` does not drive the grid from the user's machine: it ships the resolved
grid to the head and starts `rethink submit grid.yaml --store ...` there as a Ray Job, so the grid
keeps running when the laptop sleeps or disconnects. The job's shell gets the head's PATH, which
need not hold rethink (a head started as `/venv/bin/ray start --head`); the entrypoint therefore
runs rethink with the Python that runs Ray on the head (JOB_SCRIPT). Ray sets RAY_ADDRESS (the cluster's GCS
address) in a job driver's environment, so `scheduler.connect_ray` inside the job joins that
cluster instead of starting an embedded one. Jobs carry `{"rethink_experiment": NAME}` as metadata;
`status --cluster` and `logs --cluster` find them by it.

The store must be a place every node can write: a path on a filesystem shared by all nodes, or a
URI such as s3://bucket/store (the nodes need credentials for it, e.g. an instance role).

Tokens: a head started with RAY_AUTH_MODE=token refuses every request without its token. The token
is taken from $RAY_AUTH_TOKEN, the file named by $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray's
own order) and sent as an `Authorization: Bearer` header, which Ray's client uses as given; the
user's environment is not changed. A head without a token runs code for anyone who can reach it."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from rich.table import Table

from rethink.errors import RethinkError
from rethink.runner.grid import Grid
from rethink.storage.uri import check as check_store_uri
from rethink.text import one_line, rich_text

DASHBOARD_PORT = 8265  # Ray's default dashboard (and Jobs API) port
METADATA_KEY = "rethink_experiment"
CONNECT_TIMEOUT_S = 10.0  # Ray's client waits on a silent host without limit; the first request is ours
HELP_TOKEN = "set RAY_AUTH_TOKEN (see ~/.ray/auth_token on the head, or run `ray get-auth-token` there)"
JOB_SCRIPT_NAME = "rethink-job.sh"
# The job's entrypoint (POSIX sh, run in the job's working_dir with rethink's arguments). Ray runs it
# as a child of the job's supervisor, a Ray worker whose parent, the raylet, was started with
# `--python_worker_command=PYTHON ...`: the interpreter Ray runs on this node, the one holding ray and
# (when the head was started from rethink's environment) rethink. Neither PATH nor an activated
# environment matters then. Without /proc (not Linux) or that flag, `rethink` on PATH is the fallback;
# with neither, one line in the job's log says how to fix the head.
JOB_SCRIPT = r"""py=
pid=$PPID
hops=0
while [ -z "$py" ] && [ "$hops" -lt 5 ] && [ -r "/proc/$pid/cmdline" ]; do
  py=$(tr '\0' '\n' < "/proc/$pid/cmdline" | sed -n 's/^--python_worker_command=\([^ ]*\).*/\1/p' | head -n 1)
  pid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status")
  hops=$((hops + 1))
done
if [ -n "$py" ] && "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('rethink') is None)" 2>/dev/null; then
  exec "$py" -m rethink.cli "$@"
fi
if command -v rethink >/dev/null 2>&1; then
  exec rethink "$@"
fi
if [ -n "$py" ]; then
  echo "Error: rethink is not installed in $py, the Python that runs Ray on this head: install it there (e.g. $py -m pip install rethink), or start the head from an environment that has rethink" >&2
else
  echo "Error: cannot find the Python that runs Ray on this head, and rethink is not on its PATH: start the head with rethink's environment active (e.g. source VENV/bin/activate; ray start --head ...)" >&2
fi
exit 127
"""


class ClusterError(RethinkError):
    """A remote cluster that cannot be reached, refuses us, or has no such job."""


def submit_job(address: str, grid: Grid, store: str, data_dir: str | None, pack_size: int) -> str:
    """Start the grid's driver on the cluster as a Ray Job; return what to run next."""
    check_store_uri(store)  # the URI goes into the job's command line and the lines printed here
    _check_remote_path("--store", store)
    if data_dir:
        _check_remote_path("--data-dir", data_dir)
    url = normalize_address(address)
    client = _client(url)
    command = ["sh", JOB_SCRIPT_NAME, "submit", "grid.yaml", "--store", store, "--quiet", "--pack-size", str(pack_size)]
    if data_dir:
        command += ["--data-dir", data_dir]
    submission_id = f"rethink-{grid.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="rethink-job-") as folder:
        # The job's working_dir: Ray zips it, uploads it to the head and runs the entrypoint in it.
        Path(folder, "grid.yaml").write_text(grid.text, encoding="utf-8")
        Path(folder, JOB_SCRIPT_NAME).write_text(JOB_SCRIPT, encoding="utf-8")
        _call(url, client.submit_job, entrypoint=shlex.join(command), submission_id=submission_id,
              runtime_env={"working_dir": folder}, metadata={METADATA_KEY: grid.name})
    return "\n".join([
        f"submitted {grid.name} ({len(grid.runs)} runs) to {url} as job {submission_id}.",
        f"It runs on the cluster and writes to {store}; this machine may disconnect.",
        f"  rethink status --cluster {url}",
        f"  rethink logs {grid.name} --cluster {url}",
    ])


def job_table(address: str, name: str | None) -> Table:
    """The rethink jobs on that cluster (all experiments, or NAME's), oldest first."""
    url = normalize_address(address)
    jobs = _rethink_jobs(url, _client(url), name)
    table = Table(title=rich_text(f"rethink jobs on {url}" + (f" for {name}" if name else "")))
    for column in ("experiment", "submission id", "status", "started", "ended", "message"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        cells = (job.metadata[METADATA_KEY], job.submission_id or "", job.status.value,  # the cluster's text:
                 _clock(job.start_time), _clock(job.end_time), job.message or "")      # never Rich markup
        table.add_row(*(rich_text(one_line(cell)) for cell in cells))
    if not jobs:
        table.caption = "none yet: `rethink submit GRID.yaml --cluster ADDR --store URI` starts one"
    return table


def job_logs(address: str, name: str) -> str:
    """The driver log of NAME's newest job on that cluster."""
    url = normalize_address(address)
    client = _client(url)
    jobs = _rethink_jobs(url, client, None)
    mine = [job for job in jobs if job.metadata[METADATA_KEY] == name]
    if not mine:
        names = sorted({job.metadata[METADATA_KEY] for job in jobs})
        raise ClusterError(f"no rethink job for '{name}' on {url}; experiments with jobs there: "
                           f"{', '.join(names) if names else 'none'}")
    return _call(url, client.get_job_logs, mine[-1].submission_id)


# ---- address, token, client ------------------------------------------------------------------


def normalize_address(address: str) -> str:
    """`HEAD`, `HEAD:8265` or `http(s)://HEAD[:PORT]` -> `http(s)://HEAD:PORT`; anything else is
    refused here, before Ray reads it (Ray takes `ray://...` as a Ray Client address and waits 30 s
    on it; other schemes are imported as Python modules)."""
    text = address.strip()
    example = f"e.g. http://HEAD:{DASHBOARD_PORT}"
    try:
        parts = urlsplit(text if "://" in text else f"http://{text}")
        port = parts.port or DASHBOARD_PORT
    except ValueError:  # an unclosed '[' of an IPv6 host, a port out of range
        parts, port = urlsplit("http://"), None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        got = "" if "@" in text or "?" in text or "#" in text else f"; got '{address}'"  # never echo a credential
        raise ClusterError(f"--cluster takes the address of the Ray dashboard (its Jobs API), {example}, "
                           f"with no user, password, query or fragment{got}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def find_token() -> tuple[str, str] | None:
    """The cluster token and where it came from, in Ray's order; None when there is none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "$RAY_AUTH_TOKEN"
    for source, path in (("$RAY_AUTH_TOKEN_PATH", os.environ.get("RAY_AUTH_TOKEN_PATH")),
                         ("~/.ray/auth_token", str(Path.home() / ".ray" / "auth_token"))):
        try:
            token = Path(path).read_text(encoding="utf-8").strip() if path else ""
        except OSError:
            continue
        if token:
            return token, source
    return None


def _client(url: str) -> Any:
    """A JobSubmissionClient for `url`, after one bounded request that says what went wrong."""
    import requests
    from ray.job_submission import JobSubmissionClient

    found = find_token()
    headers = {"Authorization": f"Bearer {found[0]}"} if found else {}
    try:
        reply = requests.get(f"{url}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ClusterError(f"cannot reach the Ray Jobs API at {url}: {_reason(exc)}; is the head up and its "
                           f"dashboard port reachable (e.g. through `ray dashboard cluster.yaml`)?") from None
    if reply.status_code == 401:
        raise ClusterError(f"the cluster at {url} requires a token: {HELP_TOKEN}")
    if reply.status_code == 403:
        raise ClusterError(f"the cluster at {url} refused the token from {found[1] if found else 'nowhere'}: "
                           f"{HELP_TOKEN}")
    if reply.status_code != 200:
        raise ClusterError(f"{url} is not a Ray Jobs API (GET /api/version answered {reply.status_code}); "
                           f"give the dashboard address, e.g. http://HEAD:{DASHBOARD_PORT}")
    return _call(url, JobSubmissionClient, url, headers=headers)


def _call(url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one Jobs API call, its failures as one ClusterError line and Ray's INFO logs silenced
    (upload notices would interleave with our output)."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        with _ray_logs_at(logging.WARNING):
            return fn(*args, **kwargs)
    except AuthenticationError:
        raise ClusterError(f"the cluster at {url} refused the request without a valid token: {HELP_TOKEN}") from None
    except (ConnectionError, requests.RequestException) as exc:
        raise ClusterError(f"cannot reach the Ray Jobs API at {url}: {_reason(exc)}") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ClusterError(f"the Ray Jobs API at {url} failed: {_reason(exc)}") from None


def _rethink_jobs(url: str, client: Any, name: str | None) -> list[Any]:
    """Jobs submitted by rethink (NAME's, when given), oldest first."""
    jobs = [job for job in _call(url, client.list_jobs) if METADATA_KEY in (job.metadata or {})]
    if name:
        jobs = [job for job in jobs if job.metadata[METADATA_KEY] == name]
    return sorted(jobs, key=lambda job: job.start_time or 0)


# ---- small helpers ---------------------------------------------------------------------------


def _check_remote_path(flag: str, value: str) -> None:
    """A relative path would land in the job's scratch working_dir on the head, then vanish."""
    if "://" not in value and not os.path.isabs(value):
        raise ClusterError(f"with --cluster, {flag} must be a URI (e.g. s3://bucket/store) or an absolute path "
                           f"that every node of the cluster can write (a shared filesystem); got '{value}'")


@contextmanager
def _ray_logs_at(level: int) -> Iterator[None]:
    """Raise Ray's loggers to `level` for a moment; some (dashboard_sdk) set their own level,
    so raising the `ray` logger alone does not silence them."""
    loggers = [logging.getLogger("ray")] + [
        logger for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("ray.") and isinstance(logger, logging.Logger) and logger.level
    ]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


def _reason(exc: BaseException) -> str:
    """An exception as one short line (requests nests the real cause deep in its message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _clock(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""
