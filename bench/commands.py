"""How long the commands that do not train take, end to end (Python's start included), and
whether any of them imports torch or Ray. Goal: each < 1.5 s on a 2-core CPU.

    python bench/commands.py [--repeat 5]

The store is made here: the Table 1 preset frozen as an experiment (no run trained), so
`status` and `cancel` read a real grid of runs; `--dry-run` expands the preset itself."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "examples" / "zhang2017_table1.yaml"
RETHINK = [sys.executable, "-m", "rethink.cli"]


def freeze(store: Path) -> str:
    """The preset's grid and run list in a new store, as `submit` leaves them before training."""
    from rethink.runner.grid import parse_grid, run_row
    from rethink.storage.store import Store

    grid = parse_grid(PRESET.read_text(), source=str(PRESET))
    Store.open(store, create=True).save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    return grid.name


def timed(args: list[str], repeat: int) -> tuple[list[float], bool]:
    """Seconds of each run of `rethink ARGS`, and whether torch or ray was imported."""
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = subprocess.run(RETHINK + args, capture_output=True, text=True)
        seconds.append(time.perf_counter() - t0)
        if result.returncode != 0:
            raise SystemExit(f"rethink {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-300:]}")
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "rethink.cli", *args],
                             capture_output=True, text=True).stderr
    heavy = any(line.rstrip().endswith(("| torch", "| ray")) for line in imports.splitlines())
    return seconds, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rethink-commands-") as folder:
        store = Path(folder, "store")
        name = freeze(store)
        commands = {
            "--help": ["--help"],
            "submit zhang2017_table1 --dry-run": ["submit", str(PRESET), "--dry-run", "--store", str(Path(folder, "dry"))],
            "status": ["status", "--store", str(store)],
            f"cancel {name}": ["cancel", name, "--store", str(store)],
            "query (count runs)": ["query", "select count(*) from runs", "--store", str(store)],
        }
        print(f"{'command':36} {'median s':>9} {'all runs (s)':>32}  torch/ray imported")
        for label, command in commands.items():
            seconds, heavy = timed(command, args.repeat)
            runs = " ".join(f"{s:.2f}" for s in seconds)
            print(f"{label:36} {statistics.median(seconds):9.2f} {runs:>32}  {'YES' if heavy else 'no'}")


if __name__ == "__main__":
    main()
