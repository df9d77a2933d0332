"""``cnncompress bench``: the Table-2-style benchmark of every method (the main job): flags ->
``cnncompress.experiments.bench.run_bench`` -> the table on stdout."""
from __future__ import annotations

import time
from pathlib import Path

from cnncompress.storage.run_lock import add_wait_argument

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "experiments" / "recipes" / "quick.yaml"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark methods -> table, CSV/JSON, plots (resumable)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="YAML recipe (default: the quick recipe)")
    parser.add_argument("--data", help="override the recipe's dataset spec (its train split also calibrates int8 "
                        "and scores Taylor pruning)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device")
    parser.add_argument("--out", help="output folder (default results/<recipe name>)")
    parser.add_argument("--only", nargs="*", help="run only the rows whose method or label is listed (and the "
                        "baselines); the table keeps every finished row; an unknown name is an error (exit 2)")
    parser.add_argument("--no-progress", action="store_true")
    add_wait_argument(parser)
    scale = parser.add_argument_group("scale out (docs/scale_out.md)")
    scale.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local: rows one after the other here; ray: each row a Ray task on a cluster")
    scale.add_argument("--address", default=None,
                       help="Ray cluster: auto (the one `ray start` made here) or HOST:PORT of the head node "
                            "(default: start a local Ray on this machine)")
    scale.add_argument("--cpus-per-row", type=float, default=1, help="CPUs reserved per row (Ray; default 1)")
    scale.add_argument("--gpus-per-row", type=float, default=0, help="GPUs reserved per row (Ray; default 0)")
    scale.add_argument("--retries", type=int, default=2,
                       help="re-runs of a row whose worker or node died (Ray; default 2)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.experiments.bench import run_bench
    from cnncompress.experiments.executors import make_executor
    from cnncompress.errors import ENVIRONMENT_EXIT
    from cnncompress.experiments.report import NOTES, text_table
    from cnncompress.storage.run_lock import lock_folder
    out = Path(args.out or Path("results") / Path(args.recipe).stem)
    executor = make_executor(args.executor, args.address, args.cpus_per_row, args.gpus_per_row, args.retries,
                             device=args.device)
    started = time.perf_counter()
    with lock_folder(out, wait=args.wait):
        rows = run_bench(args.recipe, out, data=args.data, only=args.only, device=args.device,
                         executor=executor, progress=not args.no_progress)
    print(text_table(rows))
    print(f"\n{NOTES}\nwrote {out}/results.csv, results.json, table.md, *.png in {time.perf_counter() - started:.0f}s")
    lost = [r for r in rows if r.get("lost")]
    if lost:
        print(f"{len(lost)} row(s) lost with their workers after {args.retries} retries (not recorded): "
              f"run the same command again to retry them")
    failed = [r for r in rows if r.get("failed")]
    for row in failed:  # environment or transient: not recorded, the next run retries them
        print(f"row {row['model']}/{row['label']} failed ({row['failed']}, not recorded; rerun to retry): "
              f"{(row['error'].strip().splitlines() or ['?'])[0]}")
    if any(r["failed"] == "environment" for r in failed):
        return ENVIRONMENT_EXIT
    return 1 if lost or failed else 0
