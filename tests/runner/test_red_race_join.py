"""Joining a cluster that requires a token, without the right one, is one line that names the fix
(runner/raylogs.py). Ray's C++ client used to print `Failed to get cluster ID from GCS server:
Unauthenticated` once a second for 20 s, then fail naming neither the token nor what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.runner.test_cluster import GRID, head  # noqa: F401 - the module's head, with a token


def test_a_join_refused_for_its_token_is_one_line(head, tmp_path: Path) -> None:  # noqa: F811
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.format(name="joined"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of this machine's
    done = subprocess.run([sys.executable, "-m", "rethink.cli", "submit", str(grid), "--store", str(tmp_path / "s"),
                           "--quiet", "--address", head.gcs], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 2, done.stderr  # "joining the Ray cluster at ...", the error
    assert lines[1] == (f"Error: the Ray cluster at '{head.gcs}' refused this driver's token: set RAY_AUTH_MODE=token "
                        "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token"), done.stderr
