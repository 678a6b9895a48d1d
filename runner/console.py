"""What the user watches: a live Rich table of a run's epochs (`rethink train`). Its title names
the run (model, corruption, regularizer): shown as text, never parsed as Rich markup."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from rethink.text import rich_text

# (row key, header, format) for the live table; accuracies as percentages are easier to scan.
EPOCH_TABLE = (
    ("epoch", "epoch", "{:d}"),
    ("lr", "lr", "{:.4g}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_acc", "train acc", "{:.3f}"),
    ("train_acc_corrupted", "acc corrupted", "{:.3f}"),
    ("train_acc_clean", "acc clean", "{:.3f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("gap", "gap", "{:+.3f}"),
    ("wall_s", "s", "{:.2f}"),
    ("examples_per_s", "ex/s", "{:,.0f}"),
)


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


class EpochTable:
    """A live table of the last `keep` epochs; use as a context manager and call `add(row)`."""

    def __init__(self, title: str, console: Console | None = None, keep: int = 20):
        self.title, self.rows = title, deque(maxlen=keep)
        console = console or Console(stderr=True)
        if not console.is_terminal:  # logs and pipes: room for every column
            console = Console(stderr=True, width=150)
        self.console = console
        self.live = Live(self._render(), console=console, auto_refresh=False)
        self.started = False  # shown from the first row on, so an early error stays one line

    def _render(self) -> Table:
        table = Table(title=rich_text(self.title), title_justify="left")
        for _, header, _ in EPOCH_TABLE:
            table.add_column(header, justify="right")
        for row in self.rows:
            table.add_row(*(rich_text(_cell(row.get(key), fmt)) for key, _, fmt in EPOCH_TABLE))
        return table

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(self._render(), refresh=True)

    def __enter__(self) -> EpochTable:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.live.stop()
            if not self.console.is_terminal:
                self.console.line()
