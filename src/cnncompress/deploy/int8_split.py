"""Where int8 pays on this CPU: the float prefix that makes a model's deployed int8 graph fastest.

int8 kernels win where a layer has many channels and little spatial extent; at the start of a small network (one
input channel, 8-16 channels at full resolution) they can lose to the fp32 kernels they replace. Measured on
``fer-minixception`` (64x64 grey, 1 thread, onnxruntime 1.32, AMD EPYC Zen 4): its 1 -> 8 stem conv 107 us in
int8 against 20 us in fp32, block 1's depthwise convs 139 us against 40 us, while deeper in (32-128 channels at
15x15 and below) int8 is as fast or faster. Survey §2.5 (Berthelier 2018) leaves the choice of what to quantise
to the engineer; here it is measured.

``fastest_split(model, images, engine=..., threads=1)``: the model's Conv2d/Linear layers in the order its
forward calls them, ``l_1 .. l_N``; candidate ``k`` keeps ``l_1 .. l_k`` float and quantises the rest
(``layers`` of the ``int8`` method), deployed on ``engine``. Every candidate is built from one calibration
(the all-int8 model's activation ranges, measured once on ``images``; a float layer takes back its original
weights), prepared on ``engine`` and checked on ``images`` (the first ``CHECK_IMAGES``) against its fake-quant
twin like any int8 engine (``race.prepared``; a candidate that fails is not used), then all are timed in one
interleaved race on one of ``images`` (``race.race``). The fastest median wins: ``Split.layers`` is what to pass
as ``layers=`` to ``methods.apply(model, "int8", ...)``, which calibrates the chosen model afresh. A single float
prefix, not any subset: each float island inside an int8 graph costs a dequantise, a quantise and a layout
change (measured: keeping only the stem or the depthwise convs float did not help), and N + 1 candidates stay
cheap to time. Timing needs no labels; nothing is read from a test split.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from cnncompress.errors import InputError
from cnncompress.deploy.int8 import layer_calls

MAX_CANDIDATES = 24
"""At most this many prefixes are timed; a deeper network's are spread evenly over its layers (0 always kept)."""
CHECK_IMAGES = 128
"""Each candidate is checked against its fake-quant twin on the first this many of the images."""


@dataclass
class Split:
    """The measured choice: ``float_layers`` (the prefix kept fp32), ``layers`` (quantised: ``methods.apply(model,
    "int8", layers=split.layers, ...)``), ``ms`` (``{prefix length: median ms}`` of every candidate timed),
    ``skipped`` (``{prefix length: why the engine could not be used}``), and how it was timed."""

    float_layers: list[str]
    layers: list[str]
    ms: dict[int, float]
    engine: str
    threads: int | None
    input_shape: tuple[int, ...]
    skipped: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"float_layers": list(self.float_layers), "layers": list(self.layers), "engine": self.engine,
                "threads": self.threads, "input_shape": list(self.input_shape),
                "ms": {str(k): v for k, v in self.ms.items()}, "skipped": {str(k): v for k, v in self.skipped.items()}}


def prefixes(count: int, limit: int = MAX_CANDIDATES) -> list[int]:
    """The float-prefix lengths timed for ``count`` layers: ``0 .. count - 1`` (every layer float is not int8),
    spread evenly over that range when there are more than ``limit``."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def candidate(full: nn.Module, original: nn.Module, float_layers: list[str]) -> nn.Module:
    """``full`` (every layer int8, calibrated) with ``float_layers`` given back their original float modules; the
    calibration ranges are kept (keyed by graph tensors, which do not depend on a layer's precision)."""
    from cnncompress import surgery
    model = copy.deepcopy(full)
    modules = dict(original.named_modules())
    for path in float_layers:
        model = surgery.replace(model, path, copy.deepcopy(modules[path]))
    return model.eval()


def fastest_split(model: nn.Module, images: torch.Tensor, engine: str = "onnxruntime-int8", threads: int | None = 1,
                  runs: int = 20, block: int = 3, limit: int = MAX_CANDIDATES) -> Split:
    """Time every float prefix of ``model``'s layers (module docstring) as an int8 model deployed on ``engine`` at
    batch 1, ``threads`` threads, and return the fastest (``Split``). ``images``: real, unlabelled images of the
    model's input (calibration, the engines' check, one of them timed). ``InputError`` (one line) when the model
    has no Conv2d/Linear layer or no candidate can run on ``engine``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise InputError("fastest_split needs a (N, C, H, W) tensor of real images")
    from cnncompress import methods
    from cnncompress.deploy.race import race
    model = copy.deepcopy(model).eval()
    spec = dict(getattr(model, "spec", None) or {})  # the graphs are exported at the images' shape
    model.spec = {**spec, "in_channels": int(images.shape[1]), "input_size": int(images.shape[2])}
    order = layer_calls(model, images[:1])
    if not order:
        raise InputError(f"{type(model).__name__} calls no Conv2d/Linear layer: nothing for int8 to quantise")
    full = methods.apply(model, "int8", calibration=images, num_calibration=len(images))
    shape = (1, *images.shape[1:])
    contenders = {k: (candidate(full, model, order[:k]), [engine]) for k in prefixes(len(order), limit)}
    timed, skipped = race(contenders, shape, threads, runs, block, example=images[:1].contiguous(),
                          images=images[:CHECK_IMAGES])
    ms = {k: timed[(k, engine)] for k in contenders if (k, engine) in timed}
    why = {k: skipped[(k, engine)] for k in contenders if (k, engine) in skipped}
    if not ms:
        first = next(iter(why.values()), "no candidate was timed")
        raise InputError(f"engine {engine} could not run any int8 split of {type(model).__name__}: {first}")
    best = min(ms, key=ms.get)
    return Split(order[:best], order[best:], ms, engine, threads, shape, why)
