"""What `rethink submit --dry-run` prints: the expanded runs, so a researcher checks the grid's
product (and its size) before a single GPU-hour is spent. Names and values from the grid are
shown as text (rethink/text.py): every cell, the title and the caption are Rich `Text`, never
markup, with control characters shown visibly."""

from __future__ import annotations

import os
from pathlib import Path

from rich import box
from rich.table import Table

from rethink.runner.grid import Grid, Resources
from rethink.tasks.spec import LABEL_KINDS, RunSpec
from rethink.text import rich_text

HEAD, TAIL = 100, 20  # rows shown of a huge grid: its start and its end
HUGE = 200  # more runs than this are elided in the middle


def run_table(grid: Grid) -> Table:
    """One row per run (the first HEAD and last TAIL with an ellipsis row between for a huge grid);
    the caption gives the run count and what each task reserves."""
    runs, n = grid.runs, len(grid.runs)
    run_epochs = sum(run.train.epochs for run in runs)
    caption = f"{n:,} run{'s' if n != 1 else ''} · {run_epochs:,} run-epochs · per task: {_resources(grid.resources)}"
    if grid.duplicates:
        caption += (f" · {grid.duplicates:,} combination{'s' if grid.duplicates != 1 else ''} of the axes "
                    "repeated a run already listed (same resolved config) and will not train twice")
    for warning in machine_warnings(grid.resources):
        caption += f"\nwarning: {warning}"
    elided = n > HUGE
    if elided:
        caption += f" · showing the first {HEAD} and last {TAIL} of {n:,} runs"
    table = Table(title=rich_text(f"{grid.name} (dry run: nothing is trained)"), title_justify="left",
                  caption=rich_text(caption, keep="\n"), caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header, justify in (("#", "right"), ("run id", "left"), ("dataset", "left"), ("model", "left"),
                            ("corruption", "left"), ("level", "right"), ("regularizer", "left"),
                            ("seed", "right"), ("epochs", "right")):
        # ids and numbers never wrap; names fold onto more lines in a narrow terminal
        folds = header in ("dataset", "model", "corruption", "regularizer")
        table.add_column(header, justify=justify, no_wrap=not folds, overflow="fold",
                         min_width=len(header) if folds else None)
    indices = list(range(HEAD)) + [-1] + list(range(n - TAIL, n)) if elided else list(range(n))
    for i in indices:
        if i < 0:
            table.add_row("…", f"… {n - HEAD - TAIL:,} more", *["…"] * 7, style="dim")
        else:
            table.add_row(*(rich_text(cell) for cell in (str(i + 1), *_cells(runs[i]))))
    return table


def _cells(run: RunSpec) -> list[str]:
    c = run.corruption
    model = run.model
    if run.width != 1.0:
        model += f" ×{run.width:g}"
    if run.init_scale != 1.0:
        model += f" init×{run.init_scale:g}"
    level = f"{c.level:g}" if c.kind in LABEL_KINDS else "–"
    return [run.run_id, run.data.dataset, model, c.kind, level, run.regularizer.label, str(run.seed),
            str(run.train.epochs)]


def machine_warnings(r: Resources) -> list[str]:
    """What this machine could not give a task of the embedded local cluster (read without torch
    or Ray: CPUs from the OS, NVIDIA GPUs from the driver's /proc entries)."""
    warnings = []
    cpus = os.cpu_count() or 1
    if r.cpus > cpus:
        warnings.append(f"each task asks for {r.cpus:g} CPUs and this machine has {cpus}: an embedded cluster "
                        "cannot run it (lower resources.cpus or submit to a cluster with --address)")
    gpus = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
    if r.gpus > gpus:
        warnings.append(f"each task asks for {r.gpus:g} GPUs and this machine shows {gpus}: an embedded "
                        "cluster cannot run it (--set resources.gpus=0, or submit to a GPU cluster)")
    return warnings


def _resources(r: Resources) -> str:
    return f"{r.gpus:g} GPU, {r.cpus:g} CPU"
