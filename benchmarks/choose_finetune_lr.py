"""Choose the fine-tuning learning rate after compression on the VALIDATION split (issue 35: it had been chosen by
comparing test accuracies).

For each model, one seed-0 baseline (its preset, ``train.preset``), then for each method and each candidate lr one
fine-tuning run at the model's fine-tune preset (1 epoch, cosine with 5 % warm-up) with that lr; the score is the
compressed model's accuracy on mnist5k's validation split after the epoch. The chosen lr is the one with the
highest mean validation accuracy over the methods. The test split is never built.

    .venv/bin/python benchmarks/choose_finetune_lr.py --out docs/results/finetune-lr     # ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

CANDIDATES = {"vgg_s": (0.001, 0.002, 0.003), "squeezenet1_1": (0.0006, 0.002)}
WIDTHS = {"vgg_s": 0.25, "squeezenet1_1": 0.5}
METHODS = (("bwn", {}), ("prune-l1", {"flops": 0.5}), ("hashed", {"compression": 0.125}))


def main() -> int:
    from cnncompress import methods, models
    from cnncompress.data import build_dataset
    from cnncompress.training.trainer import Trainer, error_rate, preset
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/finetune-lr")
    parser.add_argument("--models", nargs="+", default=list(CANDIDATES))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = (build_dataset("mnist5k", split, input_size=48) for split in ("train", "val"))
    results = {}
    for name in args.models:
        torch.manual_seed(0)
        base = models.build(name, 10, 1, 48, WIDTHS[name])
        Trainer(base, train, val, preset(name, seed=0), progress=False).fit()
        base = base.cpu().eval()
        scores = {"baseline_val_accuracy": 100 * (1 - error_rate(base, val)), "runs": []}
        for lr in CANDIDATES[name]:
            for method, config in METHODS:
                torch.manual_seed(0)
                model = methods.apply(copy.deepcopy(base), method, **config)
                Trainer(model, train, val, preset(name, "finetune", seed=0, lr=lr), progress=False).fit()
                accuracy = 100 * (1 - error_rate(model.cpu().eval(), val))
                scores["runs"].append({"lr": lr, "method": method, "val_accuracy": accuracy})
                print(f"{name} {method} lr {lr}: validation accuracy {accuracy:.2f}%", flush=True)
        means = {lr: sum(r["val_accuracy"] for r in scores["runs"] if r["lr"] == lr) / len(METHODS)
                 for lr in CANDIDATES[name]}
        scores["mean_by_lr"] = {str(lr): m for lr, m in means.items()}
        scores["chosen_lr"] = max(means, key=means.get)
        print(f"{name}: chosen fine-tuning lr {scores['chosen_lr']} (mean validation accuracy "
              + ", ".join(f"{lr}: {m:.2f}%" for lr, m in means.items()) + ")", flush=True)
        results[name] = scores
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
