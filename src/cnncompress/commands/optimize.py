"""``cnncompress sensitivity MODEL --data D`` and ``cnncompress optimize MODEL --data D --max-bytes B``: per-layer
sensitivity (``cnncompress.budget.sensitivity``) and the most accurate model within a budget (``cnncompress.budget.optimizer``).

The model is named as for ``compress`` (``commands.add_model_arguments``): a file, a run folder, a pretrained
name, or your own network with ``--model FILE.py:FUNCTION`` and ``--weights FILE.safetensors``. A user network
whose card does not give its input shape reads ``--data`` at the dataset's own size and channels, and must take
those images and give one output per class (one line naming the entry point otherwise)."""
from __future__ import annotations

from pathlib import Path

from cnncompress.commands import add_model_arguments, load_model_arguments
from cnncompress.storage.run_lock import add_wait_argument


def add_parser(subparsers) -> None:
    for name, helptext in (("sensitivity", "per-layer accuracy drop and exact bytes of every setting"),
                           ("optimize", "the most accurate compressed copy within a size (and latency) budget")):
        parser = subparsers.add_parser(name, help=helptext)
        add_model_arguments(parser, "the float model")
        parser.add_argument("--data", help="dataset spec (default: the model's own dataset); its val split scores, "
                                           "its train split fine-tunes; the test split is reported once. Unlabelled "
                                           "images (lfw-faces, faces:DIR): scores are agreement with the model, "
                                           "fine-tuning distils from it")
        parser.add_argument("--out", required=True, help="output folder (the sensitivity cache lives there: a "
                                                          "killed run resumes)")
        if name == "optimize":
            parser.add_argument("--max-bytes", required=True,
                                help="file budget: bytes (400000), 400KB / 0.4MB, or a fraction of the original (1/16)")
            parser.add_argument("--max-ms", type=float, help="latency budget, batch 1, on --engine (default: the "
                                                             "fastest engine of the model's precision)")
            parser.add_argument("--engine", help="engine the latency is measured on (cnncompress.deploy names)")
            parser.add_argument("--finetune", type=int, default=2, help="fine-tuning epochs (default 2)")
            parser.add_argument("--seed", type=int, default=0)
            parser.add_argument("--executor", default="local", choices=["local", "ray"],
                                help="where the latency candidates are built and fine-tuned (ray: in parallel, as "
                                     "Ray tasks; they are timed here, one at a time)")
            parser.add_argument("--address", help="Ray cluster address (with --executor ray; default: a local Ray)")
            parser.add_argument("--cpus-per-row", type=float, default=1, help="CPUs per Ray task")
            parser.add_argument("--fold-bn", action="store_true",
                                help="fold each BatchNorm that follows a conv into it first (same function, fewer "
                                     "tensors in the file)")
            parser.add_argument("--export", action="append", choices=["onnx", "openvino"], default=[],
                                help="also write the chosen model as model.onnx / model.xml+bin, checked against it "
                                     "in onnxruntime / OpenVINO (repeatable)")
        else:
            parser.add_argument("--engine", help="also measure each setting's latency saved on this engine (each "
                                                 "layer and its replacement timed alone at batch 1; engines names)")
        parser.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                            help="setting kinds tried per layer: share (pruning x k-means), bwn, fp16, cp, "
                                 "tucker, int8, bf16 (default: all but int8 and bf16, which change the engine "
                                 "the model deploys on)")
        parser.add_argument("--fp16-rest", action="store_true",
                            help="store what the per-layer settings leave (unchanged layers, biases, batch norms, "
                                 "codebooks) in half precision, in the table and the result")
        add_wait_argument(parser)
        parser.set_defaults(func=run, command=name)


def _datasets(model, data: str | None) -> dict:
    """train / val / test of ``data`` decoded as the model expects (size, channels, normalisation; a user network
    whose card does not say: the dataset's own size and channels); an unlabelled set (faces) is not checked
    against the model's classes: ``optimize`` labels it with the model's answers."""
    from cnncompress.data import build_dataset
    from cnncompress.errors import InputError
    from cnncompress.model_card import is_user
    from cnncompress.models.entry_point import check_outputs
    from cnncompress.models.loading import input_format
    from cnncompress.pipeline import check_data_fits
    from cnncompress.budget.optimizer import is_unlabelled
    meta, spec = getattr(model, "metadata", None) or {}, getattr(model, "spec", None) or {}
    data = data or meta.get("dataset")
    if not data:
        raise InputError("--data is needed (the model does not record its dataset)")
    shaped = "input_size" in spec or "input_size" in meta
    if not shaped and not is_user(spec):
        raise InputError("the model has no build spec (input size, channels); give a model saved by cnncompress")
    fmt = input_format(model)
    size, channels = (fmt["input_size"], fmt["channels"]) if shaped else (None, None)
    sets = {split: build_dataset(data, split, input_size=size, channels=channels, mean=fmt["mean"], std=fmt["std"])
            for split in ("train", "val", "test")}
    for split in ("train", "val"):  # the test split is the same dataset's, and sealed until the final evaluation
        if not is_unlabelled(sets[split]):
            check_data_fits(model, sets[split], data)
    if is_user(spec):
        labelled = not is_unlabelled(sets["val"])
        check_outputs(model, sets["val"].images, sets["val"].num_classes if labelled else None, data)
    return sets


def run(args) -> int:
    from cnncompress.errors import InputError
    executor = None
    from cnncompress.budget.sensitivity import DEFAULT_KINDS, grid
    settings = grid(args.kinds or DEFAULT_KINDS)  # an unknown kind fails before any work
    if args.command == "sensitivity" and args.engine:
        from cnncompress import deploy
        deploy.get(args.engine)  # an unknown engine name fails before any work
    if args.command == "optimize":
        from cnncompress.budget.optimizer import check_arguments
        check_arguments(args.max_bytes, args.max_ms, args.engine, args.finetune)
        if args.executor != "local" or args.address:  # bad executor flags fail before any work
            from cnncompress.experiments.executors import make_executor
            executor = make_executor(args.executor, args.address, args.cpus_per_row)
    model = load_model_arguments(args)
    if getattr(model, "compression_history", None):
        raise InputError(f"{args.model or args.entry}: already compressed ({model.compression_history[-1]['method']}); "
                         "give the float model")
    sets = _datasets(model, args.data)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    from cnncompress.storage.run_lock import lock_folder
    with lock_folder(out, wait=args.wait):
        return _work(args, model, sets, settings, executor, out)


def _work(args, model, sets, settings, executor, out: Path) -> int:
    """The sub-command's work on ``out`` (its run lock held)."""
    import sys

    from cnncompress.measure import accuracy
    from cnncompress.deploy import to_inference

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    if args.command == "sensitivity":
        from cnncompress.budget.optimizer import is_unlabelled, teacher_labelled
        from cnncompress.budget.sensitivity import heatmap, markdown, measure
        val = teacher_labelled(model, sets["val"]) if is_unlabelled(sets["val"]) else sets["val"]  # agreement
        table = measure(model, val, out / "sensitivity.json", settings=settings, progress=say,
                        fp16_rest=args.fp16_rest, engine=args.engine, calibration=sets["train"])
        (out / "sensitivity.md").write_text(markdown(table))
        heatmap(table, out / "sensitivity.png")
        print(markdown(table) + f"\nwrote {out}/sensitivity.{{json,md,png}}")
        return 0
    from cnncompress import storage
    from cnncompress.budget.report import write_report
    from cnncompress.budget.optimizer import is_unlabelled, optimize, teacher_labelled
    best, report = optimize(model, sets["train"], sets["val"], args.max_bytes, args.max_ms, args.engine,
                            args.finetune, args.seed, work=out, progress=say, fp16_rest=args.fp16_rest,
                            executor=executor, fold_norms=args.fold_bn, grid=settings)
    path = storage.save(best, out / "model.ccz")
    from cnncompress.data import final_evaluation
    report["file_bytes"] = path.stat().st_size
    with final_evaluation(sets["test"]) as test:  # the test split, once
        what = "test accuracy"
        if is_unlabelled(test):  # no labels: the test figure is top-1 agreement with the original
            test, what = teacher_labelled(model, test), "test agreement with the original"
        report["test_accuracy"] = accuracy(to_inference(storage.load(path, model=model)), test)
        report["original_test_accuracy"] = accuracy(model, test)
    for fmt in args.export:
        from cnncompress.deploy.export import export_model
        exported = export_model(storage.load(path, model=model), fmt, out / ("model.onnx" if fmt == "onnx" else "model.xml"),
                                data=args.data)
        report.setdefault("exports", {})[fmt] = exported
        say(f"exported {exported['file']} ({exported.get('bytes', 0):,} bytes), checked against the model")
    write_report(report, out / "report.md")
    print(f"{path}: {report['file_bytes']:,} bytes (budget {report['budget_bytes']:,}, original "
          f"{report['original_bytes']:,}); {what} {report['test_accuracy']:.2f}% (original "
          f"{report['original_test_accuracy']:.2f}%); report {out / 'report.md'}")
    return 0
