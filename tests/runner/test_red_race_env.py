"""The claim and compaction-lock timeouts from the environment are checked where they are read
(storage/envtime.py): a value that is not a positive number of seconds is one line naming the
variable, never a ValueError traceback at import, nor a claim that is stale the moment it is
made (0, negative) or never (nan)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rethink.storage import envtime
from rethink.storage.errors import StoreError


@pytest.mark.parametrize("name", ["RETHINK_CLAIM_TIMEOUT", "RETHINK_COMPACT_LOCK_TIMEOUT"])
def test_a_bad_timeout_in_the_environment_is_one_line(name: str, tmp_path: Path) -> None:
    env = {**os.environ, name: "abc"}
    done = subprocess.run([sys.executable, "-m", "rethink.cli", "compact", "x", "--store", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr == f"Error: {name} must be a number of seconds in (0, 604800] (default " \
                          f"{600 if 'CLAIM' in name else 3600}), got 'abc'\n"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9", "2 s"])
def test_only_positive_finite_seconds_pass(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETHINK_X", value)
    with pytest.raises(StoreError, match=rf"^RETHINK_X must be a number of seconds .* got '{value}'$"):
        envtime.seconds("RETHINK_X", 10.0)


def test_unset_or_blank_is_the_default_and_seconds_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETHINK_X", " ")
    assert envtime.seconds("RETHINK_X", 10.0) == 10.0
    monkeypatch.setenv("RETHINK_X", " 2.5 ")
    assert envtime.seconds("RETHINK_X", 10.0) == 2.5
