"""``cnncompress compress MODEL --method NAME``: apply one method to a trained model, fine-tune, save, measure
(``cnncompress.experiments.compress_one.compress_and_measure``; prints its row as one JSON line)."""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compress", help="compress one trained model (.safetensors or .ccz)")
    parser.add_argument("model", help="a .ccz, a model.safetensors from `train`, a run folder, or fer-minixception")
    parser.add_argument("--method", required=True)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="method options; values are parsed as YAML (1/8 -> use 0.125, [a, b] lists)")
    parser.add_argument("--finetune", type=int, default=0, help="fine-tuning epochs (needs --data)")
    parser.add_argument("--data", help="dataset spec for fine-tuning, measuring and data-dependent methods (int8 "
                        "calibration, Taylor importance: its train split); default: the model's own dataset")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fp16", action="store_true", help="store float tensors as fp16")
    parser.set_defaults(func=run)


def parse_config(items: list[str]) -> dict:
    import yaml

    from ..errors import InputError
    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--config {item!r}: expected KEY=VALUE")
        try:
            config[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise InputError(f"--config {item!r}: bad value ({error})") from error
    return config


def run(args) -> int:
    from ..experiments.compress_one import compress_and_measure
    from ..loading import load_model
    row = compress_and_measure(load_model(args.model), args.method, parse_config(args.config), args.out,
                               data=args.data, finetune=args.finetune, lr=args.lr, threads=args.threads,
                               fp16=args.fp16)
    print(json.dumps(row))
    return 0
