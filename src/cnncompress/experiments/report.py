"""Tables (stdout, markdown, CSV, JSON) and figures (error curves, accuracy vs size, accuracy vs latency).

Speed-ups are quoted against the *faster* fp32 baseline runtime of the same model (PyTorch or onnxruntime),
and each row's own best runtime; ``x smaller`` is baseline ``.ccz`` bytes / row ``.ccz`` bytes (the baseline of the
same seed when the sweep has several). Rows that differ only in their seed are shown as one line, ``mean ± std``
(sample std over the seeds, column ``seeds``); ``results.csv``/``results.json`` keep every seed's row. When rows
ran on more than one machine (or through Ray) the table has a ``node`` column: where the timings were measured.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

COLUMNS = [
    ("model", "model"), ("label", "method"), ("train_ms_step", "train ms/step"), ("epoch_s", "s/epoch"),
    ("torch_ms", "torch ms"), ("ort_ms", "ort ms"), ("speedup", "speed-up"), ("size_mb", "size MB"),
    ("x_smaller", "x smaller"), ("mem_train_mb", "mem train MB"), ("mem_infer_mb", "mem infer MB"),
    ("accuracy", "acc %"), ("size_real", "size"), ("speed_real", "speed"),
]


def best_ms(row: dict) -> float | None:
    """A row's faster batch-1 latency (PyTorch or onnxruntime), ms; None when neither was measured."""
    values = [v for v in (row.get("torch_ms"), row.get("ort_ms")) if v]
    return min(values) if values else None


def add_ratios(rows: list[dict]) -> list[dict]:
    """Speed-up vs the faster baseline runtime and size ratio vs the baseline file, per model (and seed)."""
    good = [r for r in rows if r.get("method") == "baseline" and "error" not in r]
    baselines = {r["model"]: r for r in good}
    seeded = {(r["model"], r.get("seed", 0)): r for r in good}
    for row in rows:
        base = seeded.get((row["model"], row.get("seed", 0))) or baselines.get(row["model"])
        if "error" in row:
            continue
        row["size_mb"] = row["file_bytes"] / 1e6
        if base:
            # the baseline timed right after this row (same minute) where available, else the baseline row
            paired = {"torch_ms": row.get("baseline_torch_ms"), "ort_ms": row.get("baseline_ort_ms")}
            best, base_best = best_ms(row), best_ms(paired) or best_ms(base)
            row["speedup"] = base_best / best if best and base_best else None
            row["x_smaller"] = base["file_bytes"] / row["file_bytes"]
            row["baseline_runtime"] = "onnxruntime" if base.get("ort_ms") and base["ort_ms"] < base["torch_ms"] else "torch"
    return rows


def _number(value, key: str) -> str:
    if key in ("speedup", "x_smaller"):
        return f"{value:.2f}x"
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
    """Rows that differ only in ``seed`` -> one row with the mean of every number and ``<key>_std`` (sample std).

    Error rows stay on their own line. Order: where each group's first row was."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        ident = json.dumps([row.get("model"), row.get("method"), row.get("label"), row.get("config"),
                            row.get("finetune_epochs"), "error" in row and row.get("key")], sort_keys=True, default=str)
        groups.setdefault(ident, []).append(row)
    out = []
    for members in groups.values():
        if len(members) == 1 or "error" in members[0]:
            out.extend(members)
            continue
        merged = dict(members[0], seeds=len(members), seed=[m.get("seed") for m in members])
        for key, value in members[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
                values = [m.get(key) for m in members]
                if all(isinstance(v, (int, float)) for v in values):
                    merged[key] = statistics.fmean(values)
                    merged[f"{key}_std"] = statistics.stdev(values)
        nodes = sorted({_node(m) for m in members})
        merged["node"], merged["ray_node"] = (nodes[0], "") if len(nodes) == 1 else (f"{len(nodes)} nodes", "")
        out.append(merged)
    return out


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    columns = list(COLUMNS)
    if any(r.get("seeds", 1) > 1 for r in rows):
        columns.insert(2, ("seeds", "seeds"))
    if any(r.get("ray_node") for r in rows) or len({r.get("node") for r in rows if "node" in r}) > 1:
        columns.append(("node", "node"))
    return columns


def _cells(row: dict, columns) -> list[str]:
    if "error" in row:
        return [row["model"], row["label"], "error: " + row["error"][:60]] + [""] * (len(columns) - 3)
    return [(_node(row) if key == "node" else _format(row.get(key), key, row.get(f"{key}_std")))
            for key, _ in columns]


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


NOTES = ("Speed-up: the faster fp32 baseline runtime (PyTorch or onnxruntime), re-timed right after the row, / "
         "this row's faster runtime, batch 1, median. Size: bytes of the real .ccz file on disk. `size`/`speed` = real: the saving is "
         "measured on real bytes / a real kernel; simulated: only counted, not realised on this CPU; none: no "
         "speed-up claimed.")


def write_outputs(rows: list[dict], out: str | Path, env: dict, recipe_source: str) -> None:
    out = Path(out)
    add_ratios(rows)
    flat_keys = [k for k, _ in COLUMNS] + ["seed", "node", "ray_node", "accuracy_inference_model", "torch_layout",
                                           "throughput_b32", "params",
                                           "file_bytes", "payload_bytes", "ort_error", "ccz", "config", "error"]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=flat_keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(row[k]) if isinstance(row.get(k), dict) else row.get(k)) for k in flat_keys})
    (out / "results.json").write_text(json.dumps({"environment": env, "recipe": recipe_source, "rows": rows},
                                                 indent=1, default=str))
    (out / "table.md").write_text("\n".join(table_lines(rows) + ["", NOTES, "",
                                  f"Measured on {env.get('cpu')} ({env.get('cores')} cores), torch {env.get('torch')}, "
                                  f"onnxruntime {env.get('onnxruntime')}, commit {env.get('git_commit')}."]) + "\n")
    plot_all(rows, out)


def plot_all(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    good = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in good:
        history = row.get("history") or []
        if history and "test_error" in history[0]:
            ax.plot([h["epoch"] for h in history], [100 * h["test_error"] for h in history], marker=".",
                    label=f"{row['model']}/{row['label']}")
    ax.set_xlabel("epoch"), ax.set_ylabel("test error (%)"), ax.set_title("Per-epoch test error")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout(), fig.savefig(out / "error_curves.png", dpi=100), plt.close(fig)
    for key, xlabel, name in (("size_mb", "size on disk (MB, log)", "accuracy_vs_size.png"),
                              ("best_ms", "batch-1 latency, faster runtime (ms, log)", "accuracy_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for row in good:
            x = row.get(key) if key != "best_ms" else best_ms(row)
            if x:
                ax.scatter(x, row["accuracy"])
                ax.annotate(f"{row['model'][:3]}/{row['label']}", (x, row["accuracy"]), fontsize=6)
        ax.set_xscale("log"), ax.set_xlabel(xlabel), ax.set_ylabel("accuracy (%)")
        fig.tight_layout(), fig.savefig(out / name, dpi=100), plt.close(fig)
