"""``cnncompress train``: train a reference model on a dataset, with checkpoints, resume and error curves.

Data-parallel: ``--ddp N`` starts N processes on this machine (DistributedDataParallel, gloo on CPU, nccl on one
GPU per process); the same command under torchrun (``torchrun --nproc-per-node N --no-python cnncompress train
...``, also across machines with ``--nnodes``/``--rdzv-endpoint``) joins the group torchrun describes. Rank 0
alone writes checkpoints and outputs; ``--batch-size`` stays the GLOBAL batch, so the steps are those of one
process (see cnncompress.distributed).
"""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (checkpoint every epoch, --resume)")
    parser.add_argument("--model", required=True, help="vgg_s | squeezenet1_1 | cascade_cnn | ...")
    parser.add_argument("--data", default="mnist5k", help="dataset spec name[:path] (default mnist5k)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 20 for vgg_s, 32 for squeezenet")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--resume", action="store_true", help="continue after the last finished epoch")
    parser.add_argument("--ddp", type=int, default=0, metavar="N",
                        help="train with DistributedDataParallel in N local processes (global batch unchanged)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed
    if args.ddp < 0 or args.ddp > 256:
        from ..errors import InputError
        raise InputError(f"--ddp {args.ddp}: give a number of processes in 1..256")
    if args.ddp > 1:
        distributed.spawn(train, args.ddp, (args,), device=args.device)
        return 0
    if distributed.init_from_env(args.device):  # started by torchrun
        try:
            return train(args)
        finally:
            import torch.distributed as dist
            dist.destroy_process_group()
    return train(args)


def train(args) -> int:
    """One process's training (rank 0 of a group, or the only one, writes the outputs)."""
    from .. import distributed, models
    from ..data import build_dataset
    from ..train import Trainer, TrainConfig, plot_history, save_weights
    train_set = build_dataset(args.data, "train", input_size=args.input_size)
    test_set = build_dataset(args.data, "test", input_size=args.input_size)
    import torch
    torch.manual_seed(args.seed)  # the same initial weights for the same seed (and on every DDP rank)
    model = models.build(args.model, num_classes=train_set.num_classes, in_channels=train_set.channels,
                         input_size=train_set.input_size, width=args.width)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, seed=args.seed,
                         batch_size=args.batch_size or models.DEFAULT_BATCH_SIZE[args.model],
                         device=args.device, augment=args.augment)
    out = Path(args.out)
    history = Trainer(model, train_set, test_set, config, out_dir=out).fit(resume=args.resume)
    rank, world = distributed.world()
    if rank != 0:
        return 0
    model.metadata = {"classes": train_set.classes, "mean": train_set.mean, "std": train_set.std,
                      "dataset": args.data}
    save_weights(model.cpu(), out / "model.safetensors", {"cnncompress.metadata": json.dumps(model.metadata)})
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_history(history, out / "error_curve.png", f"{args.model} on {args.data}")
    final = history[-1] if history else {}
    where = f" on {world} DDP processes" if world > 1 else ""
    print(f"{args.model} on {args.data}: test accuracy {100 * (1 - final.get('test_error', 1)):.2f}% "
          f"after {len(history)} epochs{where}; wrote {out / 'model.safetensors'}, {out / 'error_curve.png'}")
    return 0
