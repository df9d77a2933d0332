"""The cascade-CNN study (Pimpley & Indulkar): train the base model and early-exit cascades over a grid of
datasets x seeds x losses x exit positions (x firm penalties), sweep the exit threshold, write tables and plots.

Each run trains the base model (cross-entropy, no exit; the paper's "Base"), then the cascade with the chosen
loss, then sweeps the threshold 0..1 (accuracy, early-exit rate, measured ms/sample, MACs/sample). Training is the
paper's (fixed lr, ``schedule="paper"``); every choice uses the validation split (the epoch each model ends on,
and a threshold: the lowest within ``VAL_TOLERANCE`` of the base model's validation accuracy); the reported
accuracies are on the test split.
``run_study(config, out)`` writes ``results.json``, ``table.md``, ``sweep.csv``, ``model.ccz`` (the first run)
and PNG plots into ``out``; ``load_config(recipe, overrides)`` builds a checked ``config`` from ``DEFAULTS``, a
YAML recipe (``experiments/cascade.yaml``; keys: ``schema.CASCADE_RECIPE``) and command-line overrides.

Firm cascade pre-training (the paper pre-trains only the firm model): the cascade is first trained with the sum
loss (``pretrain_epochs``; the sum run of the same seed and position is reused when the epochs match), so both
heads start confident, then fine-tuned with the firm loss for ``epochs`` at ``firm_lr``/``firm_momentum``.
Started from an untrained exit head, α = 128 saturates g and no gradient reaches the head.
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

from cnncompress.experiments import schema, stats

DEFAULTS = {"datasets": ["mnist5k"], "losses": ["firm"], "positions": ["p2"], "seeds": [0], "epochs": 20,
            "pretrain_epochs": None, "threshold": 0.6, "penalty": 0.6, "alpha": 128.0, "penalties": [],
            "lr": 0.001, "momentum": 0.5, "firm_lr": None, "firm_momentum": None, "batch_size": 64, "width": 1.0,
            "limit": 0,
            "thresholds": [round(0.05 * i, 2) for i in range(21)]}


def load_config(recipe: str | Path | None = None, overrides: dict | None = None) -> dict:
    """``DEFAULTS``, updated by the YAML ``recipe`` (checked against ``schema.CASCADE_RECIPE``: an unknown key or
    a bad value names the file), then by ``overrides`` whose value is not None (checked the same way)."""
    config = dict(DEFAULTS)
    if recipe:
        config.update(schema.load(recipe, schema.CASCADE_RECIPE))
    config.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return schema.check(config, schema.CASCADE_RECIPE, "command line")


def run_study(config: dict, out: str | Path, log=print) -> tuple[dict, list[Path]]:
    """The whole study into ``out``: ``run_grid``, then the tables and the plots. Returns (results, figures)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_grid(config, out, log)
    write_tables(results, out)
    return results, plot_results(results, out)


VAL_TOLERANCE = 0.005
"""The chosen threshold: the lowest (most early exits) whose validation accuracy is within this of the base
model's validation accuracy."""


def _train(model, train_set, val_set, config, seed, loss_fn=None, epochs=None):
    """The paper's training (fixed lr, SGD with the recipe's momentum and batch); ends on the epoch with the lowest
    validation error (at the model's exit threshold for cascades)."""
    from cnncompress.training.trainer import Trainer, TrainConfig, cross_entropy_loss
    cfg = TrainConfig(epochs=config["epochs"] if epochs is None else epochs, lr=config["lr"],
                      momentum=config["momentum"], batch_size=config["batch_size"], seed=seed, schedule="paper")
    return Trainer(model, train_set, val_set, cfg, loss_fn=loss_fn or cross_entropy_loss, progress=False).fit()


def choose_threshold(val_sweep: list[dict], base_val_accuracy: float) -> dict:
    """The validation-sweep row of the lowest threshold within ``VAL_TOLERANCE`` of the base model's validation
    accuracy (the highest threshold's row when none is)."""
    good = [r for r in val_sweep if r["accuracy"] >= base_val_accuracy - VAL_TOLERANCE]
    return min(good, key=lambda r: r["threshold"]) if good else max(val_sweep, key=lambda r: r["threshold"])


def run_grid(config: dict, out: Path, log=print) -> dict:
    """Train base + every (dataset, seed, loss, position, penalty) cascade; returns the results dict."""
    import torch

    from cnncompress import models
    from cnncompress.data import build_dataset, final_evaluation
    from cnncompress.methods.early_exit import attach_exit, cascade_finetune_loss, threshold_sweep
    from cnncompress.training.trainer import error_rate
    results = {"config": config, "base": [], "runs": []}
    for data in config["datasets"]:
        train_set, val_set, test_set = (build_dataset(data, split) for split in ("train", "val", "test"))
        if config["limit"]:
            train_set.images, train_set.labels = train_set.images[:config["limit"]], train_set.labels[:config["limit"]]
        for seed in config["seeds"]:
            done = _finished_seed(out, config, data, seed)
            if done is not None:  # resumed: this seed's runs finished before a kill
                results["base"].append(done["base"])
                results["runs"] += done["runs"]
                log(f"{data} seed {seed}: reused from {_seed_file(out, data, seed)}")
                continue
            first_run = len(results["runs"])
            torch.manual_seed(seed)
            base = models.build("cascade_cnn", train_set.num_classes, train_set.channels, train_set.input_size,
                                config["width"])
            init = copy.deepcopy(base)  # sum/soft cascades start from the same initialisation as the base
            history = _train(base, train_set, val_set, config, seed, epochs=config["pretrain_epochs"])
            base_val = 1 - error_rate(base, val_set)
            opened = test_set.evaluations
            with final_evaluation(test_set):
                base_bits = _base_outcomes(base, test_set)
            base_accuracy = float(base_bits.mean())
            results["base"].append({"data": data, "seed": seed, "accuracy": base_accuracy, "val_accuracy": base_val,
                                    "correct_bits": stats.pack(base_bits), "images": len(base_bits),
                                    "test_evaluations": test_set.evaluations - opened,
                                    "history": history})
            log(f"{data} seed {seed}: base accuracy {100 * (base_accuracy or 0):.2f}%")
            jobs = [(loss, pos, config["penalty"]) for loss in config["losses"] for pos in config["positions"]]
            if seed == config["seeds"][0]:
                jobs += [("firm", pos, p) for pos in config["positions"] for p in config["penalties"]
                         if ("firm", pos, p) not in jobs]
            pretrained = {}  # position -> cascade trained with the sum loss: the firm cascades' pre-training
            for loss, position, penalty in sorted(jobs, key=lambda job: job[0] != "sum"):
                firm = loss.startswith("firm")
                if firm and position not in pretrained:
                    pre = attach_exit(init, position, loss="sum", threshold=config["threshold"], alpha=config["alpha"])
                    torch.manual_seed(seed)
                    _train(pre, train_set, val_set, config, seed, loss_fn=cascade_finetune_loss,
                           epochs=config["pretrain_epochs"])
                    pretrained[position] = pre
                if firm:
                    net = copy.deepcopy(pretrained[position])
                    net.loss, net.penalty = loss, float(penalty)
                else:
                    net = attach_exit(init, position, loss=loss, threshold=config["threshold"], alpha=config["alpha"],
                                      penalty=penalty)
                torch.manual_seed(seed)
                tuned = {"lr": config["firm_lr"] or config["lr"], "momentum": config["firm_momentum"] or
                         config["momentum"]} if firm else {}
                history = _train(net, train_set, val_set, {**config, **tuned}, seed, loss_fn=cascade_finetune_loss)
                if loss == "sum" and config["pretrain_epochs"] in (None, config["epochs"]):
                    pretrained.setdefault(position, copy.deepcopy(net))
                opened = test_set.evaluations
                chosen = choose_threshold(threshold_sweep(net, val_set.images, val_set.labels,
                                                          sorted(set(config["thresholds"]))), base_val)
                with final_evaluation(test_set):  # the run's one read of the test split, after every choice
                    sweep = threshold_sweep(net, test_set.images, test_set.labels,
                                            sorted(set(config["thresholds"]) | {config["threshold"]}))
                    correct, early = _exit_outcomes(net, test_set, config["threshold"])
                at = next(r for r in sweep if r["threshold"] == config["threshold"])
                on_test = next(r for r in sweep if r["threshold"] == chosen["threshold"])
                run = {"data": data, "seed": seed, "loss": loss, "position": position, "penalty": penalty,
                       "correct_bits": stats.pack(correct), "exit_bits": stats.pack(early), "images": len(correct),
                       "test_evaluations": test_set.evaluations - opened,
                       "threshold": config["threshold"], "accuracy": at["accuracy"], "exit_rate": at["exit_rate"],
                       "base_accuracy": base_accuracy, "history": history, "sweep": sweep,
                       "chosen_threshold": chosen["threshold"], "chosen_accuracy": on_test["accuracy"],
                       "chosen_exit_rate": on_test["exit_rate"]}
                results["runs"].append(run)
                log(f"{data} seed {seed} {loss} {position} λ={penalty}: accuracy {100 * at['accuracy']:.2f}%, "
                    f"early exits {100 * at['exit_rate']:.1f}% at threshold {config['threshold']} "
                    f"({at['ms_per_sample']:.3f} ms/sample, {at['macs_per_sample'] / 1e6:.2f}M MACs vs "
                    f"{at['macs_full'] / 1e6:.2f}M); threshold {chosen['threshold']} chosen on validation: "
                    f"{100 * on_test['accuracy']:.2f}%, early exits {100 * on_test['exit_rate']:.1f}%")
                if len(results["runs"]) == 1:
                    _save_model(net, out / "model.ccz", log)
            _seed_file(out, data, seed).parent.mkdir(parents=True, exist_ok=True)
            _seed_file(out, data, seed).write_text(json.dumps(
                {"config": config, "base": results["base"][-1], "runs": results["runs"][first_run:]}, default=str))
    return results


def _seed_file(out: Path, data: str, seed: int) -> Path:
    return out / "seeds" / f"{data}-s{seed}.json"


def _finished_seed(out: Path, config: dict, data: str, seed: int) -> dict | None:
    """One (dataset, seed)'s base and runs written by an earlier, killed run of the same ``config``; None when
    there is none. A file of another config is refused in one line, never overwritten."""
    from cnncompress.errors import InputError
    path = _seed_file(out, data, seed)
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path}: unreadable result of an earlier run; remove it or use another --out") from None
    if done.get("config") != json.loads(json.dumps(config, default=str)):
        raise InputError(f"{path}: made with another cascade config; use another --out or remove it")
    return done


def _base_outcomes(model, test_set, batch_size: int = 256):
    """Per test image: did the base model get it right (bool array; the per-image bits findings resample)."""
    import numpy as np
    import torch
    model.eval()
    with torch.no_grad():
        return np.concatenate([(model(test_set.images[i:i + batch_size]).argmax(1) ==
                                test_set.labels[i:i + batch_size]).numpy() for i in range(0, len(test_set), batch_size)])


def _exit_outcomes(net, test_set, threshold: float):
    """Per test image at ``threshold``: (right?, stopped at the early exit?) as bool arrays."""
    import numpy as np
    import torch

    from cnncompress.methods.early_exit import exit_inference
    net.eval()
    correct, early = [], []
    with torch.no_grad():
        for i in range(0, len(test_set), 256):
            result = exit_inference(net, test_set.images[i:i + 256], threshold)
            correct.append((result.predictions == test_set.labels[i:i + 256]).numpy())
            early.append((result.exit_index == 0).numpy())
    return np.concatenate(correct), np.concatenate(early)


def _save_model(net, path: Path, log) -> None:
    from cnncompress import storage
    try:
        storage.save(net, path)
    except (RuntimeError, ValueError, TypeError) as error:
        log(f"warning: could not write {path}: {error}")


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def write_tables(results: dict, out: Path) -> None:
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data", "seed", "loss", "position", "penalty", "threshold", "accuracy", "exit_rate",
                         "ms_per_sample", "macs_per_sample", "macs_full"])
        for run in results["runs"]:
            for row in run["sweep"]:
                writer.writerow([run["data"], run["seed"], run["loss"], run["position"], run["penalty"],
                                 row["threshold"], f"{row['accuracy']:.4f}", f"{row['exit_rate']:.4f}",
                                 f"{row['ms_per_sample']:.4f}", int(row["macs_per_sample"]), int(row["macs_full"])])
    title = f"# Cascade CNN at threshold {results['config']['threshold']}"
    (out / "table.md").write_text("\n".join([title, ""] + table_lines(results)) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))


def table_lines(results: dict) -> list[str]:
    """The study's table (one line per data, loss, position, penalty; mean ± sd over seeds) at the main threshold."""
    import statistics
    lines = ["| data | loss | position | penalty | seeds | accuracy % (mean ± sd) | early exits % (mean ± sd) | "
             "base accuracy % | threshold chosen on validation | accuracy % there | early exits % there |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for run in results["runs"]:
        groups.setdefault((run["data"], run["loss"], run["position"], run["penalty"]), []).append(run)
    for (data, loss, position, penalty), runs in groups.items():
        acc = [100 * r["accuracy"] for r in runs]
        rate = [100 * r["exit_rate"] for r in runs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        chosen = " / ".join(f"{r.get('chosen_threshold', float('nan')):g}" for r in runs)
        lines.append(f"| {data} | {loss} | {position} | {penalty} | {len(runs)} | {_mean(acc):.2f} ± {sd(acc):.2f} "
                     f"| {_mean(rate):.1f} ± {sd(rate):.1f} | {100 * _mean([r['base_accuracy'] for r in runs]):.2f} "
                     f"| {chosen} | {100 * _mean([r.get('chosen_accuracy') for r in runs]):.2f} "
                     f"| {100 * _mean([r.get('chosen_exit_rate') for r in runs]):.1f} |")
    return lines


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
    acc = [100 * _mean([r["accuracy"] for r in main if (r["data"], r["loss"], r["position"]) == n]) for n in names]
    rate = [100 * _mean([r["exit_rate"] for r in main if (r["data"], r["loss"], r["position"]) == n]) for n in names]
    for data in config["datasets"]:
        base = 100 * _mean([b["accuracy"] for b in results["base"] if b["data"] == data])
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
    firm = [r for r in results["runs"] if r["loss"] == "firm" and r["seed"] == config["seeds"][0]]
    if len({r["penalty"] for r in firm}) < 2:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for data in config["datasets"]:
        for position in config["positions"]:
            runs = sorted((r for r in firm if r["data"] == data and r["position"] == position),
                          key=lambda r: r["penalty"])
            label = f"{data} {position}"
            axes[0].plot([r["penalty"] for r in runs], [100 * r["accuracy"] for r in runs], marker="o", label=label)
            axes[1].plot([r["penalty"] for r in runs], [100 * r["exit_rate"] for r in runs], marker="o", label=label)
    for axis, title in zip(axes, ("firm: accuracy % vs penalty λ", "firm: early exits % vs penalty λ")):
        axis.set_title(f"{title} (threshold {config['threshold']})")
        axis.set_xlabel("penalty λ")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "firm_penalty.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [path]
