"""Filter pruning with physical removal: L1 norm (Li et al. 2017) and Taylor criterion (Molchanov et al. 2016).

Survey §2.3. Removing output filter ``c`` of a conv also removes channel ``c`` of every per-channel layer
after it (BatchNorm, pooling, ReLU) and input channel ``c`` of each consumer: the next conv, both expand convs
of a SqueezeNet fire module, the next fire's squeeze (channels of a concatenation keep their offsets), and
the ``H*W`` input columns ``c*H*W .. c*H*W+H*W-1`` of the fc layer after a flatten (VGG-S conv5 -> fc6).
The result is made of plain, smaller ``Conv2d``/``Linear`` layers, so it saves, exports and runs fast as is.

The ``flops`` target counts the MACs of every Conv2d and Linear layer (``prune_macs``: the count the
dependency-graph pruner uses too). A layer fed by ``c_in`` kept channels with ``c_out`` kept outputs costs
``MACs = cost * c_out * c_in``, where ``cost`` = its MACs in the unpruned net / (its outputs * its input channels)
(``H_out * W_out * k_h * k_w`` for a conv, the flatten block ``H * W`` for an fc layer after one; a Linear's
outputs, the classes or an fc layer's units, are never removed).

Criteria (per output filter ``k`` of layer ``l``):
  * ``l1`` (``L1Importance``): ``s = sum |W_l[k]|``; every layer loses the same fraction of filters (Li et al.), the fraction
    found by bisection so that the MACs drop by ``flops``.
  * ``taylor`` (``TaylorImportance``): ``s = mean_n |mean_{h,w} z * dL/dz|`` on ``samples`` training images (first-order Taylor
    estimate of the loss change), L2-normalised per layer, ranked globally; the lowest are removed one by one
    until the MACs drop by ``flops``, in ``steps`` rounds that recompute the criterion on the pruned net
    (Molchanov fine-tunes between rounds; here fine-tuning happens once, after ``apply``).
``model.filter_pruning`` records the criterion, which MACs were counted (``macs_counted``), the MACs before/after
(``macs_before``, ``macs_after``, ``flops_removed``; the conv layers' share as ``conv_macs_before``/``_after``),
channels left and the kept filter indices (original numbering). Equivalence: before fine-tuning the pruned net equals the original with the removed filters' outputs zeroed,
except through ``LocalResponseNorm`` (VGG-S norm1/norm2), which mixes neighbouring channels; such layers are
listed in ``model.filter_pruning["approximate"]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import surgery
from cnncompress.layers import BranchConcat, SequentialForward, conv_config
from cnncompress.methods.calibration import take
from cnncompress.methods.prune import check_fraction
from cnncompress.methods.prune_macs import MACS_COUNTED, layer_macs
from cnncompress.methods.registry import MethodInfo, register

PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d)


@dataclass
class Graph:
    """Who feeds whom: ``inputs[c]`` = producer paths (``None`` = not prunable) and channel counts of consumer
    ``c``'s input, concatenated in order; ``units[c]`` = its outputs (conv filters, fc units); ``block[c]`` =
    flatten block (H*W) for fc consumers."""
    convs: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    block: dict = field(default_factory=dict)
    norms: dict = field(default_factory=dict)
    approximate: list = field(default_factory=list)
    blocks: list = field(default_factory=list)

    @property
    def prunable(self) -> list[str]:
        used = {p for sources in self.inputs.values() for p, _ in sources if p is not None}
        return [p for p in self.convs if p in used]


def trace(model: nn.Module) -> Graph:
    """Follow the channel flow of a sequential CNN: ``nn.Sequential`` chains and containers that declare their
    flow (``layers.SequentialForward`` such as VGG-S and SqueezeNet 1.1, ``layers.BranchConcat`` such as the
    fire module)."""
    graph = Graph()
    in_channels = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    current = [(None, getattr(in_channels, "in_channels", 0))]
    flatten = False

    def walk(module: nn.Module, path: str) -> None:
        nonlocal current, flatten
        join = (lambda name: f"{path}.{name}" if path else name)
        if isinstance(module, BranchConcat):
            graph.blocks.append(path)
            for stage in module.stages:
                source, joined = current, []
                for name in stage:
                    current = source
                    walk(getattr(module, name), join(name))
                    joined += current
                current = joined
        elif type(module) is nn.Conv2d:
            if module.groups != 1:
                raise ValueError(f"{path}: grouped convolutions are not supported by filter pruning")
            graph.inputs[path], graph.units[path] = current, module.out_channels
            graph.convs[path] = module
            current = [(path, module.out_channels)]
        elif type(module) is nn.Linear:
            if not flatten and any(p is not None for p, _ in current):
                raise ValueError(f"{path}: a Linear layer fed by a conv must follow a Flatten")
            total = sum(n for _, n in current)
            graph.inputs[path], graph.block[path] = current, module.in_features // max(total, 1)
            graph.units[path] = module.out_features
            current, flatten = [(None, module.out_features)], False
        elif isinstance(module, nn.BatchNorm2d):
            graph.norms[path] = current
        elif isinstance(module, nn.LocalResponseNorm):
            graph.approximate.append(path)
        elif isinstance(module, nn.Flatten):
            flatten = True
        elif isinstance(module, PASS_THROUGH):
            pass
        elif isinstance(module, (nn.Sequential, SequentialForward)):
            for name, child in module.named_children():
                walk(child, join(name))
        elif module is model:
            raise ValueError(f"filter pruning follows nn.Sequential chains and models that declare their channel "
                             f"flow (layers.SequentialForward), not {type(module).__name__}")
        else:
            raise ValueError(f"{path}: filter pruning cannot follow channels through {type(module).__name__}")

    walk(model, "")
    return graph


def example_input(model: nn.Module) -> torch.Tensor:
    """One image of the shape the model's card gives (``spec``: ``in_channels``, ``input_size``)."""
    spec = getattr(model, "spec", None) or {}
    size, chans = spec.get("input_size"), spec.get("in_channels")
    if not size:
        raise ValueError("model has no .spec with input_size; build it with cnncompress.models.build")
    return torch.zeros(1, chans, size, size)


def layer_costs(graph: Graph, macs: dict[str, int]) -> dict[str, float]:
    """MACs per (output x input channel) of each conv and fc layer ``graph`` follows: its ``macs`` in one forward
    (``prune_macs.layer_macs``) / (its outputs * its input channels)."""
    return {path: macs.get(path, 0) / (graph.units[path] * max(1, sum(n for _, n in sources)))
            for path, sources in graph.inputs.items()}


def graph_macs(graph: Graph, costs: dict[str, float], kept: dict[str, int], only=None) -> float:
    """MACs of every layer (``only``: of those paths) with ``kept[p]`` filters left of each pruned conv ``p``:
    ``sum cost * c_out * c_in`` (module docstring)."""
    total = 0.0
    for path, sources in graph.inputs.items():
        if only is None or path in only:
            ins = sum(kept.get(p, n) if p is not None else n for p, n in sources)
            total += costs[path] * kept.get(path, graph.units[path]) * ins
    return total


class Importance:
    """Scores of the output filters of each prunable conv (Torch-Pruning's ``Importance``): higher = keep.

    ``global_ranking``: ``False`` -> every layer loses the same fraction of filters (Li et al.); ``True`` -> the
    globally lowest scores go first (Molchanov et al.). ``steps``: rounds of scoring and removal."""

    name = "custom"
    global_ranking = False
    steps = 1

    def __call__(self, model: nn.Module, graph: Graph) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class L1Importance(Importance):
    """Li et al. 2017: ``s_k = sum |W_l[k]|``."""

    name = "l1"

    def __call__(self, model: nn.Module, graph: Graph) -> dict[str, torch.Tensor]:
        return {p: graph.convs[p].weight.detach().abs().sum(dim=(1, 2, 3)) for p in graph.prunable}


class TaylorImportance(Importance):
    """Molchanov et al. 2016 eq. 8: ``|mean_{h,w}(z * dL/dz)|`` averaged over ``images``, L2-normalised per layer.
    Taken on the conv output before ReLU, which for ReLU nets equals the post-ReLU product."""

    name, global_ranking = "taylor", True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int = 4, batch_size: int = 64):
        self.images, self.labels, self.steps, self.batch_size = images, labels, steps, batch_size

    def __call__(self, model: nn.Module, graph: Graph) -> dict[str, torch.Tensor]:
        scores = {p: torch.zeros(graph.convs[p].out_channels) for p in graph.prunable}
        outputs, hooks = {}, []
        for p in graph.prunable:
            hooks.append(graph.convs[p].register_forward_hook(lambda m, i, o, p=p: outputs.__setitem__(p, o)))
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(self.images), self.batch_size):
                x, y = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
                outputs.clear()
                loss = F.cross_entropy(model(x), y, reduction="sum")
                grads = torch.autograd.grad(loss, [outputs[p] for p in graph.prunable])
                for p, g in zip(graph.prunable, grads):
                    scores[p] += (outputs[p].detach() * g).mean(dim=(2, 3)).abs().sum(0)
        finally:
            for hook in hooks:
                hook.remove()
            model.train(was_training)
        return {p: s / (s.norm() + 1e-12) for p, s in scores.items()}


def _select(tensor: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    return tensor.detach() if index is None else tensor.detach().index_select(dim, index)


def _input_index(graph: Graph, path: str, keep: dict[str, torch.Tensor]) -> torch.Tensor | None:
    sources = graph.inputs.get(path) or graph.norms.get(path)
    if not any(p in keep for p, _ in sources):
        return None
    parts, offset = [], 0
    for p, n in sources:
        parts.append((keep[p] if p in keep else torch.arange(n)) + offset)
        offset += n
    index = torch.cat(parts)
    block = graph.block.get(path, 1)
    if block > 1:
        index = (index[:, None] * block + torch.arange(block)).reshape(-1)
    return index


@torch.no_grad()
def remove_filters(model: nn.Module, graph: Graph, keep: dict[str, torch.Tensor]) -> nn.Module:
    """Physically drop every filter not in ``keep[path]`` (sorted indices) and the channels it fed."""
    for path in list(graph.inputs):
        old = model.get_submodule(path)
        out_index, in_index = keep.get(path), _input_index(graph, path, keep)
        if out_index is None and in_index is None:
            continue
        weight = _select(_select(old.weight, 0, out_index), 1, in_index)
        if isinstance(old, nn.Conv2d):
            config = {**conv_config(old), "out_channels": weight.shape[0], "in_channels": weight.shape[1]}
            new = nn.Conv2d(**{**config, "kernel_size": tuple(config["kernel_size"]),
                               "stride": tuple(config["stride"]), "padding": tuple(config["padding"]),
                               "dilation": tuple(config["dilation"])})
        else:
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None)
        new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(_select(old.bias, 0, out_index))
        surgery.replace(model, path, new.to(old.weight.device))
    for path in graph.norms:
        index = _input_index(graph, path, keep)
        if index is None:
            continue
        old = model.get_submodule(path)
        new = nn.BatchNorm2d(len(index), eps=old.eps, momentum=old.momentum, affine=old.affine,
                             track_running_stats=old.track_running_stats)
        state = {k: (v.index_select(0, index) if v.dim() == 1 else v) for k, v in old.state_dict().items()}
        new.load_state_dict(state)
        surgery.replace(model, path, new)
    for path in graph.blocks:
        model.get_submodule(path).channels_changed()
    return model


def _count(n: int, k: int, min_keep: float, round_to: int) -> int:
    """Filters kept out of ``n``: at least ``min_keep * n`` (and 1), rounded to a multiple of ``round_to``
    (SIMD-friendly widths; layers of at most ``round_to`` filters are not rounded)."""
    k = max(1, math.ceil(min_keep * n), k)
    if round_to > 1 and n > round_to:
        k = max(round_to, int(round(k / round_to)) * round_to)
    return min(n, k)


def top_filters(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Sorted indices of the ``counts[p]`` highest-scoring filters of each layer."""
    return {p: torch.sort(torch.argsort(s, descending=True, stable=True)[:counts[p]]).values
            for p, s in scores.items()}


def uniform_counts(graph: Graph, scores: dict, costs: dict, target: float, min_keep: float,
                   round_to: int) -> dict[str, int]:
    """Li et al.: the same fraction r of filters off every layer; r by bisection to reach ``target`` MACs."""
    def counts(r: float) -> dict[str, int]:
        return {p: _count(len(s), len(s) - int(round(r * len(s))), min_keep, round_to) for p, s in scores.items()}
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if graph_macs(graph, costs, counts(mid)) <= target else (mid, high)
    return counts(high)


def greedy_counts(graph: Graph, scores: dict, costs: dict, target: float, min_keep: float,
                  round_to: int) -> dict[str, int]:
    """Molchanov et al.: remove the globally lowest-ranked filters until ``target`` MACs; a layer wider than
    ``round_to`` gives up filters ``round_to`` at a time (once that many of its filters are next in line)."""
    kept = {p: len(s) for p, s in scores.items()}
    pending = dict.fromkeys(scores, 0)
    for _, p, i in sorted((float(v), p, i) for p, s in scores.items() for i, v in enumerate(s)):
        if graph_macs(graph, costs, kept) <= target:
            break
        group = round_to if len(scores[p]) > round_to else 1
        pending[p] += 1
        if pending[p] == group and kept[p] - group >= _count(len(scores[p]), 1, min_keep, 1):
            kept[p] -= group
            pending[p] = 0
    return kept


def prune_filters(model: nn.Module, importance: Importance, flops: float = 0.5, layers="all",
                  min_keep: float = 0.1, round_to: int = 8, exclude=()) -> nn.Module:
    """Remove whole filters until the MACs of every Conv2d and Linear layer drop by the fraction ``flops`` (see the
    module docstring); which filters go is decided by ``importance`` (``L1Importance``, ``TaylorImportance`` or
    your own)."""
    check_fraction("flops", flops, low_open=True)
    check_fraction("min_keep", min_keep, low_open=True)
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError("round_to must be an integer >= 1")
    try:
        graph = trace(model)
    except ValueError as error:  # not a chain this module can follow: the dependency graph (prune_groups)
        return _prune_by_groups(model, importance, flops, layers, min_keep, round_to, exclude, error)
    prunable = set(graph.prunable)
    candidates = [p for p, _ in surgery.select(model, layers, types=(nn.Conv2d,), exclude=exclude,
                                               where=lambda p, _: p in prunable)]
    example = example_input(model)
    before = layer_macs(model, example)
    costs = layer_costs(graph, before)
    base = graph_macs(graph, costs, {})
    origin = {p: torch.arange(graph.convs[p].out_channels) for p in candidates}
    allocate = greedy_counts if importance.global_ranking else uniform_counts
    for step in range(importance.steps):
        graph = trace(model)
        fraction = flops * (step + 1) / importance.steps
        scores = {p: s for p, s in importance(model, graph).items() if p in candidates}
        counts = allocate(graph, scores, costs, (1 - fraction) * base, min_keep, round_to)
        keep = top_filters(scores, counts)
        model = remove_filters(model, graph, keep)
        origin = {p: origin[p][keep[p]] if p in keep else origin[p] for p in origin}
    after = layer_macs(model, example)
    model.filter_pruning = {"criterion": importance.name, "macs_counted": MACS_COUNTED,
                            "macs_before": sum(before.values()), "macs_after": sum(after.values()),
                            "flops_removed": 1 - sum(after.values()) / sum(before.values()),
                            "conv_macs_before": sum(v for p, v in before.items() if p in graph.convs),
                            "conv_macs_after": sum(v for p, v in after.items() if p in graph.convs),
                            "approximate": graph.approximate,
                            "channels": {p: model.get_submodule(p).out_channels for p in candidates},
                            "kept": {p: index.tolist() for p, index in origin.items()}}
    return model


def _prune_by_groups(model: nn.Module, importance: Importance, flops: float, layers, min_keep: float, round_to: int,
                     exclude, why: ValueError) -> nn.Module:
    """Filter pruning through the dependency graph of Torch-Pruning (``prune_groups``) for a network ``trace``
    cannot follow (``why``); needs the network's input shape (its card)."""
    from cnncompress.methods.calibration import model_shape
    from cnncompress.methods.prune_groups import prune_groups
    channels, size, _ = model_shape(model)
    if not (channels and size):
        raise ValueError(f"{why}; the dependency-graph pruner needs the input shape, which the card of "
                         f"{type(model).__name__} does not give (compress it with data, or set model.spec)")
    if importance.name not in ("l1", "taylor"):
        raise ValueError(f"{why}; the dependency-graph pruner takes the l1 or taylor criterion, not {importance.name}")
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    chosen = {p for p, _ in surgery.select(model, layers, types=(nn.Conv2d,), exclude=exclude)}
    data = (importance.images, importance.labels) if importance.name == "taylor" else None
    return prune_groups(model, importance.name, flops, (channels, size, size), global_ranking=importance.global_ranking,
                        min_keep=min_keep, round_to=round_to, ignored=[p for p in convs if p not in chosen], data=data,
                        steps=importance.steps)


def prune_l1(model: nn.Module, flops: float = 0.5, layers="all", min_keep: float = 0.1, round_to: int = 8,
             exclude=()) -> nn.Module:
    """Li et al. 2017: smallest-L1 filters off, same fraction per layer, until conv MACs drop by ``flops``."""
    return prune_filters(model, L1Importance(), flops, layers, min_keep, round_to, exclude)


def prune_taylor(model: nn.Module, flops: float = 0.5, layers="all", min_keep: float = 0.1, data=None,
                 samples: int = 256, steps: int = 4, round_to: int = 8, exclude=()) -> nn.Module:
    """Molchanov et al. 2016: globally lowest Taylor-criterion filters off until conv MACs drop by ``flops``.

    ``data``: the labelled images the criterion is measured on (required; ``samples`` of them, a seeded subset):
    the run's training split as handed over by the bench or ``cnncompress compress`` (``MethodInfo.data_option``),
    a dataset spec, an ``ImageDataset`` or an ``(images, labels)`` pair (see ``methods.calibration``)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (steps, samples)):
        raise ValueError("steps and samples must be integers >= 1")
    images, labels = take(model, data, samples, what="prune-taylor data", labelled=True)
    return prune_filters(model, TaylorImportance(images, labels, steps), flops, layers, min_keep, round_to, exclude)


register(MethodInfo(
    name="prune-l1", paper="Li et al. 2017, Pruning filters for efficient ConvNets (survey §2.3)", size="real",
    speed="real", family="prune",
    handles="Conv2d filters, through residual adds, concatenations, depthwise convs and BatchNorm (coupled channels "
            "removed together: Torch-Pruning's dependency graph where the net is not a plain chain)",
    description="L1-norm filter pruning; filters and the next layer's input channels physically removed, result is "
                "a smaller dense model",
    bench=({"model": "vgg_s", "config": {"flops": 0.5}, "finetune": 1, "label": "L1 filters -50% FLOPs"},)),
    prune_l1)
register(MethodInfo(
    name="prune-taylor", paper="Molchanov et al. 2016, Pruning CNNs for resource efficient inference (survey §2.3)",
    size="real", speed="real", family="prune", data_option="data",
    handles="Conv2d filters, through residual adds, concatenations, depthwise convs and BatchNorm (as prune-l1)",
    description="Taylor-criterion filter pruning on the run's training images (global ranking, physical removal)"),
    prune_taylor)
