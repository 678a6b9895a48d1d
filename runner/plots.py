"""The figures of `rethink report`, drawn from rows of the summary views (storage/summaries.py):
Zhang et al.'s Fig. 1a (learning curves per corruption), 1b (time to fit vs label corruption),
1c (test error vs label corruption), and the probe curves.

Figures are made with `matplotlib.figure.Figure` and its Agg canvas, never pyplot: no global
state, no display needed, nothing to close. Every curve is the mean over seeds; the band around
it is ±1 std over seeds, drawn only where there are two seeds or more."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LEVELED = ("labels", "label_noise")  # corruption kinds that take a level p (tasks/spec.py)
KIND_ORDER = ("none", "labels", "label_noise", "shuffled_pixels", "random_pixels", "gaussian")
SETTING_PARTS = ("dataset", "model", "width", "init_scale", "regularizer")  # a setting, less corruption
CHANCE = {"cifar10": 10, "cifar100": 100}  # classes, for the chance line of Fig. 1c
PROBES = {  # column: (panel title, y-axis label with its unit)
    "act_sparsity": ("activation sparsity", "fraction of ReLU outputs at zero"),
    "jacobian_norm": ("input-output Jacobian norm", r"$\|\partial f / \partial x\|_F$ on the probe batch"),
    "grad_sqnorm": ("parameter-gradient norm", r"$\sum_i \|\nabla_\theta f(x_i)\|^2$ over the probe batch"),
    "functional_dim": ("batch functional dimension", r"rank of $\partial f / \partial \theta$ on the probe batch"),
    "param_norm": ("parameter norm", r"$\|\theta\|_2$"),
}
DPI = 110
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22")

Row = dict


# ---- labels and ordering ---------------------------------------------------------------------

def corruption_label(kind: str, level: float | None) -> str:
    """'none', 'labels p=0.5', 'shuffled_pixels': the level only where the kind has one."""
    return f"{kind} p={level:g}" if kind in LEVELED and level is not None else kind


def corruption_order(row: Row) -> tuple:
    """Sort key: true labels first, then label corruption by level, then the image kinds."""
    kind = row["corruption"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, kind, row["level"] if row["level"] is not None else 0.0


def varying(rows: Iterable[Row], parts: Iterable[str] = SETTING_PARTS) -> list[str]:
    """The setting columns that take more than one value in `rows`: only those need naming."""
    rows = list(rows)
    return [p for p in parts if len({r[p] for r in rows}) > 1]


def setting_of(row: Row) -> tuple:
    return tuple(row[p] for p in SETTING_PARTS)


def setting_label(row: Row, parts: list[str]) -> str:
    """'mlp1x512, width=2, weight_decay=0.0005': the varying parts of a row's setting."""
    return ", ".join(f"{p}={cell(row[p])}" if p in ("width", "init_scale") else cell(row[p]) for p in parts)


def cell(value: object) -> str:
    """A setting's value as a person writes it: 1 not 1.0, '—' for none."""
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def groups(rows: Iterable[Row], key: Callable[[Row], tuple]) -> dict[tuple, list[Row]]:
    """Rows grouped by `key`, groups and rows kept in the order first seen."""
    out: dict[tuple, list[Row]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def _nums(rows: list[Row], column: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r[column] is None else scale * float(r[column]) for r in rows]


def _title(fig: Figure, what: str, rows: list[Row], count: str = "seeds", spread: str = "band") -> None:
    """Two-line title: what the figure shows, then how many seeds each point averages."""
    counts = sorted({int(r[count]) for r in rows if r[count]})  # 0: nothing averaged there
    if counts:
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        what += f"\nmean over {seeds} seeds, {spread} = ±1 std over seeds" if counts[-1] > 1 else \
            f"\none seed (no {spread})"
    fig.suptitle(what)


def _curve(ax, x: list[float], rows: list[Row], column: str, scale: float, color: str, label: str) -> None:
    """A mean line and, where the std exists, its ±1 std band."""
    mean = _nums(rows, column, scale)
    std = _nums(rows, f"{column}_std", scale)
    ax.plot(x, mean, color=color, label=label, linewidth=1.6, marker="o" if len(x) <= 12 else None, markersize=3)
    if any(not math.isnan(s) for s in std):
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)


def _figure(rows: int, cols: int, width: float = 5.2, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width * cols, height * rows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, without the 'Software' text chunk (it holds a URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


# ---- figures ---------------------------------------------------------------------------------

def fig1a_learning_curves(rows: list[Row], name: str) -> Figure | None:
    """Fig. 1a: training loss and train accuracy vs SGD steps, one line per corruption and
    level, one row of panels per setting (model, regularizer, ... where they vary)."""
    if not rows:
        return None
    parts = varying(rows)
    settings = groups(rows, setting_of)
    curves = sorted(groups(rows, lambda r: (r["corruption"], r["level"])).values(), key=lambda g: corruption_order(g[0]))
    color = {(g[0]["corruption"], g[0]["level"]): COLORS[i % len(COLORS)] for i, g in enumerate(curves)}
    fig = _figure(len(settings), 2)
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for (loss_ax, acc_ax), setting_rows in zip(axes, settings.values()):
        per_curve = groups(sorted(setting_rows, key=corruption_order), lambda r: (r["corruption"], r["level"]))
        for key, curve in per_curve.items():
            curve.sort(key=lambda r: r["epoch"])
            steps = _nums(curve, "step")
            label = corruption_label(*key)
            _curve(loss_ax, steps, curve, "train_loss", 1.0, color[key], label)
            _curve(acc_ax, steps, curve, "train_acc", 100.0, color[key], label)
        where = setting_label(setting_rows[0], parts)
        loss_ax.set(title=f"training loss{': ' + where if where else ''}", xlabel="SGD steps",
                    ylabel="training loss (cross-entropy, nats)")
        acc_ax.set(title=f"train accuracy{': ' + where if where else ''}", xlabel="SGD steps",
                   ylabel="train accuracy (%)", ylim=(-2, 102))
        loss_ax.set_ylim(bottom=0)
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(title="corruption", fontsize="small")
    _title(fig, f"Fig. 1a: learning curves on corrupted data, {name}", rows)
    return fig


def label_points(rows: list[Row]) -> dict[tuple, list[Row]]:
    """Per setting, its rows along the label-corruption axis: 'none' (p = 0) and 'labels' at
    each level, by level. Settings without any 'labels' row are left out."""
    along = [r for r in rows if r["corruption"] in ("none", "labels")]
    out = {}
    for key, group in groups(along, setting_of).items():
        if any(r["corruption"] == "labels" for r in group):
            out[key] = sorted(group, key=lambda r: 0.0 if r["corruption"] == "none" else r["level"])
    return out


def _level(row: Row) -> float:
    return 0.0 if row["corruption"] == "none" else float(row["level"])


def fig1b_time_to_fit(rows: list[Row], name: str) -> Figure | None:
    """Fig. 1b: epochs to reach the fit threshold vs label corruption, mean ± std over the
    seeds that fit; runs that never fit are written beside their point, not averaged in."""
    series = label_points(rows)
    if not series:
        return None
    parts = varying([r for g in series.values() for r in g])
    fig = _figure(1, 1, width=7.5, height=4.6)
    ax = fig.subplots()
    budget = max([int(r["epochs"]) for g in series.values() for r in g if r["epochs"]] or [1])  # most epochs trained
    lost = False
    for i, group in enumerate(series.values()):
        color = COLORS[i % len(COLORS)]
        x = [_level(r) for r in group]
        ax.errorbar(x, _nums(group, "epochs_to_fit"), yerr=[0 if math.isnan(s) else s for s in _nums(group, "epochs_to_fit_std")],
                    color=color, marker="o", capsize=4, linewidth=1.6, label=setting_label(group[0], parts) or group[0]["model"])
        for level, r in zip(x, group):
            if not r["never_fit"]:
                continue
            lost = True
            y = budget if r["epochs_to_fit"] is None else r["epochs_to_fit"]
            if r["epochs_to_fit"] is None:  # no seed fit: an open triangle on the budget line
                ax.plot([level], [y], marker="^", markersize=9, markerfacecolor="none", color=color, linestyle="none")
            ax.annotate(f"{r['never_fit']}/{r['runs']} never fit", (level, y), textcoords="offset points",
                        xytext=(0, 9 + 11 * i), fontsize="small", color=color,
                        ha="right" if level > 0.9 else "left" if level < 0.1 else "center")
    if lost:
        ax.axhline(budget, color="gray", linestyle="--", linewidth=1,
                   label=f"training budget ({budget} epochs); ^ = no seed fit")
        ax.set_ylim(top=budget * 1.25)
    threshold = 100 * float(next(iter(series.values()))[0]["fit_threshold"] or 0.99)
    ax.set(xlabel="label corruption p (fraction of training labels replaced at random)",
           ylabel=f"epochs to reach {threshold:g}% train accuracy", xlim=(-0.05, 1.05))
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title="setting", fontsize="small")
    _title(fig, f"Fig. 1b: time to fit vs label corruption, {name}", rows, "fitted", "error bars")
    return fig


def fig1c_test_error(rows: list[Row], name: str) -> Figure | None:
    """Fig. 1c: final test error (%) vs label corruption, mean ± std over seeds, with the
    chance level when the dataset's class count is known."""
    series = label_points(rows)
    if not series:
        return None
    parts = varying([r for g in series.values() for r in g])
    fig = _figure(1, 1, width=7.5, height=4.6)
    ax = fig.subplots()
    for i, group in enumerate(series.values()):
        error = [100 - v for v in _nums(group, "test_acc", 100.0)]
        std = [0 if math.isnan(s) else s for s in _nums(group, "test_acc_std", 100.0)]
        ax.errorbar([_level(r) for r in group], error, yerr=std, color=COLORS[i % len(COLORS)], marker="o",
                    capsize=4, linewidth=1.6, label=setting_label(group[0], parts) or group[0]["model"])
    datasets = {r["dataset"] for g in series.values() for r in g}
    if len(datasets) == 1 and (classes := CHANCE.get(datasets.pop())):
        ax.axhline(100 * (1 - 1 / classes), color="gray", linestyle=":", label=f"chance ({classes} classes)")
    ax.set(xlabel="label corruption p (fraction of training labels replaced at random)",
           ylabel="test error (%)", xlim=(-0.05, 1.05), ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(title="setting", fontsize="small")
    _title(fig, f"Fig. 1c: test error vs label corruption, {name}", rows, "seeds", "error bars")
    return fig


def probe_curves(rows: list[Row], name: str) -> Figure | None:
    """One panel per probe that was measured: its mean over seeds vs epoch, one line per
    corruption (and setting, where several)."""
    measured = [p for p in PROBES if any(r[p] is not None for r in rows)]
    if not measured:
        return None
    parts = varying(rows)
    curves = groups(sorted(rows, key=lambda r: (setting_of(r), corruption_order(r), r["epoch"])),
                    lambda r: (*setting_of(r), r["corruption"], r["level"]))
    cols = min(3, len(measured))
    n_rows = math.ceil(len(measured) / cols)
    fig = _figure(n_rows, cols, width=4.8, height=3.4)
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    for ax, probe in zip(axes, measured):
        title, unit = PROBES[probe]
        for i, curve in enumerate(curves.values()):
            where = setting_label(curve[0], parts)
            label = corruption_label(curve[0]["corruption"], curve[0]["level"]) + (f" ({where})" if where else "")
            _curve(ax, _nums(curve, "epoch"), curve, probe, 1.0, COLORS[i % len(COLORS)], label)
        ax.set(title=title, xlabel="epoch", ylabel=unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(measured):]:
        ax.set_visible(False)
    axes[0].legend(title="corruption", fontsize="small")
    _title(fig, f"Implicit-regularization probes on the probe batch, {name}", rows)
    return fig
