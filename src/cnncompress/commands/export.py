"""``cnncompress export MODEL --format onnx|ccz``: write ONNX (checked against onnxruntime) or a ``.ccz``."""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX (verified in onnxruntime) or .ccz")
    parser.add_argument("model", help="a .ccz, a model.safetensors, a run folder, or fer-minixception")
    parser.add_argument("--format", choices=["onnx", "ccz"], default="onnx")
    parser.add_argument("--out", help="output file (default: next to the model, model.onnx / model.ccz)")
    parser.add_argument("--data", help="dataset spec for the agreement check (default: the model's own dataset)")
    parser.add_argument("--fp16", action="store_true", help="ccz: store float tensors as fp16")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_model
    from ..loading import load_model, model_file
    model = load_model(args.model)
    out = Path(args.out) if args.out else (model_file(args.model) or Path(args.model)).with_suffix(f".{args.format}")
    print(json.dumps(export_model(model, args.format, out, args.data, args.fp16)))
    return 0
