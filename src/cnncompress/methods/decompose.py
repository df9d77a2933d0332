"""Tensor decompositions of trained layers: CP (Lebedev 2014), Tucker-2 (Kim 2015), Tensor-Train (Novikov 2015).

As surveyed by Rassadin & Savchenko 2017 (§2-3): they CP-decomposed SqueezeNet-1.1's last two convolutions at
rank 192 (-23.5% parameters, 89.14% -> 87.5%) and got a 1.5x *slower* network.  Here every decomposed layer is a
sequence of ordinary ``Conv2d``/``Linear`` layers (or the small registered ``TTLinear``), so it trains, saves to
``.ccz`` and exports to ONNX without special kernels.  Factors come from **tensorly** (numpy backend):

* ``cp``  - ``parafac`` (CP-ALS): K[t,s,i,j] ~ sum_r Kt[t,r] Ks[s,r] Ky[i,r] Kx[j,r] gives
  1x1 (Cin->R) -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1 (R->Cout, + original bias).
  ``to_inference`` merges the two depthwise convs into one kh x kw depthwise conv with kernel Ky[:,r] Kx[:,r]^T
  (exactly the same function, one layer fewer: this is what makes it faster on CPU).
* ``tucker`` - ``partial_tucker`` on modes (Cout, Cin): K ~ G x_0 U_out x_1 U_in gives
  1x1 (Cin->R_in, U_in^T) -> kh x kw core G (R_in->R_out, original stride/padding/dilation) -> 1x1 (U_out, bias).
* ``tt`` - ``tensor_train_matrix`` on W (out x in) reshaped to (m_1..m_d, n_1..n_d):
  W[(m),(n)] = G_1[m_1,n_1] ... G_d[m_d,n_d] with cores G_k of shape (r_{k-1}, m_k, n_k, r_k), in ``TTLinear``.

Rank: int, fraction of the full rank or ``"auto"`` (explained energy, see ``decompose_rank``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker, tensor_train_matrix
from torch import nn

from ..storage.architecture import register_layer, set_submodule
from . import decompose_rank as ranks
from .registry import MethodInfo, register

PAPERS = {
    "cp": "Lebedev et al. 2014, Speeding-up CNNs using fine-tuned CP-decomposition (arXiv:1412.6553)",
    "tucker": "Kim et al. 2015, Compression of deep CNNs for fast and low power mobile applications (arXiv:1511.06530)",
    "tt": "Novikov et al. 2015, Tensorizing neural networks (arXiv:1509.06569)",
}


# ----------------------------------------------------------------------------------------------- helpers
def _layers(model: nn.Module, layers, kind: type) -> list[tuple[str, nn.Module]]:
    """Resolve dotted names to modules of type ``kind``; ValueError for empty, unknown or wrong-type names."""
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    named = dict(model.named_modules())
    resolved = []
    for name in layers:
        if name not in named:
            candidates = [n for n, m in named.items() if isinstance(m, kind)]
            raise ValueError(f"no layer {name!r}; {kind.__name__} layers: {', '.join(candidates)}")
        if not isinstance(named[name], kind):
            raise ValueError(f"layer {name!r} is a {type(named[name]).__name__}, not a {kind.__name__}")
        resolved.append((name, named[name]))
    return resolved


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(f"{name}: grouped/depthwise convolutions (groups={conv.groups}) are not decomposed")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"{name}: only explicit zero padding is supported (got {conv.padding!r}, "
                         f"{conv.padding_mode})")


def _weight(module: nn.Module) -> np.ndarray:
    """The weight as a float32 numpy array (a view when it already is one: no copy larger than the weight)."""
    return module.weight.detach().to(torch.float32).cpu().numpy()


def _as_torch(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A copy with canonical strides (numpy may give size-1 axes stride 0, which byte views reject)."""
    out = torch.empty(array.shape, dtype=like.dtype, device=like.device)
    return out.copy_(torch.from_numpy(np.asarray(array)))


def _tensor(array: np.ndarray, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(_as_torch(array, like))


def _bias(conv: nn.Module, target: nn.Module) -> None:
    if conv.bias is not None:
        target.bias = nn.Parameter(conv.bias.detach().clone())


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- CP
def cp_conv(conv: nn.Conv2d, rank: int, n_iter_max: int = 100, seed: int = 0) -> nn.Sequential:
    """Lebedev et al.'s CP layer: 1x1 -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1 from ``parafac(W, rank)``.

    Working memory of CP-ALS: the weight, its unfoldings and one Khatri-Rao product of (Cin*kh*kw) x R (no larger
    than the weight while R <= Cout).
    """
    weight = _weight(conv)
    cout, cin, kh, kw = weight.shape
    with warnings.catch_warnings(), tl.backend_context("numpy"):
        warnings.simplefilter("ignore", UserWarning)  # "n_eigenvecs larger than ..." for R > a mode size
        weights, (k_t, k_s, k_y, k_x) = parafac(weight, rank, n_iter_max=n_iter_max, init="svd",
                                                random_state=seed, tol=1e-7)
    k_t = k_t * weights[None, :]
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    first = nn.Conv2d(cin, rank, 1, bias=False)
    vertical = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank,
                         bias=False)
    horizontal = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank,
                           bias=False)
    last = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None)
    like = conv.weight
    first.weight = _tensor(k_s.T[:, :, None, None], like)
    vertical.weight = _tensor(k_y.T[:, None, :, None], like)
    horizontal.weight = _tensor(k_x.T[:, None, None, :], like)
    last.weight = _tensor(k_t[:, :, None, None], like)
    _bias(conv, last)
    return nn.Sequential(first, vertical, horizontal, last)


def merge_cp(layer: nn.Sequential) -> nn.Sequential:
    """Inference form of a CP layer: the kh x 1 and 1 x kw depthwise convs become one kh x kw depthwise conv with
    kernel v_r u_r^T (exact: a separable filter is the outer product of its two 1-D filters)."""
    first, vertical, horizontal, last = layer
    rank = vertical.out_channels
    merged = nn.Conv2d(rank, rank, (vertical.kernel_size[0], horizontal.kernel_size[1]),
                       stride=(vertical.stride[0], horizontal.stride[1]),
                       padding=(vertical.padding[0], horizontal.padding[1]),
                       dilation=(vertical.dilation[0], horizontal.dilation[1]), groups=rank, bias=False)
    with torch.no_grad():
        merged.weight.copy_(vertical.weight * horizontal.weight)  # (R,1,kh,1) * (R,1,1,kw) -> (R,1,kh,kw)
    return nn.Sequential(first, merged, last)


def _is_cp(module: nn.Module) -> bool:
    return (isinstance(module, nn.Sequential) and len(module) == 4
            and all(isinstance(m, nn.Conv2d) for m in module)
            and module[1].groups == module[1].out_channels > 1 and module[1].kernel_size[1] == 1
            and module[2].groups == module[2].out_channels and module[2].kernel_size[0] == 1)


def apply_cp(model: nn.Module, layers, rank="auto", energy: float = 0.9, n_iter_max: int = 100,
             seed: int = 0) -> nn.Module:
    """Replace each conv in ``layers`` by its rank-``rank`` CP layer (Lebedev et al. 2014)."""
    ranks.check_rank(rank)
    energy = ranks.check_energy(energy)
    if isinstance(n_iter_max, bool) or not isinstance(n_iter_max, int) or n_iter_max < 1:
        raise ValueError(f"n_iter_max must be a positive int, got {n_iter_max!r}")
    for name, conv in _layers(model, layers, nn.Conv2d):
        _check_conv(name, conv)
        r = ranks.cp_rank(_weight(conv), rank, energy)
        set_submodule(model, name, cp_conv(conv, r, n_iter_max=n_iter_max, seed=seed))
    return model


def cp_to_inference(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if _is_cp(module):
            set_submodule(model, name, merge_cp(module))
    return model


# ----------------------------------------------------------------------------------------------- Tucker-2
def tucker2_conv(conv: nn.Conv2d, rank_out: int, rank_in: int, n_iter_max: int = 100) -> nn.Sequential:
    """Kim et al.'s Tucker-2 layer: 1x1 (U_in^T) -> kh x kw core -> 1x1 (U_out) from ``partial_tucker``.

    K[t,s,i,j] ~ sum_{a,b} U_out[t,a] G[a,b,i,j] U_in[s,b]; HOOI works on the weight's unfoldings only.
    """
    weight = _weight(conv)
    cout, cin, kh, kw = weight.shape
    with tl.backend_context("numpy"):
        (core, (u_out, u_in)), _ = partial_tucker(weight, rank=[rank_out, rank_in], modes=[0, 1],
                                                  n_iter_max=n_iter_max, init="svd")
    first = nn.Conv2d(cin, rank_in, 1, bias=False)
    middle = nn.Conv2d(rank_in, rank_out, (kh, kw), stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=False)
    last = nn.Conv2d(rank_out, cout, 1, bias=conv.bias is not None)
    like = conv.weight
    first.weight = _tensor(u_in.T[:, :, None, None], like)
    middle.weight = _tensor(core, like)
    last.weight = _tensor(u_out[:, :, None, None], like)
    _bias(conv, last)
    return nn.Sequential(first, middle, last)


def apply_tucker(model: nn.Module, layers, rank="auto", energy: float = 0.9, n_iter_max: int = 100) -> nn.Module:
    """Replace each conv in ``layers`` by its Tucker-2 layer; ``rank`` may also be ``[rank_out, rank_in]``."""
    ranks.check_rank(rank)
    energy = ranks.check_energy(energy)
    for name, conv in _layers(model, layers, nn.Conv2d):
        _check_conv(name, conv)
        r_out, r_in = ranks.tucker2_ranks(_weight(conv), rank, energy)
        set_submodule(model, name, tucker2_conv(conv, r_out, r_in, n_iter_max=n_iter_max))
    return model


# ----------------------------------------------------------------------------------------------- Tensor-Train
class TTLinear(nn.Module):
    """y = W x + b with W (prod m_k x prod n_k) in TT-matrix format (Novikov et al. 2015).

    ``core{k}`` is the TT core G_k[r_{k-1}, m_k, n_k, r_k] (r_0 = r_d = 1).  Forward, from the last core to the
    first, with x viewed as (B, n_1..n_d) and no transposes (every reshape is a view):
    z = x.reshape(-1, n_d) @ G_d.reshape(r_{d-1} m_d, n_d)^T, then for k = d-1..1
    z = G_k.reshape(r_{k-1} m_k, n_k r_k) @ z.reshape(-1, n_k r_k, m_{k+1}..m_d)  (broadcast matmul);
    d matmuls of sum_k r_{k-1} r_k m_k n_k (prod_{j<k} n_j)(prod_{j>k} m_j) multiply-adds per sample instead of M*N.
    """

    def __init__(self, in_shape: list[int], out_shape: list[int], ranks: list[int], bias: bool = True):
        super().__init__()
        if len(in_shape) != len(out_shape) or len(ranks) != len(in_shape) + 1 or ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(f"TTLinear: bad shapes in={in_shape} out={out_shape} ranks={ranks}")
        self.in_shape, self.out_shape, self.ranks = list(in_shape), list(out_shape), list(ranks)
        self.in_features, self.out_features = math.prod(in_shape), math.prod(out_shape)
        for k, (m, n) in enumerate(zip(out_shape, in_shape)):  # plain attributes: no ParameterList child module
            self.register_parameter(f"core{k}", nn.Parameter(torch.zeros(ranks[k], m, n, ranks[k + 1])))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    @property
    def cores(self) -> list[nn.Parameter]:
        return [getattr(self, f"core{k}") for k in range(len(self.in_shape))]

    def layer_config(self) -> dict:
        return {"in_shape": self.in_shape, "out_shape": self.out_shape, "ranks": self.ranks,
                "bias": self.bias is not None}

    @classmethod
    def from_tt_cores(cls, cores: list[np.ndarray], bias: torch.Tensor | None, like: torch.Tensor) -> "TTLinear":
        """From TT-matrix cores G_k (r_{k-1}, m_k, n_k, r_k) as returned by ``tensor_train_matrix``."""
        layer = cls([c.shape[2] for c in cores], [c.shape[1] for c in cores],
                    [c.shape[0] for c in cores] + [1], bias=bias is not None)
        for param, core in zip(layer.cores, cores):
            param.data = _as_torch(core, like)
        if bias is not None:
            layer.bias.data = bias.detach().clone()
        return layer

    def full_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix by contracting the cores directly (reference twin of ``forward``)."""
        full = self.cores[0][0]  # (m_1, n_1, r_1)
        for core in self.cores[1:]:
            full = torch.einsum("mnr,rpqs->mpnqs", full, core)
            full = full.reshape(full.shape[0] * full.shape[1], full.shape[2] * full.shape[3], full.shape[4])
        return full[:, :, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cores, d = self.cores, len(self.in_shape)
        last = cores[-1]
        z = x.reshape(-1, self.in_shape[-1]) @ last.reshape(self.ranks[-2] * self.out_shape[-1], -1).t()
        done = self.out_shape[-1]
        for k in range(d - 2, -1, -1):
            z = z.reshape(-1, self.in_shape[k] * self.ranks[k + 1], done)
            z = cores[k].reshape(self.ranks[k] * self.out_shape[k], -1) @ z
            done *= self.out_shape[k]
        z = z.reshape(x.shape[:-1] + (self.out_features,))  # (*, in) -> (*, out) like nn.Linear
        return z + self.bias if self.bias is not None else z

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, ranks={self.ranks}"


register_layer(TTLinear)


def tt_linear(linear: nn.Linear, rank, cores: int = 2, energy: float = 0.9, in_shape: list[int] | None = None,
              out_shape: list[int] | None = None) -> TTLinear:
    """TT-SVD of ``linear.weight`` reshaped to (m_1..m_d, n_1..n_d); the permuted copy is the weight's size."""
    out_shape = list(out_shape or ranks.balanced_factors(linear.out_features, cores))
    in_shape = list(in_shape or ranks.balanced_factors(linear.in_features, cores))
    if math.prod(out_shape) != linear.out_features or math.prod(in_shape) != linear.in_features \
            or len(in_shape) != len(out_shape):
        raise ValueError(f"tt shapes {out_shape} x {in_shape} do not factor {linear.out_features} x "
                         f"{linear.in_features}")
    d = len(in_shape)
    weight = _weight(linear).reshape(out_shape + in_shape)
    interleaved = weight.transpose([i for k in range(d) for i in (k, d + k)])
    dims = [m * n for m, n in zip(out_shape, in_shape)]
    unfoldable = np.ascontiguousarray(interleaved).reshape(dims) if rank == "auto" else None
    tt_rank = ranks.tt_ranks(unfoldable, dims, rank, energy)
    with tl.backend_context("numpy"):
        tt = tensor_train_matrix(weight, tt_rank)
    return TTLinear.from_tt_cores(list(tt.factors), linear.bias, linear.weight)


def apply_tt(model: nn.Module, layers, rank="auto", energy: float = 0.9, cores: int = 2) -> nn.Module:
    """Replace each Linear in ``layers`` by a ``TTLinear`` with ``cores`` TT cores (shapes: balanced factors)."""
    ranks.check_rank(rank)
    energy = ranks.check_energy(energy)
    if isinstance(cores, bool) or not isinstance(cores, int) or not 2 <= cores <= 8:
        raise ValueError(f"cores must be an int in 2..8, got {cores!r}")
    for name, linear in _layers(model, layers, nn.Linear):
        set_submodule(model, name, tt_linear(linear, rank, cores=cores, energy=energy))
    return model


# ----------------------------------------------------------------------------------------------- reference
def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The dense weight a decomposed layer represents (reference twin of its forward; for reconstruction errors).

    CP (4 layers): W = sum_r last[:,r] first[r,:] v_r u_r^T; CP merged (3 layers, depthwise middle):
    W = sum_r last[:,r] first[r,:] D_r; Tucker-2: W = U_out G U_in^T (mode products); TTLinear: full_weight().
    """
    if isinstance(layer, TTLinear):
        return layer.full_weight()
    if _is_cp(layer):
        first, vertical, horizontal, last = (m.weight for m in layer)
        return torch.einsum("tr,rs,ri,rj->tsij", last[:, :, 0, 0], first[:, :, 0, 0], vertical[:, 0, :, 0],
                            horizontal[:, 0, 0, :])
    if isinstance(layer, nn.Sequential) and len(layer) == 3 and all(isinstance(m, nn.Conv2d) for m in layer):
        first, middle, last = (m.weight for m in layer)
        if layer[1].groups == 1:
            return torch.einsum("ta,abij,bs->tsij", last[:, :, 0, 0], middle, first[:, :, 0, 0])
        if layer[1].groups == layer[1].out_channels:
            return torch.einsum("tr,rij,rs->tsij", last[:, :, 0, 0], middle[:, 0], first[:, :, 0, 0])
    raise ValueError(f"not a decomposed layer: {type(layer).__name__}")


def reconstruction_error(original: nn.Module, layer: nn.Module) -> float:
    """||W - W_hat||_F / ||W||_F between an original Conv2d/Linear and its decomposed replacement."""
    with torch.no_grad():
        weight = original.weight.detach()
        return float((dense_weight(layer).reshape(weight.shape) - weight).norm() / weight.norm())


# ----------------------------------------------------------------------------------------------- registry
register(MethodInfo(
    "cp", PAPERS["cp"], size="real", speed="real",
    description="CP-ALS (tensorly parafac) per conv: 1x1 -> kx1 dw -> 1xk dw -> 1x1; inference merges the two "
                "depthwise convs (exact)",
    bench=({"model": "squeezenet1_1", "config": {"layers": ["features.fire8.expand3x3", "features.fire9.expand3x3"],
                                                  "rank": 192, "n_iter_max": 10},
            "finetune": 1, "label": "cp r192 fire8-9 (paper)"},
           {"model": "squeezenet1_1", "config": {"layers": ["features.fire8.expand3x3", "features.fire9.expand3x3"],
                                                  "rank": 48, "n_iter_max": 50},
            "finetune": 1, "label": "cp r48 fire8-9"})),
    apply_cp, to_inference=cp_to_inference)

register(MethodInfo(
    "tucker", PAPERS["tucker"], size="real", speed="real",
    description="Tucker-2 (tensorly partial_tucker) per conv: 1x1 -> kxk core -> 1x1",
    bench=({"model": "vgg_s", "config": {"layers": ["features.conv3", "features.conv4", "features.conv5"],
                                          "rank": 0.25},
            "finetune": 1, "label": "tucker 1/4 conv3-5"},)),
    apply_tucker)

register(MethodInfo(
    "tt", PAPERS["tt"], size="real", speed="real",
    description="Tensor-Train matrix (tensorly tensor_train_matrix) for Linear layers, 2 cores by default",
    bench=({"model": "vgg_s", "config": {"layers": ["classifier.fc6", "classifier.fc7"], "rank": 8},
            "finetune": 1, "label": "tt r8 fc6-7"},)),
    apply_tt)
