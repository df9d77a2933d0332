"""Compress one model: apply a pipeline of methods (fine-tuning after each stage when asked), save the ``.ccz``,
load it back with the methods' fast inference kernels, measure.

The bench runs each of its rows through ``apply_pipeline`` and ``load_for_inference`` (then measures much more,
see ``experiments.bench``); ``cnncompress compress`` runs one model through ``compress_and_measure``.
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


def apply_pipeline(model: nn.Module, stages: list[dict], fine_tune: FineTune | None = None) \
        -> tuple[nn.Module, Callable | None]:
    """Apply ``stages`` (``[{"method", "config"}]``) in order to a copy of ``model``, calling ``fine_tune`` after
    each stage when given. Returns the compressed model and the last stage's fine-tuning loss (None: CE)."""
    loss_fn = None
    for index, stage in enumerate(stages):
        model = methods.apply(model, stage["method"], **stage["config"])
        loss_fn = methods.get(stage["method"]).finetune_loss
        if fine_tune is not None:
            model = fine_tune(index, model, loss_fn)
    return model, loss_fn


def load_for_inference(path: str | Path) -> nn.Module:
    """A saved ``.ccz`` with every method's fast inference kernel swapped in (what is timed)."""
    return methods.to_inference(storage.load(path))


def compress_and_measure(model: nn.Module, method: str, config: dict, out: str | Path, data: str | None = None,
                         finetune: int = 0, lr: float = 0.001, threads: int = 2, fp16: bool = False) -> dict:
    """Apply ``method`` with ``config`` to ``model``, fine-tune ``finetune`` epochs on ``data`` (default: the
    dataset the model records), write ``out/model.ccz`` and return its row: file bytes, parameters, batch-1
    PyTorch latency of the inference model, and its test accuracy when a dataset is known."""
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
        return datasets[split]

    def fine_tune(index: int, net: nn.Module, loss_fn) -> nn.Module:
        Trainer(net, dataset("train"), dataset("test"), TrainConfig(epochs=finetune, lr=lr), out_dir=out / "train",
                **({"loss_fn": loss_fn} if loss_fn else {})).fit(resume=True)
        return net

    compressed, _ = apply_pipeline(model, [{"method": method, "config": config}], fine_tune if finetune else None)
    test_set = dataset("test") if data else None
    compressed = compressed.cpu().eval()
    path = storage.save(compressed, out / "model.ccz", float_codec="fp16" if fp16 else None)
    fast = load_for_inference(path)
    stats = measure.latency(fast, (1, spec["in_channels"], spec["input_size"], spec["input_size"]),
                            num_threads=threads)
    row = {"method": method, "config": config, "file": str(path), "file_bytes": measure.file_bytes(path),
           "params": measure.param_count(compressed), "torch_ms": round(stats["median_ms"], 3),
           "layout": stats["layout"]}
    if test_set is not None:
        row["accuracy"] = round(measure.accuracy(fast, test_set), 2)
    return row
