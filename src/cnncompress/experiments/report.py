"""Tables (stdout, markdown, CSV, JSON) and figures (per-model error curves, accuracy vs size, accuracy vs
latency).

Accuracy is the deployed model's (the ``.ccz`` loaded back and ``to_inference``d) on the test split; ``Δ acc``
is against the row's matched control (the baseline trained as many epochs in all), with a 95 % paired bootstrap
interval over test images and seeds (``stats.delta_interval``); "within noise" when the interval covers 0.
Speed-ups are quoted against the baseline on its fastest fp32 engine (``engine_race``: PyTorch, onnxruntime,
OpenVINO f32), and each row on its fastest engine at its own precision; ``x smaller`` is baseline ``.ccz``
bytes / row ``.ccz`` bytes (the baseline of the same seed when the sweep has several). Rows that differ only in
their seed are shown as one line, ``mean ± std`` (sample std over the seeds, column ``seeds``);
``results.csv``/``results.json`` keep every seed's row, and ``results.json`` also the grouped lines (``summary``).
When rows ran on more than one machine (or through Ray) the table has a ``node`` column: where the timings were
measured.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from . import stats

COLUMNS = [
    ("model", "model"), ("label", "method"), ("total_finetune", "ft ep"), ("train_ms_step", "train ms/step"),
    ("epoch_s", "s/epoch"), ("torch_ms", "torch ms"), ("ort_ms", "ort ms"), ("engine", "fastest engine"),
    ("speedup", "speed-up"),
    ("size_mb", "size MB"), ("x_smaller", "x smaller"), ("mem_train_mb", "mem train MB"),
    ("mem_infer_mb", "mem infer MB"), ("accuracy", "acc % (test)"), ("control_accuracy", "control %"),
    ("delta_ci", "Δ acc [95% CI]"), ("noise", "noise"), ("size_real", "size"), ("speed_here", "speed"),
]
BULKY = ("correct", "history", "control")  # per-image bits and curves: in rows, not in the summary


def best_ms(row: dict) -> float | None:
    """A row's faster batch-1 latency (PyTorch or onnxruntime), ms; None when neither was measured."""
    values = [v for v in (row.get("torch_ms"), row.get("ort_ms")) if v]
    return min(values) if values else None


def speed_here(claimed: str | None, speedup: float | None) -> str | None:
    """The speed label a row earns at the size it ran: a method that claims a real speed-up (a faster kernel,
    less arithmetic) but measured slower than the fastest fp32 engine here says so."""
    if claimed == "real" and speedup is not None and speedup < 1.0:
        return "none here (slower)"
    return claimed


def add_ratios(rows: list[dict]) -> list[dict]:
    """Speed-up vs the faster baseline runtime, size ratio vs the baseline file (per model and seed), and the
    matched control's accuracy (``control_accuracy``)."""
    good = [r for r in rows if r.get("method") == "baseline" and "error" not in r]
    baselines = {r["model"]: r for r in good}
    seeded = {(r["model"], r.get("seed", 0)): r for r in good}
    for row in rows:
        base = seeded.get((row["model"], row.get("seed", 0))) or baselines.get(row["model"])
        if "error" in row:
            continue
        row["size_mb"] = row["file_bytes"] / 1e6
        if "control" in row:
            row["control_accuracy"] = row["control"]["accuracy"]
        if base:
            # the engine race (row on every engine of its precision, baseline on every fp32 engine, interleaved
            # right after the row); rows without one (early exits, timed per image): PyTorch / onnxruntime
            paired = {"torch_ms": row.get("baseline_torch_ms"), "ort_ms": row.get("baseline_ort_ms")}
            if row.get("engine_ms") and row.get("baseline_engine_ms"):
                best, base_best = row["engine_ms"], row["baseline_engine_ms"]
                row["baseline_runtime"] = row["baseline_engine"]
            else:
                best, base_best = best_ms(row), best_ms(paired) or best_ms(base)
                row["engine"] = row.get("engine") or ("onnxruntime" if row.get("ort_ms") and row.get("torch_ms")
                                                      and row["ort_ms"] < row["torch_ms"] else "torch")
                row["baseline_runtime"] = ("onnxruntime" if base.get("ort_ms") and base["ort_ms"] < base["torch_ms"]
                                           else "torch")
            row["speedup"] = base_best / best if best and base_best and row is not base else None
            row["x_smaller"] = base["file_bytes"] / row["file_bytes"]
            row["speed_here"] = speed_here(row.get("speed_real"), row["speedup"])
    return rows


def interval(members: list[dict]) -> dict | None:
    """The 95 % bootstrap interval of Δaccuracy for rows that differ only in their seed (None: no control)."""
    pairs = [(stats.unpack(m["correct"], m["images"]), stats.unpack(m["control"]["correct"], m["control"]["images"]))
             for m in members if "control" in m and "correct" in m]
    return stats.delta_interval(pairs) if pairs and len(pairs) == len(members) else None


def _number(value, key: str) -> str:
    if key in ("speedup", "x_smaller"):
        return f"{value:.2f}x"
    if key == "exit_rate":
        return f"{100 * value:.0f}"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"


def _format(value, key: str, std=None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return _number(value, key) + (f" ± {_number(std, key).rstrip('x')}" if std is not None else "")
    return str(value)


def _node(row: dict) -> str:
    return row.get("node", "") + (f"/{row['ray_node']}" if row.get("ray_node") else "")


def group_seeds(rows: list[dict]) -> list[dict]:
    """Rows that differ only in ``seed`` -> one row with the mean of every number, ``<key>_std`` (sample std)
    and the Δaccuracy interval over all of them (``delta``, ``ci_low``, ``ci_high``, ``within_noise``).

    Error rows stay on their own line. Order: where each group's first row was."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        ident = json.dumps([row.get("model"), row.get("method"), row.get("label"), row.get("config"),
                            row.get("finetune_epochs"), "error" in row and row.get("key")], sort_keys=True, default=str)
        groups.setdefault(ident, []).append(row)
    out = []
    for members in groups.values():
        if "error" in members[0]:
            out.extend(members)
            continue
        merged = dict(members[0], seeds=len(members), seed=[m.get("seed") for m in members])
        if len(members) > 1:
            for key, value in members[0].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
                    values = [m.get(key) for m in members]
                    if all(isinstance(v, (int, float)) for v in values):
                        merged[key] = statistics.fmean(values)
                        merged[f"{key}_std"] = statistics.stdev(values)
            nodes = sorted({_node(m) for m in members})
            merged["node"], merged["ray_node"] = (nodes[0], "") if len(nodes) == 1 else (f"{len(nodes)} nodes", "")
        ci = interval(members)
        if ci:
            merged.update(delta=ci["delta"], ci_low=ci["low"], ci_high=ci["high"], within_noise=ci["within_noise"])
        out.append(merged)
    return out


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    columns = list(COLUMNS)
    if any(r.get("seeds", 1) > 1 for r in rows):
        columns.insert(2, ("seeds", "seeds"))
    if any(r.get("exit_rate") is not None for r in rows):
        columns.insert(columns.index(("noise", "noise")) + 1, ("exit_rate", "exit %"))
    if any(r.get("ray_node") for r in rows) or len({r.get("node") for r in rows if "node" in r}) > 1:
        columns.append(("node", "node"))
    return columns


def _cell(row: dict, key: str) -> str:
    if key == "node":
        return _node(row)
    if key in ("control_accuracy", "delta_ci", "speedup") and row.get("method") == "baseline":
        return "-"
    if key == "delta_ci":
        return "n/a" if "delta" not in row else f"{row['delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    if key == "noise":
        return "" if "delta" not in row else ("within noise" if row["within_noise"] else "")
    if key == "exit_rate" and row.get("exit_rate") is None:
        return ""
    return _format(row.get(key), key, row.get(f"{key}_std"))


def _cells(row: dict, columns) -> list[str]:
    if "error" in row:
        return [row["model"], row["label"], "error: " + row["error"][:60]] + [""] * (len(columns) - 3)
    return [_cell(row, key) for key, _ in columns]


def table_lines(rows: list[dict]) -> list[str]:
    rows = group_seeds(rows)
    columns = _columns(rows)
    header = [title for _, title in columns]
    body = [_cells(row, columns) for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(cells) + " |" for cells in body]


def text_table(rows: list[dict]) -> str:
    rows = group_seeds(rows)
    columns = _columns(rows)
    cells = [[title for _, title in columns]] + [_cells(row, columns) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


NOTES = ("acc %: the deployed model (.ccz loaded back, methods.to_inference: int8 in onnxruntime, XNOR bit-packed) "
         "on the test split, used once; training-form accuracy in results.json. Fine-tuning ends on the best epoch "
         "of the val split (carved from train). control %: the baseline trained as many epochs in all as the row "
         "(baseline + `ft ep` fine-tuning epochs, same fine-tuning config and seed), uncompressed. Δ acc: row - "
         "control, 95% paired bootstrap interval over test images and seeds; \"within noise\" when it covers 0. "
         "Speed-up: the baseline on the fastest fp32 engine (PyTorch NCHW/channels_last, onnxruntime, OpenVINO "
         "f32) / the row on its fastest engine at its own precision (`fastest engine`; int8 rows on the int8 "
         "engines), batch 1, medians of one interleaved race right after the row (early exits: PyTorch, mean over "
         "every test image at batch 1, baseline timed the same way; exit %: samples that stopped at the early "
         "exit). Size: bytes of the real .ccz file on disk. `size`/`speed` = real: the .ccz is smaller / the "
         "deployed model does less dense arithmetic (a faster kernel, smaller layers, early exits); simulated: "
         "only counted; none: no saving claimed; \"none here (slower)\": the method's kernel is real but measured "
         "slower than the fastest fp32 engine at this input size.")


def summary(rows: list[dict]) -> list[dict]:
    """The table's lines as records (seeds grouped, interval added, per-image bits and curves left out)."""
    return [{k: v for k, v in row.items() if k not in BULKY} for row in group_seeds(rows)]


def write_outputs(rows: list[dict], out: str | Path, env: dict, recipe_source: str, splits: dict | None = None) -> None:
    out = Path(out)
    add_ratios(rows)
    flat_keys = [k for k, _ in COLUMNS if k not in ("delta_ci", "noise")] + [
        "exit_rate", "seed", "node", "ray_node", "accuracy_training_form", "accuracy_split", "delta",
        "latency_protocol", "torch_layout", "throughput_b32", "params", "dense_macs", "file_bytes", "payload_bytes",
        "ort_error", "ccz", "config", "data_given", "error"]
    for row in rows:
        if "control" in row and "accuracy" in row:
            row["delta"] = row["accuracy"] - row["control"]["accuracy"]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=flat_keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(row[k]) if isinstance(row.get(k), dict) else row.get(k)) for k in flat_keys})
    (out / "results.json").write_text(json.dumps({
        "environment": env, "recipe": recipe_source, "splits": splits or {}, "notes": NOTES,
        "summary": summary(rows), "rows": rows}, indent=1, default=str))
    (out / "table.md").write_text("\n".join(table_lines(rows) + ["", NOTES, "",
                                  f"Measured on {env.get('cpu')} ({env.get('cores')} cores), torch {env.get('torch')}, "
                                  f"onnxruntime {env.get('onnxruntime')}, commit {env.get('git_commit')}."]) + "\n")
    plot_all(rows, out)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (smaller x, higher y), sorted by x."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def row_line(row: dict) -> str:
    """One line about a finished row (what a non-interactive run prints)."""
    name = f"{row['model']}/{row['label']}"
    if "error" in row:
        return f"{name} failed: {row['error']}"
    parts = [f"acc {row['accuracy']:.2f}%"]
    if "control" in row:
        parts[0] += f" (control +{row['control']['epochs']} ep {row['control']['accuracy']:.2f}%)"
    if row.get("exit_rate") is not None:
        parts.append(f"exit rate {100 * row['exit_rate']:.0f}%")
    times = [t for t in (row.get("torch_ms"), row.get("ort_ms")) if t]
    base = [t for t in (row.get("baseline_torch_ms"), row.get("baseline_ort_ms")) if t]
    if row.get("engine_ms") and row.get("baseline_engine_ms") and row.get("method") != "baseline":
        parts.append(f"{row['baseline_engine_ms'] / row['engine_ms']:.2f}x speed ({row['engine']} vs "
                     f"{row['baseline_engine']})")
    elif times and base and row.get("method") != "baseline":
        parts.append(f"{min(base) / min(times):.2f}x speed")
    parts.append(f"{row['file_bytes'] / 1e6:.2f} MB, {row.get('row_seconds', 0):.0f}s")
    return f"{name}: " + ", ".join(parts)


# ---------------------------------------------------------------- figures
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
            scored = [h for h in history if "val_error" in h]
            origin = min(scored, key=lambda h: (h["val_error"], -h["epoch"])) if scored else None
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
