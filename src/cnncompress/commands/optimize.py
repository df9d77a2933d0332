"""``cnncompress sensitivity MODEL --data D`` and ``cnncompress optimize MODEL --data D --max-bytes B``: per-layer
sensitivity (``cnncompress.sensitivity``) and the most accurate model within a budget (``cnncompress.optimizer``)."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    for name, helptext in (("sensitivity", "per-layer accuracy drop and exact bytes of every setting"),
                           ("optimize", "the most accurate compressed copy within a size (and latency) budget")):
        parser = subparsers.add_parser(name, help=helptext)
        parser.add_argument("model", help="a model.safetensors from `train`, a .ccz of a float model, a run folder")
        parser.add_argument("--data", help="dataset spec (default: the model's own dataset); its val split scores, "
                                           "its train split fine-tunes; the test split is reported once")
        parser.add_argument("--out", required=True, help="output folder (the sensitivity cache lives there: a "
                                                          "killed run resumes)")
        if name == "optimize":
            parser.add_argument("--max-bytes", required=True,
                                help="file budget: bytes (400000), 400KB / 0.4MB, or a fraction of the original (1/16)")
            parser.add_argument("--max-ms", type=float, help="latency budget, batch 1, on --engine (default: the "
                                                             "fastest engine of the model's precision)")
            parser.add_argument("--engine", help="engine the latency is measured on (cnncompress.engines names)")
            parser.add_argument("--finetune", type=int, default=2, help="fine-tuning epochs (default 2)")
            parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(func=run, command=name)


def _datasets(model, data: str | None) -> dict:
    from ..data import build_dataset
    from ..errors import InputError
    from ..experiments.compress_one import check_data_fits
    data = data or (getattr(model, "metadata", None) or {}).get("dataset")
    if not data:
        raise InputError("--data is needed (the model does not record its dataset)")
    spec = getattr(model, "spec", None) or {}
    if "input_size" not in spec:
        raise InputError("the model has no build spec (input size, channels); give a model saved by cnncompress")
    sets = {}
    for split in ("train", "val", "test"):
        sets[split] = build_dataset(data, split, input_size=spec["input_size"], channels=spec["in_channels"])
        check_data_fits(model, sets[split], data)
    return sets


def run(args) -> int:
    import sys

    from ..errors import InputError
    from ..loading import load_model
    from ..measure import accuracy
    from ..methods import to_inference
    if args.command == "optimize":
        from ..optimizer import check_arguments
        check_arguments(args.max_bytes, args.max_ms, args.engine, args.finetune)
    model = load_model(args.model)
    if getattr(model, "compression_history", None):
        raise InputError(f"{args.model}: already compressed ({model.compression_history[-1]['method']}); "
                         "give the float model")
    sets = _datasets(model, args.data)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    if args.command == "sensitivity":
        from ..sensitivity import heatmap, markdown, measure
        table = measure(model, sets["val"], out / "sensitivity.json", progress=say)
        (out / "sensitivity.md").write_text(markdown(table))
        heatmap(table, out / "sensitivity.png")
        print(markdown(table) + f"\nwrote {out}/sensitivity.{{json,md,png}}")
        return 0
    from .. import storage
    from ..optimize_report import write_report
    from ..optimizer import optimize
    best, report = optimize(model, sets["train"], sets["val"], args.max_bytes, args.max_ms, args.engine,
                            args.finetune, args.seed, work=out, progress=say)
    path = storage.save(best, out / "model.ccz")
    report["file_bytes"] = path.stat().st_size
    report["test_accuracy"] = accuracy(to_inference(storage.load(path)), sets["test"])
    report["original_test_accuracy"] = accuracy(model, sets["test"])
    write_report(report, out / "report.md")
    print(f"{path}: {report['file_bytes']:,} bytes (budget {report['budget_bytes']:,}, original "
          f"{report['original_bytes']:,}); test accuracy {report['test_accuracy']:.2f}% (original "
          f"{report['original_test_accuracy']:.2f}%); report {out / 'report.md'}")
    return 0
