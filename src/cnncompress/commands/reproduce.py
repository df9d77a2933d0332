"""``cnncompress reproduce [table2|table3|cascade|all] --out DIR``: the papers' experiments -> report.md
(``cnncompress.experiments.reproduce.write_report``)."""
from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parents[3] / "experiments"  # the repository's experiments/*.yaml


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("reproduce", help="run the papers' experiments; report paper vs ours")
    parser.add_argument("what", nargs="*", help="table2, table3, cascade or all (default: all)")
    parser.add_argument("--out", default="results/reproduce")
    parser.add_argument("--table2-recipe", default=str(RECIPES / "table2.yaml"))
    parser.add_argument("--table3-recipe", default=str(RECIPES / "table3.yaml"))
    parser.add_argument("--cascade-recipe", default=str(RECIPES / "cascade.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", help="table3: override the recipe's seeds")
    parser.add_argument("--full", action="store_true",
                        help="cascade: the paper's full grid from the recipe (hours) instead of the quick CPU grid")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.reproduce import write_report
    report = write_report(args.what, args.out, args.table2_recipe, args.table3_recipe, args.cascade_recipe,
                          seeds=args.seeds, full=args.full)
    print(report.read_text().rstrip("\n"))
    print(f"\nwrote {report}")
    return 0
