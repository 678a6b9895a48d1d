"""How soon `rethink submit` shows something in a terminal, and when its per-run lines appear.

Runs a tiny synthetic grid in a detached tmux session (a real terminal, as a user has) and
polls the pane every 50 ms; prints seconds to the first text, to the bar, to the first per-run
line, and to the end. Usage:

    .venv/bin/python bench/first_output.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """\
name: firstout
dataset: synthetic
data: {train_size: 512, test_size: 128, image_size: 32}
model: mlp3x512
corruption: [none, {kind: labels, level: 1.0}]
seed: [0, 1]
train: {epochs: 20, batch_size: 32, lr: 0.01}
resources: {cpus: 1, gpus: 0}
"""


def pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def once(rethink: str) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory() as folder:
        grid = Path(folder, "grid.yaml")
        grid.write_text(GRID)
        session = f"rethink-first-{time.monotonic_ns()}"
        command = f"{rethink} submit {grid} --store {folder}/s; echo RETHINK-END; sleep 30"
        start = time.monotonic()
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command], check=True)
        seen: dict[str, float | None] = {"first text": None, "bar": None, "per-run line": None, "end": None}
        try:
            while time.monotonic() - start < 300 and seen["end"] is None:
                text, now = pane(session), time.monotonic() - start
                if seen["first text"] is None and text.strip():
                    seen["first text"] = now
                if seen["bar"] is None and "firstout runs" in text:
                    seen["bar"] = now
                if seen["per-run line"] is None and "· training" in text:
                    seen["per-run line"] = now
                if "RETHINK-END" in text:
                    seen["end"] = now
                time.sleep(0.05)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench/first_output.py needs tmux")
    rethink = str(Path(sys.executable).parent / "rethink")
    results = [once(rethink) for _ in range(args.repeat)]
    print(f"{'seconds after the command starts':34} {'median':>8} {'runs':>24}")
    for key in results[0]:
        values = [r[key] for r in results]
        shown = " ".join("-" if v is None else f"{v:.2f}" for v in values)
        known = [v for v in values if v is not None]
        median = f"{statistics.median(known):.2f}" if known else "-"
        print(f"{key:34} {median:>8} {shown:>24}")


if __name__ == "__main__":
    main()
