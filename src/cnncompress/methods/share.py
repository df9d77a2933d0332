"""k-means weight sharing and the Deep Compression pipeline (Han et al. 2016; Gong et al. 2014; survey §2.4).

Weight sharing: the weights of each layer are clustered into ``2**b`` centroids with scikit-learn's KMeans,
*linear* initialisation (centroids spaced evenly between min and max weight, which Han found best because it
keeps the rare large weights), one run. A layer then stores ``b``-bit cluster indices ``I`` and the fp32
centroids ``C``: ``W_ij = C[I_ij]``. Fine-tuning trains the centroids with the summed gradients of their
members, ``dL/dC_k = sum_ij dL/dW_ij * 1(I_ij = k)`` (the backward of the gather ``C[I]``); indices stay fixed.
In a pruned layer index 0 is the pruned zero (pinned to 0, not trained) and the non-zero weights share
``2**b - 1`` centroids, so a pruned position stays pruned.

Indices that move (``moving_indices``, a recovery option beyond Han's fixed indices): inside the context each
dense shared layer also trains a float shadow weight ``V`` (initialised from the float layer it was clustered
from when given, else ``C[I]``); every training forward re-assigns ``I = argmin_k |V - C_k|`` and uses
``W = C[I]`` with the straight-through gradient ``dL/dV = dL/dW`` (as BinaryConnect trains its float weights
through sign(), Courbariaux et al. 2015, survey §2.3), the centroids keeping the summed gradient above. On exit
the shadows are dropped: the layer holds the indices it was last evaluated with, the file is unchanged in form.

Deep Compression (``deep-compression``): magnitude pruning (Han's VGG-16 ratios by default: first conv 42%,
other convs 65%, hidden fc 96%, last fc 77% pruned) -> weight sharing (8-bit conv, 5-bit fc) -> Huffman
coding of the index and relative-position streams. ``model.compression_stages`` lists the real ``.ccz`` bytes
after each stage (fp32, pruned+CSR, +codebook, +Huffman); they do not change during fine-tuning because
masks and indices are fixed.
"""
from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import surgery
from cnncompress.kernels.sparse import CSRWeight, choose_path, csr_linear
from cnncompress.layers import CompressedLayer, base_config, conv_config, linear_config, register_layer
from cnncompress.storage import codec_codebook, codec_sparse  # noqa: F401  (registers csr, codebook, huffman)
from cnncompress.methods.prune import CONV_INDEX_BITS, FC_INDEX_BITS, MaskedLayer, prune_magnitude, select_layers
from cnncompress.methods.registry import MethodInfo, register

CODINGS = ("plain", "huffman")
HUFFMAN_INDEX_BITS = 8


def kmeans_1d(values: np.ndarray, clusters: int, seed: int = 0, max_samples: int = 100_000) -> np.ndarray:
    """Sorted centroids of ``values`` (1-D) by sklearn KMeans with linear init; fitted on at most ``max_samples``."""
    from sklearn.cluster import KMeans
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros(clusters, dtype=np.float32)
    sample = values
    if values.size > max_samples:
        sample = np.random.default_rng(seed).choice(values, max_samples, replace=False)
    clusters_fit = min(clusters, len(np.unique(sample)))
    init = np.linspace(sample.min(), sample.max(), clusters_fit)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = KMeans(n_clusters=clusters_fit, init=init, n_init=1, random_state=seed).fit(sample[:, None])
    centroids = np.sort(fit.cluster_centers_.ravel())
    return np.pad(centroids, (0, clusters - clusters_fit), mode="edge").astype(np.float32)


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (midpoint search)."""
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)


def nearest_index(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (into ``centroids``, in any order) of the nearest centroid for each value: sort, midpoint search,
    map back. ``nearest_index_reference`` is the plain argmin it must equal."""
    order = torch.argsort(centroids)
    ordered = centroids[order]
    return order[torch.bucketize(values, (ordered[1:] + ordered[:-1]) / 2)]


def nearest_index_reference(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``argmin_k |v - C_k|`` for each value (memory numel x K: for tests)."""
    return (values.reshape(-1, 1) - centroids.reshape(1, -1)).abs().argmin(1).reshape(values.shape)


class _SharedMixin(CompressedLayer, nn.Module):
    """State: ``centroids`` (2**bits,), ``indices`` (weight shape, uint8), ``bias``. ``W = C[I]``."""

    def _init_shared(self, shape: tuple, bits: int, sparse: bool, bias: bool, coding: str, index_bits: int):
        if not (isinstance(bits, int) and 1 <= bits <= 8):
            raise ValueError(f"bits={bits!r} must be an integer in 1..8")
        if coding not in CODINGS:
            raise ValueError(f"coding={coding!r} must be one of {CODINGS}")
        self.bits, self.sparse, self.coding, self.index_bits = bits, bool(sparse), coding, int(index_bits)
        self.centroids = nn.Parameter(torch.zeros(1 << bits))
        self.register_buffer("indices", torch.zeros(shape, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self.path, self._weight, self._csr = "dense", None, None

    def table(self) -> torch.Tensor:
        if self.sparse:  # slot 0 is the pruned zero: a constant, never trained
            return torch.cat([torch.zeros(1, dtype=self.centroids.dtype), self.centroids[1:]])
        return self.centroids

    def shared_weight(self) -> torch.Tensor:
        if self._weight is not None and not self.training:
            return self._weight
        shadow = self._parameters.get("shadow")
        if shadow is not None and self.training:  # inside moving_indices: re-assign, straight-through to V
            with torch.no_grad():
                self.indices.copy_(nearest_index(shadow.detach(), self.centroids.detach()).to(torch.uint8))
            return self.table()[self.indices.long()] + (shadow - shadow.detach())
        return self.table()[self.indices.long()]

    @torch.no_grad()
    def assign(self, weight: torch.Tensor, mask: torch.Tensor | None, seed: int = 0) -> None:
        """k-means the (unmasked) weights into the codebook; masked weights get index 0."""
        w = weight.detach().float().cpu().numpy()
        keep = np.ones_like(w, dtype=bool) if mask is None else mask.cpu().numpy().astype(bool)
        clusters = (1 << self.bits) - (1 if self.sparse else 0)
        centroids = kmeans_1d(w[keep], clusters, seed)
        index = nearest(w[keep], centroids) + (1 if self.sparse else 0)
        indices = np.zeros(w.shape, dtype=np.uint8)
        indices[keep] = index
        table = np.concatenate([[0.0], centroids]) if self.sparse else centroids
        self.centroids.copy_(torch.from_numpy(table.astype(np.float32)))
        self.indices.copy_(torch.from_numpy(indices))

    @classmethod
    def from_float(cls, layer: nn.Module, bits: int = 8, coding: str = "plain", seed: int = 0) -> "_SharedMixin":
        """The shared twin of a ``Conv2d``/``Linear`` (or pruned one: index 0 then stands for its zeros)."""
        mask = layer.mask if isinstance(layer, MaskedLayer) else None
        sparse = mask is not None and not bool(mask.all())
        base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        shared = cls(**base_config(layer, base), bits=bits, sparse=sparse, coding=coding)
        shared.assign(layer.weight, mask if sparse else None, seed)
        if layer.bias is not None:
            with torch.no_grad():
                shared.bias.copy_(layer.bias)
        return shared.to(layer.weight.device)

    def after_step(self) -> None:
        if self.sparse:
            with torch.no_grad():
                self.centroids[0] = 0.0

    def train(self, mode: bool = True):
        if mode:
            self._weight, self._csr = None, None
        return super().train(mode)

    def freeze(self) -> str:
        """Inference: decode ``C[I]`` once; fc layers take the CSR path where timing shows it wins."""
        self.eval()
        with torch.no_grad():
            self._weight = self.table()[self.indices.long()]
        if isinstance(self, SharedLinear):
            self.path = choose_path(self._weight, None if self.bias is None else self.bias.detach())[0]
            self._csr = CSRWeight(self._weight) if self.path == "csr" else None
        return self.path

    def storage_codecs(self) -> dict:
        if self.coding == "huffman":
            return {"indices": ("huffman", {"sparse": self.sparse, "index_bits": self.index_bits})}
        if self.sparse:
            return {"indices": ("csr", {"index_bits": self.index_bits, "value_bits": self.bits})}
        return {"indices": ("codebook", {"bits": self.bits})}


@register_layer
class SharedConv2d(_SharedMixin):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, bits: int = 8, sparse: bool = False, coding: str = "plain",
                 index_bits: int = CONV_INDEX_BITS):
        super().__init__()
        pair = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v))
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = (pair(kernel_size), pair(stride),
                                                                      pair(padding), pair(dilation))
        self._init_shared((out_channels, in_channels // groups, *self.kernel_size), bits, sparse, bias, coding,
                          index_bits)

    def layer_config(self) -> dict:
        return {**conv_config(self), "bits": self.bits, "sparse": self.sparse, "coding": self.coding,
                "index_bits": self.index_bits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.shared_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


@register_layer
class SharedLinear(_SharedMixin):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 5,
                 sparse: bool = False, coding: str = "plain", index_bits: int = FC_INDEX_BITS):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_shared((out_features, in_features), bits, sparse, bias, coding, index_bits)

    def layer_config(self) -> dict:
        return {**linear_config(self), "bits": self.bits, "sparse": self.sparse, "coding": self.coding, "index_bits": self.index_bits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training and self._csr is not None and x.dim() == 2
                and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())):
            return csr_linear(x, self._csr, self.bias)
        return F.linear(x, self.shared_weight(), self.bias)


@contextmanager
def moving_indices(model: nn.Module, start: nn.Module | None = None):
    """Within the block, training moves the k-means indices of every dense shared layer of ``model`` (module
    docstring: float shadow ``V``, ``I = argmin_k |V - C_k|``, straight-through gradient). ``start``: the float
    model the layers were clustered from; a shadow starts from its weight at the same path and shape, else from
    ``C[I]``. Pruned (sparse) layers keep their indices. Yields the layers that move; on exit their shadows are
    dropped (the state dict has its usual keys again)."""
    moving = [(path, layer) for path, layer in model.named_modules()
              if isinstance(layer, _SharedMixin) and not layer.sparse]
    floats = dict(start.named_modules()) if start is not None else {}
    for path, layer in moving:
        weight = getattr(floats.get(path), "weight", None)
        with torch.no_grad():
            initial = (weight.detach().float().clone() if isinstance(weight, torch.Tensor)
                       and weight.shape == layer.indices.shape else layer.table()[layer.indices.long()].detach())
        layer.register_parameter("shadow", nn.Parameter(initial.to(layer.centroids.device)))
    try:
        yield [path for path, _ in moving]
    finally:
        for _, layer in moving:
            del layer.shadow


def share_layer(layer: nn.Module, bits: int, coding: str, seed: int = 0) -> _SharedMixin:
    """Replace a Conv2d/Linear (or pruned one) by its weight-shared twin."""
    return (SharedConv2d if isinstance(layer, nn.Conv2d) else SharedLinear).from_float(layer, bits, coding, seed)


def kmeans(model: nn.Module, conv_bits: int = 8, fc_bits: int = 5, layers="all", coding: str = "plain",
           seed: int = 0, exclude=()) -> nn.Module:
    """Per-layer k-means weight sharing (module docstring); ``coding='huffman'`` Huffman-codes the indices."""
    for name, value in (("conv_bits", conv_bits), ("fc_bits", fc_bits)):
        if not (isinstance(value, int) and 1 <= value <= 8):
            raise ValueError(f"{name}={value!r} must be an integer in 1..8")
    if coding not in CODINGS:
        raise ValueError(f"coding={coding!r} must be one of {CODINGS}")
    def convert(_: str, layer: nn.Module) -> _SharedMixin:
        return share_layer(layer, conv_bits if isinstance(layer, nn.Conv2d) else fc_bits, coding, seed)

    return surgery.replace_layers(model, convert, layers, exclude=exclude)


def file_bytes(model: nn.Module) -> int:
    """Bytes of ``model`` saved as a ``.ccz`` (written to a temporary file)."""
    from cnncompress.storage import save
    with tempfile.TemporaryDirectory() as folder:
        return save(model, Path(folder) / "stage.ccz").stat().st_size


def han_sparsity(model: nn.Module, conv_sparsity: float, fc_sparsity: float, first_conv_sparsity: float,
                 last_fc_sparsity: float, layers="all", exclude=()) -> dict[str, float]:
    """Han's per-layer targets for the chosen layers (the network's first conv and last fc have their own)."""
    every = select_layers(model, "all")
    convs = [p for p, m in every.items() if isinstance(m, nn.Conv2d)]
    fcs = [p for p, m in every.items() if isinstance(m, nn.Linear)]
    targets = {p: conv_sparsity for p in convs} | {p: fc_sparsity for p in fcs}
    if convs:
        targets[convs[0]] = first_conv_sparsity
    if fcs:
        targets[fcs[-1]] = last_fc_sparsity
    chosen = select_layers(model, layers, exclude)
    return {p: t for p, t in targets.items() if p in chosen}


def deep_compression(model: nn.Module, conv_sparsity: float = 0.65, fc_sparsity: float = 0.96,
                     first_conv_sparsity: float = 0.42, last_fc_sparsity: float = 0.77, conv_bits: int = 8,
                     fc_bits: int = 5, per_layer: dict | None = None, measure_stages: bool = True,
                     seed: int = 0, layers="all", exclude=()) -> nn.Module:
    """Han et al. 2016: prune -> k-means share -> Huffman; bytes per stage in ``model.compression_stages``."""
    targets = han_sparsity(model, conv_sparsity, fc_sparsity, first_conv_sparsity, last_fc_sparsity, layers,
                           exclude)
    targets.update(per_layer or {})
    stages = [{"stage": "fp32", "bytes": file_bytes(model)}] if measure_stages else []
    model = prune_magnitude(model, scope="layer", layers=sorted(targets), per_layer=targets)
    if measure_stages:
        stages.append({"stage": "pruned (csr, fp32 values)", "bytes": file_bytes(model)})
    model = kmeans(model, conv_bits, fc_bits, layers=sorted(targets), coding="plain", seed=seed)
    if measure_stages:
        stages.append({"stage": f"+ weight sharing ({conv_bits}-bit conv, {fc_bits}-bit fc)",
                       "bytes": file_bytes(model)})
    for module in model.modules():  # with Huffman, long index steps cost little: 8-bit steps avoid padding zeros
        if isinstance(module, _SharedMixin):
            module.coding, module.index_bits = "huffman", HUFFMAN_INDEX_BITS
    if measure_stages:
        stages.append({"stage": "+ huffman", "bytes": file_bytes(model)})
        for stage in stages:
            stage["ratio"] = stages[0]["bytes"] / stage["bytes"]
    model.compression_stages = stages
    return model


def share_to_inference(model: nn.Module) -> nn.Module:
    """Decode every shared layer once; each fc layer keeps dense or CSR by timing (``metadata["sparse_paths"]``)."""
    paths = {p: m.freeze() for p, m in model.named_modules() if isinstance(m, _SharedMixin)}
    fc_paths = {p: v for p, v in paths.items() if isinstance(model.get_submodule(p), SharedLinear)}
    model.metadata = {**getattr(model, "metadata", {}), "sparse_paths": fc_paths}
    return model


register(MethodInfo(
    name="kmeans", paper="Gong et al. 2014; Han et al. 2016 (survey §2.4)", size="real", speed="none",
    family="deep compression",
    handles="every Conv2d/Linear weight; any structure",
    description="per-layer k-means weight sharing (linear init, 2^b clusters), centroids fine-tuned with summed "
                "gradients; b-bit indices + fp32 centroids in the file"),
    kmeans, to_inference=share_to_inference)
register(MethodInfo(
    name="deep-compression", paper="Han et al. 2016, Deep Compression (survey §2.4)", size="real", speed="real",
    family="deep compression",
    handles="every Conv2d/Linear weight (prune, share, Huffman); any structure",
    description="prune (Han's VGG ratios) -> k-means sharing (8-bit conv, 5-bit fc) -> Huffman; fc layers use "
                "torch CSR at inference where timing shows it wins; bytes per stage in model.compression_stages",
    bench=({"model": "vgg_s", "config": {"conv_sparsity": 0.8, "conv_bits": 6}, "finetune": 1,
            "label": "deep compression (conv 80%/6b)"},)),
    deep_compression, to_inference=share_to_inference)
