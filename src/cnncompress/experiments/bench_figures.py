"""The error curve of one training run (``plot_history``: ``cnncompress train`` writes it as ``error_curve.png``) and
the bench run's figures (Rassadin & Savchenko Figs. 1-6 in form): per-model training and validation error per
epoch (``error_curves_<model>.png``: the baseline, its matched controls and every row's fine-tuning, continued
from the baseline's best epoch), and accuracy against ``.ccz`` size and against batch-1 latency
(``accuracy_vs_size.png``, ``accuracy_vs_latency.png``: one numbered marker per table line, the same numbers as
the table, a dashed Pareto front per model). Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

import math
from pathlib import Path

from cnncompress.training.trainer import best_record
from cnncompress.experiments.report import best_ms, group_seeds


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (smaller x, higher y), sorted by x."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front

MARKERS = ("o", "s", "^", "D", "v", "P")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _log_ticks(axis, low: float, high: float) -> None:
    """Log-scale ticks written as plain numbers (0.05, 0.1, 0.2, ... 20): at 1, 2, 5 x 10^k, every digit when
    the axis spans less than a decade (``low``..``high``), decades only when it spans more than three."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    span = high / low if low > 0 else 1e9
    subs = tuple(range(1, 10)) if span < 10 else ((1.0, 2.0, 5.0) if span < 1000 else (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(NullFormatter())


def _numbered(rows: list[dict]) -> list[tuple[int, dict]]:
    """Table lines (seeds grouped) numbered 1.. in table order: the same number in every figure's legend."""
    return list(enumerate([r for r in group_seeds(rows) if "error" not in r], start=1))


def _style(models: list[str], model: str) -> tuple[str, str]:
    index = models.index(model)
    return f"C{index % 10}", MARKERS[index % len(MARKERS)]


def _scatter(numbered, value, xlabel: str, title: str, path: Path) -> None:
    from matplotlib.lines import Line2D
    plt = _pyplot()
    models = list(dict.fromkeys(row["model"] for _, row in numbered))
    fig, ax = plt.subplots(figsize=(12, 6.5))
    ax.set_xscale("log")
    handles, fronts, xs, labels = [], [], [], []
    for model in models:
        color, marker = _style(models, model)
        points = []
        for number, row in numbered:
            x = value(row)
            if row["model"] != model or not x:
                continue
            y, baseline = row["accuracy"], row.get("method") == "baseline"
            points.append((x, y))
            xs.append(x)
            ax.errorbar(x, y, yerr=row.get("accuracy_std"), fmt="*" if baseline else marker, color=color,
                        markersize=17 if baseline else 8, markeredgecolor="black" if baseline else color, capsize=3)
            labels.append((number, x, y))
            handles.append((number, Line2D([], [], linestyle="", marker="*" if baseline else marker, color=color,
                                           markersize=10 if baseline else 6,
                                           label=f"{number}. {model} / {row['label']}: {y:.1f}%"
                                                 + (" (baseline)" if baseline else ""))))
        front = pareto(points)
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", linestyle="--", color=color, alpha=0.6)
            fronts.append(Line2D([], [], linestyle="--", color=color, label=f"{model}: Pareto front"))
    handles = [h for _, h in sorted(handles, key=lambda item: item[0])] + fronts
    if xs:
        _log_ticks(ax.xaxis, min(xs), max(xs))
    _annotate(ax, labels)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel(xlabel), ax.set_ylabel("accuracy, deployed model, test split (%)"), ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def _annotate(ax, labels: list[tuple[int, float, float]], gap: float = 12.0) -> None:
    """Each marker's number beside it; a number that would land on one already placed moves up until it is free."""
    ax.figure.canvas.draw()  # fixes the axes limits, so data -> pixel positions are final
    placed: list[tuple[float, float]] = []
    for number, x, y in labels:
        px, py = ax.transData.transform((x, y))
        lift = 0.0
        while any(abs(px - qx) < gap * 1.5 and abs(py + lift - qy) < gap for qx, qy in placed):
            lift += gap
        placed.append((px, py + lift))
        ax.annotate(str(number), (x, y), xytext=(6, 5 + lift * 72 / ax.figure.dpi), textcoords="offset points",
                    fontsize=9, weight="bold")


def _curve(ax, history: list[dict], start: int, color: str, marker: str, width: float = 1.5,
           origin: dict | None = None) -> list[float]:
    """Plot validation (solid) and training (dashed) error of ``history`` at epochs ``start + epoch``, from the
    ``origin`` record at ``start`` (the baseline epoch whose weights fine-tuning started from); returns the y
    values."""
    points = ([(start, origin)] if origin else []) + [(start + h["epoch"], h) for h in history]
    drawn = []
    for key, style in (("val_error", "-"), ("train_error", "--")):
        line = [(x, max(100 * h[key], 0.05)) for x, h in points if key in h]
        if line:
            ax.plot([x for x, _ in line], [y for _, y in line], linestyle=style, marker=marker, color=color,
                    linewidth=width, markersize=5)
            drawn += [y for _, y in line]
    return drawn


def _error_curves(numbered, model: str, path: Path) -> None:
    """Training and validation error per epoch of ``model``'s baseline, its matched controls and every row
    (first seed of each): fine-tuning epochs continue after the baseline's (Rassadin & Savchenko Figs. 1-6)."""
    from matplotlib.lines import Line2D
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 6.5))
    from matplotlib.ticker import MaxNLocator
    handles, controls, start, origin, ys = [], {}, 0, None, []
    mine = [(n, r) for n, r in numbered if r["model"] == model]
    for index, (number, row) in enumerate(mine):
        baseline = row.get("method") == "baseline"
        color, marker = ("black", "o") if baseline else (f"C{index % 10}", MARKERS[index % len(MARKERS)])
        history = row.get("history") or []
        if baseline:
            start = len(history)
            origin = best_record(history)
        ys += _curve(ax, history, 0 if baseline else row.get("start_epoch", start), color, marker,
                     2.5 if baseline else 1.5, None if baseline else origin)
        note = "" if baseline or history else " (no fine-tuning)"
        handles.append(Line2D([], [], color=color, marker=marker, label=f"{number}. {row['label']}{note}"))
        control = row.get("control") or {}
        if control.get("history") and control["epochs"] not in controls:
            controls[control["epochs"]] = control
    for index, (epochs, control) in enumerate(sorted(controls.items())):
        shade, marker = ("grey", "dimgrey", "darkgrey")[index % 3], ("x", "+", "1")[index % 3]
        ys += _curve(ax, control["history"], start, shade, marker, 1.0, origin)
        handles.append(Line2D([], [], color=shade, marker=marker, label=f"control: baseline +{epochs} ep"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles += [Line2D([], [], color="black", linestyle="-", label="solid: validation error"),
                Line2D([], [], color="black", linestyle="--", label="dashed: training error (fixed train subset)")]
    ax.set_yscale("log")
    if ys:
        _log_ticks(ax.yaxis, min(ys), max(ys))
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("epoch (baseline epochs, then each row's fine-tuning epochs, from the baseline's best epoch)")
    ax.set_ylabel("error (%, log)")
    ax.set_title(f"{model}: training and validation error per epoch")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def plot_all(rows: list[dict], out: Path) -> list[Path]:
    """``error_curves_<model>.png`` per model, ``accuracy_vs_size.png``, ``accuracy_vs_latency.png``."""
    numbered = _numbered(rows)
    paths = []
    for model in dict.fromkeys(row["model"] for _, row in numbered):
        paths.append(out / f"error_curves_{model}.png")
        _error_curves(numbered, model, paths[-1])
    for value, xlabel, name in ((lambda r: r.get("size_mb"), "size of the .ccz file on disk (MB, log)",
                                 "accuracy_vs_size.png"),
                                (best_ms, "batch-1 latency, faster runtime (ms, log)", "accuracy_vs_latency.png")):
        paths.append(out / name)
        _scatter(numbered, value, xlabel, f"Accuracy vs {name.split('_vs_')[1][:-4]} (one marker per row; "
                 "star: baseline; dashed: Pareto front)", paths[-1])
    return paths


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Per-epoch training and validation error (%) and training loss, to PNG; the best validation epoch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label, style in (("train_error", "training error %", "--"), ("val_error", "validation error %", "-")):
        points = [(h["epoch"], 100 * h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), style, marker="o", label=label)
    best = best_record(history)
    if best is not None:
        ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best validation epoch {best['epoch']}")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["train_loss"] for h in history], color="tab:green", linestyle="-.", alpha=0.6,
             label="training loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("error (%)"), ax2.set_ylabel("training loss")
    ax.set_title(title)
    handles = [h for axis in (ax, ax2) for h in axis.get_legend_handles_labels()[0]]
    ax2.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
