"""Sweep over the fractional length FL (word length IL+FL = 16): round-to-nearest vs stochastic rounding.

Gupta et al. 2015 (survey §2.5): with 16-bit fixed point, stochastic rounding trains as well as float down
to FL ~ 12, while round-to-nearest fails at low precision, because updates and back-propagated errors
smaller than ε/2 = 2^-(FL+1) are always rounded to zero (eq. 1), whereas stochastic rounding keeps them in
expectation (eq. 2). This trains VGG-S (bench size: width 0.25, 48x48 grey) from scratch on mnist5k for each
(FL, rounding) plus an fp32 reference, and plots test accuracy against FL.

    OMP_NUM_THREADS=1 .venv/bin/python -m cnncompress.experiments.fixed_point_sweep      # a few minutes

Writes ``results/fixed_point_sweep/sweep.json`` and ``sweep.png``. Importing this module does nothing.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

DEFAULT_FLS = (14, 12, 11, 10, 9, 8)


def fixed_point_sweep(fls=DEFAULT_FLS, roundings=("nearest", "stochastic"), word_length: int = 16,
                      epochs: int = 1, lr: float = 0.01, batch_size: int = 32, model: str = "vgg_s",
                      width: float = 0.25, dataset: str = "mnist5k", train_images: int | None = None,
                      seed: int = 0, out_dir: str | Path | None = "results/fixed_point_sweep",
                      progress: bool = False) -> dict:
    """Train one model per (FL, rounding) with ⟨word_length - FL, FL⟩ fixed point; returns and saves the results.

    Every run starts from the same seeded initialisation and data order; the fp32 run is the reference.
    """
    from cnncompress import methods, models
    from cnncompress.data import build_dataset, final_evaluation
    from cnncompress.training.trainer import TrainConfig, Trainer, error_rate
    train_set = build_dataset(dataset, "train", input_size=48)
    test_set = build_dataset(dataset, "test", input_size=48)
    if train_images:
        train_set.images, train_set.labels = train_set.images[:train_images], train_set.labels[:train_images]
    torch.manual_seed(seed)
    initial = models.build(model, len(train_set.classes), train_set.channels, 48, width)
    # a fixed learning rate (Gupta 2015): a decaying schedule would shrink the late updates below eps/2 for every
    # rounding; nothing is chosen on a validation split (every run ends on its last step)
    config = TrainConfig(epochs=epochs, lr=lr, momentum=0.9, batch_size=batch_size, seed=seed, schedule="paper")

    def train(net) -> dict:
        start = time.perf_counter()
        Trainer(net, train_set, None, config, progress=progress).fit()
        opened = test_set.evaluations
        with final_evaluation(test_set):  # each run's one read (nothing here is chosen on it)
            accuracy = 100.0 * (1.0 - error_rate(net.eval(), test_set))
        return {"accuracy": accuracy, "seconds": time.perf_counter() - start,
                "test_evaluations": test_set.evaluations - opened}

    runs = [{"rounding": "fp32", "fl": None, **train(copy.deepcopy(initial))}]
    print(f"fp32: {runs[0]['accuracy']:.2f}% ({runs[0]['seconds']:.0f} s)", flush=True)
    for fl in fls:
        for rounding in roundings:
            net = methods.apply(initial, "fixed-point", il=word_length - fl, fl=fl, rounding=rounding)
            runs.append({"rounding": rounding, "fl": fl, "il": word_length - fl, **train(net)})
            print(f"<{word_length - fl},{fl}> {rounding}: {runs[-1]['accuracy']:.2f}% "
                  f"({runs[-1]['seconds']:.0f} s)", flush=True)
    result = {"model": model, "width": width, "dataset": dataset, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "word_length": word_length, "train_images": len(train_set.images),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(result, indent=1))
        plot_sweep(result, out / "sweep.png")
    return result


def plot_sweep(result: dict, path: str | Path) -> Path:
    """Test accuracy vs FL, one line per rounding mode, fp32 as a horizontal reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for rounding, marker in (("nearest", "o"), ("stochastic", "s")):
        points = sorted((r["fl"], r["accuracy"]) for r in result["runs"] if r["rounding"] == rounding)
        if points:
            axis.plot(*zip(*points), marker=marker, label=f"round-to-{rounding}" if rounding == "nearest"
                      else "stochastic rounding")
    reference = [r["accuracy"] for r in result["runs"] if r["rounding"] == "fp32"]
    if reference:
        axis.axhline(reference[0], color="grey", linestyle="--", label="fp32")
    axis.set_xlabel(f"fractional bits FL (IL + FL = {result['word_length']})")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{result['model']} on {result['dataset']}, {result['epochs']} epoch(s) from scratch")
    axis.invert_xaxis()
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


if __name__ == "__main__":
    fixed_point_sweep()
