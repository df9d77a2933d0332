"""Our L1 filter pruning beside Torch-Pruning's dependency-graph pruner on the same trained baseline, the same MACs
and the same fine-tuning (issue 33): ``prune-l1`` as the bench runs it (our own channel tracer, the target counts
conv MACs) and ``methods.prune_groups`` (Torch-Pruning 1.6.1, ``GroupMagnitudeImportance(p=1)``, the channel ratio
bisected until the network's total MACs equal ours). Both fine-tuned one epoch with the model's fine-tuning preset,
seed 0, the validation split choosing nothing (one epoch), and scored once on the test split.

    .venv/bin/python benchmarks/bench_prune_vs_torch_pruning.py --baseline results/quick/baselines/vgg_s/model.safetensors

Prints one line per pruner: total MACs, parameters, test accuracy before and after fine-tuning.
"""
from __future__ import annotations

import argparse

import torch

from cnncompress import measure, methods
from cnncompress.data import build_dataset
from cnncompress.methods.prune_groups import prune_groups, total_macs
from cnncompress.storage.weights_file import load_weights
from cnncompress.training.trainer import Trainer, preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a trained vgg_s model.safetensors (the bench writes one)")
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = load_weights(args.baseline).eval()
    spec = base.spec
    kw = {"input_size": spec["input_size"], "channels": spec["in_channels"]}
    train, val, test = (build_dataset("mnist5k", s, **kw) for s in ("train", "val", "test"))
    example = torch.zeros(1, spec["in_channels"], spec["input_size"], spec["input_size"])
    print(f"baseline {spec['name']}: total MACs {total_macs(base, example):,.0f}, params {measure.param_count(base):,}, "
          f"test {measure.accuracy(base, test):.2f}%")
    ours = methods.apply(base, "prune-l1", flops=args.flops)
    target = 1 - total_macs(ours, example) / total_macs(base, example)
    theirs = prune_groups(base, "l1", target, tuple(example.shape[1:]))
    for name, model in (("ours (prune-l1, conv-MAC target)", ours), ("Torch-Pruning (same total MACs)", theirs)):
        before = measure.accuracy(model, test)
        torch.manual_seed(0)
        Trainer(model, train, val, preset(spec["name"], "finetune", epochs=args.epochs, seed=0), progress=False).fit()
        print(f"{name}: total MACs {total_macs(model, example):,.0f} ({target:.1%} removed), params "
              f"{measure.param_count(model):,}, test {before:.2f}% before / {measure.accuracy(model.eval(), test):.2f}% "
              f"after {args.epochs} fine-tuning epoch(s)")


if __name__ == "__main__":
    main()
