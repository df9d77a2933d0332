"""Filter pruning through residual adds, concatenations, depthwise convs and BatchNorm: Torch-Pruning's dependency
graph (Fang et al. 2023, DepGraph) with our criteria.

``prune_filters`` follows the channel flow of ``nn.Sequential`` chains itself (``prune_filters.trace``); a network it
cannot follow (a ResNet's ``x + f(x)``, a DenseNet's ``cat``, a MobileNet's depthwise convs, a hand-written
``forward``) comes here. ``torch_pruning.DependencyGraph`` traces the network on one example input and couples
every channel that must go together: the convs feeding one residual add, a depthwise conv with its input, a
BatchNorm with its conv, a concatenation's slices with their producers. A group is scored by all its coupled
weights (``GroupMagnitudeImportance(p=1)``: the L1 norm summed over the group, Li et al. 2017 generalised;
``GroupTaylorImportance``: Molchanov et al. 2016's first-order Taylor term summed over the group) and removed
whole, so the result is plain, smaller layers. The channel ratio is found by bisection so that the network's
multiply-accumulates (every Conv2d and Linear layer: ``prune_macs.total_macs``, the count the sequential pruner
targets too) drop by ``flops``.
The last layer's outputs (the classes) are never pruned.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.methods.prune_macs import MACS_COUNTED, total_macs

BISECTION_STEPS = 10


def _example(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(1, *input_shape)


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose outputs are the network's outputs (never pruned: they are the classes)."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:]


def _importance(criterion: str):
    import torch_pruning as tp
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown pruning criterion {criterion!r}")


def _prune_once(model: nn.Module, example: torch.Tensor, ratio: float, criterion: str, global_ranking: bool,
                min_keep: float, round_to: int, ignored: list[str], data=None, steps: int = 1) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of every prunable group's channels removed."""
    import torch_pruning as tp
    model = copy.deepcopy(model)
    ignored_layers = _output_layers(model, example) + [model.get_submodule(p) for p in ignored]
    pruner = tp.pruner.MetaPruner(model, example, importance=_importance(criterion), pruning_ratio=ratio,
                                  global_pruning=global_ranking, ignored_layers=ignored_layers,
                                  max_pruning_ratio=1.0 - min_keep, round_to=round_to,
                                  iterative_steps=steps)
    for _ in range(steps):
        if criterion == "taylor":
            images, labels = data
            model.zero_grad()
            was_training = model.training
            model.eval()
            F.cross_entropy(model(images), labels).backward()
            model.train(was_training)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def prune_groups(model: nn.Module, criterion: str, flops: float, input_shape: tuple[int, ...], *,
                 global_ranking: bool = False, min_keep: float = 0.1, round_to: int = 8, ignored: list[str] = (),
                 data=None, steps: int = 1) -> nn.Module:
    """``model`` with whole channel groups removed until its total MACs drop by at least ``flops`` (bisection on
    the channel ratio). ``data``: ``(images, labels)`` for the Taylor criterion. Records ``model.filter_pruning``."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise ValueError("filter pruning of this network needs torch-pruning (pip install torch-pruning)") from error
    was_training = model.training
    model.eval()
    example = _example(model, input_shape)
    try:
        base = total_macs(model, example)
        low, high, best = 0.0, 1.0 - min_keep, None
        for _ in range(BISECTION_STEPS):
            ratio = (low + high) / 2
            pruned = _prune_once(model, example, ratio, criterion, global_ranking, min_keep, round_to, list(ignored),
                                 data, steps)
            removed = 1 - total_macs(pruned, example) / base
            if removed >= flops:
                best, high = (pruned, removed), ratio
            else:
                low = ratio
        if best is None:
            pruned = _prune_once(model, example, 1.0 - min_keep, criterion, global_ranking, min_keep, round_to,
                                 list(ignored), data, steps)
            best = (pruned, 1 - total_macs(pruned, example) / base)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - the dependency graph could not follow the network: refused, said
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(f"filter pruning could not trace {type(model).__name__} ({type(error).__name__}: "
                         f"{text})") from error
    pruned, removed = best
    pruned.filter_pruning = {"criterion": criterion, "graph": "torch-pruning dependency graph",
                             "macs_counted": MACS_COUNTED, "macs_before": base,
                             "macs_after": total_macs(pruned, example), "flops_removed": removed,
                             "channels": {p: m.out_channels for p, m in pruned.named_modules()
                                          if isinstance(m, nn.Conv2d)}}
    return pruned.train(was_training)
