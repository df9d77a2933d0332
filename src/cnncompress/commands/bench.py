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
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..bench import Bench, environment
    from ..recipe import load_recipe
    from ..report import NOTES, text_table, write_outputs
    recipe = load_recipe(args.recipe)
    if args.data:
        recipe.data = args.data
    if args.only:
        recipe.rows = [r for r in recipe.rows if r.method in args.only or r.label in args.only
                       or r.method == "baseline"]
    out = Path(args.out or Path("results") / Path(args.recipe).stem)
    started = time.perf_counter()
    bench = Bench(recipe, out, device=args.device, progress=not args.no_progress)
    rows = bench.run()
    write_outputs(rows, out, environment(), str(args.recipe))
    print(text_table(rows))
    print(f"\n{NOTES}\nwrote {out}/results.csv, results.json, table.md, *.png in {time.perf_counter() - started:.0f}s")
    return 0
