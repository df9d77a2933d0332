"""Reduced-precision performance bars (DESIGN §7): int8 >= 3x faster than PyTorch fp32 and >= 1.5x faster than
onnxruntime fp32 at batch 1; int8 ``.ccz`` ~4x smaller, fp16 ~2x. Also reports fp16 compute on CPU (honest: slow)
and the fixed-point training-step overhead (simulated in float32).

All timings of one (model, threads, batch) cell take turns (``measure.alternating``): torch fp32 NCHW, torch fp32
channels_last, ORT fp32, ORT int8, ... each run ``--block`` times in a row (the first not counted), the order
rotating; medians. "PyTorch fp32" is the faster of the two layouts. Both ONNX graphs come from the same export
(LRN as cheap static ops, ``cnncompress.deploy.onnx_export``). The speed bars are checked at ``--size 224`` (the
papers' input); the default micro models (< 0.3 ms per image) are reported only.

    .venv/bin/python benchmarks/bench_quantize.py              # bench models (48x48 grey)
    .venv/bin/python benchmarks/bench_quantize.py --size 224   # paper input size (RGB, 8 classes): the bars

Default models: vgg_s width 0.25 and squeezenet1_1 width 0.5 at 48x48x1, 10 classes (the ``cnncompress bench``
models); ``--size 224`` builds them at width 1.0, 224x224x3, 8 classes. Speed does not depend on the weights'
values, so the models are untrained and int8 is calibrated on synthetic inputs.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from cnncompress import deploy, measure, methods, models, storage



from cnncompress.deploy import onnx_export
def cell(base: nn.Module, half: nn.Module, int8_model, shape, threads: int, batch: int, rounds: int,
         block: int) -> dict:
    torch.set_num_threads(threads)
    x = torch.randn(batch, *shape)
    xc = x.contiguous(memory_format=torch.channels_last)
    last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    fp32 = measure.onnx_session(onnx_export.export_proto(base, x[:1]).SerializeToString(), threads)
    int8 = measure.onnx_session(int8_model.onnx_model, threads)
    array = x.numpy()
    calls = {"torch_nchw": lambda: base(x), "torch_cl": lambda: last(xc),
             "ort_fp32": lambda: fp32.run(None, {"input": array}), "ort_int8": lambda: int8.run(None, {"input": array})}
    if half is not None:
        calls["torch_fp16"] = lambda: half(x)
    with torch.inference_mode():
        t = measure.alternating(calls, rounds, block=block, warmup=3, pause=0.05)
    t["torch_fp32"] = min(t["torch_nchw"], t["torch_cl"])
    t["int8_vs_torch"] = t["torch_fp32"] / t["ort_int8"]
    t["int8_vs_ort"] = t["ort_fp32"] / t["ort_int8"]
    return t


def fixed_point_step(base: nn.Module, shape, rounds: int, batch: int = 20) -> dict:
    """Training-step time of fixed-point <4,12> stochastic vs fp32 (interleaved), at the current thread count."""
    fixed = methods.apply(base, "fixed-point")
    x, y = torch.randn(batch, *shape), torch.randint(0, 8, (batch,))
    steps = {}
    for name, model in (("fp32", copy.deepcopy(base).train()), ("fixed", fixed.train())):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        layers = [m for m in model.modules() if hasattr(m, "after_step")]

        def step(model=model, optimizer=optimizer, layers=layers):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            for layer in layers:
                layer.after_step()
        steps[name] = step
    t = measure.alternating(steps, rounds, warmup=1)
    return {"train_fp32_ms": t["fp32"], "train_fixed_ms": t["fixed"], "ratio": t["fixed"] / t["fp32"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=20, help="turns per call at batch 1 (fewer at batch 32)")
    parser.add_argument("--block", type=int, default=5,
                        help="calls per turn, the first not counted (1 = alternate call by call)")
    parser.add_argument("--size", type=int, default=48, help="48 (bench models) or 224 (paper size)")
    parser.add_argument("--models", nargs="+", default=["squeezenet1_1", "vgg_s"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ok = True
    paper = args.size >= 224
    for name in args.models:
        width = 1.0 if paper else (0.25 if name == "vgg_s" else 0.5)
        channels, classes = (3, 8) if paper else (1, 10)
        shape = (channels, args.size, args.size)
        base = models.build(name, classes, channels, args.size, width).eval()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = methods.apply(base, "int8", num_calibration=32)
        int8_model = deploy.to_inference(quantized)
        prepare_s = time.perf_counter() - start
        half = methods.apply(base, "fp16", compute="fp16").eval()
        with tempfile.TemporaryDirectory() as folder:
            paths = {codec: storage.save(model, Path(folder) / f"{codec}.ccz")
                     for codec, model in (("fp32", base), ("int8", quantized), ("fp16", methods.apply(base, "fp16")))}
            sizes = {codec: path.stat().st_size for codec, path in paths.items()}
            payload = {codec: storage.payload_bytes(path) for codec, path in paths.items()}
        label = f"{name} w{width} {args.size}x{args.size}x{channels}"
        print(f"{label}: int8 calibrate+build {prepare_s:.1f} s; file bytes {sizes}; "
              f"fp32/int8 = {sizes['fp32'] / sizes['int8']:.2f}x (tensor payload {payload['fp32'] / payload['int8']:.2f}x), "
              f"fp32/fp16 = {sizes['fp32'] / sizes['fp16']:.2f}x")
        ok &= payload["fp32"] / payload["int8"] >= 3.5
        for threads in args.threads:
            for batch in args.batches:
                rounds = args.rounds if batch == 1 else max(3, args.rounds // 6)
                block = args.block if batch == 1 or not paper else 2  # seconds per call at 224, batch 32
                timed_half = half if batch == 1 and not paper else None  # fp16 compute: seconds per call at 224
                t = cell(base, timed_half, int8_model, shape, threads, batch, rounds, block)
                print(f"{label} threads={threads} batch={batch}: " + ", ".join(f"{k}={v:.3f}" for k, v in t.items()))
                if batch == 1 and paper:
                    ok &= t["int8_vs_torch"] >= 3.0 and t["int8_vs_ort"] >= 1.5
        torch.set_num_threads(max(args.threads))
        if not paper:
            r = fixed_point_step(base, shape, rounds=max(5, args.rounds // 6))
            print(f"{label} threads={max(args.threads)} fixed-point train step (batch 20): "
                  + ", ".join(f"{k}={v:.3f}" for k, v in r.items()))
    speed = "at batch 1" if paper else "checked only with --size 224: these micro models run in < 0.3 ms"
    print(("PASS" if ok else "FAIL") + f" (bars: int8 payload >= 3.5x; int8 >= 3x PyTorch fp32 and >= 1.5x ORT fp32 {speed})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
