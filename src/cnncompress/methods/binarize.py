"""Binarization: BinaryConnect, Binary-Weight-Networks, XNOR-Net, and binarized activations only.

Papers: Courbariaux et al. 2015 (BinaryConnect), Rastegari et al. 2016 (BWN, XNOR-Net), as used by Rassadin &
Savchenko 2017 §3 on VGG-S; survey: Berthelier et al. 2018 §2.6. Three modules:

- ``binarize_layers``: the training layers ``BinaryConv2d`` / ``BinaryLinear`` (sign with the clipped
  straight-through estimator, scales, stochastic sign, shadow-weight clipping) and the inserted ``BlockNorm``;
- ``binarize_inference``: their inference forms (``XnorConv2d``/``XnorLinear`` on the bit-packed kernel,
  ``SignedConv2d``/``SignedLinear``), the fast LRN / max-pool, and ``to_inference``;
- here: which layers are binarized, the block reorder, the four methods and their registration.

Layers: every method takes ``layers=`` (default ``"all"``), read by the shared rule ``surgery.select`` (``"conv"``,
``"linear"``, dotted paths, last names, globs, lists; a name that matches nothing is an error), and
``keep_first``/``keep_last`` (default True): the network's first and last conv/linear layer stay full precision
whatever ``layers`` says. Grouped, dilated or non-zero-padded convs are skipped.

Block reorder for binary inputs: the paper turns every conv-BN-activation block except the first into
BN -> binary activation -> conv. VGG-S and SqueezeNet have no BatchNorm, so a fresh BatchNorm (2d for convs,
1d for linears) is inserted right before each binarized layer, whose forward applies the binary activation
itself: ``conv`` becomes ``Sequential(bn=BatchNorm, binary=BinaryConv2d)``; the ReLU/LRN/pool that followed
the conv stay after it (pooling stays before the next binarization, as XNOR-Net recommends).

Storage: binary weights use the ``bitpack`` codec (1 bit/weight + fp32 alpha per filter).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnncompress import surgery
from cnncompress.methods.binarize_inference import (FastLocalResponseNorm, FastMaxPool2d, SignedConv2d, SignedLinear,  # noqa: F401
                                 XnorConv2d, XnorLinear, fast_float_layers, to_inference)
from cnncompress.methods.binarize_layers import (SCALES, BinaryConv2d, BinaryLinear, BlockNorm1d, BlockNorm2d, _Binary,  # noqa: F401
                              ste_sign, stochastic_sign)
from cnncompress.methods.registry import MethodInfo, register


def _eligible(layer: nn.Module) -> bool:
    """Linears, and convs the binary layers can represent (no groups, dilation, padding modes or "same")."""
    return isinstance(layer, nn.Linear) or (layer.groups == 1 and tuple(layer.dilation) == (1, 1)
                                            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def binarize(model: nn.Module, *, binary_weights: bool, scale: str, binary_input: bool, input_scale: bool = True,
             stochastic: bool = False, keep_first: bool = True, keep_last: bool = True, insert_bn: bool = True,
             layers: surgery.LayerSelection = "all") -> nn.Module:
    """Replace the eligible Conv2d/Linear layers ``layers`` names (in place) by their binary layers; returns the
    model. The first/last conv-or-linear layer stays full precision when ``keep_first``/``keep_last``."""
    if any(isinstance(m, _Binary) for _, m in surgery.candidates(model)):
        raise ValueError("model is already binarized")
    inference = (SignedConv2d, SignedLinear)  # an earlier binarization's inference form: not a float layer
    rule = {"keep_first": keep_first, "keep_last": keep_last}
    pool = [(n, m) for n, m in surgery.candidates(model) if not isinstance(m, inference)]
    chosen = [(n, m) for n, m in surgery.select(model, layers, **rule)
              if not isinstance(m, inference) and _eligible(m)]
    if not chosen:
        raise ValueError(f"no eligible layers to binarize ({len(pool)} conv/linear layers; the first and last "
                         "stay full precision: set keep_first=False / keep_last=False to binarize them)")
    flags = {"binary_weights": binary_weights, "scale": scale, "binary_input": binary_input,
             "input_scale": input_scale, "stochastic": stochastic}
    for name, layer in chosen:
        is_conv = isinstance(layer, nn.Conv2d)
        binary = (BinaryConv2d if is_conv else BinaryLinear).from_float(layer, **flags)
        if binary_input and insert_bn:
            features = layer.in_channels if is_conv else layer.in_features
            norm = (BlockNorm2d if is_conv else BlockNorm1d)(features).to(layer.weight.device)
            binary = nn.Sequential(OrderedDict([("bn", norm), ("binary", binary)]))
        model = surgery.replace(model, name, binary)
    return model


def _check_bool(**values) -> None:
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")


def apply_binaryconnect(model: nn.Module, stochastic: bool = False, keep_first: bool = True,
                        keep_last: bool = True, layers: surgery.LayerSelection = "all") -> nn.Module:
    """BinaryConnect: W_b = H sign(W) (H: per-layer constant), real inputs."""
    _check_bool(stochastic=stochastic, keep_first=keep_first, keep_last=keep_last)
    return binarize(model, binary_weights=True, scale="layer", binary_input=False, stochastic=stochastic,
                    keep_first=keep_first, keep_last=keep_last, layers=layers)


def apply_bwn(model: nn.Module, stochastic: bool = False, keep_first: bool = True, keep_last: bool = True,
              layers: surgery.LayerSelection = "all") -> nn.Module:
    """Binary-Weight-Network: W ~ alpha_o sign(W_o), alpha_o = mean |W_o| per output filter, real inputs."""
    _check_bool(stochastic=stochastic, keep_first=keep_first, keep_last=keep_last)
    return binarize(model, binary_weights=True, scale="filter", binary_input=False, stochastic=stochastic,
                    keep_first=keep_first, keep_last=keep_last, layers=layers)


def apply_xnor(model: nn.Module, input_scale: bool = True, stochastic: bool = False, keep_first: bool = True,
               keep_last: bool = True, insert_bn: bool = True, layers: surgery.LayerSelection = "all") -> nn.Module:
    """XNOR-Net: binary weights (alpha per filter) and binary inputs (scale K), BN -> sign -> conv blocks."""
    _check_bool(input_scale=input_scale, stochastic=stochastic, keep_first=keep_first, keep_last=keep_last,
                insert_bn=insert_bn)
    return binarize(model, binary_weights=True, scale="filter", binary_input=True, input_scale=input_scale,
                    stochastic=stochastic, keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn,
                    layers=layers)


def apply_binact(model: nn.Module, input_scale: bool = True, keep_first: bool = True, keep_last: bool = True,
                 insert_bn: bool = True, layers: surgery.LayerSelection = "all") -> nn.Module:
    """Binarized activations only (XNOR-Net without weight binarization): real weights, sign(x) K inputs."""
    _check_bool(input_scale=input_scale, keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn)
    return binarize(model, binary_weights=False, scale="none", binary_input=True, input_scale=input_scale,
                    keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn, layers=layers)


def onnx_graph(model: nn.Module) -> tuple[None, str]:
    """The ``onnx_graph`` hook: no graph of our own (the bit-packed kernel has no ONNX operator), so the model's
    float form is exported: the binarised weights as fp32 tensors and sign() activations."""
    return None, ("float equivalent (binarised weights stored as fp32; the bit-packed kernel has no ONNX "
                  "operator)")


PAPER = "Courbariaux 2015; Rastegari 2016 (XNOR-Net); Rassadin & Savchenko 2017 §3"
FAMILY = "binarize"
register(MethodInfo("binaryconnect", "Courbariaux et al. 2015, BinaryConnect", size="real", speed="none",
                    family=FAMILY,
                    handles="every Conv2d/Linear (grouped and depthwise too) inside any structure; BatchNorm kept "
                            "(its statistics re-estimated by `compress`)",
                    description="weights H*sign(W), 1 bit/weight on disk; inference runs fp32 BLAS"),
         apply_binaryconnect, to_inference, onnx_graph=onnx_graph)
register(MethodInfo("bwn", "Rastegari et al. 2016, Binary-Weight-Networks", size="real", speed="none", family=FAMILY,
                    handles="every Conv2d/Linear (grouped and depthwise too) inside any structure; BatchNorm kept "
                            "(re-estimated)",
                    description="weights alpha_o*sign(W), 1 bit/weight + fp32 alpha per filter; inference fp32 BLAS"),
         apply_bwn, to_inference, onnx_graph=onnx_graph)
register(MethodInfo("xnor", "Rastegari et al. 2016, XNOR-Net", size="real", speed="real", family=FAMILY,
                    handles="Conv2d/Linear, first and last kept float; the bit-packed kernel takes groups=1 convs, "
                            "others run their float equivalent; residual, concatenating and depthwise nets run",
                    description="binary weights and inputs; bit-packed XNOR-popcount C kernel at inference",
                    bench=({"model": "vgg_s", "config": {}, "finetune": 3, "label": "XNOR-Net"},)),
         apply_xnor, to_inference, onnx_graph=onnx_graph)
register(MethodInfo("binact", "Rassadin & Savchenko 2017 (XNOR-Net w/o weight binarization)", size="simulated",
                    speed="none", family=FAMILY,
                    handles="Conv2d/Linear inputs binarised; any structure",
                    description="binary activations, real weights: no file saving, no fast kernel"),
         apply_binact, to_inference, onnx_graph=onnx_graph)
