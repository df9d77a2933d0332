"""Is each speed-"real" method faster at the size a user runs? Every method whose ``MethodInfo.speed`` is
``real`` is timed against the *fastest fp32 engine* for its float baseline at both presets, 1 and 2 threads,
batch 1, everything of one preset and thread count interleaved in one process (``measure.alternating``, turns of
``--block`` calls, order rotating, medians):

* 48: the bench model (``vgg_s`` width 0.25 / ``squeezenet1_1`` width 0.5, 48x48 grey, 10 classes: FER2013 size);
* 224: the paper size (width 1.0, 224x224 RGB, 8 classes).

Each method is applied with its bench row's model and config (``MethodInfo.bench``, else its Table 2 row) to
untrained weights (speed does not depend on their values; data-dependent methods get 32 mnist5k digits), then
deployed (``to_inference``) and run on every engine of its precision (``deploy.prepared``: an engine whose
output differs from the model is skipped, never timed); its speed-up is baseline-on-its-fastest-fp32-engine /
method-on-its-fastest-engine. The label per preset is derived by ``engine_race.preset_label`` from the slower of the
two thread counts: ``real`` at >= 1.05x, ``none`` below 0.95x, ``same speed`` between (the noise of the timing).

    .venv/bin/python benchmarks/bench_presets.py --out docs/results/speed-presets   # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_presets.py --sizes 224 --methods int8 --arch squeezenet1_1 --out DIR
                                                               # one method on the other model

Writes ``presets.json`` (every time, engine and skip reason) and ``table.md`` (the README's methods-table column).
``early-exit`` is not in it: its saving is per sample and depends on the data's exit rate
(``benchmarks/bench_early_exit.py`` measures it on MNIST with trained exits).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cnncompress import deploy, methods, models
from cnncompress.experiments.engine_race import preset_label
from cnncompress.experiments.environment import environment

PRESETS = {48: {"channels": 1, "classes": 10, "width": {"vgg_s": 0.25, "squeezenet1_1": 0.5}},
           224: {"channels": 3, "classes": 8, "width": {"vgg_s": 1.0, "squeezenet1_1": 1.0}}}
# methods without a bench row: the Table 2 recipe's rows (experiments/table2.yaml)
TABLE2_ROWS = {"tucker": {"model": "vgg_s", "config": {"layers": ["features.conv3", "features.conv4",
                                                                  "features.conv5"], "rank": 0.25}},
               "tt": {"model": "vgg_s", "config": {"layers": ["classifier.fc6", "classifier.fc7"], "rank": 8}},
               "prune-magnitude": {"model": "vgg_s", "config": {"sparsity": 0.95, "layers": "fc"}}}
EXCLUDED = {"early-exit": "per-sample exits: the saving depends on the data's exit rate "
                          "(benchmarks/bench_early_exit.py, trained exits on MNIST)"}


def speed_real_methods() -> list[str]:
    return [name for name in methods.available()
            if methods.info(name).speed == "real" and name not in EXCLUDED]


def digits(size: int, channels: int, count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` mnist5k training digits at ``size`` with ``channels`` (grey copied to RGB), and their labels
    modulo the preset's class count (the 224 preset has 8 classes; the labels only steer Taylor importance)."""
    from cnncompress.data import build_dataset
    data = build_dataset("mnist5k", "train", input_size=48)
    step = len(data.images) // count
    images, labels = data.images[::step][:count], data.labels[::step][:count] % PRESETS[size]["classes"]
    if size != 48:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images.repeat(1, channels, 1, 1) if channels != images.shape[1] else images), labels


def build(size: int, names: list[str], arch: str | None = None) -> tuple[dict, dict, dict]:
    """({model name: float baseline}, {method: (model name, deployed model, config)}, {method: why not built}).
    ``arch``: every method on this model instead of its bench row's (e.g. int8 on SqueezeNet-1.1)."""
    preset = PRESETS[size]
    data = digits(size, preset["channels"])
    bases, rows, failed, arch_override = {}, {}, {}, arch
    for name in names:
        row = TABLE2_ROWS.get(name) or (methods.info(name).bench or ({},))[0]
        if arch_override:
            row = {"model": arch_override}  # its default config: a row's layer names belong to its own model
        arch = row.get("model", "vgg_s")
        if arch not in bases:
            torch.manual_seed(0)
            bases[arch] = models.build(arch, preset["classes"], preset["channels"], size,
                                       preset["width"][arch]).eval()
        config = methods.with_data(name, dict(row.get("config", {})), data)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                deployed = deploy.to_inference(methods.apply(bases[arch], name, **config)).eval()
        except Exception as error:  # noqa: BLE001 - one method that cannot be built is reported, not fatal
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        shown = {k: v for k, v in config.items() if k != methods.info(name).data_option}
        rows[name] = (arch, deployed, shown)
        print(f"  {size}: built {name} on {arch} {shown} in {time.perf_counter() - start:.1f} s", flush=True)
    return bases, rows, failed


def race(size: int, bases: dict, rows: dict, threads: int, rounds: int, block: int) -> dict:
    """One interleaved timing of every baseline on every fp32 engine and every method on its precision's engines."""
    preset = PRESETS[size]
    shape = (1, preset["channels"], size, size)
    contenders = {("base", arch): (base, deploy.names("fp32")) for arch, base in bases.items()}
    contenders.update({("row", name): (model, deploy.names(deploy.model_precision(model)))
                       for name, (arch, model, _) in rows.items()})
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    timed, why = deploy.race(contenders, shape, threads, rounds, block, x)
    times = {(side, who, engine): ms for ((side, who), engine), ms in timed.items()}
    skipped = {f"{who}{' baseline' if side == 'base' else ''} {engine}": reason
               for ((side, who), engine), reason in why.items()}
    out = {"threads": threads, "skipped": skipped, "baselines": {}, "methods": {}}
    for arch in bases:
        base_ms = {e: ms for (side, who, e), ms in times.items() if side == "base" and who == arch}
        best = min(base_ms, key=base_ms.get)
        out["baselines"][arch] = {"engine": best, "ms": base_ms[best], "engines_ms": base_ms}
    for name, (arch, _, _) in rows.items():
        row_ms = {e: ms for (side, who, e), ms in times.items() if side == "row" and who == name}
        if not row_ms:
            out["methods"][name] = {"engine": None, "speedup": None, "engines_ms": {}}
            continue
        best = min(row_ms, key=row_ms.get)
        out["methods"][name] = {"engine": best, "ms": row_ms[best], "engines_ms": row_ms,
                                "speedup": out["baselines"][arch]["ms"] / row_ms[best]}
    return out


def table(results: dict, names: list[str], failed: dict) -> str:
    """Markdown: per method and preset the speed-ups at 1 / 2 threads, the fastest engine, and the label."""
    lines = ["| method | 48×48 grey: × fastest fp32 (1 t / 2 t), engine | 224×224 RGB: × fastest fp32 (1 t / 2 t), "
             "engine | speed label (derived) |", "|---|---|---|---|"]
    for name in names:
        cells, per_preset = [], {}
        for size in PRESETS:
            runs = results.get(str(size), {}).get("runs", [])
            ratios = [run["methods"].get(name, {}).get("speedup") for run in runs]
            engine = next((run["methods"][name]["engine"] for run in runs
                           if run["methods"].get(name, {}).get("engine")), None)
            per_preset[size] = ratios
            if not runs or name in failed.get(str(size), {}):
                cells.append("not built: " + failed.get(str(size), {}).get(name, "not run"))
            else:
                why = "" if engine else ": no engine ran it (see presets.json)"
                cells.append(" / ".join("—" if r is None else f"{r:.2f}×" for r in ratios) + f", {engine}{why}")
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} | {preset_label(per_preset)} |")
    for name, why in EXCLUDED.items():
        lines.append(f"| `{name}` | not measured here | not measured here | {why} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for presets.json and table.md")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every speed-real method")
    parser.add_argument("--arch", choices=["vgg_s", "squeezenet1_1"],
                        help="run every method on this model (default: each method's bench row's model)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--update", action="store_true",
                        help="keep the other presets of an existing --out/presets.json; re-measure only --sizes")
    args = parser.parse_args(argv)
    names = args.methods or speed_real_methods()
    args.out.mkdir(parents=True, exist_ok=True)
    results, failed = {}, {}
    if args.update and (args.out / "presets.json").is_file():
        results = json.loads((args.out / "presets.json").read_text())
        failed = {size: results[size].get("failed", {}) for size in map(str, PRESETS) if size in results}
    results.setdefault("commands", []).append(" ".join(sys.argv))
    results["environment"] = environment()
    for size in args.sizes:
        bases, rows, failed[str(size)] = build(size, names, args.arch)
        results[str(size)] = {"runs": [], "configs": {n: {"model": a, "config": repr(c)} for n, (a, _, c) in rows.items()},
                              "failed": failed[str(size)]}
        for threads in args.threads:
            run = race(size, bases, rows, threads, args.rounds, args.block)
            results[str(size)]["runs"].append(run)
            for arch, base in run["baselines"].items():
                print(f"{size} {threads}t baseline {arch}: {base['engine']} {base['ms']:.3f} ms", flush=True)
            for name, row in run["methods"].items():
                ratio = "—" if row["speedup"] is None else f"{row['speedup']:.2f}x"
                print(f"{size} {threads}t {name:18s} {ratio:>7s} on {row['engine']}", flush=True)
            (args.out / "presets.json").write_text(json.dumps(results, indent=1, default=str))
    text = table(results, names, failed)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
