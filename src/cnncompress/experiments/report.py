"""Tables (stdout, markdown, CSV, JSON) of a bench run; its figures are drawn by ``bench_figures``.

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
import statistics
from pathlib import Path

from cnncompress.experiments import stats

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
        if row.get("collapsed"):
            return "COLLAPSED (at chance)"
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


NOTES = ("acc %: the deployed model (.ccz loaded back, deploy.to_inference: int8 in onnxruntime, XNOR bit-packed) "
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

