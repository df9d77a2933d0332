"""``cnncompress bench``: the Table-2-style benchmark of every method (the main job)."""
from __future__ import annotations

import time
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quick.yaml"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark methods -> table, CSV/JSON, plots (resumable)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="YAML recipe (default: the quick recipe)")
    parser.add_argument("--data", help="override the recipe's dataset spec")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device")
    parser.add_argument("--out", help="output folder (default results/<recipe name>)")
    parser.add_argument("--only", nargs="*", help="only rows whose method or label is listed")
    parser.add_argument("--no-progress", action="store_true")
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
    from ..bench import Bench, environment
    from ..executors import make_executor
    from ..recipe import load_recipe
    from ..report import NOTES, text_table, write_outputs
    recipe = load_recipe(args.recipe)
    if args.data:
        recipe.data = args.data
    if args.only:
        recipe.rows = [r for r in recipe.rows if r.method in args.only or r.label in args.only
                       or r.method == "baseline"]
    out = Path(args.out or Path("results") / Path(args.recipe).stem)
    if args.executor == "ray" and args.device == "cuda" and args.gpus_per_row <= 0:
        from ..errors import InputError
        raise InputError("--device cuda with --executor ray needs --gpus-per-row > 0 (Ray hides GPUs from tasks "
                         "that reserve none)")
    executor = make_executor(args.executor, args.address, args.cpus_per_row, args.gpus_per_row, args.retries)
    started = time.perf_counter()
    bench = Bench(recipe, out, device=args.device, progress=not args.no_progress)
    rows = bench.run(executor)
    write_outputs(rows, out, environment(), str(args.recipe))
    print(text_table(rows))
    print(f"\n{NOTES}\nwrote {out}/results.csv, results.json, table.md, *.png in {time.perf_counter() - started:.0f}s")
    lost = [r for r in rows if r.get("lost")]
    if lost:
        print(f"{len(lost)} row(s) lost with their workers after {args.retries} retries (not recorded): "
              f"run the same command again to retry them")
        return 1
    return 0
