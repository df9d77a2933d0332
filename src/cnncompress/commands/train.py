"""``cnncompress train``: train a reference model on a dataset, with checkpoints, resume and error curves.

Settings default to the model's preset (``train.preset``, ``models.DEFAULT_TRAINING``); flags override it. Model
selection (``--patience``, the best epoch kept) uses the validation split (``--val-fraction`` of the training
split); the test split is evaluated once, at the end, for the printed accuracy (also in ``summary.json``).

``--model`` is a registered architecture (``vgg_s``, ``squeezenet1_1``, ``cascade_cnn``, ...) or your own network's
entry point (``FILE.py:FUNCTION`` or ``package.module:FUNCTION``): ``models.build`` calls the function with those of
``num_classes``, ``in_channels``, ``input_size``, ``width`` (the dataset's) its signature takes, none for ``def
build():``; a network that cannot take the dataset's images or does not give one output per class is a one-line
error naming the entry point and the mismatch, before anything is written. ``--weights`` starts from a
safetensors state dict.

Data-parallel: ``--ddp N`` starts N processes on this machine (DistributedDataParallel, gloo on CPU, nccl on one
GPU per process); the same command under torchrun (``torchrun --nproc-per-node N --no-python cnncompress train
...``, also across machines with ``--nnodes``/``--rdzv-endpoint``) joins the group torchrun describes. Rank 0
alone writes checkpoints and outputs; ``--batch-size`` stays the GLOBAL batch, so the steps are those of one
process (see cnncompress.training.distributed).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from cnncompress.commands import add_weights_argument
from cnncompress.storage.run_lock import add_wait_argument

FLAGS = ("epochs", "lr", "momentum", "batch_size", "weight_decay", "schedule", "patience", "optimizer", "augment")


def add_parser(subparsers) -> None:
    from cnncompress.training.trainer import OPTIMIZERS, SCHEDULES
    parser = subparsers.add_parser("train", help="train a model (checkpoint every epoch, --resume)")
    parser.add_argument("--model", required=True, metavar="NAME|FILE.py:FUNCTION",
                        help="vgg_s | squeezenet1_1 | cascade_cnn | ..., or your own network: the function that "
                             "builds it (a file path or package.module; given those of num_classes, in_channels, "
                             "input_size, width its signature takes)")
    add_weights_argument(parser, "initial weights: a safetensors state dict that fits --model")
    parser.add_argument("--data", default="mnist5k", help="dataset spec name[:path] (default mnist5k)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--epochs", type=int, help="most epochs (default: the model's preset)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the model's preset)")
    parser.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    parser.add_argument("--batch-size", type=int, help="default: the model's preset (20 vgg_s, 32 squeezenet)")
    parser.add_argument("--weight-decay", type=float, help="default: the model's preset")
    parser.add_argument("--schedule", help=f"learning-rate schedule: {' | '.join(SCHEDULES)} (paper = fixed lr)")
    parser.add_argument("--optimizer", help=f"{' | '.join(OPTIMIZERS)} (default: the model's preset)")
    parser.add_argument("--patience", type=int, help="stop after N epochs without a better validation error "
                                                     "(0 = never; default: the model's preset)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="validation split carved from the training split, in (0, 0.5] (default 0.1)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", nargs="?", const=True, default=None, choices=[True, "shift", "flip+shift"],
                        help="random shifts (+ flips unless 'shift'; digits want 'shift')")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--resume", action="store_true", help="continue after the last finished epoch")
    parser.add_argument("--ddp", type=int, default=0, metavar="N",
                        help="train with DistributedDataParallel in N local processes (global batch unchanged)")
    add_wait_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.training import distributed
    from cnncompress.data.datasets import check_val_fraction
    from cnncompress.errors import InputError
    from cnncompress.training.trainer import preset
    if args.ddp < 0 or args.ddp > 256:
        raise InputError(f"--ddp {args.ddp}: give a number of processes in 1..256")
    check_val_fraction(args.val_fraction)
    from cnncompress.models.entry_point import is_entry_point, resolve
    if is_entry_point(args.model):
        resolve(args.model)  # a missing file or function fails before any folder or process exists
    preset(args.model, **_overrides(args))  # bad settings fail here, before any process starts
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0 holds --out's lock for the group
        return _train_here(args)
    from cnncompress.storage.run_lock import lock_folder
    with lock_folder(args.out, wait=args.wait):
        if args.ddp > 1:
            distributed.spawn(train, args.ddp, (args,), device=args.device)
            return 0
        return _train_here(args)


def _train_here(args) -> int:
    """This process's share: alone, or as one rank of a group torchrun started."""
    from cnncompress.training import distributed
    if distributed.init_from_env(args.device):  # started by torchrun
        try:
            return train(args)
        finally:
            import torch.distributed as dist
            dist.destroy_process_group()
    return train(args)


def _overrides(args) -> dict:
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    return {**given, "seed": args.seed, "device": args.device}


def _build(args, train_set):
    """``--model`` built for ``train_set`` (checked to fit it) and filled with ``--weights``."""
    from cnncompress import models
    from cnncompress.models.entry_point import check_outputs
    from cnncompress.models.loading import fill_weights
    model = models.build(args.model, num_classes=train_set.num_classes, in_channels=train_set.channels,
                         input_size=train_set.input_size, width=args.width)
    check_outputs(model, train_set.images, train_set.num_classes, args.data)
    if args.weights:
        fill_weights(model, args.weights)
    return model


def train(args) -> int:
    """One process's training (rank 0 of a group, or the only one, writes the outputs)."""
    import torch

    from cnncompress.training import distributed
    from cnncompress.data import build_dataset
    from cnncompress.training.trainer import Trainer, error_rate, preset, save_weights
    from cnncompress.experiments.bench_figures import plot_history
    train_set, val_set, test_set = (build_dataset(args.data, split, input_size=args.input_size,
                                                  val_fraction=args.val_fraction) for split in ("train", "val", "test"))
    torch.manual_seed(args.seed)  # the same initial weights for the same seed (and on every DDP rank)
    model = _build(args, train_set)
    out = Path(args.out)
    trainer = Trainer(model, train_set, val_set, preset(args.model, **_overrides(args)), out_dir=out,
                      train_probe=len(val_set))
    history = trainer.fit(resume=args.resume)
    rank, world = distributed.world()
    if rank != 0:
        return 0
    model.metadata = {"classes": train_set.classes, "mean": train_set.mean, "std": train_set.std,
                      "dataset": args.data}
    save_weights(model.cpu(), out / "model.safetensors", {"cnncompress.metadata": json.dumps(model.metadata)})
    from cnncompress.data import final_evaluation
    with final_evaluation(test_set):  # the test split, once
        accuracy = 1 - error_rate(model, test_set)
    best = trainer.best_epoch
    (out / "history.json").write_text(json.dumps(history, indent=1))
    (out / "summary.json").write_text(json.dumps({"test_accuracy": accuracy, "best_epoch": best, "epochs_run":
                                                  len(history), "config": asdict(trainer.config)}, indent=1))
    plot_history(history, out / "error_curve.png", f"{args.model} on {args.data}")
    chosen = f"best validation epoch {best} of {len(history)}" if best else f"{len(history)} epochs"
    print(f"{args.model} on {args.data}: test accuracy {100 * accuracy:.2f}% ({chosen}"
          f"{f' on {world} DDP processes' if world > 1 else ''}); wrote {out / 'model.safetensors'}, "
          f"{out / 'error_curve.png'}")
    return 0
