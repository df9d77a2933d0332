"""Compress one model: apply a pipeline of methods (fine-tuning after each stage when asked), save the ``.ccz``,
load it back with the methods' fast inference kernels, measure.

The bench runs each of its rows through ``apply_pipeline`` and ``load_for_inference`` (then measures much more,
see ``experiments.bench``); ``cnncompress compress`` runs one model through ``compress_and_measure``.

Data: a data-dependent method (``MethodInfo.data_option``: int8 calibration, Taylor importance) gets the run's
training split (``apply_pipeline(..., data=)``) unless its configuration sets that option; ``given`` says what
each got. ``--data`` is decoded for the model (its input size and grey/RGB channels, as ``cnncompress train``
does); a dataset whose class count is not the model's, or prepared images whose channels or size are not, is a
one-line InputError (exit 2).
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnncompress import deploy, measure, methods, model_card, storage
from cnncompress.deploy import probes as deploy_probes
from cnncompress.errors import InputError

RECALIBRATION_IMAGES = 1024
"""Training images the BatchNorm statistics are re-estimated on after a method that changes weights."""
CHANCE_MARGIN = 5.0
"""A compressed model whose validation accuracy is within this many points of chance has collapsed."""
KEEPS_WEIGHTS = ("reduced precision", "early exit")
"""Method families whose weights stay (rounded at most): their BatchNorm statistics still hold (and int8's
activation ranges were measured with them), so they are not re-estimated."""

FineTune = Callable[[int, nn.Module, Callable | None], nn.Module]
"""``fine_tune(stage_index, model, loss_fn) -> model``: trains the just-compressed model (``loss_fn``: the
stage's method's fine-tuning loss, None for cross-entropy)."""


def describe_data(value) -> str:
    """What a data option was given, in words (for the row / history)."""
    if hasattr(value, "images") and hasattr(value, "name"):
        return f"{value.name} {getattr(value, 'split', '') or ''} split ({len(value.images)} images)".replace("  ", " ")
    return str(value)


def apply_pipeline(model: nn.Module, stages: list[dict], fine_tune: FineTune | None = None, data=None) \
        -> tuple[nn.Module, Callable | None, dict]:
    """Apply ``stages`` (``[{"method", "config"}]``) in order to a copy of ``model``, calling ``fine_tune`` after
    each stage when given. ``data``: the run's training split, handed to every data-dependent method whose config
    does not set its data option. Returns the compressed model, the last stage's fine-tuning loss (None: CE) and
    ``{"<method>.<option>": what it got}``."""
    loss_fn, given = None, {}
    for index, stage in enumerate(stages):
        config = methods.with_data(stage["method"], stage["config"], data)
        option = methods.info(stage["method"]).data_option
        if option:
            source = "the run's " if option not in stage["config"] else ""
            given[f"{stage['method']}.{option}"] = source + describe_data(config[option])
        model = methods.apply(model, stage["method"], **config)
        loss_fn = methods.get(stage["method"]).finetune_loss
        if fine_tune is not None:
            model = fine_tune(index, model, loss_fn)
    return model, loss_fn, given


def load_for_inference(path: str | Path, network=None) -> nn.Module:
    """A saved ``.ccz`` with every method's fast inference kernel swapped in (what is timed); ``network``: a user
    network's float network or builder (``storage.load``)."""
    return deploy.to_inference(storage.load(path, model=network))


def check_data_fits(model: nn.Module, dataset, dataset_name: str) -> None:
    """``--data`` must fit the model: its class count (the images are decoded at the model's size and channels);
    a user's network, whose card may not say how many classes it scores, runs one image to tell
    (``entry_point.check_outputs``)."""
    from cnncompress.methods.calibration import check_fits
    from cnncompress.models.entry_point import check_outputs
    try:
        check_fits(model, dataset.images, None, len(dataset.classes), f"--data {dataset_name}")
    except ValueError as error:
        raise InputError(str(error)) from error
    if model_card.is_user(model_card.read(model).spec) and len(dataset):
        check_outputs(model, dataset.images, len(dataset.classes), dataset_name)


def compress_and_measure(model: nn.Module, method: str, config: dict, out: str | Path, data: str | None = None,
                         finetune: int = 0, lr: float = 0.001, threads: int = 2, fp16: bool = False) -> dict:
    """``compress`` ``model`` with ``method`` and ``config`` (a data-dependent method gets ``data``'s training split;
    BatchNorm statistics re-estimated; ``finetune`` epochs on ``data``, default the dataset the model records, the
    val split picking the epoch; the collapse check), write ``out/model.ccz`` (with probes of the run's real images
    where its deployed numerics depend on the engine or CPU: ``deploy.probes``; ``row["probes"]``, and
    ``row["probe_check"]`` the file's check on this machine) and return its row: file bytes (and
    whether the file is smaller than the float model's), parameters, batch-1 PyTorch latency of the deployed model
    (the file loaded back, ``to_inference``d) and its test accuracy when a dataset is known."""
    from cnncompress.data import build_dataset
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder (nothing written)")
    data = data or model_card.read(model).metadata.get("dataset")
    if finetune and not data:
        raise InputError("--finetune needs --data (the model does not record its dataset)")
    spec, datasets = model_card.read(model).spec or {}, {}

    def dataset(split: str):
        if split not in datasets:
            datasets[split] = build_dataset(data, split, input_size=spec.get("input_size"),
                                            channels=spec.get("in_channels"))
            if split != "test":  # the test split is sealed; its format is the training split's
                check_data_fits(model, datasets[split], data)
        return datasets[split]

    created = not out.exists()
    try:
        return _compress_and_write(model, method, config, out, data, finetune, lr, threads, fp16, dataset, spec)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):  # nothing half-made left behind
            out.rmdir()
        raise


def _compress_and_write(model, method, config, out, data, finetune, lr, threads, fp16, dataset, spec) -> dict:
    from cnncompress.data import final_evaluation
    compressed, row = compress(model, method, dataset("train") if data else None, finetune,
                               val=dataset("val") if data else None, lr=lr, work=out / "train", **config)
    if data:  # what the deployed form checks itself on, and what a later export or predict decodes
        train = dataset("train")
        compressed.metadata = {"classes": list(train.classes), "mean": train.mean, "std": train.std, "dataset": data,
                               **model_card.read(compressed).metadata}
    given = {}
    option = methods.info(method).data_option
    if option and data and option not in config:
        given[f"{method}.{option}"] = "the run's " + describe_data(dataset("train"))
    test_set = dataset("test") if data else None
    compressed = compressed.cpu().eval()
    images, source = probe_images(compressed, method, config, dataset("val") if data else None, data)
    path, probes = deploy_probes.save(compressed, out / "model.ccz", images, source, model,
                                      float_codec="fp16" if fp16 else None)
    fast = load_for_inference(path, model)
    if deploy_probes.needs_probes(compressed):
        row["probes"] = _probe_row(path, probes, source)
        row["probe_check"] = model_card.read(fast).metadata.get("probe_check")
    example = dataset("val").images[:1] if data else None  # a real validation image
    shape = tuple(example.shape) if example is not None else \
        (1, spec["in_channels"], spec["input_size"], spec["input_size"])
    stats = measure.latency(fast, shape, num_threads=threads)
    with tempfile.TemporaryDirectory() as scratch:  # the float model's file, written the same way
        float_bytes = measure.file_bytes(storage.save(model, Path(scratch) / "float.ccz"))
    row["float_bytes"], row["smaller"] = float_bytes, measure.file_bytes(path) < float_bytes
    if methods.info(method).size == "real" and not row["smaller"]:
        print(f"warning: {method} on {type(model).__name__}: the file ({measure.file_bytes(path):,} bytes) is not "
              f"smaller than the float model's ({float_bytes:,} bytes)", file=sys.stderr)
    row.update({"method": method, "config": config, "file": str(path), "file_bytes": measure.file_bytes(path),
                "params": measure.param_count(compressed), "torch_ms": round(stats["median_ms"], 3),
                "layout": stats["layout"], **({"data_given": given} if given else {})})
    if test_set is not None:
        with final_evaluation(test_set):  # the run's one read of the sealed test split
            row["accuracy"] = round(measure.accuracy(fast, test_set), 2)
        row["accuracy_split"], row["test_evaluations"] = "test", test_set.evaluations
        row["accuracy_form"] = "deployed (.ccz loaded back, deploy.to_inference)"
    return row


def probe_images(model: nn.Module, method: str, config: dict, val, data: str | None):
    """``(images, source)`` a file that checks itself carries probes of (``deploy.probes``): the run's validation
    split, else the images its calibration option names (never noise); ``(None, why not)`` without real images."""
    if not deploy_probes.needs_probes(model):
        return None, "not needed"
    if val is not None:
        return val.images, f"{data} val split"
    option = methods.info(method).data_option
    value = config.get(option) if option else None
    if value is None or (isinstance(value, str) and value == "noise"):
        return None, "none: the run has no real images (give --data)"
    from cnncompress.methods.calibration import take
    return take(model, value, deploy_probes.COUNT, what=f"{method} {option}")[0], f"the run's {option} images"


def _probe_row(path: Path, probes, source: str) -> dict:
    if probes is None:
        return {"count": 0, "source": source}
    section = storage.read_manifest(path)[0]["probes"]
    return {"count": probes.count, "source": source, "reference": probes.form,
            "bytes": section["inputs"]["length"] + section["reference"]["length"]}


def _splits(model: nn.Module, data, val, input_size: int | None, channels: int | None):
    """(train, val) datasets: ``data`` a dataset name (its ``train`` and ``val`` splits, decoded at the model's
    size and channels where its card knows them) or an ``ImageDataset`` (then ``val`` or none)."""
    if data is None or not isinstance(data, str):
        return data, val
    from cnncompress.data import build_dataset
    spec = model_card.read(model).spec or {}
    size, chans = input_size or spec.get("input_size"), channels or spec.get("in_channels")
    train_set = build_dataset(data, "train", input_size=size, channels=chans)
    return train_set, val if val is not None else build_dataset(data, "val", input_size=size, channels=chans)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def changed_layers(before: nn.Module, after: nn.Module) -> int:
    """Modules of ``after`` whose type differs from ``before``'s at the same path, or that ``before`` lacks."""
    reference = {path: type(m) for path, m in before.named_modules()}
    return sum(1 for path, m in after.named_modules() if reference.get(path) is not type(m))


def _same_tensors(before: nn.Module, after: nn.Module) -> bool:
    a, b = before.state_dict(), after.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _int8_split(model: nn.Module, method: str, config: dict, train_set):
    """For ``int8`` with ``layers="fastest"``: the split (``deploy.int8_split.fastest_split``: every float prefix of
    the layers timed deployed on onnxruntime int8, batch 1, 1 thread, on the run's training images the method
    calibrates on by default: ``methods.calibration.take``'s seeded subset of ``num_calibration``) put into
    ``config["layers"]``; else None."""
    from cnncompress.methods.int8 import FASTEST, NUM_CALIBRATION
    if method != "int8" or config.get("layers") != FASTEST:
        return None
    if train_set is None:
        raise InputError("int8 layers=fastest times int8 splits on the run's images: give the run's data (--data)")
    from cnncompress.deploy.int8_split import fastest_split
    from cnncompress.methods.calibration import take
    images, _ = take(model, train_set, config.get("num_calibration", NUM_CALIBRATION), config.get("seed", 0),
                     what="int8 layers=fastest")
    split = fastest_split(model, images)
    config["layers"] = split.layers
    kept = f"{len(split.float_layers)} layers float ({split.float_layers[-1]} and before)" if split.float_layers \
        else "every layer int8"
    print(f"int8 layers=fastest: {kept}; {split.ms[len(split.float_layers)]:.3f} ms on {split.engine}, batch 1, "
          f"{split.threads} thread", file=sys.stderr)
    return split


def compress(model: nn.Module, method: str, data=None, finetune: int = 0, *, val=None, lr: float = 0.001,
             input_size: int | None = None, channels: int | None = None, work: str | Path | None = None,
             **options) -> tuple[nn.Module, dict]:
    """Compress any ``nn.Module`` the way the command line does; returns ``(compressed model, row)``.

    1. ``methods.apply(model, method, **options)`` (a data-dependent method gets ``data``'s training images); a
       layer selection that matches nothing the method handles is a one-line ``InputError`` (``surgery.select``),
       and a method that changed no layer and no weight prints one warning line.
    2. Recovery: after a method that changes weights, every BatchNorm's running statistics are re-estimated on
       up to ``RECALIBRATION_IMAGES`` training images (no gradient step; stale statistics put binarised or pruned
       ResNets and MobileNets at chance); then ``finetune`` epochs of fine-tuning (the method's own loss) when
       asked, the validation split choosing the epoch.
    3. The collapse check: the deployed model's (``deploy.to_inference``) validation accuracy within
       ``CHANCE_MARGIN`` points of chance sets ``row["collapsed"]`` and prints one warning line naming chance.

    ``data``: a dataset name (``mnist5k``) or a training ``ImageDataset`` (``val``: its validation set); without
    data there is no recovery and no check (``row["checked"] = False``). The test split is never read here.
    ``work``: a folder for the fine-tuning checkpoints (a killed run resumes from its last finished epoch).
    """
    train_set, val_set = _splits(model, data, val, input_size, channels)
    config = methods.with_data(method, options, train_set)
    split = _int8_split(model, method, config, train_set)
    compressed = methods.apply(model, method, **config)
    label = f"{method} on {type(model).__name__}"
    replaced, unchanged = changed_layers(model, compressed), _same_tensors(model, compressed)
    if not replaced and unchanged:
        print(f"warning: {label}: changed no layer and no weight", file=sys.stderr)
    spec = model_card.read(compressed).spec
    if model_card.is_user(spec) and train_set is not None and "input_size" not in spec:  # the card learns the shape
        spec.update(in_channels=int(train_set.images.shape[1]), input_size=int(train_set.images.shape[2]))
    row = {"method": method, "config": {k: v for k, v in options.items() if k != methods.info(method).data_option},
           "model": type(model).__name__, "layers_replaced": replaced, "bn_recalibrated": 0, "finetune": finetune}
    if split is not None:
        row["int8_split"] = split.as_dict()
    info = methods.info(method)
    changed = bool(replaced) or not unchanged  # a binarised layer keeps its float weights: replaced counts
    if train_set is not None and changed and info.family not in KEEPS_WEIGHTS and has_batch_norm(compressed):
        from cnncompress.training.distill import recalibrate_batch_norm
        images = train_set.images[:RECALIBRATION_IMAGES]
        with torch.no_grad():
            recalibrate_batch_norm(compressed, images)
        row["bn_recalibrated"] = len(images)
    if finetune:
        if train_set is None:
            raise InputError(f"{label}: finetune={finetune} needs data")
        from cnncompress.training.trainer import Trainer, TrainConfig
        loss_fn = methods.get(method).finetune_loss
        Trainer(compressed, train_set, val_set, TrainConfig(epochs=finetune, lr=lr), out_dir=work,
                progress=work is not None, **({"loss_fn": loss_fn} if loss_fn else {})).fit(resume=work is not None)
    compressed.eval()
    row["checked"] = val_set is not None and len(getattr(val_set, "classes", [])) > 1
    if row["checked"]:
        deployed = deploy.to_inference(copy.deepcopy(compressed)).eval()
        row.update(collapse_check(measure.accuracy(deployed, val_set), len(val_set.classes), label))
    return compressed, row


def collapse_check(val_accuracy: float, classes: int, label: str) -> dict:
    """``{val_accuracy, chance, collapsed}`` of a compressed model scored on the validation split: collapsed when
    within ``CHANCE_MARGIN`` points of chance (100 / classes); then one warning line naming chance on stderr."""
    row = {"val_accuracy": round(val_accuracy, 2), "chance": round(100.0 / classes, 2)}
    row["collapsed"] = row["val_accuracy"] <= row["chance"] + CHANCE_MARGIN
    if row["collapsed"]:
        print(f"warning: {label}: validation accuracy {row['val_accuracy']:.1f} % is at chance "
              f"({row['chance']:.1f} %); the compressed model collapsed", file=sys.stderr)
    return row
