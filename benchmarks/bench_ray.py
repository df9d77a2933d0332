"""Scale-out benchmark: a sweep of N equal bench rows, sequential in one process vs Ray tasks on W single-CPU
workers (the issue's target: 8 rows on 2 workers in <= 0.65x the sequential time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray.py [--rows 8] [--workers 2] [--repeats 2] [--no-memory]

Rows: prune-magnitude at N sparsities (equal cost: 1 fine-tuning epoch + the full measurement of a bench row)
on SqueezeNet-1.1 (``--width``, ``--input-size``), 1 thread per row in both runs. The baseline is trained once,
untimed, and shared with the Ray run through the output directory (as ``cnncompress bench`` does). Timed: from
``Bench(...)`` (the driver loads the data set) to the last row recorded, so the Ray figure includes starting
the worker processes and their data loading. Reported:

* ``ratio = T_ray / T_seq`` and the scaling efficiency ``T_seq / (W * T_ray)``;
* per-row overhead ``(W * T_ray - sum(worker row seconds)) / N``: CPU-slot time a row costs beyond its own
  work (worker start, imports, data loading, scheduling, result transfer, idle slots at the end);
* Ray's bare task round trip (a no-op task, median of 50) and the cluster start time (not in T_ray; Ray is
  started afresh for every repeat, so every T_ray includes cold worker processes).
* the median row and fine-tuning-epoch seconds in each mode: with W workers on W cores, anything else running
  on the machine (Ray's daemons, the memory probes' fresh processes, other users) slows the rows themselves.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnncompress.experiments.bench import Bench
from cnncompress.experiments.executors import LocalExecutor, RayExecutor
from cnncompress.experiments.recipe import parse_recipe


def _noop() -> int:
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--input-size", type=int, default=48)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes in every row")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved (sequential, ray) pairs")
    parser.add_argument("--out", help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_ray_"))
    sparsities = [round(0.1 + 0.8 * i / max(1, args.rows - 1), 3) for i in range(args.rows)]
    recipe = parse_recipe({
        "data": "mnist5k", "input_size": args.input_size, "threads": 1, "latency_runs": args.latency_runs,
        "memory": not args.no_memory,
        "baselines": {"squeezenet1_1": {"width": args.width, "epochs": 1, "lr": 0.05, "batch_size": 32}},
        "finetune": {"epochs": 1, "lr": 0.01},
        "rows": [{"model": "squeezenet1_1", "method": "prune-magnitude", "grid": {"sparsity": sparsities}}]})
    for name in ("seq", "ray"):
        shutil.rmtree(root / name, ignore_errors=True)
    warm = Bench(recipe, root / "seq", progress=False)
    warm.prepare(recipe.rows)  # train the baseline once, untimed
    shutil.copytree(root / "seq" / "baselines", root / "ray" / "baselines")

    def fresh(name: str) -> Path:  # forget the rows of the previous repeat, keep the baseline
        (root / name / "rows.jsonl").unlink(missing_ok=True)
        shutil.rmtree(root / name / "rows", ignore_errors=True)
        return root / name

    def sequential() -> tuple[float, list]:
        started = time.perf_counter()
        rows = Bench(recipe, fresh("seq"), progress=False).run(LocalExecutor())
        return time.perf_counter() - started, rows

    def on_ray() -> tuple[float, list, float, float]:
        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        rows = Bench(recipe, fresh("ray"), progress=False).run(RayExecutor(cpus_per_row=1))
        wall = time.perf_counter() - started
        noop = ray.remote(_noop)
        ray.get(noop.remote())
        trips = []
        for _ in range(50):
            tick = time.perf_counter()
            ray.get(noop.remote())
            trips.append(1000 * (time.perf_counter() - tick))
        ray.shutdown()
        return wall, rows, start_s, statistics.median(trips)

    pairs = []
    for repeat in range(args.repeats):  # interleaved: seq, ray, ray, seq, seq, ray, ...
        order = ("seq", "ray") if repeat % 2 == 0 else ("ray", "seq")
        result = {}
        for name in order:
            result[name] = sequential() if name == "seq" else on_ray()
            print(f"repeat {repeat}: {name} {len(result[name][1])} rows in {result[name][0]:.1f}s", flush=True)
        pairs.append(result)
    t_seq, seq_rows = pairs[-1]["seq"][:2]
    t_ray, ray_rows, t_start, trip = pairs[-1]["ray"]
    errors = [r.get("error") for r in seq_rows + ray_rows if "error" in r]
    assert not errors, errors
    ratios = [p["ray"][0] / p["seq"][0] for p in pairs]
    work = [sum(r["row_seconds"] for r in p["ray"][1]) for p in pairs]
    figures = {
        "rows": args.rows, "workers": args.workers, "width": args.width, "input_size": args.input_size,
        "memory_probes": not args.no_memory, "repeats": args.repeats,
        "t_seq_s": [p["seq"][0] for p in pairs], "t_ray_s": [p["ray"][0] for p in pairs],
        "ratio": [round(r, 3) for r in ratios], "ratio_median": statistics.median(ratios),
        "efficiency_median": statistics.median(p["seq"][0] / (args.workers * p["ray"][0]) for p in pairs),
        "ray_start_s": [p["ray"][2] for p in pairs],
        "seq_row_s_median": statistics.median(r["row_seconds"] for p in pairs for r in p["seq"][1]),
        "ray_row_s_median": statistics.median(r["row_seconds"] for p in pairs for r in p["ray"][1]),
        "seq_epoch_s_median": statistics.median(r["epoch_s"] for p in pairs for r in p["seq"][1]),
        "ray_epoch_s_median": statistics.median(r["epoch_s"] for p in pairs for r in p["ray"][1]),
        "overhead_per_row_s": statistics.median((args.workers * p["ray"][0] - w) / args.rows
                                                for p, w in zip(pairs, work)),
        "task_round_trip_ms": statistics.median(p["ray"][3] for p in pairs),
        "nodes": sorted({r.get("ray_node") for r in ray_rows}),
        "same_accuracy": all(a["accuracy"] == b["accuracy"] for a, b in zip(seq_rows, ray_rows)),
        "same_bytes": all(a["file_bytes"] == b["file_bytes"] for a, b in zip(seq_rows, ray_rows)),
    }
    print(json.dumps(figures, indent=1, default=str))
    verdict = "meets" if figures["ratio_median"] <= 0.65 else "MISSES"
    print(f"T_ray/T_seq = {figures['ratio_median']:.2f} (median of {args.repeats}; {verdict} the <= 0.65 target), "
          f"scaling efficiency {100 * figures['efficiency_median']:.0f}%, overhead {figures['overhead_per_row_s']:.2f} s/row, "
          f"bare task round trip {figures['task_round_trip_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
