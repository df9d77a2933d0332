"""``cnncompress reproduce [table2|table3|cascade|table-emotion|all] [--quick] --out DIR``: the papers' experiments -> raw
results + report.md (``cnncompress.experiments.reproduce.write_report``). Finished runs under DIR are reused (kill it
any time). ``cnncompress reproduce verify DIR``: recompute DIR/report.md from DIR's raw files; exit 1 naming the
first number that differs. ``cnncompress reproduce emotion-crossfit --out DIR [--quick]`` (alone, not in ``all``):
the emotion headline cross-fitted over the 100 LFW faces (``experiments.emotion_crossfit``)."""
from __future__ import annotations

from pathlib import Path

from cnncompress.storage.run_lock import add_wait_argument

RECIPES = Path(__file__).resolve().parents[3] / "experiments"  # the repository's experiments/*.yaml


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("reproduce", help="run the papers' experiments; report paper vs ours")
    parser.add_argument("what", nargs="*", help="table2, table3, cascade, table-emotion or all (default: all); "
                        "emotion-crossfit (alone, not in all: the emotion headline cross-fitted over 100 faces); or "
                        "`verify DIR`: recompute DIR/report.md from its raw files (exit 1 naming the first mismatch)")
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
                        help="the same findings in ~20 minutes: Table 2's paper rows and the survey's methods at one "
                             "seed, Table 3's digits analogue at two (experiments/quick/*.yaml), the quick cascade "
                             "grid at two seeds; `all` leaves out table-emotion (name it to run it)")
    add_wait_argument(parser)
    parser.set_defaults(func=run)


def verify(folder: str) -> int:
    import sys

    from cnncompress.experiments.reproduce_render import verify as check
    mismatch = check(folder)
    if mismatch:
        print(f"{folder}: {mismatch}", file=sys.stderr)
        return 1
    print(f"{folder}/report.md: every number and verdict recomputes from the raw files")
    return 0


def crossfit(args) -> int:
    """``reproduce emotion-crossfit --out DIR [--quick]``: the emotion headline cross-fitted over the 100 LFW faces
    (``experiments.emotion_crossfit``; not part of ``all``)."""
    from cnncompress.errors import InputError
    if args.what != ["emotion-crossfit"]:
        raise InputError("emotion-crossfit runs alone: `cnncompress reproduce emotion-crossfit --out DIR [--quick]`")
    if args.full:
        raise InputError("emotion-crossfit has no --full (its settings are table-emotion's; --quick for a short run)")
    from cnncompress.experiments import emotion_crossfit
    from cnncompress.storage.run_lock import lock_folder
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    with lock_folder(out, wait=args.wait):
        emotion_crossfit.run(out, args.faces, quick=args.quick)
    print((out / "report.md").read_text().rstrip("\n"))
    print(f"\nwrote {out / 'report.md'} and {out / 'results.json'}")
    return 0


def run(args) -> int:
    from cnncompress.errors import InputError
    if args.what[:1] == ["verify"]:
        if len(args.what) != 2:
            raise InputError("reproduce verify: give one folder, e.g. `cnncompress reproduce verify docs/results/reproduce`")
        return verify(args.what[1])
    if "emotion-crossfit" in args.what:
        return crossfit(args)
    from cnncompress.experiments.reproduce import write_report
    if args.quick and args.full:
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
