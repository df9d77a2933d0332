"""What a pruning ``flops=`` target counts: the multiply-accumulates of every ``Conv2d`` and ``Linear`` layer.

One forward of one example, a hook on each layer:

  * ``Conv2d``: ``MACs = H_out * W_out * C_out * (C_in / groups) * k_h * k_w``;
  * ``Linear``: ``MACs = rows * in_features * out_features`` (rows = 1 after a flatten).

Biases, BatchNorm, activations and pooling are not MACs and are not counted (Torch-Pruning's
``count_ops_and_params`` adds them as "ops": 8 % more on the emotion CNN, 1 % on VGG-S). Both filter pruners
(``prune_filters`` on ``nn.Sequential`` chains, ``prune_groups`` through the dependency graph) reach their target
and record ``macs_before`` / ``macs_after`` with this count; their ``filter_pruning`` says so (``MACS_COUNTED``).
"""
from __future__ import annotations

import torch
from torch import nn

MACS_COUNTED = "all layers (Conv2d + Linear)"


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """``{path: MACs}`` of each ``Conv2d`` / ``Linear`` that one forward of ``example`` (batch 1) runs through."""
    macs, hooks = {}, []

    def hook(path: str):
        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs[path] = macs.get(path, 0) + output[0].numel() * per_output
            else:
                macs[path] = macs.get(path, 0) + output[0].numel() * module.in_features
        return count

    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(path)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return macs


def total_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward of ``example`` (batch 1) through ``model``: every Conv2d and Linear layer."""
    return sum(layer_macs(model, example).values())
