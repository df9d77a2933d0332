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

from pathlib import Path
from typing import Callable

from torch import nn

from .. import measure, methods, storage
from ..errors import InputError

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


def load_for_inference(path: str | Path) -> nn.Module:
    """A saved ``.ccz`` with every method's fast inference kernel swapped in (what is timed)."""
    return methods.to_inference(storage.load(path))


def check_data_fits(model: nn.Module, dataset, spec: str) -> None:
    """``--data`` must fit the model: its class count (the images are decoded at the model's size and channels)."""
    from ..methods.calibration import check_fits
    try:
        check_fits(model, dataset.images, None, len(dataset.classes), f"--data {spec}")
    except ValueError as error:
        raise InputError(str(error)) from error


def compress_and_measure(model: nn.Module, method: str, config: dict, out: str | Path, data: str | None = None,
                         finetune: int = 0, lr: float = 0.001, threads: int = 2, fp16: bool = False) -> dict:
    """Apply ``method`` with ``config`` to ``model`` (a data-dependent method gets ``data``'s training split),
    fine-tune ``finetune`` epochs on ``data`` (default: the dataset the model records; the val split picks the
    epoch), write ``out/model.ccz`` and return its row: file bytes, parameters, batch-1 PyTorch latency of the
    deployed model (the file loaded back, ``to_inference``d) and its test accuracy when a dataset is known."""
    from ..data import build_dataset
    from ..train import Trainer, TrainConfig
    out = Path(out)
    data = data or getattr(model, "metadata", {}).get("dataset")
    if finetune and not data:
        raise InputError("--finetune needs --data (the model does not record its dataset)")
    spec, datasets = model.spec, {}

    def dataset(split: str):
        if split not in datasets:
            datasets[split] = build_dataset(data, split, input_size=spec["input_size"], channels=spec["in_channels"])
            check_data_fits(model, datasets[split], data)
        return datasets[split]

    def fine_tune(index: int, net: nn.Module, loss_fn) -> nn.Module:
        Trainer(net, dataset("train"), dataset("val"), TrainConfig(epochs=finetune, lr=lr), out_dir=out / "train",
                **({"loss_fn": loss_fn} if loss_fn else {})).fit(resume=True)
        return net

    needs_data = methods.info(method).data_option and methods.info(method).data_option not in config
    compressed, _, given = apply_pipeline(model, [{"method": method, "config": config}],
                                          fine_tune if finetune else None,
                                          data=dataset("train") if data and needs_data else None)
    test_set = dataset("test") if data else None
    compressed = compressed.cpu().eval()
    path = storage.save(compressed, out / "model.ccz", float_codec="fp16" if fp16 else None)
    fast = load_for_inference(path)
    stats = measure.latency(fast, (1, spec["in_channels"], spec["input_size"], spec["input_size"]),
                            num_threads=threads)
    row = {"method": method, "config": config, "file": str(path), "file_bytes": measure.file_bytes(path),
           "params": measure.param_count(compressed), "torch_ms": round(stats["median_ms"], 3),
           "layout": stats["layout"], **({"data_given": given} if given else {})}
    if test_set is not None:
        row["accuracy"] = round(measure.accuracy(fast, test_set), 2)
        row["accuracy_split"] = "test"
        row["accuracy_form"] = "deployed (.ccz loaded back, methods.to_inference)"
    return row
