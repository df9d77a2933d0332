"""Fold each inference-mode BatchNorm into the convolution that feeds it (a deployment step: the file loses the
BatchNorm's four tensors per channel, the forward is the same function).

For a conv ``y = W * x + b`` followed by ``BN(y) = gamma (y - mu) / sqrt(var + eps) + beta``:

    s = gamma / sqrt(var + eps),   W' = s[o] W[o],   b' = s (b - mu) + beta

(Jacob et al. 2018 §3.2 fold the same way before quantising; Krishnamoorthi 2018 §2.5). Which BatchNorm follows
which conv is read off one forward pass, not guessed from names: a pair is folded only when the BatchNorm's input
is the very tensor the conv returned, both run once, and the model's output on a probe input is unchanged after
the fold (to ``RTOL`` of its scale); any other pair is left as it is. The BatchNorm becomes ``nn.Identity``.

Where the conv's weights must stay as they are (k-means shares one codebook across a layer's filters, and scaling
each filter by ``s`` would break the sharing), ``norms_to_affine`` keeps the BatchNorm as a per-channel
``ChannelAffine`` instead: ``y = s x + (beta - mu s)``, two tensors per channel in the file instead of four (plus
``num_batches_tracked``), the same function in inference.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from cnncompress import surgery
from cnncompress.layers import register_layer

RTOL = 1e-4


def _calls(model: nn.Module, probe: torch.Tensor) -> dict[str, tuple[int, object, object]]:
    """{path: (times called, input tensor, output tensor)} of every conv and BatchNorm in one forward pass."""
    seen: dict[str, list] = {}
    hooks = []
    for path, module in model.named_modules():
        if type(module) in (nn.Conv2d, nn.BatchNorm2d):
            def hook(_, inputs, output, path=path):
                entry = seen.setdefault(path, [0, None, None])
                entry[0] += 1
                entry[1], entry[2] = inputs[0], output
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in hooks:
            handle.remove()
    return {path: tuple(entry) for path, entry in seen.items()}


def pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv path, BatchNorm path) for every BatchNorm whose input is the output of a conv, each run once."""
    calls = _calls(model.eval(), probe)
    convs = {id(out): path for path, (count, _, out) in calls.items()
             if count == 1 and type(model.get_submodule(path)) is nn.Conv2d}
    found = []
    for path, (count, inp, _) in calls.items():
        norm = model.get_submodule(path)
        if type(norm) is nn.BatchNorm2d and count == 1 and norm.track_running_stats and id(inp) in convs:
            found.append((convs[id(inp)], path))
    return found


@torch.no_grad()
def norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel: scale = gamma / sqrt(var + eps),
    shift = beta - mu * scale (gamma 1, beta 0 without affine parameters). Float32, detached."""
    scale = (norm.weight if norm.affine else 1.0) / torch.sqrt(norm.running_var + norm.eps)
    shift = (norm.bias if norm.affine else 0.0) - norm.running_mean * scale
    return scale.detach().float(), shift.detach().float()


@torch.no_grad()
def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``norm(conv(x))`` (eval mode): W' = s W, b' = s (b - mu) + beta (``norm_affine``)."""
    scale, shift = norm_affine(norm)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    fused.bias.copy_(bias * scale + shift)
    return fused.to(conv.weight.dtype)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= RTOL * max(1e-6, b.abs().max().item()))


@torch.no_grad()
def fold_batch_norms(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, list[tuple[str, str]]]:
    """A copy of ``model`` (eval mode) with every foldable BatchNorm folded into its conv (module docstring);
    returns ``(model, [(conv path, BatchNorm path), ...] folded)``. ``probe``: an input batch of the model's
    shape (its values only check the result)."""
    model = copy.deepcopy(model).eval()
    expected = model(probe)
    done = []
    for conv_path, norm_path in pairs(model, probe):
        conv, norm = model.get_submodule(conv_path), model.get_submodule(norm_path)
        model = surgery.replace(model, conv_path, folded_conv(conv, norm))
        model = surgery.replace(model, norm_path, nn.Identity())
        if _close(model(probe), expected):
            done.append((conv_path, norm_path))
        else:  # the conv's output had another reader: undo
            model = surgery.replace(surgery.replace(model, conv_path, conv), norm_path, norm)
    return model, done


@register_layer
class ChannelAffine(nn.Module):
    """``y[:, c] = weight[c] * x[:, c] + bias[c]``: an inference-mode ``BatchNorm2d`` with its statistics folded
    into its affine parameters (``norm_affine``). Trainable like a BatchNorm with frozen statistics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.build_config = {"num_features": num_features}
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


@torch.no_grad()
def norms_to_affine(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` (in place, eval mode) with every ``BatchNorm2d`` that tracks running statistics replaced by the
    ``ChannelAffine`` computing the same eval-mode function; returns ``(model, [BatchNorm paths replaced])``."""
    model.eval()
    done = []
    for path, module in list(model.named_modules()):
        if type(module) is nn.BatchNorm2d and module.track_running_stats and module.running_var is not None:
            scale, shift = norm_affine(module)
            affine = ChannelAffine(module.num_features)
            affine.weight.copy_(scale)
            affine.bias.copy_(shift)
            model = surgery.replace(model, path, affine.to(module.running_var.dtype))
            done.append(path)
    return model, done
