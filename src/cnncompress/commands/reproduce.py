"""``cnncompress reproduce [table2|table3|cascade|all] --out DIR``: the papers' experiments -> report.md."""
from __future__ import annotations

import time
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("reproduce", help="run the papers' experiments; report paper vs ours")
    parser.add_argument("what", nargs="*", help="table2, table3, cascade or all (default: all)")
    parser.add_argument("--out", default="results/reproduce")
    parser.add_argument("--table2-recipe", default=str(EXPERIMENTS / "table2.yaml"))
    parser.add_argument("--table3-recipe", default=str(EXPERIMENTS / "table3.yaml"))
    parser.add_argument("--cascade-recipe", default=str(EXPERIMENTS / "cascade.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", help="table3: override the recipe's seeds")
    parser.add_argument("--full", action="store_true",
                        help="cascade: the paper's full grid from the recipe (hours) instead of the quick CPU grid")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..reproduce import run_cascade, run_table2, run_table3
    unknown = sorted(set(args.what) - {"table2", "table3", "cascade", "all"})
    if unknown:
        raise InputError(f"unknown experiment(s) {', '.join(unknown)}; choose from table2, table3, cascade, all")
    wanted = {"table2", "table3", "cascade"} if not args.what or "all" in args.what else set(args.what)
    for name in ("table2_recipe", "table3_recipe"):
        if not Path(getattr(args, name)).is_file():
            raise InputError(f"{getattr(args, name)}: recipe not found (run from the repository, or pass --{name.replace('_', '-')})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lines = ["# Reproduction report: the papers' numbers beside ours", "",
             "Every number of ours is measured (sizes are real files, times are wall-clock on this machine). "
             "Ours run at CPU scale on offline data unless a recipe says otherwise, so absolute values differ; the "
             "findings are checked one by one.", ""]
    if "table2" in wanted:
        lines += run_table2(out, Path(args.table2_recipe))
    if "table3" in wanted:
        lines += run_table3(out, Path(args.table3_recipe), args.seeds)
    if "cascade" in wanted:
        lines += run_cascade(out, Path(args.cascade_recipe), quick=not args.full)
    lines.append(f"_Total time {time.perf_counter() - started:.0f}s._")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out / 'report.md'}")
    return 0
