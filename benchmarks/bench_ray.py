"""Scale-out benchmark: a sweep of N equal bench rows, sequential in one process vs Ray tasks on W single-CPU
workers (the issue's target: 8 rows on 2 workers in <= 0.65x the sequential time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray.py [--rows 8] [--workers 2] [--no-memory]

Rows: prune-magnitude at N sparsities (equal cost: 1 fine-tuning epoch + the full measurement of a bench row)
on SqueezeNet-1.1 (``--width``, ``--input-size``), 1 thread per row in both runs. The baseline is trained once,
untimed, and shared with the Ray run through the output directory (as ``cnncompress bench`` does). Timed: from
``Bench(...)`` (the driver loads the data set) to the last row recorded, so the Ray figure includes starting
the worker processes and their data loading. Reported:

* ``ratio = T_ray / T_seq`` and the scaling efficiency ``T_seq / (W * T_ray)``;
* per-row overhead ``(W * T_ray - sum(worker row seconds)) / N``: CPU-slot time a row costs beyond its own
  work (worker start, imports, data loading, scheduling, result transfer, idle slots at the end);
* Ray's bare task round trip (a no-op task, median of 50) and the cluster start time (not in T_ray).
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

from cnncompress.bench import Bench
from cnncompress.executors import LocalExecutor, RayExecutor
from cnncompress.recipe import parse_recipe


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

    started = time.perf_counter()
    seq_rows = Bench(recipe, root / "seq", progress=False).run(LocalExecutor())
    t_seq = time.perf_counter() - started
    print(f"sequential: {len(seq_rows)} rows in {t_seq:.1f}s", flush=True)

    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t_start = time.perf_counter() - started
    started = time.perf_counter()
    ray_rows = Bench(recipe, root / "ray", progress=False).run(RayExecutor(cpus_per_row=1))
    t_ray = time.perf_counter() - started
    print(f"ray ({args.workers} workers): {len(ray_rows)} rows in {t_ray:.1f}s", flush=True)
    noop = ray.remote(_noop)
    ray.get(noop.remote())
    trips = []
    for _ in range(50):
        tick = time.perf_counter()
        ray.get(noop.remote())
        trips.append(1000 * (time.perf_counter() - tick))
    ray.shutdown()

    errors = [r.get("error") for r in seq_rows + ray_rows if "error" in r]
    assert not errors, errors
    work = sum(r["row_seconds"] for r in ray_rows)
    figures = {
        "rows": args.rows, "workers": args.workers, "width": args.width, "input_size": args.input_size,
        "memory_probes": not args.no_memory, "t_seq_s": t_seq, "t_ray_s": t_ray, "ratio": t_ray / t_seq,
        "efficiency": t_seq / (args.workers * t_ray), "ray_start_s": t_start,
        "seq_row_s_median": statistics.median(r["row_seconds"] for r in seq_rows),
        "ray_row_s_median": statistics.median(r["row_seconds"] for r in ray_rows),
        "overhead_per_row_s": (args.workers * t_ray - work) / args.rows,
        "task_round_trip_ms": statistics.median(trips),
        "nodes": sorted({r.get("ray_node") for r in ray_rows}),
        "same_accuracy": all(a["accuracy"] == b["accuracy"] for a, b in zip(seq_rows, ray_rows)),
        "same_bytes": all(a["file_bytes"] == b["file_bytes"] for a, b in zip(seq_rows, ray_rows)),
    }
    print(json.dumps(figures, indent=1, default=str))
    verdict = "meets" if figures["ratio"] <= 0.65 else "MISSES"
    print(f"T_ray/T_seq = {figures['ratio']:.2f} ({verdict} the <= 0.65 target), scaling efficiency "
          f"{100 * figures['efficiency']:.0f}%, overhead {figures['overhead_per_row_s']:.2f} s/row, "
          f"bare task round trip {figures['task_round_trip_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
