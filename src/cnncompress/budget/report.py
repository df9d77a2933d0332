"""What ``cnncompress optimize`` writes: ``report.md`` (budget, chosen per-layer settings, predicted vs measured
bytes, accuracy and latency of every candidate), ``report.json`` and ``pareto.png`` (every candidate measured:
bytes against validation accuracy, latency beside each point, the Pareto front of (bytes, ms, accuracy) marked)."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: str | Path) -> Path:
    """Markdown: budget, chosen per-layer settings, predicted vs measured bytes and accuracy, every candidate."""
    path = Path(path)
    lines = [f"# optimize: budget {report['budget_bytes']:,} bytes"
             + (f", {report['budget_ms']:g} ms" if report.get("budget_ms") else ""),
             "", f"original: {report['original_bytes']:,} bytes", ""]
    if report.get("folded_norms"):
        lines += [f"BatchNorms folded into their convs first: {', '.join(report['folded_norms'])}", ""]
    if report.get("chosen") == "original":
        lines.append(report["reason"])
    else:
        chosen = report["chosen"]
        predicted = chosen.get("predicted")
        lines += [f"chosen: {chosen.get('pipeline', 'per-layer settings')}, {chosen['measured']['bytes']:,} bytes"
                  + (f" (predicted {predicted['bytes']:,})" if predicted else "")
                  + f", validation accuracy {chosen['measured']['accuracy']:.2f}%"
                  + (f" (predicted before fine-tuning {predicted['accuracy']:.2f}%)" if predicted else "")
                  + f", {chosen['latency_ms']:.3f} ms on {chosen['engine']}"
                  + (f" (predicted {chosen['predicted_ms']:.3f} ms, {_error(chosen)})"
                     if chosen.get("predicted_ms") is not None else "")
                  + (f" (original: {report['original_ms']['ms']:.3f} ms on {report['original_ms']['engine']})"
                     if report.get("original_ms") else ""),
                  "", "| layer | setting |", "|---|---|"]
        lines += [f"| {p} | {s} |" for p, s in report["settings"].items()]
        lines += ["", "| candidate | target bytes | predicted bytes | measured bytes | predicted acc | measured acc | "
                      "predicted ms | measured ms (engine) |", "|---|---|---|---|---|---|---|---|"]
        for c in report["candidates"]:
            if "skipped" in c:
                lines.append(f"| {c['pipeline']} | skipped: {c['skipped']} | | | | | | |")
                continue
            p, m = c.get("predicted"), c["measured"]
            name = c.get("pipeline") or f"per-layer attempt {c['attempt']}"
            target = f"{c['target_bytes']:,}" if "target_bytes" in c else "—"
            p_bytes, p_acc = (f"{p['bytes']:,}", f"{p['accuracy']:.2f}") if p else ("—", "—")
            ms = f"{c['latency_ms']:.3f} ({c['engine']})" if "latency_ms" in c else "—"
            p_ms = f"{c['predicted_ms']:.3f}" if c.get("predicted_ms") is not None else "—"
            lines.append(f"| {name} | {target} | {p_bytes} | {m['bytes']:,} | {p_acc} | {m['accuracy']:.2f} | {p_ms} "
                         f"| {ms} |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    if report.get("chosen") != "original":
        pareto_figure(report, path.with_name("pareto.png"))
    return path


def _error(entry: dict) -> str:
    """Predicted vs measured latency as a signed percentage of the measurement."""
    return f"{100 * (entry['predicted_ms'] - entry['latency_ms']) / entry['latency_ms']:+.0f} %"


def pareto_front(candidates: list[dict]) -> list[dict]:
    """The candidates no other one beats: none smaller (or as small), faster (or as fast) and at least as
    accurate, with one strictly better. Candidates without a latency compare on bytes and accuracy alone."""
    timed = [c for c in candidates if "measured" in c]

    def key(c):
        return c["measured"]["bytes"], c.get("latency_ms", 0.0), -c["measured"]["accuracy"]

    return [c for c in timed
            if not any(all(a <= b for a, b in zip(key(o), key(c))) and key(o) != key(c) for o in timed)]


def pareto_figure(report: dict, path: str | Path) -> Path:
    """Every measured candidate: file bytes (log) against validation accuracy, its latency written beside it, those
    on the Pareto front of (bytes, ms, accuracy) in blue, the chosen one ringed, the byte budget dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    candidates = [c for c in report["candidates"] if "measured" in c]
    front = pareto_front(candidates)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c in candidates:
        x, y = c["measured"]["bytes"], c["measured"]["accuracy"]
        ax.scatter(x, y, color="tab:blue" if c in front else "tab:gray", zorder=3,
                   label="on the Pareto front (bytes, ms, accuracy)" if c is front[0] else None)
        name = c.get("pipeline") or f"per-layer {c.get('attempt', '')}"
        ms = f", {c['latency_ms']:.3f} ms" if "latency_ms" in c else ""
        ax.annotate(name + ms, (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
    chosen = report.get("chosen")
    if isinstance(chosen, dict):
        ax.scatter(chosen["measured"]["bytes"], chosen["measured"]["accuracy"], s=160, facecolors="none",
                   edgecolors="tab:red", zorder=4, label="chosen")
    ax.axvline(report["budget_bytes"], color="tab:red", ls="--", lw=0.8, label="byte budget")
    ax.set_xscale("log")
    ax.set_xlabel(".ccz bytes (measured)")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("optimize: every candidate measured")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
