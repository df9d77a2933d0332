"""The error curve of one training run (``cnncompress train`` writes it as ``error_curve.png``): training and
validation error per epoch, the training loss on a second axis, and the best validation epoch marked."""
from __future__ import annotations

from pathlib import Path

from .train import best_record


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
