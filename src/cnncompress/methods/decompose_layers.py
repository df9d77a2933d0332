"""The layers of the tensor decompositions, each its own class built by ``from_float`` (like TensorLy-Torch's
``FactorizedConv.from_conv(conv, rank, factorization=...)``), factors from **tensorly** (numpy backend):

* ``CPConv2d`` (Lebedev et al. 2014) - ``parafac`` (CP-ALS): K[t,s,i,j] ~ sum_r Kt[t,r] Ks[s,r] Ky[i,r] Kx[j,r]
  gives 1x1 (Cin->R) -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1 (R->Cout, + original bias).
  ``merged()`` is its inference form ``MergedCPConv2d``: the two depthwise convs become one kh x kw depthwise conv
  with kernel Ky[:,r] Kx[:,r]^T (exactly the same function, one layer fewer: faster on CPU).
* ``TuckerConv2d`` (Kim et al. 2015) - ``partial_tucker`` on modes (Cout, Cin): K ~ G x_0 U_out x_1 U_in gives
  1x1 (Cin->R_in, U_in^T) -> kh x kw core G (R_in->R_out, original stride/padding/dilation) -> 1x1 (U_out, bias).
* ``TTLinear`` (Novikov et al. 2015) - ``tensor_train_matrix`` on W (out x in) reshaped to (m_1..m_d, n_1..n_d):
  W[(m),(n)] = G_1[m_1,n_1] ... G_d[m_d,n_d] with cores G_k of shape (r_{k-1}, m_k, n_k, r_k).

The conv layers are ``nn.Sequential`` of ordinary convs (they train, save and export to ONNX with no special
kernel); each layer's ``dense_weight()`` is the pure reference twin of its forward (the weight it represents).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker, tensor_train_matrix
from torch import nn

from cnncompress.layers import CompressedLayer, register_layer
from cnncompress.methods import decompose_rank as ranks


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


@register_layer
class CPConv2d(CompressedLayer, nn.Sequential):
    """Lebedev et al.'s CP layer: 1x1 -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1 (children ``0``..``3``)."""

    def layer_config(self) -> dict:
        return {}

    @classmethod
    def from_float(cls, conv: nn.Conv2d, rank: int = 8, n_iter_max: int = 100, seed: int = 0) -> "CPConv2d":
        """CP-ALS of ``conv.weight`` at ``rank``. Working memory: the weight, its unfoldings and one Khatri-Rao
        product of (Cin*kh*kw) x R (no larger than the weight while R <= Cout)."""
        weight = _weight(conv)
        cout, cin, kh, kw = weight.shape
        with warnings.catch_warnings(), tl.backend_context("numpy"):
            warnings.simplefilter("ignore", UserWarning)  # "n_eigenvecs larger than ..." for R > a mode size
            weights, (k_t, k_s, k_y, k_x) = parafac(weight, rank, n_iter_max=n_iter_max, init="svd",
                                                    random_state=seed, tol=1e-7)
        k_t = k_t * weights[None, :]
        (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
        first = nn.Conv2d(cin, rank, 1, bias=False)
        vertical = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank,
                             bias=False)
        horizontal = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                               groups=rank, bias=False)
        last = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None)
        like = conv.weight
        first.weight = _tensor(k_s.T[:, :, None, None], like)
        vertical.weight = _tensor(k_y.T[:, None, :, None], like)
        horizontal.weight = _tensor(k_x.T[:, None, None, :], like)
        last.weight = _tensor(k_t[:, :, None, None], like)
        _bias(conv, last)
        return cls(first, vertical, horizontal, last)

    def merged(self) -> "MergedCPConv2d":
        """Inference form: the kh x 1 and 1 x kw depthwise convs become one kh x kw depthwise conv with kernel
        v_r u_r^T (exact: a separable filter is the outer product of its two 1-D filters)."""
        first, vertical, horizontal, last = self
        rank = vertical.out_channels
        merged = nn.Conv2d(rank, rank, (vertical.kernel_size[0], horizontal.kernel_size[1]),
                           stride=(vertical.stride[0], horizontal.stride[1]),
                           padding=(vertical.padding[0], horizontal.padding[1]),
                           dilation=(vertical.dilation[0], horizontal.dilation[1]), groups=rank, bias=False)
        with torch.no_grad():
            merged.weight.copy_(vertical.weight * horizontal.weight)  # (R,1,kh,1) * (R,1,1,kw) -> (R,1,kh,kw)
        return MergedCPConv2d(first, merged, last)

    def dense_weight(self) -> torch.Tensor:
        """W = sum_r last[:,r] first[r,:] v_r u_r^T."""
        first, vertical, horizontal, last = (m.weight for m in self)
        return torch.einsum("tr,rs,ri,rj->tsij", last[:, :, 0, 0], first[:, :, 0, 0], vertical[:, 0, :, 0],
                            horizontal[:, 0, 0, :])


@register_layer
class MergedCPConv2d(CompressedLayer, nn.Sequential):
    """Inference form of ``CPConv2d``: 1x1 -> kh x kw depthwise -> 1x1."""

    def layer_config(self) -> dict:
        return {}

    @classmethod
    def from_float(cls, layer: CPConv2d) -> "MergedCPConv2d":
        return layer.merged()

    def dense_weight(self) -> torch.Tensor:
        """W = sum_r last[:,r] first[r,:] D_r."""
        first, middle, last = (m.weight for m in self)
        return torch.einsum("tr,rij,rs->tsij", last[:, :, 0, 0], middle[:, 0], first[:, :, 0, 0])


@register_layer
class TuckerConv2d(CompressedLayer, nn.Sequential):
    """Kim et al.'s Tucker-2 layer: 1x1 (U_in^T) -> kh x kw core -> 1x1 (U_out) (children ``0``..``2``)."""

    def layer_config(self) -> dict:
        return {}

    @classmethod
    def from_float(cls, conv: nn.Conv2d, rank_out: int = 8, rank_in: int = 8,
                   n_iter_max: int = 100) -> "TuckerConv2d":
        """K[t,s,i,j] ~ sum_{a,b} U_out[t,a] G[a,b,i,j] U_in[s,b] (``partial_tucker``; HOOI on the unfoldings)."""
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
        return cls(first, middle, last)

    def dense_weight(self) -> torch.Tensor:
        """W = U_out G U_in^T (mode products)."""
        first, middle, last = (m.weight for m in self)
        return torch.einsum("ta,abij,bs->tsij", last[:, :, 0, 0], middle, first[:, :, 0, 0])


@register_layer
class TTLinear(CompressedLayer, nn.Module):
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
    def from_float(cls, linear: nn.Linear, rank="auto", cores: int = 2, energy: float = 0.9,
                   in_shape: list[int] | None = None, out_shape: list[int] | None = None) -> "TTLinear":
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
        return cls.from_tt_cores(list(tt.factors), linear.bias, linear.weight)

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

    def dense_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix by contracting the cores directly (reference twin of ``forward``)."""
        full = self.cores[0][0]  # (m_1, n_1, r_1)
        for core in self.cores[1:]:
            full = torch.einsum("mnr,rpqs->mpnqs", full, core)
            full = full.reshape(full.shape[0] * full.shape[1], full.shape[2] * full.shape[3], full.shape[4])
        return full[:, :, 0]

    full_weight = dense_weight

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


DECOMPOSED = (CPConv2d, MergedCPConv2d, TuckerConv2d, TTLinear)
