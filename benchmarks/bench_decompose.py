"""Benchmark of the tensor decompositions (cp, tucker, tt): per-layer and end-to-end latency vs the baseline,
measured in the same process, interleaved, at batch 1 and 32, 1 and 2 threads, in PyTorch (NCHW and
channels_last) and onnxruntime; with ``--accuracy``: reconstruction error and accuracy before / after fine-tuning
on mnist5k.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decompose.py [--accuracy] [--paper] [--out FILE]

Speed-ups are ``baseline_ms / decomposed_ms`` (> 1 = faster); the end-to-end ratio is quoted against the
*fastest* baseline runtime (``best``) as well as per runtime.  ``--paper`` adds SqueezeNet-1.1 at 224x224
width 1 (the paper's size) for latency (random weights: latency does not depend on the values).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncompress import deploy, measure, methods, models, storage
from cnncompress.measure import export_onnx, onnx_session, threads
from cnncompress.methods import decompose as D

SQUEEZE_LAST = ["features.fire8.expand3x3", "features.fire9.expand3x3"]
VGG_CONVS = ["features.conv3", "features.conv4", "features.conv5"]
VGG_FCS = ["classifier.fc6", "classifier.fc7"]
QUICK = {"vgg_s": dict(num_classes=10, in_channels=1, input_size=48, width=0.25),
         "squeezenet1_1": dict(num_classes=10, in_channels=1, input_size=48, width=0.5)}
PAPER = {"squeezenet1_1": dict(num_classes=8, in_channels=3, input_size=224, width=1.0)}
# (label, model, method, config); the quick-preset rows are the MethodInfo.bench rows
CASES = [
    ("cp r192 fire8-9 (paper rank)", "squeezenet1_1", "cp", {"layers": SQUEEZE_LAST, "rank": 192, "n_iter_max": 10}),
    ("cp r48 fire8-9", "squeezenet1_1", "cp", {"layers": SQUEEZE_LAST, "rank": 48, "n_iter_max": 50}),
    ("tucker 1/4 conv3-5", "vgg_s", "tucker", {"layers": VGG_CONVS, "rank": 0.25}),
    ("tt r8 fc6-7", "vgg_s", "tt", {"layers": VGG_FCS, "rank": 8}),
    ("tucker 1/4 conv3-5 + tt r8 fc6-7", "vgg_s", "tucker+tt", {}),
]


def interleaved(calls: dict, budget_s: float = 1.0, min_runs: int = 7, max_runs: int = 200,
                minimum: dict | None = None) -> dict[str, float]:
    """``measure.alternating`` with as many runs as fit in ``budget_s`` (``min_runs``..``max_runs``).
    ``minimum`` (a dict) receives the fastest run of each call: on a shared, busy CPU it is the steadier figure."""
    one_round = sum(measure.time_calls(call, 1, warmup=2)[0] for call in calls.values())  # a first estimate
    runs = int(max(min_runs, min(max_runs, budget_s / max(one_round, 1e-6))))
    return measure.alternating(calls, runs, warmup=0, minimum=minimum)


def build(model_name: str, preset: dict) -> nn.Module:
    torch.manual_seed(0)
    return models.build(model_name, **preset).eval()


def decompose(model: nn.Module, method: str, config: dict) -> nn.Module:
    if method == "tucker+tt":
        model = methods.apply(model, "tucker", layers=VGG_CONVS, rank=0.25)
        return methods.apply(model, "tt", layers=VGG_FCS, rank=8)
    return methods.apply(model, method, **config)


def layer_inputs(model: nn.Module, names: list[str], input_shape: tuple) -> dict[str, tuple]:
    shapes, hooks = {}, []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: shapes.__setitem__(name, tuple(args[0].shape[1:]))))
    with torch.no_grad():
        model(torch.randn(*input_shape))
    for hook in hooks:
        hook.remove()
    return shapes


def _layouts(module: nn.Module, x: torch.Tensor):
    yield "nchw", module, x
    if x.dim() == 4:
        yield "cl", copy.deepcopy(module).to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def per_layer(base: nn.Module, small: nn.Module, fast: nn.Module, names: list[str], input_shape: tuple) -> list:
    rows = []
    shapes = layer_inputs(base, names, input_shape)
    for name in names:
        original, decomposed, inference = (m.get_submodule(name) for m in (base, small, fast))
        for batch in (1, 32):
            for n_threads in (1, 2):
                x = torch.randn(batch, *shapes[name])
                calls = {}
                for tag, module in (("orig", original), ("dec", decomposed), ("inf", inference)):
                    for layout, m, xx in _layouts(module, x):
                        calls[f"{tag}_{layout}"] = (lambda m=m, xx=xx: m(xx))
                fastest = {}
                with threads(n_threads):
                    ms = interleaved(calls, budget_s=0.6, minimum=fastest)
                layouts = sorted({k.split("_", 1)[1] for k in ms})
                best_orig = min(ms[f"orig_{lay}"] for lay in layouts)
                best_inf = min(ms[f"inf_{lay}"] for lay in layouts)
                rows.append({"layer": name, "batch": batch, "threads": n_threads, "ms": ms, "min_ms": fastest,
                             "speedup_same_layout": {lay: ms[f"orig_{lay}"] / ms[f"inf_{lay}"] for lay in layouts},
                             "speedup_best_vs_best": best_orig / best_inf})
    return rows


def _onnx_call(model: nn.Module, shape: tuple, folder: str, tag: str):
    path = export_onnx(model, shape, Path(folder) / f"{tag}.onnx", fallback=True)
    session = onnx_session(path, num_threads=torch.get_num_threads())
    feed = {session.get_inputs()[0].name: np.random.randn(*shape).astype(np.float32)}
    return lambda: session.run(None, feed)


@torch.no_grad()
def end_to_end(base: nn.Module, fast: nn.Module, input_shape: tuple, batches=(1, 32), budget_s: float = 1.5) -> list:
    rows = []
    for batch in batches:
        shape = (batch, *input_shape[1:])
        x = torch.randn(*shape)
        for n_threads in (1, 2):
            with threads(n_threads), tempfile.TemporaryDirectory() as tmp:
                calls = {}
                for tag, model in (("base", base), ("dec", fast)):
                    for layout, m, xx in _layouts(model, x):
                        calls[f"{tag}_torch_{layout}"] = (lambda m=m, xx=xx: m(xx))
                    calls[f"{tag}_ort"] = _onnx_call(model, shape, tmp, tag)
                fastest = {}
                ms = interleaved(calls, budget_s=budget_s, max_runs=100, minimum=fastest)
            runtimes = sorted({k.split("_", 1)[1] for k in ms})
            best_base = min(ms[f"base_{r}"] for r in runtimes)
            best_dec = min(ms[f"dec_{r}"] for r in runtimes)
            rows.append({"batch": batch, "threads": n_threads, "ms": ms, "min_ms": fastest,
                         "speedup_min": min(v for k, v in fastest.items() if k.startswith("base_"))
                         / min(v for k, v in fastest.items() if k.startswith("dec_")),
                         "speedup": {r: ms[f"base_{r}"] / ms[f"dec_{r}"] for r in runtimes},
                         "speedup_best_vs_best": best_base / best_dec})
    return rows


BASELINE_EPOCHS = {"vgg_s": 3, "squeezenet1_1": 8}
# VGG-S: SGD lr 0.01 momentum 0.9 as the quick recipe.  SqueezeNet-1.1 (no BN, conv10 initialised N(0, 0.01))
# stays at chance for 6 epochs of that SGD (and of lr 0.001/0.003) on mnist5k here, so its baseline is trained
# with Adam lr 1e-3 instead; the fine-tuning after decomposition is the usual SGD lr 0.001 momentum 0.9.


def _adam_fit(model: nn.Module, train, epochs: int, batch_size: int) -> None:
    import torch.nn.functional as F
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(train.images[index]), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def accuracy_rows(quick: dict, out_dir: Path, cache: Path) -> list:
    """Train (or reuse from ``cache``) the quick baselines, decompose, accuracy before / after 1 epoch of FT."""
    from cnncompress.data import build_dataset
    from cnncompress.training.trainer import Trainer, TrainConfig, error_rate, load_weights, save_weights
    train, test = build_dataset("mnist5k", "train", input_size=48), build_dataset("mnist5k", "test", input_size=48)
    val = build_dataset("mnist5k", "val", input_size=48)  # the Trainer's choices; test is reported
    baselines, rows = {}, []
    for name, preset in quick.items():
        weights = cache / f"{name}.safetensors"
        t0 = time.perf_counter()
        if weights.exists():
            model = load_weights(weights)
        else:
            model = build(name, preset).train()
            if name == "squeezenet1_1":
                _adam_fit(model, train, BASELINE_EPOCHS[name], models.DEFAULT_BATCH_SIZE[name])
            else:
                Trainer(model, train, val, TrainConfig(epochs=BASELINE_EPOCHS[name], lr=0.01, momentum=0.9,
                                                        batch_size=models.DEFAULT_BATCH_SIZE[name], seed=0),
                        progress=False).fit()
            save_weights(model, weights)
        baselines[name] = model.eval()
        storage.save(model, out_dir / f"{name}.ccz")
        rows.append({"label": f"baseline {name}", "accuracy": 100 * (1 - error_rate(model, test)),
                     "params": D.param_count(model), "ccz_bytes": (out_dir / f"{name}.ccz").stat().st_size,
                     "train_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    for label, name, method, config in CASES:
        base = baselines[name]
        t0 = time.perf_counter()
        small = decompose(base, method, config)
        decompose_s = time.perf_counter() - t0
        names = [n for n, m in small.named_modules() if n and isinstance(m, (nn.Sequential, D.TTLinear))
                 and not isinstance(base.get_submodule(n), nn.Sequential)]
        errors = {n: D.reconstruction_error(base.get_submodule(n), small.get_submodule(n)) for n in names}
        before = 100 * (1 - error_rate(small.eval(), test))
        t0 = time.perf_counter()
        Trainer(small.train(), train, val, TrainConfig(epochs=1, lr=0.001, momentum=0.9,
                                                        batch_size=models.DEFAULT_BATCH_SIZE[name], seed=0),
                progress=False).fit()
        finetune_s = time.perf_counter() - t0
        fast = deploy.to_inference(small.eval())
        path = out_dir / f"{method}-{len(rows)}.ccz"
        storage.save(fast, path)
        rows.append({"label": label, "model": name, "reconstruction_error": errors, "accuracy_before_ft": before,
                     "accuracy_after_ft": 100 * (1 - error_rate(fast, test)), "params": D.param_count(fast),
                     "param_ratio": D.param_count(fast) / D.param_count(base), "ccz_bytes": path.stat().st_size,
                     "ccz_ratio": path.stat().st_size / (out_dir / f"{name}.ccz").stat().st_size,
                     "decompose_s": decompose_s, "finetune_s": finetune_s})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", action="store_true", help="train baselines, report accuracy before/after FT")
    parser.add_argument("--paper", action="store_true", help="add SqueezeNet-1.1 at 224x224, width 1 (latency)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    parser.add_argument("--only", nargs="*", help="case labels to run (default: all)")
    parser.add_argument("--out", default="results/bench_decompose.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out.parent / "bench_decompose_baselines").mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "cases": []}
    if args.accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            report["accuracy"] = accuracy_rows(QUICK, Path(tmp), out.parent / "bench_decompose_baselines")
    presets = [("quick", QUICK)] + ([("paper", PAPER)] if args.paper else [])
    for preset_name, preset in presets:
        for label, model_name, method, config in CASES:
            if model_name not in preset or (args.only and label not in args.only):
                continue
            base = build(model_name, preset[model_name])
            small = decompose(base, method, config).eval()
            fast = deploy.to_inference(copy.deepcopy(small)).eval()
            names = sorted({n for n, m in small.named_modules() if isinstance(m, (nn.Sequential, D.TTLinear))
                            and n and not isinstance(base.get_submodule(n), nn.Sequential)})
            size = preset[model_name]
            shape = (1, size["in_channels"], size["input_size"], size["input_size"])
            case = {"label": label, "preset": preset_name, "model": model_name, "size": size,
                    "params": [D.param_count(base), D.param_count(fast)]}
            if not args.no_layers:
                case["layers"] = per_layer(base, small, fast, names, shape)
            batches = (1, 32) if preset_name == "quick" else (1, 8)
            case["end_to_end"] = end_to_end(base, fast, shape, batches=batches)
            report["cases"].append(case)
            print(summary(case), flush=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


def summary(case: dict) -> str:
    lines = [f"== {case['label']} [{case['preset']}] params {case['params'][0]} -> {case['params'][1]}"]
    for row in case.get("layers", []):
        same = " ".join(f"{k}x{v:.2f}" for k, v in row["speedup_same_layout"].items())
        lines.append(f"  layer {row['layer']:28s} b{row['batch']:<2d} t{row['threads']}  same-layout {same}  "
                     f"best/best x{row['speedup_best_vs_best']:.2f}")
    for row in case["end_to_end"]:
        per = " ".join(f"{k}x{v:.2f}" for k, v in row["speedup"].items())
        best_base = min(v for k, v in row["ms"].items() if k.startswith("base_"))
        best_dec = min(v for k, v in row["ms"].items() if k.startswith("dec_"))
        lines.append(f"  model b{row['batch']:<2d} t{row['threads']}  {per}  best {best_base:.3f}ms -> "
                     f"{best_dec:.3f}ms x{row['speedup_best_vs_best']:.2f} (fastest runs x{row['speedup_min']:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
