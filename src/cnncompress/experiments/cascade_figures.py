"""The cascade study's figures (Pimpley & Indulkar Figs. 5-7 in form): per dataset, training loss and validation
accuracy per epoch and accuracy / early exits / ms / MACs against the exit threshold (``cascade_<data>.png``); every
(data, loss, position) at the main threshold beside the base model (``fixed_threshold.png``); firm accuracy and
early exits against the penalty λ (``firm_penalty.png``, mean over the seeds that ran the sweep). Matplotlib with
the Agg backend."""
from __future__ import annotations

from pathlib import Path

from cnncompress.experiments.stats import mean_of


def plot_results(results: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    config, written = results["config"], []
    main = [r for r in results["runs"] if r["penalty"] == config["penalty"]]
    for data in config["datasets"]:
        runs = [r for r in main if r["data"] == data and r["seed"] == config["seeds"][0]]
        if not runs:
            continue
        figure, axes = plt.subplots(2, 3, figsize=(15, 8))
        for run in runs:
            label = f"{run['loss']} {run['position']}"
            epochs = [h["epoch"] for h in run["history"]]
            axes[0, 0].plot(epochs, [h["train_loss"] for h in run["history"]], marker=".", label=label)
            axes[0, 1].plot(epochs, [100 * (1 - h["val_error"]) for h in run["history"]], marker=".", label=label)
            thresholds = [r["threshold"] for r in run["sweep"]]
            axes[1, 0].plot(thresholds, [100 * r["accuracy"] for r in run["sweep"]], marker=".", label=label)
            axes[1, 1].plot(thresholds, [100 * r["exit_rate"] for r in run["sweep"]], marker=".", label=label)
            axes[1, 2].plot(thresholds, [r["ms_per_sample"] for r in run["sweep"]], marker=".", label=label)
            axes[0, 2].plot(thresholds, [r["macs_per_sample"] / 1e6 for r in run["sweep"]], marker=".", label=label)
        base = [b for b in results["base"] if b["data"] == data and b["seed"] == config["seeds"][0]]
        if base and base[0]["history"]:
            history = base[0]["history"]
            axes[0, 1].plot([h["epoch"] for h in history], [100 * (1 - h["val_error"]) for h in history], "k--",
                            label="base")
        titles = [("training loss per epoch", "epoch"), ("validation accuracy % per epoch (threshold "
                                                         f"{config['threshold']})", "epoch"),
                  ("MACs per sample (M) vs threshold", "threshold"), ("accuracy % vs threshold", "threshold"),
                  ("early exits % vs threshold", "threshold"), ("measured ms per sample vs threshold", "threshold")]
        for axis, (title, xlabel) in zip(axes.flat, titles):
            axis.set_title(title)
            axis.set_xlabel(xlabel)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.suptitle(f"cascade CNN on {data} (Pimpley & Indulkar)")
        figure.tight_layout()
        written.append(out / f"cascade_{data}.png")
        figure.savefig(written[-1], dpi=90)
        plt.close(figure)
    written += _plot_fixed_threshold(results, out, plt)
    written += _plot_penalty(results, out, plt)
    return written


def _plot_fixed_threshold(results, out, plt) -> list[Path]:
    config = results["config"]
    main = [r for r in results["runs"] if r["penalty"] == config["penalty"]]
    names = sorted({(r["data"], r["loss"], r["position"]) for r in main})
    if not names:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{d}\n{loss} {p}" for d, loss, p in names]
    acc = [100 * mean_of([r["accuracy"] for r in main if (r["data"], r["loss"], r["position"]) == n]) for n in names]
    rate = [100 * mean_of([r["exit_rate"] for r in main if (r["data"], r["loss"], r["position"]) == n]) for n in names]
    for data in config["datasets"]:
        base = 100 * mean_of([b["accuracy"] for b in results["base"] if b["data"] == data])
        labels.append(f"{data}\nbase")
        acc.append(base)
        rate.append(0.0)
    axes[0].bar(range(len(labels)), acc)
    axes[1].bar(range(len(labels)), rate)
    for axis, title in zip(axes, ("accuracy % (mean over seeds)", "early exits %")):
        axis.set_xticks(range(len(labels)), labels, fontsize=6, rotation=60)
        axis.set_title(f"{title} at threshold {config['threshold']}")
    axes[0].set_ylim(max(0, min(acc) - 5), 100)
    figure.tight_layout()
    path = out / "fixed_threshold.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [path]


def _plot_penalty(results, out, plt) -> list[Path]:
    config = results["config"]
    sweep_seeds = config["seeds"][:config.get("penalty_seed_count", 1)]
    firm = [r for r in results["runs"] if r["loss"] == "firm" and r["seed"] in sweep_seeds]
    if len({r["penalty"] for r in firm}) < 2:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for data in config["datasets"]:
        for position in config["positions"]:
            runs = [r for r in firm if r["data"] == data and r["position"] == position]
            penalties = sorted({r["penalty"] for r in runs})
            at = [[r for r in runs if r["penalty"] == p] for p in penalties]
            label = f"{data} {position}"
            axes[0].plot(penalties, [100 * mean_of([r["accuracy"] for r in g]) for g in at], marker="o", label=label)
            axes[1].plot(penalties, [100 * mean_of([r["exit_rate"] for r in g]) for g in at], marker="o", label=label)
    for axis, title in zip(axes, ("firm: accuracy % vs penalty λ", "firm: early exits % vs penalty λ")):
        axis.set_title(f"{title} (threshold {config['threshold']}, mean of {len(sweep_seeds)} seed(s))")
        axis.set_xlabel("penalty λ")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "firm_penalty.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [path]
