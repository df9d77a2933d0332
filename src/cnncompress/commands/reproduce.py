"""``cnncompress reproduce [table2|table3|cascade|table-emotion|all] [--quick] --out DIR``: the papers' experiments -> report.md
(``cnncompress.experiments.reproduce.write_report``). Finished runs under DIR are reused (kill it any time)."""
from __future__ import annotations

from pathlib import Path

from cnncompress.storage.run_lock import add_wait_argument

RECIPES = Path(__file__).resolve().parents[3] / "experiments"  # the repository's experiments/*.yaml


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("reproduce", help="run the papers' experiments; report paper vs ours")
    parser.add_argument("what", nargs="*", help="table2, table3, cascade, table-emotion or all (default: all)")
    parser.add_argument("--out", default="results/reproduce")
    parser.add_argument("--table2-recipe", help="default experiments/table2.yaml (--quick: experiments/quick/)")
    parser.add_argument("--table3-recipe", help="default experiments/table3.yaml (--quick: experiments/quick/)")
    parser.add_argument("--cascade-recipe", default=str(RECIPES / "cascade.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", help="table3: override the recipe's seeds")
    parser.add_argument("--faces", default="lfw-faces",
                        help="table-emotion: unlabelled faces (lfw-faces, faces:<dir>, faces-detect:<dir>)")
    parser.add_argument("--full", action="store_true",
                        help="cascade: the paper's full grid from the recipe (hours) instead of the quick CPU grid")
    parser.add_argument("--quick", action="store_true",
                        help="the same report in minutes: Table 2's paper rows and Table 3's digits analogue with one "
                             "seed (experiments/quick/*.yaml), the quick cascade grid")
    add_wait_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.experiments.reproduce import write_report
    if args.quick and args.full:
        from cnncompress.errors import InputError
        raise InputError("--quick and --full contradict each other; give one")
    from cnncompress.storage.run_lock import lock_folder
    recipes = RECIPES / "quick" if args.quick else RECIPES
    with lock_folder(args.out, wait=args.wait):
        report = write_report(args.what, args.out, args.table2_recipe or recipes / "table2.yaml",
                              args.table3_recipe or recipes / "table3.yaml", args.cascade_recipe,
                              seeds=args.seeds, full=args.full, faces=args.faces, quick=args.quick)
    print(report.read_text().rstrip("\n"))
    print(f"\nwrote {report}")
    return 0
