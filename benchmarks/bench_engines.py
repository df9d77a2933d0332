"""Engines benchmark (DESIGN §7): fp32 on every engine, bf16 and int8 on theirs, ratios against the *fastest fp32
engine* (PyTorch NCHW / channels_last, onnxruntime, OpenVINO at strict f32), all timed interleaved in one process.

Bars, checked at 224x224x3 (batch 1): int8 >= 2.5x the fastest fp32 engine; bf16 >= 1.5x (the DESIGN's bar is for
an AMX host; on a CPU without AMX the figure is printed against the same bar and the host named); the bf16
``.ccz`` 2.0x smaller than fp32 (int8 printed beside it). At 48x48 the figures are for information (a whole
network runs in well under a millisecond there: per-call overhead decides, OpenVINO pays ~0.1-0.3 ms per call).

Cells: VGG-S (width 0.25 at 48x48 grey) and SqueezeNet-1.1 (width 0.5 at 48x48 grey), 10 classes; at 224x224x3
width 1, 8 classes; batch 1; 1 and 2 threads. Weights are untrained (speed does not depend on their values);
int8 is calibrated on 32 real mnist5k training digits (upsampled to 224 and grey copied to RGB for the 224 cells).
One ONNX export per precision feeds every ONNX engine. Each race: ``measure.alternating`` in turns of ``--block``
calls (the first not counted), order rotating, ``--rounds`` turns per engine; medians.

    .venv/bin/python benchmarks/bench_engines.py --quick    # SqueezeNet 48 + 224, < 2 minutes
    .venv/bin/python benchmarks/bench_engines.py            # both models, both sizes, 1 and 2 threads
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cnncompress import deploy, measure, methods, models, storage

from cnncompress.deploy import onnx_export
from cnncompress import hardware as cpu

PRESETS = {48: {"vgg_s": 0.25, "squeezenet1_1": 0.5}, 224: {"vgg_s": 1.0, "squeezenet1_1": 1.0}}
RACE = (("fp32", "torch"), ("fp32", "torch-channels-last"), ("fp32", "onnxruntime"), ("fp32", "openvino-fp32"),
        ("bf16", "torch-bf16"), ("bf16", "openvino-bf16"), ("int8", "onnxruntime-int8"), ("int8", "openvino-int8"))
BARS = {"int8": 2.5, "bf16": 1.5}
CALIBRATION = "32 mnist5k training digits"


def calibration_images(size: int, channels: int, count: int = 32) -> torch.Tensor:
    from cnncompress.data import build_dataset
    images = build_dataset("mnist5k", "train", input_size=48).images[::4000 // count][:count]
    if size != 48:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.repeat(1, channels, 1, 1) if channels != images.shape[1] else images


def build_cell(name: str, size: int) -> dict:
    """The fp32 model, its bf16 and int8 versions, one ONNX graph per precision, and the ``.ccz`` sizes."""
    channels, classes = (1, 10) if size == 48 else (3, 8)
    width = PRESETS[size][name]
    torch.manual_seed(0)
    base = models.build(name, classes, channels, size, width).eval()
    start = time.perf_counter()
    half = methods.apply(base, "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = methods.apply(base, "int8", calibration=calibration_images(size, channels), num_calibration=32)
        qdq = deploy.to_inference(int8).onnx_model
    example = torch.zeros(1, channels, size, size)
    graphs = {"fp32": onnx_export.export_bytes(base, example), "bf16": onnx_export.export_bytes(half, example),
              "int8": qdq}
    with tempfile.TemporaryDirectory() as folder:
        paths = {key: storage.save(model, Path(folder) / f"{key}.ccz")
                 for key, model in (("fp32", base), ("bf16", half), ("int8", int8))}
        sizes = {key: path.stat().st_size for key, path in paths.items()}
        payload = {key: storage.payload_bytes(path) for key, path in paths.items()}
    return {"label": f"{name} w{width} {size}x{size}x{channels}", "name": name, "size": size,
            "shape": (1, channels, size, size), "torch": {"fp32": base, "bf16": half, "int8": None},
            "graphs": graphs, "ccz": sizes, "payload": payload, "prepare_s": time.perf_counter() - start}


def race(cell: dict, threads: int, rounds: int, block: int) -> tuple[dict, dict, dict]:
    """``({(precision, engine): median ms}, {engine: why skipped}, {(precision, engine): fastest ms})`` of one
    interleaved race."""
    calls, skipped = {}, {}
    x = torch.randn(*cell["shape"], generator=torch.Generator().manual_seed(1))
    for precision, name in RACE:
        engine = deploy.get(name)
        source = cell["torch"][precision] if engine.runtime == "torch" else cell["graphs"][precision]
        try:
            if source is None:
                raise deploy.EngineUnavailable(f"engine {name}: no torch model at {precision}")
            run = engine.prepare(source, cell["shape"], threads)
        except deploy.EngineUnavailable as error:
            skipped[name] = str(error)
            continue
        calls[(precision, name)] = lambda run=run: run(x)
    previous, best_of = torch.get_num_threads(), {}
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times = measure.alternating(calls, rounds, block=block, warmup=2, minimum=best_of)
    finally:
        torch.set_num_threads(previous)
    return times, skipped, best_of


def report(cell: dict, threads: int, times: dict, skipped: dict, best_of: dict) -> dict:
    """Print one race (medians, and the fastest call of each engine: the steadier figure on a busy machine);
    returns the fastest fp32 engine and, per precision, its fastest engine and ratio (medians)."""
    fp32 = {name: ms for (precision, name), ms in times.items() if precision == "fp32"}
    baseline_engine = min(fp32, key=fp32.get)
    baseline = fp32[baseline_engine]
    print(f"\n{cell['label']}, batch 1, {threads} thread(s): fastest fp32 engine = {baseline_engine} "
          f"({baseline:.3f} ms)")
    floor = min(ms for (precision, _), ms in best_of.items() if precision == "fp32")
    print(f"  {'precision':9s} {'engine':22s} {'median ms':>10s} {'x fastest fp32':>15s} {'min ms':>9s} "
          f"{'x (mins)':>9s}")
    for (precision, name), ms in times.items():
        fast = best_of[(precision, name)]
        print(f"  {precision:9s} {name:22s} {ms:10.3f} {baseline / ms:14.2f}x {fast:9.3f} {floor / fast:8.2f}x")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    best = {}
    for precision in ("fp32", "bf16", "int8"):
        candidates = {name: ms for (p, name), ms in times.items() if p == precision}
        if candidates:
            name = min(candidates, key=candidates.get)
            best[precision] = {"engine": name, "ms": candidates[name], "ratio": baseline / candidates[name]}
    return {"baseline_engine": baseline_engine, "baseline_ms": baseline, "best": best,
            "times": {f"{p}/{n}": ms for (p, n), ms in times.items()},
            "min_times": {f"{p}/{n}": ms for (p, n), ms in best_of.items()}, "skipped": skipped}


def verdicts(results: list[dict], cells: dict) -> list[tuple[str, bool | None]]:
    """(line, passed) for every bar; ``None``: not applicable here (printed for information)."""
    lines = []
    amx = cpu.has_amx()
    for result in results:
        if result["size"] != 224:
            continue
        where = f"{result['label']} {result['threads']}t"
        for precision, bar in BARS.items():
            best = result["best"].get(precision)
            if best is None:
                lines.append((f"{precision} >= {bar}x fastest fp32 @224 [{where}]: no {precision} engine ran", False))
                continue
            passed = best["ratio"] >= bar
            host = "" if precision != "bf16" or amx else " (bar is for an AMX host; this CPU: " + cpu.bf16_note() + ")"
            lines.append((f"{precision} >= {bar}x fastest fp32 @224 [{where}]: {best['ratio']:.2f}x "
                          f"({best['engine']} {best['ms']:.2f} ms vs {result['baseline_engine']} "
                          f"{result['baseline_ms']:.2f} ms){host}", passed))
    for label, cell in cells.items():
        ccz, payload = cell["ccz"], cell["payload"]
        ratio, tensors = ccz["fp32"] / ccz["bf16"], payload["fp32"] / payload["bf16"]
        line = (f"bf16 .ccz 2.0x smaller [{label}]: file {ratio:.3f}x, tensors {tensors:.3f}x (int8 file "
                f"{ccz['fp32'] / ccz['int8']:.2f}x; {ccz['fp32']} / {ccz['bf16']} / {ccz['int8']} bytes)")
        if label.endswith("224x224x3"):
            lines.append((line, round(ratio, 1) >= 2.0 and tensors >= 1.99))
        else:  # the manifest (a few KB) is a visible share of a 48x48 model's file: the tensors must halve
            lines.append((line + "; 48x48: the bar is on the tensors", tensors >= 1.99))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SqueezeNet only, fewer rounds (< 2 minutes)")
    parser.add_argument("--models", nargs="+", default=["squeezenet1_1", "vgg_s"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 224], choices=[48, 224])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=12, help="turns per engine (48x48: 4x as many)")
    parser.add_argument("--block", type=int, default=3, help="calls per turn, the first not counted")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds = ["squeezenet1_1"], min(args.rounds, 6)
    environment = deploy.engine_environment()
    flags = " ".join(flag for flag, present in environment["isa"].items() if present)
    ov = environment["openvino"]
    print(f"CPU: {environment['cpu']} | flags: {flags} | AMX: {environment['amx']} | {environment['bf16']}")
    print(f"torch {environment['torch']}, onnxruntime {environment['onnxruntime']}, OpenVINO "
          + (f"{ov['version']} ({ov['device']}; capabilities {', '.join(ov['capabilities'])}; default precision "
             f"{ov['default_precision']}; ours set explicitly: {ov['precision_hints']})" if ov["available"]
             else f"missing: {ov['note']}"))
    print(f"int8 calibration: {CALIBRATION} (upsampled to 224, grey -> RGB, for the 224 cells)")
    started, load = time.perf_counter(), os.getloadavg()
    print(f"load average at start: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} CPUs")
    cells, results = {}, []
    for size in args.sizes:
        for name in args.models:
            cell = build_cell(name, size)
            cells[cell["label"]] = cell
            print(f"\n{cell['label']}: bf16 + int8 models and ONNX graphs built in {cell['prepare_s']:.1f} s")
            for threads in args.threads:
                rounds = args.rounds * (4 if size == 48 else 1)
                times, skipped, best_of = race(cell, threads, rounds, args.block)
                results.append({"label": cell["label"], "size": size, "threads": threads,
                                **report(cell, threads, times, skipped, best_of)})
            cell["torch"] = cell["graphs"] = None  # free the 224 models before the next cell
    lines = verdicts(results, cells)
    print("\nBars (224x224x3, batch 1; 48x48 figures above are for information):")
    for line, passed in lines:
        print(f"  {'PASS' if passed else 'FAIL'}  {line}")
    ok = all(passed for _, passed in lines)
    load = os.getloadavg()
    print(f"\n{'PASS' if ok else 'FAIL'} in {time.perf_counter() - started:.0f} s; load average at the end: "
          f"{load[0]:.1f} (1 min), {load[1]:.1f} (5 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment, "results": results,
                                               "ccz": {k: c["ccz"] for k, c in cells.items()}}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
