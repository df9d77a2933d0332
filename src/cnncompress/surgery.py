"""The one rule for choosing layers and the one helper for replacing them, shared by every method.

Choosing (``select``). A method's ``layers=`` option is read the same way everywhere:

* ``"all"`` (or ``None``): every layer of the method's kinds (e.g. ``Conv2d`` and ``Linear``);
* ``"conv"`` / ``"linear"`` (alias ``"fc"``): only ``Conv2d`` / only ``Linear`` layers;
* any other string: a dotted path (``"features.conv3"``), a layer's last name (``"fc6"``), or a glob on the
  dotted path (``"features.fire*.expand3x3"``, ``"classifier.*"``);
* a list of the above: the union, in network order.

Only layers of the method's kinds that it can compress are candidates. Then ``exclude=`` (same syntax) removes
layers, and ``keep_first`` / ``keep_last`` keep the network's first /
last layer of those kinds at full precision (the binarisation papers' rule). An item that matches nothing is an
error naming the item and the candidates, so a typo never silently compresses nothing; so is a named selection
that ends empty (``"linear"`` on a network without a ``Linear`` layer; ``"all"`` may find nothing left to do).

Replacing (``replace``, ``replace_layers``): one place sets a sub-module by its dotted path; ``replace_layers``
is torchao's ``_replace_with_custom_fn_if_matches_filter`` in our terms: ``convert(path, layer)`` for each
selected layer, its result put in place (``None`` keeps the layer).
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Sequence, Union

from torch import nn

LayerSelection = Union[str, Sequence[str], None]
KINDS: dict[str, tuple[type, ...]] = {"conv": (nn.Conv2d,), "linear": (nn.Linear,), "fc": (nn.Linear,)}
WEIGHT_LAYERS: tuple[type, ...] = (nn.Conv2d, nn.Linear)


Where = Callable[[str, nn.Module], bool]


def candidates(model: nn.Module, types: tuple[type, ...] = WEIGHT_LAYERS,
               where: Where | None = None) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every sub-module that is an instance of ``types`` (and passes the method's own
    eligibility filter ``where(path, module)``, if given), in network (definition) order."""
    return [(path, module) for path, module in model.named_modules()
            if path and isinstance(module, types) and (where is None or where(path, module))]


def _items(selection: LayerSelection, option: str) -> list[str]:
    if selection is None:
        return ["all"]
    if isinstance(selection, str):
        return [selection]
    if isinstance(selection, (list, tuple)) and selection and all(isinstance(i, str) and i for i in selection):
        return list(selection)
    raise ValueError(f"{option} must be 'all', 'conv', 'linear', a layer path or glob, or a non-empty list of "
                     f"them; got {selection!r}")


def _matches(item: str, path: str, module: nn.Module) -> bool:
    if item == "all":
        return True
    if item in KINDS:
        return isinstance(module, KINDS[item])
    return path == item or path.rpartition(".")[2] == item or fnmatch.fnmatchcase(path, item)


def _no_match(model: nn.Module, pool: list[tuple[str, nn.Module]], item: str, option: str,
              types: tuple[type, ...]) -> ValueError:
    others = [(path, module) for path, module in model.named_modules() if path and _matches(item, path, module)]
    kinds = " or ".join(t.__name__ for t in types)
    if others:
        path, module = others[0]
        why = (f"is a {type(module).__name__}, not a {kinds}" if not isinstance(module, types)
               else "cannot be compressed by this method (already compressed or unsupported)")
        return ValueError(f"{option}: layer {path!r} {why}")
    names = ", ".join(path for path, _ in pool) or "none"
    return ValueError(f"{option}: no layer matches {item!r}; {kinds} layers: {names}")


def _chosen(model: nn.Module, pool: list[tuple[str, nn.Module]], selection: LayerSelection, option: str,
            types: tuple[type, ...]) -> set[str]:
    chosen: set[str] = set()
    for item in _items(selection, option):
        hits = {path for path, module in pool if _matches(item, path, module)}
        if not hits and item not in ("all", *KINDS):
            raise _no_match(model, pool, item, option, types)
        chosen |= hits
    return chosen


def select(model: nn.Module, layers: LayerSelection = "all", *, types: tuple[type, ...] = WEIGHT_LAYERS,
           exclude: LayerSelection = (), keep_first: bool = False, keep_last: bool = False,
           where: Where | None = None, required: bool = True) -> list[tuple[str, nn.Module]]:
    """The layers of ``model`` that ``layers`` names (module docstring: the rule), in network order.

    ``types`` and ``where`` are the method's, not the user's: the kinds of layer it can compress and an
    eligibility filter (e.g. "not already binarized"); the user's ``layers``/``exclude`` choose among those.
    ``required``: a selection the user named (a kind, path or glob; not ``"all"``) that ends empty is an error."""
    for flag, value in (("keep_first", keep_first), ("keep_last", keep_last)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
    pool = candidates(model, types, where)
    chosen = _chosen(model, pool, layers, "layers", types)
    if exclude:
        chosen -= _chosen(model, pool, exclude, "exclude", types)
    if keep_first and pool:
        chosen.discard(pool[0][0])
    if keep_last and pool:
        chosen.discard(pool[-1][0])
    if not chosen and required and layers not in ("all", None):  # a named selection that compresses nothing
        kinds = " or ".join(t.__name__ for t in types)
        raise ValueError(f"no eligible layers: layers={layers!r} selects no {kinds} layer of {type(model).__name__} "
                         f"that this method can compress (candidates: {', '.join(p for p, _ in pool) or 'none'})")
    return [(path, module) for path, module in pool if path in chosen]


def replace(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``path`` of ``model`` (the whole model when ``path`` is empty); returns the root."""
    if path == "":
        return module
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)
    return model


def replace_layers(model: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None],
                   layers: LayerSelection = "all", *, types: tuple[type, ...] = WEIGHT_LAYERS, **rule) -> nn.Module:
    """For each layer ``select(model, layers, types=types, **rule)`` chooses, put ``convert(path, layer)`` in its
    place (``None`` leaves it). Returns the root (which changes only when the model itself is replaced)."""
    for path, module in select(model, layers, types=types, **rule):
        new = convert(path, module)
        if new is not None:
            model = replace(model, path, new)
    return model


def replace_type(model: nn.Module, types: tuple[type, ...] | type,
                 convert: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace every sub-module that is an instance of ``types`` (the root included) by ``convert(module)``."""
    types = types if isinstance(types, tuple) else (types,)
    matches: Iterable = [(p, m) for p, m in model.named_modules() if isinstance(m, types)]
    for path, module in list(matches):
        new = convert(module)
        if new is not None:
            model = replace(model, path, new)
    return model
