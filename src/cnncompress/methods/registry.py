"""Method registry: a method is ``MethodInfo`` + ``apply_fn(model, **cfg) -> model`` (+ optional ``to_inference``).

``apply(model, name, **cfg)`` deep-copies the model, so the input is never touched, validates the config keys
against ``apply_fn``'s signature, and appends ``{"method", "config"}`` to ``model.compression_history`` (saved in
``.ccz`` files). ``MethodInfo.size`` / ``.speed`` say whether the method's saving is real, only simulated or not
there at all; the bench table prints them and ``tests/methods/test_labels.py`` derives them from measurements for
every registered method. ``MethodInfo.bench`` lists the rows the default quick recipe runs for this method (one
representative row per ``family``; the whole grid lives in ``experiments/table2.yaml``).

Data: a method that looks at data (int8 calibration, Taylor importance) names the option that takes it in
``MethodInfo.data_option``. Whoever runs the method hands it the data of the run (the bench: the recipe's training
split; ``cnncompress compress``: ``--data``'s training split) unless the configuration sets that option itself;
a method never picks a dataset of its own (``methods.calibration`` checks that the data fits the model).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from cnncompress import model_card
from cnncompress.errors import InputError
from cnncompress.methods.option_check import check_values

REALNESS = ("real", "simulated", "none")


@dataclass(frozen=True)
class MethodInfo:
    """What a method is and what of its saving is real.

    size: ``real`` when the ``.ccz`` file really is smaller than the float model's, ``simulated`` when only a
    count says it would be (the file is not smaller), ``none`` when no saving is claimed (the file may grow).
    speed: ``real`` when the deployed model (``to_inference`` of the loaded file) really does less dense float
    arithmetic than the float model (a faster kernel swapped in, smaller or fewer layers, samples that stop
    early), ``simulated`` when a speed-up is only counted, ``none`` when no speed-up is claimed.
    family: the group of methods the default bench shows one representative row of (``binarize``, ``hashing``,
    ``decompose``, ``prune``, ``deep compression``, ``reduced precision``, ``early exit``).
    data_option: the apply option that takes the run's data (``calibration``, ``data``), or ``""``.
    handles: which layers and structures it compresses, and what it refuses (``cnncompress methods``).
    bench: rows for the quick recipe (``rows: auto``): dicts with ``model`` (``vgg_s``/``squeezenet1_1``/...),
    ``config`` (apply kwargs), optional ``finetune`` epochs and ``label``. One method per family has one.
    """

    name: str
    paper: str
    size: str = "real"
    speed: str = "none"
    description: str = ""
    bench: tuple = field(default_factory=tuple)
    family: str = ""
    data_option: str = ""
    handles: str = ""
    """Which layer types and network structures the method compresses, and what it leaves as it is (one line for
    ``cnncompress methods``)."""

    def __post_init__(self):
        if self.size not in REALNESS or self.speed not in REALNESS:
            raise ValueError(f"method {self.name}: size and speed must be real|simulated|none")


@dataclass
class Method:
    info: MethodInfo
    apply_fn: Callable[..., nn.Module]
    to_inference: Callable[[nn.Module], nn.Module] | None = None
    """``to_inference(model) -> model``: the method's own step toward the deployed form, in PyTorch and the
    package's kernels only (fast kernel layers swapped in); ``deploy.to_inference`` runs it, then any runtime step
    ``deploy`` owns for the method (an int8 / bf16 engine, native XNOR blocks)."""
    finetune_loss: Callable | None = None
    """``loss(model, images, labels) -> loss`` used when fine-tuning this method (default: cross-entropy)."""
    onnx_graph: Callable[[nn.Module], tuple[bytes | None, str]] | None = None
    """``onnx_graph(model) -> (graph bytes or None, note)``: the method's own ONNX graph (int8: its QDQ graph)
    or ``None`` to export the model's float form, and a note saying what the file holds (binary methods: the
    float equivalent). ``None``: the float graph of the model itself."""


METHODS: dict[str, Method] = {}


def register(info: MethodInfo, apply_fn: Callable[..., nn.Module],
             to_inference: Callable[[nn.Module], nn.Module] | None = None,
             finetune_loss: Callable | None = None,
             onnx_graph: Callable[[nn.Module], tuple[bytes | None, str]] | None = None) -> Method:
    """Register a method; ``apply_fn(model, **cfg)`` may modify the (already copied) model in place and return it.

    ``to_inference(model) -> model`` swaps in fast kernels (may return a model that cannot train any more);
    ``finetune_loss(model, images, labels) -> loss`` replaces cross-entropy when fine-tuning;
    ``onnx_graph(model) -> (bytes | None, note)`` supplies the method's ONNX export (see ``Method``).
    """
    METHODS[info.name] = Method(info, apply_fn, to_inference, finetune_loss, onnx_graph)
    return METHODS[info.name]




def load_builtin() -> None:
    """Import every module of ``cnncompress.methods`` so that each registers its methods (and layers, codecs), and
    ``batchnorm_folding`` (its ``ChannelAffine`` layer is in files too)."""
    import importlib
    import pkgutil
    from pathlib import Path

    importlib.import_module("cnncompress.methods.batchnorm_folding")

    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "registry":
            importlib.import_module(f"{__package__}.{module.name}")


def get(name: str) -> Method:
    load_builtin()
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available() -> list[str]:
    load_builtin()
    return sorted(METHODS)


def info(name: str) -> MethodInfo:
    return get(name).info


def options(name: str) -> list[dict]:
    """Every option of method ``name``: its name, type, default, range and choices (``option_check``'s tables)."""
    from cnncompress.methods.option_check import CHOICES, RANGES
    found = []
    for option, parameter in list(inspect.signature(get(name).apply_fn).parameters.items())[1:]:
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        annotation = parameter.annotation
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        entry = {"option": option, "type": "" if annotation is inspect.Parameter.empty else str(kind),
                 "default": None if parameter.default is inspect.Parameter.empty else parameter.default}
        if option in RANGES:
            low, high, brackets = RANGES[option]
            entry["range"] = f"{brackets[0]}{low:g}, {high:g}{brackets[1]}"
        if option in CHOICES:
            entry["choices"] = list(CHOICES[option])
        found.append(entry)
    return found


def check_config(name: str, config: dict) -> None:
    """Raise InputError if ``config`` has keys that method ``name`` does not accept, or a value of the wrong type,
    outside its range or not one of its choices (``option_check``)."""
    parameters = inspect.signature(get(name).apply_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in list(parameters)[1:]]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise InputError(f"method {name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(accepted)}")
    try:
        check_values(name, get(name).apply_fn, config)
    except ValueError as error:
        raise InputError(str(error)) from error


def apply(model: nn.Module, name: str, **config) -> nn.Module:
    """Return a compressed copy of ``model`` (the input is untouched)."""
    method = get(name)
    check_config(name, config)
    copied = copy.deepcopy(model)
    try:
        result = method.apply_fn(copied, **config)
    except (ValueError, TypeError) as error:
        raise InputError(f"method {name}: {error}") from error
    except RuntimeError as error:  # a structure the method cannot follow (shapes that do not meet): refused, said
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise InputError(f"method {name} cannot compress {type(model).__name__}: {first}") from error
    before, after = model_card.read(model), model_card.read(result)
    spec = before.spec if before.spec is not None else after.spec
    if spec is None:  # a network built by the user's own code: the compressed copy gets a card
        spec = {"name": model_card.USER_MODEL, "class": type(model).__name__}
    if model_card.is_user(spec):
        model_card.keep_float_skeleton(model, result)
    result.spec = spec
    result.metadata = {**before.metadata, **after.metadata}
    result.compression_history = before.compression_history + [
        {"method": name, "config": {k: _jsonable(v) for k, v in config.items()}}]
    return result


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "images") and hasattr(value, "name"):  # an ImageDataset handed over as data
        return f"{value.name} ({getattr(value, 'split', '') or 'given'} split, {len(value.images)} images)"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor of images
        return f"tensor {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def with_data(name: str, config: dict, data) -> dict:
    """``config`` for method ``name`` with the run's ``data`` in the method's ``data_option`` (unless ``config``
    sets that option itself). A method that needs data when the run has none is a one-line InputError."""
    option = info(name).data_option
    if not option or option in config:
        return dict(config)
    if data is None:
        raise InputError(f"method {name} looks at data: give the run's data (--data SPEC) or set {option}=...")
    return {**config, option: data}
