"""Time the per-corruption-level summary over a synthetic store laid out like a real one
(one runs.parquet per experiment, one status file and one epochs file per run).

    python bench/store_query.py [--runs 10000] [--epochs 100] [--dir DIR] [--repeat 3]

The store is written once into DIR (default: a folder under the system temp dir named by the
sizes and schemas) and reused by later calls; the goal is < 2 s for 10,000 runs x 100 epochs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rethink.runner.grid import run_row
from rethink.storage import layout, schema
from rethink.storage.views import connect
from rethink.tasks.spec import CorruptionSpec, DataSpec, RunSpec, TrainSpec

SUMMARY = """
SELECT corruption, level, count(*) AS runs,
       avg(final_test_acc) AS mean_final_test_acc, avg(epochs_to_fit) AS mean_epochs_to_fit
FROM runs
GROUP BY corruption, level
ORDER BY corruption, level
"""


def _table(columns: dict, target: pa.Schema) -> pa.Table:
    """Every column of `target`, as the store's writers do: the ones not given are null."""
    rows = len(next(iter(columns.values())))
    return pa.table({field.name: pa.array(columns[field.name], type=field.type) if field.name in columns
                     else pa.nulls(rows, type=field.type) for field in target}, schema=target)


def build(root: Path, runs: int, epochs: int, seed: int = 0) -> None:
    """Write `runs` runs of `epochs` epochs each, split over two experiments."""
    rng = np.random.default_rng(seed)
    (root / layout.MARKER).write_text(json.dumps({"rethink_store": 1}))
    corruption = np.where(np.arange(runs) % 2 == 0, "labels", "random_pixels")
    level = np.where(corruption == "labels", np.round(np.arange(runs) % 11 / 10, 1), 1.0)  # image kinds: 1.0
    specs = [RunSpec(data=DataSpec(dataset="cifar10"), model="mlp1x512", seed=i, train=TrainSpec(epochs=epochs),
                     corruption=CorruptionSpec(kind=str(corruption[i]), level=float(level[i])))
             for i in range(runs)]
    ids = [spec.run_id for spec in specs]  # real run lists: every config hashes to its run id
    for half, name in enumerate(["bench-a", "bench-b"]):
        rows = [run_row(name, specs[i]) for i in range(half, runs, 2)]
        path = root / layout.ExperimentPaths(name).runs
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.table(rows, schema.EXPERIMENT_RUNS), path)
    epoch = np.arange(1, epochs + 1)
    for i, run_id in enumerate(ids):
        paths = layout.RunPaths(run_id)
        status = schema.table([{"run_id": run_id, "status": "done", "attempts": 1, "epochs_done": epochs,
                                "stop_reason": "completed"}], schema.STATUS)
        (root / paths.status).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(status, root / paths.status)
        train_acc = np.minimum(1.0, epoch / (20 + 30 * level[i]))
        test_acc = 0.5 - 0.4 * level[i] + rng.normal(0, 0.01, epochs)
        frame = {"run_id": [run_id] * epochs, "epoch": epoch, "step": epoch * 40, "lr": 0.01 * 0.95 ** epoch,
                 "train_loss": rng.random(epochs), "train_acc": train_acc,
                 "train_acc_corrupted": rng.random(epochs), "train_acc_clean": rng.random(epochs),
                 "train_acc_true": rng.random(epochs), "test_loss": rng.random(epochs), "test_acc": test_acc,
                 "gap": train_acc - test_acc, "wall_s": rng.random(epochs), "examples_per_s": rng.random(epochs)}
        (root / paths.epochs).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(frame, schema.EPOCHS), root / paths.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None, help="store folder (made if absent)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Named by the schemas too: a store written before a column was added is rebuilt.
    version = hashlib.sha1(str([schema.EPOCHS, schema.STATUS, schema.EXPERIMENT_RUNS]).encode()).hexdigest()[:8]
    root = args.dir or Path(tempfile.gettempdir()) / f"rethink-bench-{args.runs}x{args.epochs}-{version}"
    if not (root / layout.MARKER).exists():
        t0 = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        build(root, args.runs, args.epochs)
        print(f"wrote {args.runs} runs x {args.epochs} epochs to {root} in {time.perf_counter() - t0:.1f} s")
    totals = []
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        con = connect(str(root))
        t1 = time.perf_counter()
        rows = con.execute(SUMMARY).fetchall()
        t2 = time.perf_counter()
        con.close()
        totals.append(t2 - t0)
        print(f"connect {t1 - t0:.2f} s + summary {t2 - t1:.2f} s = {t2 - t0:.2f} s "
              f"(CPU {time.process_time() - c0:.2f} s, {len(rows)} groups)")
    print(f"best {min(totals):.2f} s, median {sorted(totals)[len(totals) // 2]:.2f} s on {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows this down)")


if __name__ == "__main__":
    main()
