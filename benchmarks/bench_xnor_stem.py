"""Which precision should the XNOR VGG-S run its full-precision first conv in on this CPU? The same XNOR model
deployed twice (``deploy.xnor.to_inference(model, stem="fp32")`` and ``stem="bf16"``: conv1 on oneDNN in bf16
with its ReLU / LRN / max-pool in one native pass), timed interleaved in one process (``timing.alternating``,
turns of ``--block`` calls, order rotating) at 1 and 2 threads, batch 1; prints each median, the ratio with its
range over rounds, and whether the two agree on top-1 for ``--images`` random inputs. ``stem_precision("auto")``
picks bf16 where the CPU has AVX512-BF16 or AMX; this checks that choice where it is made.

    env -u OPENBLAS_CORETYPE .venv/bin/python benchmarks/bench_xnor_stem.py [--size 224] [--out F.json]   # ~1 min
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch

from cnncompress import hardware, methods, models, timing
from cnncompress.deploy import xnor
from cnncompress.kernels import bitpack


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, choices=(48, 224))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    spec = (dict(num_classes=8, in_channels=3, input_size=224, width=1.0) if args.size == 224 else
            dict(num_classes=10, in_channels=1, input_size=48, width=0.25))
    model = methods.apply(models.build("vgg_s", **spec).eval(), "xnor")
    stems = {stem: xnor.to_inference(copy.deepcopy(model), stem=stem).eval() for stem in ("fp32", "bf16")}
    x = torch.rand(1, spec["in_channels"], args.size, args.size) * 2 - 1
    images = torch.rand(args.images, *x.shape[1:]) * 2 - 1
    result = {"cpu": hardware.summary(), "kernel_path": bitpack.kernel_path(), "auto": xnor.stem_precision("auto"),
              "size": args.size, "threads": {}}
    print(f"CPU: {result['cpu']['cpu']} [{' '.join(result['cpu']['isa'])}]; XNOR kernels: {result['kernel_path']}; "
          f"stem 'auto' = {result['auto']}", flush=True)
    previous = torch.get_num_threads()
    try:
        with torch.no_grad():
            same = [int(stems["fp32"](im[None]).argmax(1)) == int(stems["bf16"](im[None]).argmax(1)) for im in images]
            result["top1_agreement"] = sum(same) / len(same)
            for threads in args.threads:
                torch.set_num_threads(threads)
                rounds: dict = {}
                medians = timing.alternating({stem: (lambda m=m: m(x)) for stem, m in stems.items()}, args.rounds,
                                             block=args.block, rounds=rounds)
                ratios = [a / b for a, b in zip(rounds["fp32"], rounds["bf16"])]
                result["threads"][str(threads)] = {"fp32_ms": medians["fp32"], "bf16_ms": medians["bf16"],
                                                   "fp32_over_bf16": statistics.median(ratios),
                                                   "range": [min(ratios), max(ratios)]}
                print(f"{threads} thread(s), {args.size}x{args.size}: fp32 stem {medians['fp32']:.2f} ms, bf16 stem "
                      f"{medians['bf16']:.2f} ms: bf16 {statistics.median(ratios):.2f}x faster "
                      f"[{min(ratios):.2f}, {max(ratios):.2f} over {args.rounds} rounds]", flush=True)
    finally:
        torch.set_num_threads(previous)
    print(f"top-1 agreement fp32 vs bf16 stem on {args.images} random inputs: {100 * result['top1_agreement']:.0f} %")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
