"""Tensor decompositions of trained layers: CP (Lebedev 2014), Tucker-2 (Kim 2015), Tensor-Train (Novikov 2015).

As surveyed by Rassadin & Savchenko 2017 (§2-3): they CP-decomposed SqueezeNet-1.1's last two convolutions at
rank 192 (-23.5% parameters, 89.14% -> 87.5%) and got a 1.5x *slower* network.  Here every decomposed layer is
its own class (``decompose_layers``: ``CPConv2d``, ``TuckerConv2d``, ``TTLinear``) made of ordinary
``Conv2d``/``Linear`` layers, so it trains, saves to ``.ccz`` and exports to ONNX without special kernels.
Factors come from **tensorly** (numpy backend):

* ``cp``  - ``parafac`` (CP-ALS): K[t,s,i,j] ~ sum_r Kt[t,r] Ks[s,r] Ky[i,r] Kx[j,r] gives
  1x1 (Cin->R) -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1 (R->Cout, + original bias).
  ``to_inference`` merges the two depthwise convs into one kh x kw depthwise conv with kernel Ky[:,r] Kx[:,r]^T
  (exactly the same function, one layer fewer: this is what makes it faster on CPU).
* ``tucker`` - ``partial_tucker`` on modes (Cout, Cin): K ~ G x_0 U_out x_1 U_in gives
  1x1 (Cin->R_in, U_in^T) -> kh x kw core G (R_in->R_out, original stride/padding/dilation) -> 1x1 (U_out, bias).
* ``tt`` - ``tensor_train_matrix`` on W (out x in) reshaped to (m_1..m_d, n_1..n_d):
  W[(m),(n)] = G_1[m_1,n_1] ... G_d[m_d,n_d] with cores G_k of shape (r_{k-1}, m_k, n_k, r_k), in ``TTLinear``.

Rank: int, fraction of the full rank or ``"auto"`` (explained energy, see ``decompose_rank``). ``layers`` follows
the toolkit's one rule (``surgery.select``: paths, last names, globs, "conv"/"linear"); it has no default here,
since decomposing every layer is rarely what anyone wants.
"""
from __future__ import annotations

import torch
from torch import nn

from cnncompress import surgery
from cnncompress.methods import decompose_rank as ranks
from cnncompress.methods.decompose_layers import DECOMPOSED, CPConv2d, MergedCPConv2d, TTLinear, TuckerConv2d, _weight
from cnncompress.methods.registry import MethodInfo, register

PAPERS = {
    "cp": "Lebedev et al. 2014, Speeding-up CNNs using fine-tuned CP-decomposition (arXiv:1412.6553)",
    "tucker": "Kim et al. 2015, Compression of deep CNNs for fast and low power mobile applications (arXiv:1511.06530)",
    "tt": "Novikov et al. 2015, Tensorizing neural networks (arXiv:1509.06569)",
}


# ----------------------------------------------------------------------------------------------- helpers
def _layers(model: nn.Module, layers, kind: type) -> list[tuple[str, nn.Module]]:
    """The ``kind`` layers chosen by ``layers`` (required: a decomposition of every layer is never a default)."""
    if layers is None or (isinstance(layers, (list, tuple)) and not layers):
        raise ValueError(f"layers must be a non-empty list of the {kind.__name__} layers to decompose, got "
                         f"{layers!r}")
    return surgery.select(model, layers, types=(kind,), where=lambda _, m: not isinstance(m, DECOMPOSED))


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(f"{name}: grouped/depthwise convolutions (groups={conv.groups}) are not decomposed")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"{name}: only explicit zero padding is supported (got {conv.padding!r}, "
                         f"{conv.padding_mode})")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cp_conv(conv: nn.Conv2d, rank: int, n_iter_max: int = 100, seed: int = 0) -> CPConv2d:
    """``CPConv2d.from_float``: Lebedev et al.'s 1x1 -> kh x 1 dw -> 1 x kw dw -> 1x1 from ``parafac(W, rank)``."""
    return CPConv2d.from_float(conv, rank, n_iter_max=n_iter_max, seed=seed)


def merge_cp(layer: CPConv2d) -> MergedCPConv2d:
    """``layer.merged()``: the two depthwise convs as one kh x kw depthwise conv (exact)."""
    return layer.merged()


def tucker2_conv(conv: nn.Conv2d, rank_out: int, rank_in: int, n_iter_max: int = 100) -> TuckerConv2d:
    """``TuckerConv2d.from_float``: Kim et al.'s 1x1 -> kh x kw core -> 1x1 from ``partial_tucker``."""
    return TuckerConv2d.from_float(conv, rank_out, rank_in, n_iter_max=n_iter_max)


def tt_linear(linear: nn.Linear, rank, cores: int = 2, energy: float = 0.9, in_shape: list[int] | None = None,
              out_shape: list[int] | None = None) -> TTLinear:
    """``TTLinear.from_float``: TT-SVD of the weight reshaped to (m_1..m_d, n_1..n_d)."""
    return TTLinear.from_float(linear, rank, cores=cores, energy=energy, in_shape=in_shape, out_shape=out_shape)


# ----------------------------------------------------------------------------------------------- methods
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
        model = surgery.replace(model, name, cp_conv(conv, r, n_iter_max=n_iter_max, seed=seed))
    return model


def cp_to_inference(model: nn.Module) -> nn.Module:
    """Every ``CPConv2d`` becomes its merged form (one depthwise conv instead of two)."""
    return surgery.replace_type(model, CPConv2d, CPConv2d.merged)


def apply_tucker(model: nn.Module, layers, rank="auto", energy: float = 0.9, n_iter_max: int = 100) -> nn.Module:
    """Replace each conv in ``layers`` by its Tucker-2 layer; ``rank`` may also be ``[rank_out, rank_in]``. With
    ``rank="auto"`` a conv whose Tucker-2 form would hold as many weights as it does is kept (listed in
    ``metadata["tucker_kept"]``); none shrinking is a ``ValueError``."""
    ranks.check_rank(rank)
    energy = ranks.check_energy(energy)
    replaced, kept = 0, []
    for name, conv in _layers(model, layers, nn.Conv2d):
        _check_conv(name, conv)
        r_out, r_in = ranks.tucker2_ranks(_weight(conv), rank, energy)
        kh, kw = conv.kernel_size
        tucker = r_in * conv.in_channels + r_out * r_in * kh * kw + conv.out_channels * r_out
        if rank == "auto" and tucker >= conv.weight.numel():  # the automatic rank would not shrink it: kept as is
            kept.append(name)
            continue
        model = surgery.replace(model, name, tucker2_conv(conv, r_out, r_in, n_iter_max=n_iter_max))
        replaced += 1
    if not replaced:
        raise ValueError(f"no chosen conv gets smaller at the automatic Tucker-2 ranks (kept: {', '.join(kept)})")
    if kept:
        model.metadata = {**getattr(model, "metadata", {}), "tucker_kept": kept}
    return model


def apply_tt(model: nn.Module, layers, rank="auto", energy: float = 0.9, cores: int = 2) -> nn.Module:
    """Replace each Linear in ``layers`` by a ``TTLinear`` with ``cores`` TT cores (shapes: balanced factors)."""
    ranks.check_rank(rank)
    energy = ranks.check_energy(energy)
    if isinstance(cores, bool) or not isinstance(cores, int) or not 2 <= cores <= 8:
        raise ValueError(f"cores must be an int in 2..8, got {cores!r}")
    for name, linear in _layers(model, layers, nn.Linear):
        model = surgery.replace(model, name, tt_linear(linear, rank, cores=cores, energy=energy))
    return model


# ----------------------------------------------------------------------------------------------- reference
def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The dense weight a decomposed layer represents (reference twin of its forward; for reconstruction errors)."""
    if not isinstance(layer, DECOMPOSED):
        raise ValueError(f"not a decomposed layer: {type(layer).__name__}")
    return layer.dense_weight()


def reconstruction_error(original: nn.Module, layer: nn.Module) -> float:
    """||W - W_hat||_F / ||W||_F between an original Conv2d/Linear and its decomposed replacement."""
    with torch.no_grad():
        weight = original.weight.detach()
        return float((dense_weight(layer).reshape(weight.shape) - weight).norm() / weight.norm())


# ----------------------------------------------------------------------------------------------- registry
register(MethodInfo(
    "cp", PAPERS["cp"], size="real", speed="real", family="decompose",
    handles="Conv2d with groups=1 and a kxk kernel, k>1 (a 1x1 or depthwise conv is refused by name)",
    description="CP-ALS (tensorly parafac) per conv: 1x1 -> kx1 dw -> 1xk dw -> 1x1; inference merges the two "
                "depthwise convs (exact)",
    bench=({"model": "squeezenet1_1", "config": {"layers": ["features.fire8.expand3x3", "features.fire9.expand3x3"],
                                                  "rank": 192, "n_iter_max": 10},
            "finetune": 1, "label": "cp r192 fire8-9 (paper)"},)),
    apply_cp, to_inference=cp_to_inference)

register(MethodInfo(
    "tucker", PAPERS["tucker"], size="real", speed="real", family="decompose",
    handles="Conv2d with groups=1 and a kxk kernel, k>1",
    description="Tucker-2 (tensorly partial_tucker) per conv: 1x1 -> kxk core -> 1x1"),
    apply_tucker)

register(MethodInfo(
    "tt", PAPERS["tt"], size="real", speed="real", family="decompose",
    handles="Linear layers only (a network without one is refused)",
    description="Tensor-Train matrix (tensorly tensor_train_matrix) for Linear layers, 2 cores by default"),
    apply_tt)
