"""``cnncompress compress MODEL --method NAME``: apply one method to a trained model, fine-tune, save, measure
(``cnncompress.pipeline.compress_and_measure``; prints its row as one JSON line)."""
from __future__ import annotations

import json


from cnncompress.commands import add_model_arguments, load_model_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compress", help="compress one trained model (.safetensors or .ccz, or your own "
                                                    "network with --model FILE.py:FUNCTION)")
    add_model_arguments(parser, "the model to compress")
    parser.add_argument("--method", required=True, help="the method (`cnncompress methods` lists every method, its "
                        "options, what it handles and what of its saving is real)")
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

    from cnncompress.errors import InputError
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
    from cnncompress.pipeline import compress_and_measure
    row = compress_and_measure(load_model_arguments(args), args.method, parse_config(args.config), args.out,
                               data=args.data, finetune=args.finetune, lr=args.lr, threads=args.threads,
                               fp16=args.fp16)
    print(json.dumps(row))
    return 0
