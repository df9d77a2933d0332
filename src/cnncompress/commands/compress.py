"""``cnncompress compress MODEL --method NAME``: apply one method to a trained model, fine-tune, save, measure."""
from __future__ import annotations

import json
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compress", help="compress one trained model (.safetensors or .ccz)")
    parser.add_argument("model", help="model.safetensors from `train`, a .ccz, or a folder holding one")
    parser.add_argument("--method", required=True)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="method options; values are parsed as YAML (1/8 -> use 0.125, [a, b] lists)")
    parser.add_argument("--finetune", type=int, default=0, help="fine-tuning epochs (needs --data)")
    parser.add_argument("--data", help="dataset spec for fine-tuning and measuring (default: the model's own)")
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


def load_any(path: Path):
    """A trained model from ``train`` (.safetensors), a ``.ccz``, or a folder containing either."""
    from .. import storage
    from ..errors import input_error
    from ..train import load_weights
    if path.is_dir():
        candidates = [path / "model.ccz", path / "model.safetensors"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise input_error(path, "folder holds neither model.ccz nor model.safetensors")
        path = found[0]
    if path.suffix == ".ccz":
        return storage.load(path)
    if path.suffix == ".safetensors":
        model = load_weights(path)
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            model.metadata = json.loads((handle.metadata() or {}).get("cnncompress.metadata", "{}"))
        return model
    raise input_error(path, "expected a .ccz or .safetensors file")


def run(args) -> int:
    from .. import measure, methods, storage
    from ..data import build_dataset
    from ..errors import InputError
    from ..train import Trainer, TrainConfig
    source = Path(args.model)
    model = load_any(source)
    config = parse_config(args.config)
    data = args.data or getattr(model, "metadata", {}).get("dataset")
    if args.finetune and not data:
        raise InputError("--finetune needs --data (the model does not record its dataset)")
    compressed = methods.apply(model, args.method, **config)
    out = Path(args.out)
    test_set = None
    if data:
        size = model.spec["input_size"]
        train_set = build_dataset(data, "train", input_size=size, channels=model.spec["in_channels"])
        test_set = build_dataset(data, "test", input_size=size, channels=model.spec["in_channels"])
        if args.finetune:
            loss = methods.get(args.method).finetune_loss
            Trainer(compressed, train_set, test_set, TrainConfig(epochs=args.finetune, lr=args.lr),
                    out_dir=out / "train", **({"loss_fn": loss} if loss else {})).fit(resume=True)
    compressed = compressed.cpu().eval()
    path = storage.save(compressed, out / "model.ccz", float_codec="fp16" if args.fp16 else None)
    shape = (1, model.spec["in_channels"], model.spec["input_size"], model.spec["input_size"])
    fast = methods.to_inference(storage.load(path))
    started = time.perf_counter()
    stats = measure.latency(fast, shape, num_threads=args.threads)
    row = {"method": args.method, "config": config, "file": str(path), "file_bytes": measure.file_bytes(path),
           "params": measure.param_count(compressed), "torch_ms": round(stats["median_ms"], 3),
           "layout": stats["layout"]}
    if test_set is not None:
        row["accuracy"] = round(measure.accuracy(fast, test_set), 2)
    del started
    print(json.dumps(row))
    return 0
