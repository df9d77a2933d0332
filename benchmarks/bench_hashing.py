"""HashedNets performance bars (DESIGN §7): train step <= 1.5x, inference (expand) <= 1.1x the float baseline,
``.ccz`` <= 0.15x of the fp32 file at compression 1/8. Ratios are measured in one process, interleaved call
by call (baseline, hashed, baseline, hashed, ...), medians, at 1 and 2 threads.

    .venv/bin/python benchmarks/bench_hashing.py                              # widths 0.25 and 1.0, 1 and 2 threads
    .venv/bin/python benchmarks/bench_hashing.py --paper-size                  # + VGG-S 224x224x3, 8 classes
    .venv/bin/python benchmarks/bench_hashing.py --accuracy                    # + 3-epoch baseline, 1-epoch finetune (all layers)

Models: vgg_s at width 0.25 (the ``cnncompress bench`` default) and 1.0 (full VGG-S, 25M weights), 48x48 grey,
10 classes, batch 20 for training (paper), batch 1 for inference. The expand kernel that ran (``c`` or ``torch``)
is printed. Also reports ``on-the-fly`` inference (memory-light, slower).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnncompress import deploy, measure, methods, models, storage
from cnncompress.kernels.hashed import kernel_path
from cnncompress.methods.hashing import hashed_layers


def train_step(model: nn.Module, batch: int, shape: tuple[int, ...], classes: int):
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def infer(model: nn.Module, shape: tuple[int, ...]):
    x = torch.randn(1, *shape)

    def call():
        with torch.no_grad():
            model(x)
    return call


def speed(base: nn.Module, hashed: nn.Module, shape, classes: int, threads: int, rounds: int, batch: int,
          train: bool = True) -> dict:
    torch.set_num_threads(threads)
    result = {}
    if train:
        t = measure.alternating({"base": train_step(base, batch, shape, classes),
                                 "hashed": train_step(hashed, batch, shape, classes)}, rounds * 5)
        result.update(train_base_ms=t["base"], train_hashed_ms=t["hashed"], train_ratio=t["hashed"] / t["base"])
    expand = deploy.to_inference(copy.deepcopy(hashed))
    flying = copy.deepcopy(expand)
    for layer in hashed_layers(flying):
        layer.set_mode("on-the-fly")
    t = measure.alternating({"base": infer(base.eval(), shape), "expand": infer(expand, shape)},
                            rounds * (20 if train else 3))
    result.update(infer_base_ms=t["base"], infer_expand_ms=t["expand"], infer_expand_ratio=t["expand"] / t["base"])
    t = measure.alternating({"base": infer(base.eval(), shape), "fly": infer(flying, shape)},
                            rounds * (4 if train else 1))
    result.update(infer_fly_ms=t["fly"], infer_fly_ratio=t["fly"] / t["base"])
    return result


def file_ratio(base: nn.Module, hashed: nn.Module, folder: Path) -> dict:
    full = storage.save(base, folder / "float.ccz").stat().st_size
    small = storage.save(hashed, folder / "hashed.ccz").stat().st_size
    half = storage.save(hashed, folder / "hashed16.ccz", float_codec="fp16").stat().st_size
    params = sum(p.numel() for p in hashed.parameters()) / sum(p.numel() for p in base.parameters())
    return {"fp32_bytes": full, "hashed_bytes": small, "ratio": small / full, "hashed_fp16_bytes": half,
            "ratio_fp16": half / full, "param_ratio": params}


def accuracy_check(threads: int) -> dict:
    """The bench recipe's protocol: baseline 3 epochs at lr 0.01, hashed 1/8 + 1 finetune epoch at lr 0.001."""
    from cnncompress.data import build_dataset
    from cnncompress.training.trainer import Trainer, TrainConfig, error_rate
    torch.set_num_threads(threads)
    train_set = build_dataset("mnist5k", "train", input_size=48)
    test_set = build_dataset("mnist5k", "test", input_size=48)
    val_set = build_dataset("mnist5k", "val", input_size=48)  # the Trainer's choices; test_set is reported
    base = models.build("vgg_s", train_set.num_classes, train_set.channels, 48, 0.25)
    start = time.perf_counter()
    Trainer(base, train_set, val_set, TrainConfig(epochs=3, lr=0.01, momentum=0.9, batch_size=20, seed=0),
            progress=False).fit()
    base_s = time.perf_counter() - start
    hashed = methods.apply(base.eval(), "hashed", compression=1 / 8)
    before = error_rate(hashed, test_set)
    start = time.perf_counter()
    Trainer(hashed, train_set, val_set, TrainConfig(epochs=1, lr=0.001, momentum=0.9, batch_size=20, seed=0),
            progress=False).fit()
    tune_s = time.perf_counter() - start
    return {"base_acc": 100 * (1 - error_rate(base, test_set)), "hashed_acc_no_finetune": 100 * (1 - before),
            "hashed_acc": 100 * (1 - error_rate(deploy.to_inference(hashed), test_set)),
            "baseline_3_epochs_s": base_s, "finetune_1_epoch_s": tune_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--paper-size", action="store_true", help="also VGG-S 224x224x3, 8 classes (98.8M weights)")
    parser.add_argument("--accuracy", action="store_true", help="also train/fine-tune on mnist5k (4 epochs: ~1 min idle, minutes under load)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ok = True
    print(f"expand kernel: {kernel_path()}")
    for width in args.widths:
        base = models.build("vgg_s", 10, 1, 48, width).eval()
        hashed = methods.apply(base, "hashed", compression=1 / 8)
        with tempfile.TemporaryDirectory() as folder:
            sizes = file_ratio(base, hashed, Path(folder))
        print(f"vgg_s w{width} 48x48x1 c10 files: {sizes}")
        ok &= sizes["ratio"] <= 0.15
        for threads in args.threads:
            r = speed(base, hashed, (1, 48, 48), 10, threads, args.rounds, batch=20)
            print(f"vgg_s w{width} threads={threads}: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
            ok &= r["train_ratio"] <= 1.5 and r["infer_expand_ratio"] <= 1.1
    if args.paper_size:
        start = time.perf_counter()
        big = models.build("vgg_s", 8, 3, 224, 1.0).eval()
        big_hashed = methods.apply(big, "hashed", compression=1 / 8)
        print(f"vgg_s 224x224x3 c8: hashing took {time.perf_counter() - start:.1f} s")
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            sizes = file_ratio(big, big_hashed, Path(folder))
            load_s = time.perf_counter()
            storage.load(Path(folder) / "hashed.ccz")
            load_s = time.perf_counter() - load_s
        print(f"vgg_s 224x224x3 c8 files: {sizes}, hashed load {load_s:.1f} s")
        ok &= sizes["ratio"] <= 0.15
        r = speed(big, big_hashed, (3, 224, 224), 8, max(args.threads), max(3, args.rounds // 2), batch=20,
                  train=False)
        print(f"vgg_s 224 threads={max(args.threads)} batch 1: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()))
        ok &= r["infer_expand_ratio"] <= 1.1
    if args.accuracy:
        print(f"accuracy (mnist5k): {accuracy_check(max(args.threads))}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
