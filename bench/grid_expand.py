"""Time expanding and dry-running a 10,000-run grid (goal < 10 s on a 2-core machine), through
the real command: `rethink submit GRID --dry-run`, output to /dev/null.

    python bench/grid_expand.py [--seeds 100]

The grid: 2 models x (none + labels at 9 levels + 3 pixel kinds + label_noise at 5 levels =
18 corruptions) x 3 regularizers x N seeds; N = 93 gives 10,044 runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """\
name: bench-expand
dataset: cifar10
data: {{train_size: 5000, test_size: 1000, crop: 28, whiten: true}}
model: [mlp1x512, mlp3x512]
corruption:
  - none
  - {{kind: labels, level: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]}}
  - shuffled_pixels
  - random_pixels
  - gaussian
  - {{kind: label_noise, level: [0.1, 0.2, 0.3, 0.4, 0.5]}}
regularizer: [none, {{weight_decay: 0.0005}}, {{dropout: 0.5, augment: true}}]
seed: {seeds}
train: {{epochs: 100}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=93, help="seeds per config (93 -> 10,044 runs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(GRID.format(seeds=list(range(args.seeds))))
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from rethink.runner.grid import load_grid

        start = time.perf_counter()
        runs = len(load_grid(path).runs)
        expand_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rethink.cli", "submit", str(path), "--dry-run"],
                       check=True, stdout=subprocess.DEVNULL)
        command_s = time.perf_counter() - start
    print(f"| runs | expand in-process (s) | `rethink submit --dry-run` end to end (s) |")
    print(f"|---|---|---|")
    print(f"| {runs:,} | {expand_s:.2f} | {command_s:.2f} |")


if __name__ == "__main__":
    main()
