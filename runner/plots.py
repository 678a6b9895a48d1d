"""The figures of `rethink report`, drawn from rows of the summary views (storage/summaries.py):
Zhang et al.'s Fig. 1a (learning curves per corruption), 1b (time to fit vs label corruption),
1c (test error vs label corruption), and the probe curves.

Figures are made for print: sized in inches at a paper's column widths, small fonts, no title
(the caption says what a figure shows; the page and the file name say which experiment), the
Okabe–Ito palette, and every line told apart by its marker and dash as well as its colour, so a
figure survives colour blindness and greyscale printing. Text from the store (model, corruption
and regularizer names in legends and axis labels) is drawn as plain text (`plain`): a `$` in it
never starts mathtext, which would mangle it or fail to draw. They use `matplotlib.figure.Figure`
with its Agg canvas, never pyplot: no global state, no display needed, nothing to close. Every
curve is the mean over seeds; the band around it is ±1 std over seeds, drawn only where there
are two seeds or more."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterable, Sequence

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, MaxNLocator

from rethink.text import visible

LEVELED = ("labels", "label_noise")  # corruption kinds that take a level p (tasks/spec.py)
KIND_ORDER = ("none", "labels", "label_noise", "shuffled_pixels", "random_pixels", "gaussian")
SETTING_PARTS = ("dataset", "model", "width", "init_scale", "regularizer")  # a setting, less corruption
CHANCE = {"cifar10": 10, "cifar100": 100}  # classes, for the chance line of Fig. 1c
PROBES = {  # column: y-axis label, the quantity then its unit or formula
    "act_sparsity": "activation sparsity\n(fraction of ReLUs at 0)",
    "jacobian_norm": "input-output Jacobian\n" r"$\|\partial f / \partial x\|_F$",
    "grad_sqnorm": "parameter-gradient norm\n" r"$\|\nabla_\theta f(x_i)\|^2$ summed over $i$",
    "functional_dim": "functional dimension\n" r"(rank of $\partial f / \partial \theta$)",
    "param_norm": "parameter norm\n" r"$\|\theta\|_2$",
}
FORMATS = ("png", "pdf", "svg")  # what `rethink report --format` may write
DPI = 300  # PNG resolution: print quality at the figures' physical size (7 in wide = 2,100 px)
# Okabe & Ito (2008), "Color Universal Design": told apart under every common colour-vision
# deficiency. Black first (the true-label baseline), yellow last (faint on white).
COLORS = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", ":", "-.")
RC = {
    "font.size": 8, "axes.labelsize": 8, "legend.fontsize": 7, "legend.title_fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.4, "lines.markersize": 4,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False,
    "text.usetex": False,  # never LaTeX, whatever a matplotlibrc says: store text is not TeX
    # PDF: TrueType (Type 42) fonts, embedded, instead of matplotlib's default Type 3: text stays
    # text (selectable, editable in Illustrator/Inkscape) and publishers' checks (IEEE, ACM)
    # that reject Type 3 fonts pass. ps.fonttype likewise for anyone saving EPS from a Figure.
    "pdf.fonttype": 42, "ps.fonttype": 42,
    # SVG: glyphs as paths, not <text> ('none'): the mathtext of the probe labels needs
    # DejaVu and Computer Modern glyphs that a browser or a journal's converter rarely has, and
    # substituted fonts change widths and overlap the layout. Paths look the same everywhere;
    # whoever needs editable text has the PDF.
    "svg.fonttype": "path", "svg.hashsalt": "rethink",  # fixed ids: the same figure, the same bytes
}
# No creation date or tool URL in the files: a report drawn twice from the same results is
# byte for byte the same figure.
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
            "svg": {"Creator": None, "Date": None}}

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


def plain(text: str) -> str:
    """Store text as a matplotlib label that shows as written: control characters visible (line
    breaks kept: a label may have two lines), and every `$` escaped, so no pair of them is
    parsed as mathtext (`$\\frac{` would fail to draw)."""
    return visible(text, keep="\n").replace("$", r"\$")


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


def spread_note(rows: list[Row], count: str = "seeds", spread: str = "band") -> str:
    """How many seeds each point averages, for a figure's caption (the figure has no title)."""
    counts = sorted({int(r[count]) for r in rows if r[count]})  # 0: nothing averaged there
    if not counts:
        return ""
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"Mean over {seeds} seeds; {spread} = ±1 std over seeds." if counts[-1] > 1 else f"One seed (no {spread})."


def _nums(rows: list[Row], column: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r[column] is None else scale * float(r[column]) for r in rows]


# ---- style -----------------------------------------------------------------------------------

def style(i: int) -> dict:
    """Line i's colour, marker and dash: each differs from its neighbours', and past eight lines
    the dash cycle shifts, so no two of the first 32 lines look the same even in grey."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": DASHES[(i + i // len(COLORS)) % len(DASHES)]}


class PlainTicks(Formatter):
    """Every tick label written whole, with no offset ('1e-5+1.245e-1') or shared multiplier
    ('×10⁶') above the axis, which a reader of a printed figure misses: plain decimals with the
    fewest digits that write every tick exactly ('0.25', not a rounded '0.2'), scientific
    ('2.5e7') only for magnitudes that plain decimals would make unreadable."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.format_ticks([x])[0]

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        values = list(values)
        biggest = max((abs(v) for v in values), default=0.0)
        scientific = biggest != 0 and not 1e-3 <= biggest < 1e6
        gaps = [abs(b - a) for a, b in zip(values, values[1:]) if b != a]
        tolerance = 1e-3 * min(gaps) if gaps else 1e-6 * biggest  # float noise in a tick, not a digit
        labels: list[str] = []
        for digits in range(12):
            labels = [_tick(v, digits, scientific) for v in values]
            if all(abs(float(label) - v) <= tolerance for label, v in zip(labels, values)):
                break
        return [self.fix_minus(label) for label in labels]  # a typographic minus, as matplotlib writes it


def _tick(value: float, digits: int, scientific: bool) -> str:
    if scientific and value != 0:
        mantissa, exponent = f"{value:.{digits}e}".split("e")
        text = f"{mantissa}e{int(exponent)}"
    else:
        text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text.split("e")[0]) == 0 else text  # no '-0.0'


def _readable(ax: Axes, integer_x: Sequence[float] | None = None) -> None:
    """Plain tick labels on both axes; with `integer_x` (epochs, steps), integer ticks on x, and
    an x range of at least two units around the data, so one measured epoch reads '1 2 3'
    with its point in the middle instead of '1.90 ... 2.10'."""
    ax.xaxis.set_major_formatter(PlainTicks())
    ax.yaxis.set_major_formatter(PlainTicks())
    if integer_x is None:
        return
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
    xs = [x for x in integer_x if not math.isnan(x)]
    if xs and max(xs) - min(xs) < 2:
        ax.set_xlim(min(xs) - 1, max(xs) + 1)


def _from_zero(ax: Axes, top: float | None = None) -> None:
    """A y axis from 0 up to `top`, or to a little above the highest point, band or error bar
    (set_ylim(bottom=0) alone keeps the top that autoscaling gave the data's own range, which
    can leave the highest marker cut in half at the frame)."""
    high = ax.dataLim.y1 if math.isfinite(ax.dataLim.y1) and ax.dataLim.y1 > 0 else 1.0
    ax.set_ylim(0, top if top is not None else 1.08 * high)


def _curve(ax: Axes, x: list[float], rows: list[Row], column: str, scale: float, look: dict, label: str) -> None:
    """A mean line with markers (about ten per line, so long curves stay readable) and, where the
    std exists, its ±1 std band; a single point gets an error bar instead, as a band needs two."""
    mean = _nums(rows, column, scale)
    std = _nums(rows, f"{column}_std", scale)
    has_std = any(not math.isnan(s) for s in std)
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=std if has_std else None, capsize=3, label=label, **look)
        return
    ax.plot(x, mean, label=label, markevery=max(1, len(x) // 10), **look)
    if has_std:
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        ax.fill_between(x, low, high, color=look["color"], alpha=0.15, linewidth=0)


def _legend(fig: Figure, axes: Sequence[Axes], title: str, spare: Axes | None = None) -> None:
    """One legend for the whole figure, never over data: in `spare` (an unused panel) if there
    is one, else right of the panels. Every line once, in drawing order; reference lines
    (budget, chance: labelled in REFERENCES) last."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    order = sorted(seen, key=lambda label: label.startswith(REFERENCES))  # stable: drawing order kept
    handles = [seen[label] for label in order]
    labels = [plain(label) for label in order]
    if spare is not None:
        spare.axis("off")
        spare.legend(handles, labels, title=title, loc="upper left")
    else:
        fig.legend(handles, labels, title=title, loc="outside right upper")


def _figure(rows: int, cols: int, width: float, height: float) -> Figure:
    """A figure of `rows` × `cols` panels, each `width` × `height` inches as printed."""
    fig = Figure(figsize=(width * cols, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _styled(draw: Callable[[list[Row]], Figure | None]) -> Callable[[list[Row]], Figure | None]:
    """Draw under RC: fonts and line widths are fixed when each artist is made."""

    @functools.wraps(draw)
    def drawn(rows: list[Row]) -> Figure | None:
        with rc_context(RC):
            return draw(rows)

    return drawn


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as a PNG (at DPI), PDF or SVG file's bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}")
    buf = io.BytesIO()
    with rc_context(RC):  # the font types are read when saving
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=METADATA[fmt])
    return buf.getvalue()


# ---- figures ---------------------------------------------------------------------------------

@_styled
def fig1a_learning_curves(rows: list[Row]) -> Figure | None:
    """Fig. 1a: training loss and train accuracy vs SGD steps, one line per corruption and
    level, one row of panels per setting (named on its left axis where several)."""
    if not rows:
        return None
    parts = varying(rows)
    settings = groups(rows, setting_of)
    curves = sorted(groups(rows, lambda r: (r["corruption"], r["level"])).values(), key=lambda g: corruption_order(g[0]))
    look = {(g[0]["corruption"], g[0]["level"]): style(i) for i, g in enumerate(curves)}
    fig = _figure(len(settings), 2, width=3.1, height=2.3)
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for (loss_ax, acc_ax), setting_rows in zip(axes, settings.values()):
        per_curve = groups(sorted(setting_rows, key=corruption_order), lambda r: (r["corruption"], r["level"]))
        steps: list[float] = []
        for key, curve in per_curve.items():
            curve.sort(key=lambda r: r["epoch"])
            x = _nums(curve, "step")
            steps += x
            _curve(loss_ax, x, curve, "train_loss", 1.0, look[key], corruption_label(*key))
            _curve(acc_ax, x, curve, "train_acc", 100.0, look[key], corruption_label(*key))
        where = setting_label(setting_rows[0], parts)
        loss_ax.set(xlabel="SGD steps", ylabel=(f"{plain(where)}\n" if where else "") + "training loss (nats)")
        acc_ax.set(xlabel="SGD steps", ylabel="train accuracy (%)", ylim=(-2, 102))
        _from_zero(loss_ax)
        for ax in (loss_ax, acc_ax):
            _readable(ax, integer_x=steps)
    _legend(fig, axes.ravel(), "corruption")
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


P_LABEL = "label corruption p (fraction of labels random)"
REFERENCES = ("training budget", "chance")  # labels of the reference lines, listed last in legends


@_styled
def fig1b_time_to_fit(rows: list[Row]) -> Figure | None:
    """Fig. 1b: epochs to reach the fit threshold vs label corruption, mean ± std over the
    seeds that fit; runs that never fit are written beside their point, not averaged in."""
    series = label_points(rows)
    if not series:
        return None
    parts = varying([r for g in series.values() for r in g])
    fig = _figure(1, 1, width=4.5, height=3.0)
    ax = fig.subplots()
    budget = max([int(r["epochs"]) for g in series.values() for r in g if r["epochs"]] or [1])  # most epochs trained
    lost = False
    for i, group in enumerate(series.values()):
        look = style(i)
        x = [_level(r) for r in group]
        ax.errorbar(x, _nums(group, "epochs_to_fit"), yerr=[0 if math.isnan(s) else s for s in _nums(group, "epochs_to_fit_std")],
                    capsize=3, label=setting_label(group[0], parts) or group[0]["model"], **look)
        for level, r in zip(x, group):
            if not r["never_fit"]:
                continue
            lost = True
            y = budget if r["epochs_to_fit"] is None else r["epochs_to_fit"]
            if r["epochs_to_fit"] is None:  # no seed fit: the series' marker, open and large, on the budget line
                ax.plot([level], [y], marker=look["marker"], markersize=8, markerfacecolor="none",
                        color=look["color"], linestyle="none")
            ax.annotate(f"{r['never_fit']}/{r['runs']} never fit", (level, y), textcoords="offset points",
                        xytext=(0, 8 + 9 * i), fontsize="small", color=look["color"],
                        ha="right" if level > 0.9 else "left" if level < 0.1 else "center")
    if lost:
        ax.axhline(budget, color="#777777", linestyle=(0, (6, 3)), linewidth=1,
                   label=f"training budget ({budget} epochs);\nopen marker: no seed fit")
    threshold = 100 * float(next(iter(series.values()))[0]["fit_threshold"] or 0.99)
    ax.set(xlabel=P_LABEL, ylabel=f"epochs to reach {threshold:g}% train acc.", xlim=(-0.05, 1.05))
    _from_zero(ax, budget * 1.3 if lost else None)  # room above the budget line for the notes
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _readable(ax)
    _legend(fig, [ax], "setting")
    return fig


@_styled
def fig1c_test_error(rows: list[Row]) -> Figure | None:
    """Fig. 1c: final test error (%) vs label corruption, mean ± std over seeds, with the
    chance level when the dataset's class count is known."""
    series = label_points(rows)
    if not series:
        return None
    parts = varying([r for g in series.values() for r in g])
    fig = _figure(1, 1, width=4.5, height=3.0)
    ax = fig.subplots()
    for i, group in enumerate(series.values()):
        error = [100 - v for v in _nums(group, "test_acc", 100.0)]
        std = [0 if math.isnan(s) else s for s in _nums(group, "test_acc_std", 100.0)]
        ax.errorbar([_level(r) for r in group], error, yerr=std, capsize=3,
                    label=setting_label(group[0], parts) or group[0]["model"], **style(i))
    datasets = {r["dataset"] for g in series.values() for r in g}
    if len(datasets) == 1 and (classes := CHANCE.get(datasets.pop())):
        ax.axhline(100 * (1 - 1 / classes), color="#777777", linestyle=(0, (1, 2)), linewidth=1,
                   label=f"chance ({classes} classes)")
    ax.set(xlabel=P_LABEL, ylabel="test error (%)", xlim=(-0.05, 1.05), ylim=(-2, 102))
    _readable(ax)
    _legend(fig, [ax], "setting")
    return fig


@_styled
def probe_curves(rows: list[Row]) -> Figure | None:
    """One panel per probe that was measured: its mean over seeds vs epoch, one line per
    corruption (and setting, where several), one legend for all panels."""
    measured = [p for p in PROBES if any(r[p] is not None for r in rows)]
    if not measured:
        return None
    parts = varying(rows)
    curves = groups(sorted(rows, key=lambda r: (setting_of(r), corruption_order(r), r["epoch"])),
                    lambda r: (*setting_of(r), r["corruption"], r["level"]))
    cols = min(3, len(measured))
    n_rows = math.ceil(len(measured) / cols)
    fig = _figure(n_rows, cols, width=2.4, height=2.0)
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    epochs = [float(r["epoch"]) for r in rows]
    for ax, probe in zip(axes, measured):
        for i, curve in enumerate(curves.values()):
            where = setting_label(curve[0], parts)
            label = corruption_label(curve[0]["corruption"], curve[0]["level"]) + (f" ({where})" if where else "")
            _curve(ax, _nums(curve, "epoch"), curve, probe, 1.0, style(i), label)
        ax.set(xlabel="epoch", ylabel=PROBES[probe])
        _readable(ax, integer_x=epochs)
    for ax in axes[len(measured) + 1:]:
        ax.set_visible(False)
    spare = axes[len(measured)] if len(axes) > len(measured) else None
    _legend(fig, axes[:len(measured)], "corruption", spare)
    return fig
