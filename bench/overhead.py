"""Where a pack's time goes around the training step, end to end: the same W1-shaped pack timed
at three depths in one run, and split into parts per run-epoch.

    python bench/overhead.py                                 # 33 x mlp3x512, 256 images, 20 epochs, CPU
    python bench/overhead.py --runs 132 --device cuda --train-size 50000 --epochs 5
    python bench/overhead.py --checkpoint-every 1            # the cost of a checkpoint every epoch

Depths (synthetic CIFAR-shaped data, label corruption 0.0-1.0 x seeds, stacked):
  engine    `train_pack` alone, no callbacks: training + measuring, nothing written;
  worker    the Ray task's own path (`run_pack`) in this process, into a fresh local store:
            claims, epoch rows, status, checkpoints on the background writer;
  submit    `rethink submit GRID --pack-size N` in a fresh process, into a fresh local store:
            Python and Ray start, the driver, the worker process, the whole path.
Parts (ms per run-epoch) come from the tasks' stopwatches (tasks/timing.py; through `submit`
the task writes them to $RETHINK_TIMINGS); "driver/Ray" is what `submit` took beyond its task.
Bookkeeping share = (end-to-end - training - measuring) / end-to-end, from the submit depth.

Needs an installed rethink (ray and duckdb for the submit depth: on the GPU machine,
../shared/tools/device-wheels.sh); torch threads = the task's CPUs, as a task would have."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

LEVELS = tuple(i / 10 for i in range(11))
PARTS = ("train", "measure", "probe", "snapshot", "checkpoint_bytes", "store_writes", "claims", "resume")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=33, help="runs in the pack: labels 0.0-1.0 x seeds (1, 33, 132 ...)")
    p.add_argument("--model", default="mlp3x512")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--checkpoint-every", default=None, help="train.checkpoint_every (default: rethink's)")
    p.add_argument("--depths", default="engine,worker,submit", help="which depths to time")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: time one depth, print JSON
    return p.parse_args()


def grid_text(args: argparse.Namespace, name: str) -> str:
    levels = LEVELS if args.runs >= len(LEVELS) else LEVELS[: args.runs]
    seeds = max(1, args.runs // len(levels))
    gpu = args.device.startswith("cuda")
    cadence = f", checkpoint_every: {json.dumps(args.checkpoint_every)}" if args.checkpoint_every else ""
    return f"""name: {name}
dataset: synthetic
data: {{train_size: {args.train_size}, test_size: {args.test_size}, crop: 28}}
model: {args.model}
corruption:
  - {{kind: labels, level: [{", ".join(f"{v:g}" for v in levels)}]}}
regularizer: none
seed: [{", ".join(str(s) for s in range(seeds))}]
train: {{epochs: {args.epochs}, batch_size: 128, lr: 0.01, momentum: 0.9, lr_decay: 0.95{cadence}}}
resources: {{cpus: {1 if gpu else os.cpu_count()}, gpus: {1 if gpu else 0}}}
"""


def engine(runs, args) -> tuple[float, dict]:
    from rethink.tasks.train import train_pack

    try:
        from rethink.tasks.timing import Stopwatch
    except ImportError:  # a checkout from before the stopwatch (for the "before" table): walls only
        start = time.perf_counter()
        train_pack(runs, "unused", on_epoch=lambda rid, row: None, device=args.device, stack=True)
        return time.perf_counter() - start, {}
    watch = Stopwatch()
    start = time.perf_counter()
    train_pack(runs, "unused", on_epoch=lambda rid, row: None, device=args.device, stack=True, stopwatch=watch)
    return time.perf_counter() - start, watch.as_dict()["seconds"]


def worker(runs, args, store: Path, name: str, text: str) -> tuple[float, dict]:
    from rethink.runner.worker import run_pack
    from rethink.storage.store import Store

    timings = store.parent / f"{store.name}-timings"
    os.environ["RETHINK_TIMINGS"] = str(timings)
    s = Store.open(store, create=True)
    s.save_experiment(name, text, [])
    start = time.perf_counter()
    token = uuid.uuid4().hex
    run_pack(str(store), name, [r.to_dict() for r in runs], "unused", token, threads=0 if args.device != "cpu" else os.cpu_count())
    wall = time.perf_counter() - start
    del os.environ["RETHINK_TIMINGS"]
    saved = timings / f"{token}.json"
    return wall, json.loads(saved.read_text())["seconds"] if saved.exists() else {}


def submit(args, grid: Path, store: Path) -> tuple[float, dict, float]:
    timings = store.parent / f"{store.name}-timings"
    env = {**os.environ, "RETHINK_TIMINGS": str(timings), "RETHINK_STACK": "1", "RETHINK_DATA": "unused"}
    cmd = [sys.executable, "-m", "rethink.cli", "submit", str(grid), "--store", str(store),
           "--pack-size", str(args.runs), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"rethink submit failed: {done.stderr.strip().splitlines()[-1:]}")
    tasks = [json.loads(p.read_text()) for p in timings.glob("*.json")]
    if not tasks:  # a checkout from before the stopwatch: walls only
        return wall, {}, None
    (task,) = tasks
    return wall, task["seconds"], task["wall_s"]


def measure_one(args: argparse.Namespace, depth: str, work: Path) -> tuple[float, dict, float | None]:
    """One depth in this process (a fresh one: the bench runs each depth in its own, so no depth
    inherits another's threads, allocator or caches)."""
    import torch

    from rethink.runner.grid import parse_grid

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    name = f"overhead-{depth}"
    text = grid_text(args, name)
    grid = parse_grid(text, source="bench/overhead.py")
    runs = list(grid.runs)
    if depth == "engine":
        wall, parts = engine(runs, args)
        return wall, parts, None
    if depth == "worker":
        wall, parts = worker(runs, args, work / depth, name, grid.text)
        return wall, parts, None
    path = work / "grid.yaml"
    path.write_text(text)
    return submit(args, path, work / depth)


def main() -> None:
    args = parse_args()
    os.environ["RETHINK_STACK"] = "1"
    work = Path(tempfile.mkdtemp(prefix="rethink-overhead-"))
    if args.one:
        print(json.dumps(measure_one(args, args.one, work)))
        return
    measured: dict[str, tuple[float, dict, float | None]] = {}
    for depth in args.depths.split(","):
        cmd = [sys.executable, __file__, "--one", depth] + [a for a in sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"depth {depth} failed: {done.stderr.strip()[-2000:]}")
        measured[depth] = tuple(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    runs = [None] * (args.runs if args.runs < len(LEVELS) else len(LEVELS) * max(1, args.runs // len(LEVELS)))
    run_epochs = len(runs) * args.epochs
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"pack: {len(runs)} x {args.model}, {args.train_size} train / {args.test_size} test images, "
          f"{args.epochs} epochs = {run_epochs} run-epochs; stacked; {device}; torch {torch.__version__}; "
          f"checkpoint_every {args.checkpoint_every or 'default'}\n")
    cols = ["training", "measuring", "probes", "snapshot", "checkpoint bytes", "store writes", "claims+resume",
            "driver/Ray", "other"]
    print("| depth | wall s | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for depth, (wall, parts, task_wall) in measured.items():
        ms = {k: 1000 * v / run_epochs for k, v in parts.items()}
        row = [ms.get("train", 0), ms.get("measure", 0), ms.get("probe", 0), ms.get("snapshot", 0),
               ms.get("checkpoint_bytes", 0), ms.get("store_writes", 0), ms.get("claims", 0) + ms.get("resume", 0)]
        driver = 1000 * (wall - task_wall) / run_epochs if task_wall is not None else 0.0
        on_thread = row[0] + row[1] + row[2] + row[3] + row[6]  # the background writer's parts overlap training
        other = 1000 * (task_wall if task_wall is not None else wall) / run_epochs - on_thread
        row += [driver, other]
        print(f"| {depth} | {wall:.1f} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    print("\nms per run-epoch; checkpoint bytes and store writes run on the background writer, beside training;")
    print("'other' = the task's wall time not in a foreground part (waiting on the writer, data, setup).")
    if "submit" in measured and measured["submit"][1]:
        wall, parts, _ = measured["submit"]
        share = (wall - parts.get("train", 0) - parts.get("measure", 0)) / wall
        print(f"\nbookkeeping share (submit) = (end-to-end - training - measuring) / end-to-end = {share:.1%}")
    if "submit" in measured and "engine" in measured:
        wall = measured["submit"][0]
        print(f"end-to-end / train_pack alone = {wall:.1f} / {measured['engine'][0]:.1f} = "
              f"{wall / measured['engine'][0]:.2f}")


if __name__ == "__main__":
    main()
