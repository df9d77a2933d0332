"""XNOR-Net VGG-S on the AVX2 kernels against the fastest fp32 engine, one interleaved race per input size
(issue 34's AVX2 bar: >= 4x at 224x224 and >= 1.5x at 48x48, batch 1, 1 thread, ``CNNCOMPRESS_ISA=avx2``).

The XNOR model (``methods.apply(vgg_s, "xnor")``, deployed: the bit-packed popcount GEMMs and fused epilogues of
``cnncompress.kernels``) and its float network on every fp32 engine (PyTorch NCHW / channels_last, onnxruntime,
OpenVINO f32) take turns in one process (``deploy.race``: each engine checked on real images first, turns of >=
10 ms, order rotating) for ``--rounds`` rounds; per round, speed = the float network's fastest engine's median / the
XNOR model's median. Reported: the median speed over rounds and its range; the bar is read on the median.
The kernel path is forced for the whole process with ``--isa`` (default ``avx2``; ``CNNCOMPRESS_ISA``), and the
script says which path ran (``self_check.kernel_path``) and the CPU's flags: on an AVX-512 CPU the fp32 engines
still run their AVX-512 code, a harder baseline than an AVX2-only CPU's.

    env -u OPENBLAS_CORETYPE .venv/bin/python benchmarks/check_xnor_avx2.py [--out F.json]   # ~3 min, quiet CPU

Weights are random (latency does not depend on their values; the real images only check the engines agree).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

PRESETS = {224: dict(num_classes=8, in_channels=3, input_size=224, width=1.0),
           48: dict(num_classes=10, in_channels=1, input_size=48, width=0.25)}
BARS = {"avx2": {224: 4.0, 48: 1.5}, "avx512": {224: 6.0, 48: 1.5}}
"""Issue 34's bars: with ``avx2`` forced >= 4x at 224 and >= 1.5x at 48; the AVX-512 path keeps >= 6x at 224."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", default="avx2", help="kernel path to force (CNNCOMPRESS_ISA)")
    parser.add_argument("--rounds", type=int, default=40, help="turns of every contender (default 40)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 48], choices=sorted(PRESETS))
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    os.environ["CNNCOMPRESS_ISA"] = args.isa
    from cnncompress import deploy, hardware, methods, models
    from cnncompress.deploy.self_check import kernel_path
    from cnncompress.deploy.xnor import stem_precision
    from cnncompress.kernels.native import IsaError, requested_isa
    try:
        requested_isa()
    except IsaError as error:
        print(f"--isa {args.isa}: {error}")
        return 2
    torch.manual_seed(0)
    result = {"cpu": hardware.summary(), "kernel_path": kernel_path(), "float_stem": stem_precision("auto"),
              "threads": 1, "rounds": args.rounds,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": {}}
    print(f"CPU: {result['cpu']['cpu']} [{' '.join(result['cpu']['isa'])}]; XNOR kernels: {result['kernel_path']}, "
          f"first conv in {result['float_stem']}; "
          f"1 thread, {args.rounds} rounds", flush=True)
    for size in args.sizes:
        spec = PRESETS[size]
        float_net = models.build("vgg_s", **spec).eval()
        xnor = deploy.to_inference(methods.apply(float_net, "xnor")).eval()
        shape = (1, spec["in_channels"], size, size)
        images = torch.rand(32, *shape[1:]) * 2 - 1  # the float net is random too: any input checks the engines
        rounds: dict = {}
        times, skipped = deploy.race({"xnor": (xnor, ["torch"]), "float": (float_net, deploy.names("fp32"))},
                                     shape, threads=1, runs=args.rounds, images=images, rounds=rounds)
        per_round = []
        float_keys = [key for key in rounds if key[0] == "float"]
        for r in range(len(rounds[("xnor", "torch")])):
            fastest = min(rounds[key][r] for key in float_keys)
            per_round.append(fastest / rounds[("xnor", "torch")][r])
        fastest_engine = min((ms, name) for (who, name), ms in times.items() if who == "float")[1]
        speed, bar = statistics.median(per_round), BARS.get(args.isa, BARS["avx2"])[size]
        result["sizes"][str(size)] = {
            "xnor_ms": times[("xnor", "torch")], "float_ms": {name: ms for (who, name), ms in times.items()
                                                              if who == "float"},
            "fastest_fp32": fastest_engine, "speed_per_round": per_round, "speed_median": speed,
            "bar": bar, "met": speed >= bar,
            "skipped": {f"{who} {name}": why for (who, name), why in skipped.items()}}
        print(f"{size}x{size}: XNOR {times[('xnor', 'torch')]:.3f} ms; fastest fp32 {fastest_engine} "
              f"{times[('float', fastest_engine)]:.3f} ms; speed per round {min(per_round):.2f}-{max(per_round):.2f}x, "
              f"median {speed:.2f}x (bar {bar}x: {'met' if speed >= bar else 'NOT met'})", flush=True)
        for key, why in result["sizes"][str(size)]["skipped"].items():
            print(f"  skipped {key}: {why}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
