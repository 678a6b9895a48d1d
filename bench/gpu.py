"""GPU throughput: the papers' training loop against rethink's engine, on the same runs.

    python bench/gpu.py --workload all                      # on the GPU machine
    python bench/gpu.py --device cpu --train-size 2000 --epochs 2   # a CPU smoke test

Workloads (CIFAR-shaped synthetic data, 50,000 x 3x32x32 uint8 by default; label corruption):
  W1  mlp3x512,      labels 0.0, 0.1, ..., 1.0 x 3 seeds = 33 runs x 50 epochs
  W2  alexnet_small, labels 0.0, 0.2, ..., 1.0 x 2 seeds = 12 runs x 30 epochs

(a) reference: how the papers' scripts train: a per-sample transform (ToTensor + Normalize;
    RandomCrop(32, padding=4) + RandomHorizontalFlip with --augment) in a DataLoader, fp32, one
    run at a time, test accuracy after each epoch; timed on --ref-epochs epochs of one run and
    extrapolated to every run and epoch (all runs of a workload cost the same).
(b) engine: `rethink.tasks.train.train_pack` with stacking on, every run in full, measuring
    train and test metrics after each epoch (more work per epoch than the reference does).
(c) end to end (--submit): the same grid through `rethink submit --pack-size N` in a fresh
    process into a local store (Ray, the driver, claims, epoch rows, status, checkpoints on the
    background writer): the figure a researcher gets. Bookkeeping share = (wall - training -
    measuring) / wall, training and measuring from the task's own stopwatch ($RETHINK_TIMINGS).
MFU: training FLOPs (forward + backward, counted by FlopCounterMode) per second over the peak
of a large bf16 matmul measured on the same device.

Runs from a plain checkout (no install; needs torch and numpy only, never ray or duckdb, except
--submit, which needs ray and duckdb: ../shared/tools/device-wheels.sh --with-duckdb): the
repository root is the package `rethink`, so this script links it as `rethink` in a temporary
directory on sys.path when it is not importable already (and hands that path to `rethink submit`).

    python bench/gpu.py --workload all --submit             # a, b and c on the GPU machine"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {  # name: (model, corruption levels, seeds, epochs)
    "W1": ("mlp3x512", tuple(i / 10 for i in range(11)), 3, 50),
    "W2": ("alexnet_small", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), 2, 30),
}
BATCH, LR, MOMENTUM, LR_DECAY = 128, 0.01, 0.9, 0.95  # Zhang et al.'s SGD settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("W1", "W2", "all"), default="all")
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--train-size", type=int, default=50_000, help="training images (CIFAR: 50,000)")
    p.add_argument("--test-size", type=int, default=None, help="test images (default: train/5, at most 10,000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the workload's)")
    p.add_argument("--ref-epochs", type=int, default=3, help="epochs of the reference loop to time (first = warm-up)")
    p.add_argument("--pack-size", default="all", help="runs per pack: N, 'all' (one pack) or 'auto' (memory estimate)")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="reference DataLoader workers")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False, help="crop + flip")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="engine: bf16 autocast (off: small MLPs gain nothing; to be measured on W2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="engine: torch.compile the stacked step")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="engine: channels-last conv inputs")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.backends.cudnn.benchmark, for both loops")
    p.add_argument("--skip-reference", action="store_true", help="time the engine only")
    p.add_argument("--submit", action=argparse.BooleanOptionalAction, default=False,
                   help="also end to end through `rethink submit` (needs ray and duckdb)")
    return p.parse_args(argv)


def import_rethink() -> None:
    """Make `import rethink` name this checkout: link the repository root as `rethink` in a
    temporary directory and put that first on sys.path (the GPU machine has no install)."""
    try:
        import rethink  # noqa: F401

        return
    except ImportError:
        pass
    parent = Path(tempfile.mkdtemp(prefix="rethink-bench-"))
    (parent / "rethink").symlink_to(REPO, target_is_directory=True)
    atexit.register(shutil.rmtree, parent, True)  # removes the link, never what it points to
    sys.path.insert(0, str(parent))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(parent), os.environ.get("PYTHONPATH")]))


# ---- measuring the device ---------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device) -> float:
    """FLOP/s of a large bf16 matmul, best of a few timed repeats."""
    import torch

    n, reps = (8192, 20) if device.type == "cuda" else (1024, 3)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    best = math.inf
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best


def train_flops_per_image(model_name: str, classes: int) -> float:
    """FLOPs of one forward + backward per image (matmuls and convs, as FlopCounterMode counts)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from rethink.tasks.models import build_model

    model = build_model(model_name, in_shape=(3, 32, 32), num_classes=classes)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, classes, (4,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 4


# ---- (a) the reference loop ---------------------------------------------------------------------


class PerSampleCifar:
    """A map-style dataset of HWC uint8 images that transforms one sample at a time, as
    torchvision's CIFAR10 + transforms do (torchvision's own transforms on PIL images when it is
    installed; the same steps on tensors otherwise)."""

    def __init__(self, images, labels, mean, std, augment: bool) -> None:
        import torch

        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # N, H, W, C like CIFAR's
        self.labels = labels.tolist()
        self.mean = torch.tensor(mean).view(3, 1, 1) / 255
        self.std = torch.tensor(std).view(3, 1, 1) / 255
        self.augment = augment
        try:
            from PIL import Image
            from torchvision import transforms as T

            steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
            normalize = T.Normalize(self.mean.flatten().tolist(), self.std.flatten().tolist())
            self.pipeline = T.Compose(steps + [T.ToTensor(), normalize])
            self.to_pil, self.kind = Image.fromarray, "torchvision"
        except ImportError:
            self.pipeline, self.kind = None, "hand-written (no torchvision)"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import random

        import torch

        if self.pipeline is not None:
            return self.pipeline(self.to_pil(self.images[i])), self.labels[i]
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255)  # ToTensor
        if self.augment:
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = random.randint(0, 8), random.randint(0, 8)
            x = x[:, top : top + 32, left : left + 32]
            if random.random() < 0.5:
                x = x.flip(2)
        return (x - self.mean) / self.std, self.labels[i]


def reference_epoch_s(run, dataset, device, args) -> tuple[float, str]:
    """Seconds per epoch of the papers' loop (train + test accuracy), and the transform used."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from rethink.tasks.corruption import corrupt
    from rethink.tasks.models import build_model

    data = corrupt(dataset, run.corruption, run.seed)
    train = PerSampleCifar(data.train.images, data.train.labels, dataset.mean, dataset.std, args.augment)
    test = PerSampleCifar(data.test.images, data.test.labels, dataset.mean, dataset.std, False)
    loader_args = dict(batch_size=BATCH, num_workers=args.num_workers, pin_memory=device.type == "cuda",
                       persistent_workers=args.num_workers > 0)
    train_loader = DataLoader(train, shuffle=True, **loader_args)
    test_loader = DataLoader(test, shuffle=False, **loader_args)
    torch.manual_seed(run.seed)
    model = build_model(run.model, in_shape=(3, 32, 32), num_classes=dataset.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, LR_DECAY)
    times = []
    for _ in range(args.ref_epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                correct += (model(x).argmax(1) == y).sum()
        float(correct)  # the accuracy a script prints; synchronizes
        sync(device)
        times.append(time.perf_counter() - start)
    steady = times[1:] or times  # the first epoch starts workers and warms kernels up
    return statistics.median(steady), train.kind


# ---- (b) the engine --------------------------------------------------------------------------


def engine_run(runs, dataset, device, args) -> tuple[float, float, int, float, int]:
    """Wall seconds for every run in full, seconds of it spent training (the rest measures the
    runs after each epoch), run-epochs done, mean final train accuracy, pack size."""
    from rethink.tasks.stacked import StackOptions, device_memory_bytes, suggested_pack_size
    from rethink.tasks.train import train_pack

    if args.pack_size == "all":
        size = len(runs)
    elif args.pack_size == "auto":
        size = suggested_pack_size(runs[0], device_memory_bytes(device))
    else:
        size = int(args.pack_size)
    options = StackOptions(bf16=args.bf16, compile=args.compile, channels_last=args.channels_last)
    rows: dict[str, list[dict]] = {}
    train_s = 0.0
    start = time.perf_counter()
    for i in range(0, len(runs), size):
        pack = runs[i : i + size]
        train_pack(pack, "unused", device=device, dataset=dataset, stack=options,
                   on_epoch=lambda run_id, row: rows.setdefault(run_id, []).append(row))
        # a stacked epoch's training time is on each of its runs' rows: count the longest run once
        train_s += max(sum(args.train_size / r["examples_per_s"] for r in rows[run.run_id]) for run in pack)
    seconds = time.perf_counter() - start
    accuracy = statistics.mean(r[-1]["train_acc"] for r in rows.values())
    return seconds, train_s, sum(map(len, rows.values())), accuracy, size


# ---- (c) end to end ----------------------------------------------------------------------------


def submit_run(workload: str, runs, device, args) -> tuple[float, float, int, float, int]:
    """`rethink submit` of the workload's grid into a fresh local store, in its own process: wall
    seconds, training + measuring seconds (the tasks' stopwatches), run-epochs, mean final train
    accuracy (read back from the store), pack size."""
    import pyarrow.parquet as pq

    run = runs[0]
    size = len(runs) if args.pack_size == "all" else (0 if args.pack_size == "auto" else int(args.pack_size))
    levels = sorted({r.corruption.level for r in runs})
    seeds = sorted({r.seed for r in runs})
    gpu = device.type == "cuda"
    grid = f"""name: bench-{workload.lower()}
dataset: synthetic
data: {{train_size: {run.data.train_size}, test_size: {run.data.test_size}, image_size: {run.data.image_size}}}
model: {run.model}
corruption:
  - {{kind: labels, level: [{", ".join(f"{v:g}" for v in levels)}]}}
regularizer: {json.dumps({"augment": True} if args.augment else "none")}
seed: {json.dumps(seeds)}
train: {{epochs: {run.train.epochs}, batch_size: {BATCH}, lr: {LR}, momentum: {MOMENTUM}, lr_decay: {LR_DECAY}}}
resources: {{cpus: {1 if gpu else os.cpu_count()}, gpus: {1 if gpu else 0}}}
"""
    work = Path(tempfile.mkdtemp(prefix="rethink-bench-submit-"))
    (work / "grid.yaml").write_text(grid)
    env = {**os.environ, "RETHINK_TIMINGS": str(work / "timings"), "RETHINK_STACK": "1", "RETHINK_DATA": "unused"}
    cmd = [sys.executable, "-m", "rethink.cli", "submit", str(work / "grid.yaml"), "--store", str(work / "store"),
           "--pack-size", str(size), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"rethink submit failed: {done.stderr.strip()[-2000:]}")
    tasks = [json.loads(p.read_text()) for p in (work / "timings").glob("*.json")]
    busy = sum(t["seconds"].get("train", 0) + t["seconds"].get("measure", 0) for t in tasks)
    rows = [r for f in sorted((work / "store" / "epochs").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    last = {}
    for r in rows:
        if r["epoch"] >= last.get(r["run_id"], {}).get("epoch", 0):
            last[r["run_id"]] = r
    shutil.rmtree(work, ignore_errors=True)
    return seconds, busy, len(rows), statistics.mean(r["train_acc"] for r in last.values()), size or len(runs)


# ---- the table ------------------------------------------------------------------------------


def workload_runs(name: str, args):
    from rethink.tasks.spec import CorruptionSpec, DataSpec, RegularizerSpec, RunSpec, TrainSpec

    model, levels, seeds, epochs = WORKLOADS[name]
    test_size = args.test_size or min(10_000, max(10, args.train_size // 5))
    data = DataSpec(dataset="synthetic", train_size=args.train_size, test_size=test_size, image_size=32)
    train = TrainSpec(epochs=args.epochs or epochs, batch_size=BATCH, lr=LR, momentum=MOMENTUM, lr_decay=LR_DECAY)
    reg = RegularizerSpec(augment=args.augment)
    return [RunSpec(data=data, model=model, corruption=CorruptionSpec("labels", level), regularizer=reg,
                    train=train, seed=seed) for level in levels for seed in range(seeds)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import_rethink()
    import torch

    from rethink.tasks.data import load_dataset

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    peak = bf16_peak(device)
    print(f"device: {name}; torch {torch.__version__}; measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s")
    print(f"engine: bf16={args.bf16} compile={args.compile} channels_last={args.channels_last} "
          f"cudnn.benchmark={args.cudnn_benchmark}; reference: {args.num_workers} DataLoader workers, fp32\n")
    header = ("| workload | loop | runs x epochs | pack | wall s | run-epochs/s | images·runs/s "
              "| speed-up | training share | MFU (train) | final train acc |")
    lines = [header, "|" + "---|" * 11]
    for workload in ("W1", "W2") if args.workload == "all" else (args.workload,):
        runs = workload_runs(workload, args)
        epochs, n = runs[0].train.epochs, args.train_size
        dataset = load_dataset(runs[0].data, "unused")
        flops = train_flops_per_image(runs[0].model, dataset.num_classes)
        total = len(runs) * epochs

        def row(loop: str, seconds: float, done: int, pack: str, speedup: str, share: str, acc: str) -> str:
            rate = done * n / seconds
            return (f"| {workload} {runs[0].model} | {loop} | {len(runs)} x {epochs} | {pack} | {seconds:,.1f} "
                    f"| {done / seconds:,.2f} | {rate:,.0f} | {speedup} | {share} "
                    f"| {100 * rate * flops / peak:.2f}% | {acc} |")

        ref_s = None
        if not args.skip_reference:
            per_epoch, kind = reference_epoch_s(runs[0], dataset, device, args)
            ref_s = per_epoch * total
            lines.append(row(f"reference ({kind}), extrapolated from {args.ref_epochs} epochs of 1 run",
                             ref_s, total, "1", "1.00", "-", "-"))
        seconds, train_s, done, acc, size = engine_run(runs, dataset, device, args)
        speedup = f"{ref_s / seconds * done / total:.2f}" if ref_s else "-"
        lines.append(row("rethink engine, stacked", seconds, done, str(size), speedup,
                         f"{100 * train_s / seconds:.0f}%", f"{acc:.3f}"))
        if args.submit:
            e2e, busy, done, acc, size = submit_run(workload, runs, device, args)
            speedup = f"{ref_s / e2e * done / total:.2f}" if ref_s else "-"
            lines.append(row(f"rethink submit, end to end (bookkeeping share {100 * (e2e - busy) / e2e:.0f}%)",
                             e2e, done, str(size), speedup, "-", f"{acc:.3f}"))
        print(f"{workload}: {flops / 1e6:.1f} MFLOP per image (forward + backward)", flush=True)
    print("\n" + "\n".join(lines))
    leaked = [m for m in ("ray", "duckdb") if m in sys.modules]  # --submit runs them in another process
    assert not leaked, f"bench imported {leaked}: it must run where only torch is installed"


if __name__ == "__main__":
    main()
