"""The XNOR VGG-S as a user runs it: one model per process, against the float net on onnxruntime (its fastest fp32
engine at 224), batch 1, turns of ``--calls`` calls each (medians of per-turn medians).

``bench_presets.py`` races every engine of both models in one process; there the other contenders' thread pools
(PyTorch's OpenMP workers, OpenVINO, onnxruntime) keep the two cores busy between turns, which costs the XNOR
model's POSIX threads more than the float engines. This script times only the two models a deployment compares.

    env -u OPENBLAS_CORETYPE .venv/bin/python benchmarks/bench_xnor_alone.py --threads 2        # ~1 min
"""
from __future__ import annotations

import argparse
import statistics

import torch

from cnncompress import deploy, measure, methods, models


def _median_ms(call, calls: int, warmup: int = 3) -> float:
    return 1000 * measure.median(measure.time_calls(call, calls, warmup))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shape = (1, 3, args.size, args.size)
    float_net = models.build("vgg_s", 8, 3, args.size, width=1.0).eval()
    xnor = deploy.to_inference(methods.apply(float_net, "xnor")).eval()
    baseline = deploy.prepare("onnxruntime", float_net, shape, args.threads)
    torch.set_num_threads(args.threads)
    x = torch.randn(*shape)
    times = {"xnor": [], "onnxruntime fp32": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            times["xnor"].append(_median_ms(lambda: xnor(x), args.calls))
            times["onnxruntime fp32"].append(_median_ms(lambda: baseline(x), args.calls))
    ms = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.size}x{args.size}, {args.threads} thread(s): xnor {ms['xnor']:.1f} ms, onnxruntime fp32 "
          f"{ms['onnxruntime fp32']:.1f} ms: {ms['onnxruntime fp32'] / ms['xnor']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
