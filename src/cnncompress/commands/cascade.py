"""``cnncompress cascade``: train the cascade CNN with an early exit (Pimpley & Indulkar) and measure it.

One run: ``cnncompress cascade --data noisy-mnist5k --loss firm --position p2 --threshold 0.6 --penalty 0.6
--out runs/cascade``. The paper's grid: ``cnncompress cascade --recipe experiments/cascade.yaml --out DIR``
(flags given on the command line override the recipe). The study itself: ``cnncompress.experiments.cascade_grid``.
"""
from __future__ import annotations

from pathlib import Path

from cnncompress.experiments.schema import CASCADE_DATASETS as DATASETS, CASCADE_LOSSES as LOSSES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("cascade", help="early-exit cascade CNN: sum / soft / firm cascade losses")
    parser.add_argument("--recipe", help="YAML recipe (experiments/cascade.yaml); flags below override it")
    parser.add_argument("--data", choices=DATASETS, help="dataset (default mnist5k)")
    parser.add_argument("--loss", choices=LOSSES, help="cascade loss (default firm)")
    parser.add_argument("--position", choices=("p1", "p2"), help="exit after block 1 or 2 (default p2)")
    parser.add_argument("--threshold", type=float, help="exit when max(V1) > threshold (default 0.6)")
    parser.add_argument("--penalty", type=float, help="firm cascade penalty λ (default 0.6)")
    parser.add_argument("--penalty-seed-count", type=int,
                        help="run the recipe's penalty sweep at the first N seeds (default 1)")
    parser.add_argument("--alpha", type=float, help="firm cascade sharpness α (default 128)")
    parser.add_argument("--epochs", type=int, help="epochs per model (default 20)")
    parser.add_argument("--pretrain-epochs", type=int, help="base/pre-training epochs (default = --epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0)")
    parser.add_argument("--lr", type=float, help="SGD learning rate (default 0.001)")
    parser.add_argument("--momentum", type=float, help="SGD momentum (default 0.5)")
    parser.add_argument("--firm-lr", type=float, help="learning rate of the firm fine-tuning (default = --lr)")
    parser.add_argument("--firm-momentum", type=float, help="momentum of the firm fine-tuning (default = --momentum)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64)")
    parser.add_argument("--width", type=float, help="channel width multiplier of the cascade CNN (default 1.0)")
    parser.add_argument("--limit", type=int, help="use only the first N training images (0 = all)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=run)


def overrides(args) -> dict:
    """The recipe keys the flags set (None: not given, the recipe or the default holds)."""
    return {"datasets": [args.data] if args.data else None, "losses": [args.loss] if args.loss else None,
            "positions": [args.position] if args.position else None, "seeds": args.seeds,
            "threshold": args.threshold, "penalty": args.penalty, "penalty_seed_count": args.penalty_seed_count,
            "alpha": args.alpha, "epochs": args.epochs,
            "pretrain_epochs": args.pretrain_epochs, "lr": args.lr, "momentum": args.momentum,
            "firm_lr": args.firm_lr, "firm_momentum": args.firm_momentum,
            "batch_size": args.batch_size, "width": args.width, "limit": args.limit}


def run(args) -> int:
    from cnncompress.experiments.cascade_grid import load_config, run_study
    out = Path(args.out)
    _, figures = run_study(load_config(args.recipe, overrides(args)), out)
    print((out / "table.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'sweep.csv'}, "
          + ", ".join(str(f) for f in figures))
    return 0
