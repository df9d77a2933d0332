"""The cascade-CNN study (Pimpley & Indulkar): train the base model and early-exit cascades over a grid of
datasets x seeds x losses x exit positions (x firm penalties), sweep the exit threshold, write tables and plots.

Each run trains the base model (cross-entropy, no exit; the paper's "Base"), then the cascade with the chosen
loss, then sweeps the threshold 0..1 (accuracy, early-exit rate, measured ms/sample, MACs/sample). Training is the
paper's (fixed lr, ``schedule="paper"``); every choice uses the validation split (the epoch each model ends on,
and a threshold: the lowest within ``VAL_TOLERANCE`` of the base model's validation accuracy); the reported
accuracies are on the test split. A cascade whose validation accuracy at the main threshold is within
``pipeline.CHANCE_MARGIN`` points of chance is flagged (``collapsed``, one warning line).
``run_study(config, out)`` writes ``results.json``, ``table.md``, ``sweep.csv``, ``model.ccz`` (the first run)
and PNG plots (``cascade_figures``) into ``out``; ``load_config(recipe, overrides)`` builds a checked ``config``
from ``DEFAULTS``, a YAML recipe (``experiments/cascade.yaml``; keys: ``schema.CASCADE_RECIPE``) and command-line overrides.

Firm cascade pre-training (the paper pre-trains only the firm model): the cascade is first trained with the sum
loss (``pretrain_epochs``; the sum run of the same seed and position is reused when the epochs match), so both
heads start confident, then fine-tuned with the firm loss for ``epochs`` at ``firm_lr``/``firm_momentum``.
Started from an untrained exit head, α = 128 saturates g and no gradient reaches the head.

Every run seeds the random generator with its seed before building its exit head and again before training, so a
run's result depends on its seed and settings alone, not on the runs before it: a resumed or widened grid trains a
missing run exactly as an uninterrupted grid would. (Grids run before 2026-12-07 drew the exit head after the base
model's training, another draw from the same seed.)
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

from cnncompress.experiments import schema, stats
from cnncompress.experiments.cascade_figures import plot_results
from cnncompress.experiments.stats import mean_of

DEFAULTS = {"datasets": ["mnist5k"], "losses": ["firm"], "positions": ["p2"], "seeds": [0], "epochs": 20,
            "pretrain_epochs": None, "threshold": 0.6, "penalty": 0.6, "alpha": 128.0, "penalties": [],
            "penalty_seed_count": 1, "lr": 0.001, "momentum": 0.5, "firm_lr": None, "firm_momentum": None,
            "batch_size": 64, "width": 1.0, "limit": 0,
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
    """Train base + every (dataset, seed, loss, position, penalty) cascade; returns the results dict.

    Resumes after a kill, one run at a time: each (dataset, seed) keeps its base model's result and its finished
    runs in ``out/seeds/<data>-s<seed>.json``, written after every run; a later call with the same training
    settings (``training_settings``) reuses them and trains only the runs still missing, so a grid can also be
    widened (more positions, penalties, penalty seeds) without retraining what it holds."""
    from cnncompress.data import build_dataset
    results = {"config": config, "base": [], "runs": []}
    for data in config["datasets"]:
        splits = [build_dataset(data, split) for split in ("train", "val", "test")]
        if config["limit"]:
            splits[0].images, splits[0].labels = splits[0].images[:config["limit"]], splits[0].labels[:config["limit"]]
        for seed in config["seeds"]:
            base, runs = _run_seed(config, out, data, seed, splits, log)
            results["base"].append(base)
            results["runs"] += runs
    return results


def grid_jobs(config: dict, seed: int) -> list[tuple[str, str, float]]:
    """The (loss, position, penalty) runs of one seed: every loss at every position at the main penalty, and the
    penalty sweep (firm at each of ``penalties``) at the first ``penalty_seed_count`` seeds; sum runs first (the
    firm cascades' pre-training reuses them)."""
    jobs = [(loss, pos, float(config["penalty"])) for loss in config["losses"] for pos in config["positions"]]
    if seed in config["seeds"][:config["penalty_seed_count"]]:
        jobs += [("firm", pos, float(p)) for pos in config["positions"] for p in config["penalties"]
                 if ("firm", pos, float(p)) not in jobs]
    return sorted(jobs, key=lambda job: job[0] != "sum")


def _run_seed(config, out, data, seed, splits, log) -> tuple[dict, list[dict]]:
    """One (dataset, seed): the base model and every job of ``grid_jobs``, reusing what its seed file holds."""
    import torch

    from cnncompress import models
    from cnncompress.data import final_evaluation
    from cnncompress.training.trainer import error_rate
    train_set, val_set, test_set = splits
    path = _seed_file(out, data, seed)
    done = _finished_seed(path, config) or {"config": config, "base": None, "runs": []}
    torch.manual_seed(seed)
    init = models.build("cascade_cnn", train_set.num_classes, train_set.channels, train_set.input_size,
                        config["width"])  # sum/soft cascades start from the same initialisation as the base
    if done["base"] is None:
        base = copy.deepcopy(init)
        history = _train(base, train_set, val_set, config, seed, epochs=config["pretrain_epochs"])
        base_val = 1 - error_rate(base, val_set)
        opened = test_set.evaluations
        with final_evaluation(test_set):
            base_bits = _base_outcomes(base, test_set)
        done["base"] = {"data": data, "seed": seed, "accuracy": float(base_bits.mean()), "val_accuracy": base_val,
                        "correct_bits": stats.pack(base_bits), "images": len(base_bits),
                        "test_evaluations": test_set.evaluations - opened, "history": history}
        _write_seed(path, done)
        log(f"{data} seed {seed}: base accuracy {100 * done['base']['accuracy']:.2f}%")
    held = {_run_key(run): run for run in done["runs"]}
    runs, pretrained = [], {}  # position -> cascade trained with the sum loss: the firm cascades' pre-training
    for job in grid_jobs(config, seed):
        if job in held:
            runs.append(held[job])
            log(f"{data} seed {seed} {job[0]} {job[1]} λ={job[2]}: reused from {path}")
            continue
        run, net = _run_cascade(config, data, seed, job, init, splits, done["base"], pretrained, log)
        runs.append(run)
        done["runs"].append(run)
        _write_seed(path, done)
        if not (out / "model.ccz").exists():  # the grid's first trained cascade, for `cnncompress predict`
            _save_model(net, out / "model.ccz", log)
    return done["base"], runs


def _run_cascade(config, data, seed, job, init, splits, base, pretrained, log) -> tuple[dict, object]:
    """Train one cascade (firm ones from the sum pre-training of their position), choose its threshold on the
    validation split, then read the test split once. Returns (its result, the trained cascade)."""
    import torch

    from cnncompress.data import final_evaluation
    from cnncompress.methods.early_exit import attach_exit, cascade_finetune_loss, threshold_sweep
    from cnncompress.pipeline import collapse_check
    train_set, val_set, test_set = splits
    loss, position, penalty = job
    firm = loss.startswith("firm")
    if firm and position not in pretrained:
        torch.manual_seed(seed)  # the exit head's initialisation depends on the seed alone, not on what ran before
        pre = attach_exit(init, position, loss="sum", threshold=config["threshold"], alpha=config["alpha"])
        torch.manual_seed(seed)
        _train(pre, train_set, val_set, config, seed, loss_fn=cascade_finetune_loss, epochs=config["pretrain_epochs"])
        pretrained[position] = pre
    if firm:
        net = copy.deepcopy(pretrained[position])
        net.loss, net.penalty = loss, float(penalty)
    else:
        torch.manual_seed(seed)
        net = attach_exit(init, position, loss=loss, threshold=config["threshold"], alpha=config["alpha"],
                          penalty=penalty)
    torch.manual_seed(seed)
    tuned = {"lr": config["firm_lr"] or config["lr"], "momentum": config["firm_momentum"] or
             config["momentum"]} if firm else {}
    history = _train(net, train_set, val_set, {**config, **tuned}, seed, loss_fn=cascade_finetune_loss)
    if loss == "sum" and config["pretrain_epochs"] in (None, config["epochs"]):
        pretrained.setdefault(position, copy.deepcopy(net))
    opened = test_set.evaluations
    listed = set(config["thresholds"])
    val_sweep = threshold_sweep(net, val_set.images, val_set.labels, sorted(listed | {config["threshold"]}))
    chosen = choose_threshold([r for r in val_sweep if r["threshold"] in listed], base["val_accuracy"])
    val_at = next(r for r in val_sweep if r["threshold"] == config["threshold"])["accuracy"]
    checked = collapse_check(100 * val_at, train_set.num_classes,
                             f"{data} seed {seed} {loss} {position} λ={penalty} at threshold {config['threshold']}")
    with final_evaluation(test_set):  # the run's one read of the test split, after every choice
        sweep = threshold_sweep(net, test_set.images, test_set.labels,
                                sorted(set(config["thresholds"]) | {config["threshold"]}))
        correct, early = _exit_outcomes(net, test_set, config["threshold"])
    at = next(r for r in sweep if r["threshold"] == config["threshold"])
    on_test = next(r for r in sweep if r["threshold"] == chosen["threshold"])
    log(f"{data} seed {seed} {loss} {position} λ={penalty}: accuracy {100 * at['accuracy']:.2f}%, "
        f"early exits {100 * at['exit_rate']:.1f}% at threshold {config['threshold']} "
        f"({at['ms_per_sample']:.3f} ms/sample, {at['macs_per_sample'] / 1e6:.2f}M MACs vs "
        f"{at['macs_full'] / 1e6:.2f}M); threshold {chosen['threshold']} chosen on validation: "
        f"{100 * on_test['accuracy']:.2f}%, early exits {100 * on_test['exit_rate']:.1f}%")
    return {"data": data, "seed": seed, "loss": loss, "position": position, "penalty": penalty,
            "correct_bits": stats.pack(correct), "exit_bits": stats.pack(early), "images": len(correct),
            "test_evaluations": test_set.evaluations - opened,
            "threshold": config["threshold"], "accuracy": at["accuracy"], "exit_rate": at["exit_rate"],
            "base_accuracy": base["accuracy"], "history": history, "sweep": sweep,
            "chosen_threshold": chosen["threshold"], "chosen_accuracy": on_test["accuracy"],
            "chosen_exit_rate": on_test["exit_rate"], "val_accuracy": checked["val_accuracy"],
            "collapsed": checked["collapsed"]}, net


GRID_KEYS = ("datasets", "seeds", "losses", "positions", "penalties", "penalty_seed_count")
"""The keys that say which runs the grid holds; every other key says how a run is trained and measured."""


def training_settings(config: dict) -> dict:
    """``config`` without ``GRID_KEYS``: two grids whose settings are equal train the same run the same way."""
    return {key: value for key, value in json.loads(json.dumps(config, default=str)).items() if key not in GRID_KEYS}


def _run_key(run: dict) -> tuple[str, str, float]:
    return run["loss"], run["position"], float(run["penalty"])


def _seed_file(out: Path, data: str, seed: int) -> Path:
    return out / "seeds" / f"{data}-s{seed}.json"


def _write_seed(path: Path, done: dict) -> None:
    """Write one seed's results whole (a temporary file renamed over the old one: a kill leaves one or the other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(done, default=str))
    partial.replace(path)


def _finished_seed(path: Path, config: dict) -> dict | None:
    """One (dataset, seed)'s base and runs written by an earlier run with the same ``training_settings``; None
    when there is none. A file of other settings is refused in one line, never overwritten."""
    from cnncompress.errors import InputError
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
        settings = training_settings(done["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: unreadable result of an earlier run; remove it or use another --out") from None
    wanted = training_settings(config)
    if settings != wanted:
        changed = sorted(k for k in set(settings) | set(wanted) if settings.get(k) != wanted.get(k))
        raise InputError(f"{path}: made with another cascade config ({', '.join(changed)} differ); "
                         "use another --out or remove it")
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
        lines.append(f"| {data} | {loss} | {position} | {penalty} | {len(runs)} | {mean_of(acc):.2f} ± {sd(acc):.2f} "
                     f"| {mean_of(rate):.1f} ± {sd(rate):.1f} | {100 * mean_of([r['base_accuracy'] for r in runs]):.2f} "
                     f"| {chosen} | {100 * mean_of([r.get('chosen_accuracy') for r in runs]):.2f} "
                     f"| {100 * mean_of([r.get('chosen_exit_rate') for r in runs]):.1f} |")
    return lines
