"""Training-step speed: which of channels_last, bf16 autocast and torch.compile makes the Trainer faster?

Variants of one SGD step (forward, cross-entropy, backward, update), each on its own copy of the same model and
batch, timed in one process taking turns (``measure.alternating``, turns of ``--block`` steps, the first of each
turn not counted), medians; the ratio is fp32 NCHW time / variant time (> 1 = faster):

  fp32        NCHW, float32 (the Trainer today; the baseline)
  cl          channels_last model and input
  bf16        forward + loss under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights and update stay fp32);
              only where the CPU has bf16 kernels (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX512-BF16
              or AMX); elsewhere it is skipped with a line (autocast would run emulated, slower)
  cl+bf16     both
  compile     ``torch.compile(model)`` (inductor); the compile time is printed apart and not counted

Cases: the bench presets VGG-S x0.25 (batch 20) and SqueezeNet-1.1 x0.5 (batch 32) at 48x48 grey, 10 classes;
``--paper``: VGG-S x1 at 224x224x3, 8 classes, batch 8 (a minute or two). ``--accuracy``: every variant that is
>= ``BAR`` x faster on a case trains that case's model for ``--epochs`` on mnist5k from the same initial weights
in the same order (plain loop, SGD lr 0.01, the variant's step) and prints its test accuracy next to fp32's.

    OPENBLAS_CORETYPE=... .venv/bin/python benchmarks/bench_train.py [--threads 2] [--paper] [--accuracy]

PASS/FAIL lines: a variant is worth adopting when it is >= BAR x faster on every bench preset (and, with
``--accuracy``, within ``ACCURACY_NOISE`` points of fp32).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import measure, models

BAR = 1.5
ACCURACY_NOISE = 0.5  # percentage points: the seed-to-seed spread of the baselines
CASES = {"vgg_s-48": ("vgg_s", 0.25, 48, 1, 10, 20), "squeezenet1_1-48": ("squeezenet1_1", 0.5, 48, 1, 10, 32)}
PAPER = {"vgg_s-224": ("vgg_s", 1.0, 224, 3, 8, 8)}


def bf16_supported() -> bool:
    """True where the CPU has native bf16 kernels (oneDNN: AVX512-BF16 or AMX-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def variants() -> list[str]:
    names = ["fp32", "cl"]
    if bf16_supported():
        names += ["bf16", "cl+bf16"]
    else:
        print("bf16: no native bf16 kernels on this CPU (no AVX512-BF16/AMX): skipped", flush=True)
    return names + ["compile"]


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, variant: str, lr: float = 1e-4):
    """One SGD step of ``variant`` on its own copy of ``model``; returns (step, trained copy)."""
    net = copy.deepcopy(model).train()
    x = images
    if "cl" in variant.split("+"):
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if variant == "compile" else net
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    bf16 = "bf16" in variant

    def step(x=x, y=labels):
        if "cl" in variant.split("+"):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step, net


def time_case(name: str, spec: tuple, names: list[str], runs: int, block: int) -> dict:
    model_name, width, size, channels, classes, batch = spec
    torch.manual_seed(0)
    model = models.build(model_name, classes, channels, size, width)
    images, labels = torch.randn(batch, channels, size, size), torch.randint(0, classes, (batch,))
    steps, compile_s = {}, None
    for variant in names:
        steps[variant] = make_step(model, images, labels, variant)[0]
        if variant == "compile":
            started = time.perf_counter()
            measure.time_calls(steps[variant], 0, warmup=2)  # compiles (forward and backward graphs)
            compile_s = time.perf_counter() - started
    ms = measure.alternating(steps, runs=runs, block=block, warmup=2)
    ratios = {v: ms["fp32"] / ms[v] for v in names}
    print(f"{name} batch {batch}: " + ", ".join(f"{v} {ms[v]:.1f} ms ({ratios[v]:.2f}x)" for v in names)
          + (f"; compile took {compile_s:.0f} s" if compile_s is not None else ""), flush=True)
    return {"case": name, "batch": batch, "ms": ms, "ratio": ratios, "compile_s": compile_s}


def accuracy_run(spec: tuple, variant: str, epochs: int, seed: int = 0) -> float:
    """Test accuracy (%) after ``epochs`` of plain SGD (lr 0.01, momentum 0.9) with the variant's step; the same
    initial weights and data order for every variant."""
    from cnncompress.data import build_dataset
    model_name, width, size, _, _, batch = spec
    train = build_dataset("mnist5k", "train", input_size=size)
    test = build_dataset("mnist5k", "test", input_size=size)
    torch.manual_seed(seed)
    model = models.build(model_name, train.num_classes, train.channels, size, width)
    step, net = make_step(model, train.images[:batch], train.labels[:batch], variant, lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        torch.manual_seed(seed)
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            step(train.images[index], train.labels[index])
    return measure.accuracy(net.to(memory_format=torch.contiguous_format).eval(), test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8, help="turns per variant")
    parser.add_argument("--block", type=int, default=4, help="steps per turn (the first is not counted)")
    parser.add_argument("--paper", action="store_true", help="also VGG-S x1 at 224x224x3, batch 8")
    parser.add_argument("--accuracy", action="store_true", help="short equal training run per fast variant")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", nargs="+", help="variants to time (fp32 is always timed)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [v for v in variants() if not args.only or v == "fp32" or v in args.only]
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, bf16 kernels {bf16_supported()}", flush=True)
    cases = {**CASES, **(PAPER if args.paper else {})}
    results = [time_case(name, spec, names, args.runs if name in CASES else max(2, args.runs // 4), args.block)
               for name, spec in cases.items()]
    fast = [v for v in names if v != "fp32" and all(r["ratio"][v] >= BAR for r in results if r["case"] in CASES)]
    for variant in names[1:]:
        worst = min(r["ratio"][variant] for r in results if r["case"] in CASES)
        print(f"{'PASS' if variant in fast else 'FAIL'} {variant}: >= {BAR}x faster on every bench preset "
              f"(slowest case {worst:.2f}x)", flush=True)
    accuracy = {}
    if args.accuracy:
        for name, spec in CASES.items():
            for variant in ["fp32"] + [v for v in names[1:] if v in fast or len(args.only or []) > 0]:
                accuracy[f"{name}/{variant}"] = accuracy_run(spec, variant, args.epochs)
                print(f"accuracy {name} {variant}: {accuracy[f'{name}/{variant}']:.2f}% after {args.epochs} epochs",
                      flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results, "fast": fast, "accuracy": accuracy, "threads": args.threads,
                       "torch": torch.__version__}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
