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
    import torch

    from .. import storage
    from ..data import build_dataset
    from ..export import compare_with_onnxruntime, export_onnx_file
    from ..loading import load_model, model_file
    model = load_model(args.model)
    out = Path(args.out) if args.out else (model_file(args.model) or Path(args.model)).with_suffix(f".{args.format}")
    if args.format == "ccz":
        path = storage.save(model, out, float_codec="fp16" if args.fp16 else None)
        print(json.dumps({"file": str(path), "bytes": path.stat().st_size}))
        return 0
    path, note = export_onnx_file(model, out)
    spec = model.spec
    data = args.data or getattr(model, "metadata", {}).get("dataset")
    if data:
        images = build_dataset(data, "test", input_size=spec["input_size"], channels=spec["in_channels"]).images
    else:
        images = torch.randn(64, spec["in_channels"], spec["input_size"], spec["input_size"],
                             generator=torch.Generator().manual_seed(0))
        data = "64 random inputs (no dataset recorded; pass --data)"
    check = compare_with_onnxruntime(model, path, images)
    print(json.dumps({"file": str(path), "bytes": path.stat().st_size, "exported": note, "checked_on": data,
                      **{k: round(v, 6) if isinstance(v, float) else v for k, v in check.items()}}))
    return 0
