"""Benchmark of the binarization methods: XNOR-Net VGG-S latency vs PyTorch fp32 and onnxruntime fp32 (same float
architecture), measured in one process, interleaved, batch 1, at 1 and 2 threads; a per-layer profile of the XNOR
model; with ``--size``: the real ``.ccz`` bytes of VGG-S (224, RGB, 8 classes) fp32 vs ``bwn`` vs ``xnor`` and the
peak inference memory (``measure.peak_memory``: a fresh process loads the file with ``storage.load``, runs
``deploy.to_inference`` and 3 batch-1 forwards; VmHWM growth) of the fp32 and XNOR files.

    OMP_NUM_THREADS=1 env -u OPENBLAS_CORETYPE .venv/bin/python benchmarks/bench_binarize.py [--size] [--out F]

Weights are random (latency does not depend on their values). Speed-ups are ``fp32_ms / xnor_ms``.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncompress import deploy, measure, methods, models, storage
from cnncompress.kernels import bitpack
from cnncompress.methods.binarize_inference import fast_float_layers

PRESETS = {"paper 224": dict(num_classes=8, in_channels=3, input_size=224, width=1.0),
           "quick 48 w0.25": dict(num_classes=10, in_channels=1, input_size=48, width=0.25)}


def profile(model: nn.Module, x: torch.Tensor, runs: int = 10) -> dict[str, float]:
    """Median ms per top-level layer of a VGG-S (features and classifier children, each timed on the output of
    the layer before it)."""
    layers = list(model.features.named_children()) + list(model.classifier.named_children())
    times = {}
    with torch.no_grad():
        h = x
        for name, layer in layers:
            times[name] = round(1000 * measure.median(measure.time_calls(lambda: layer(h), runs, warmup=1)), 3)
            h = layer(h)
    return times


def latency_rows(preset: str, spec: dict, thread_counts, runs: int, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    float_net = models.build("vgg_s", **spec).eval()
    xnor = deploy.to_inference(methods.apply(float_net, "xnor").eval())
    float_fast = fast_float_layers(copy.deepcopy(float_net))  # fp32 with the same fast LRN / max-pool as xnor
    onnx_path = measure.export_onnx(float_net, (1, spec["in_channels"], spec["input_size"], spec["input_size"]),
                                    tmp / f"vgg_s-{spec['input_size']}.onnx")
    x = torch.randn(1, spec["in_channels"], spec["input_size"], spec["input_size"])
    feed = None
    rows = []
    for count in thread_counts:
        session = measure.onnx_session(onnx_path, count)
        feed = {session.get_inputs()[0].name: x.numpy()}
        with measure.threads(count), torch.no_grad():
            times = measure.alternating({"pytorch_fp32": lambda: float_net(x),
                                         "onnxruntime_fp32": lambda: session.run(None, feed),
                                         "pytorch_fp32_fast_lrn_pool": lambda: float_fast(x), "xnor": lambda: xnor(x)},
                                        max(1, runs // 4), block=5, pause=0.05)  # warm turns: no spinning pools
            layer_ms = profile(xnor, x)
        row = {"preset": preset, "threads": count, **{f"{k}_ms": round(v, 2) for k, v in times.items()},
               "speedup_vs_pytorch": round(times["pytorch_fp32"] / times["xnor"], 2),
               "speedup_vs_onnxruntime": round(times["onnxruntime_fp32"] / times["xnor"], 2),
               "speedup_vs_pytorch_fast_lrn_pool": round(times["pytorch_fp32_fast_lrn_pool"] / times["xnor"], 2),
               "xnor_profile_ms": layer_ms}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def size_rows(tmp: Path) -> dict:
    """Real .ccz bytes of VGG-S 224 fp32 / bwn / xnor (training and inference files), peak inference memory."""
    torch.manual_seed(0)
    float_net = models.build("vgg_s", **PRESETS["paper 224"]).eval()
    files = {"fp32": storage.save(float_net, tmp / "fp32.ccz")}
    bwn = methods.apply(float_net, "bwn")
    files["bwn"] = storage.save(bwn, tmp / "bwn.ccz")
    del bwn
    xnor = methods.apply(float_net, "xnor")
    files["xnor"] = storage.save(xnor, tmp / "xnor.ccz")
    files["xnor_inference"] = storage.save(deploy.to_inference(xnor), tmp / "xnor-inference.ccz")
    del xnor, float_net
    sizes = {name: measure.file_bytes(path) for name, path in files.items()}
    row = {"bytes": sizes, "ratio_vs_fp32": {k: round(sizes["fp32"] / v, 2) for k, v in sizes.items()}}
    # a fresh process per file: storage.load (float skeleton on the meta device), deploy.to_inference, 3 forwards
    memory = {name: round(measure.peak_memory(files[name], "infer", batch=1, num_threads=1), 1)
              for name in ("fp32", "xnor", "xnor_inference")}
    row["peak_infer_mb"] = memory
    row["memory_ratio_fp32_over_xnor_inference"] = round(memory["fp32"] / max(memory["xnor_inference"], 1e-6), 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--size", action="store_true", help="also save VGG-S 224 .ccz files and probe memory")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(json.dumps({"torch": torch.__version__, "native_kernel": bitpack.native() is not None,
                      "kernel_path": bitpack.kernel_path()}), flush=True)
    result = {"latency": []}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            result["latency"] += latency_rows(preset, PRESETS[preset], args.threads, args.runs, Path(tmp))
        if args.size:
            result["size"] = size_rows(Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    np.random.seed(0)
    main()
