"""The cascade losses of Pimpley & Indulkar (early exits): train an early classifier V1 and the final one V2 together.

With V1, V2 the softmax outputs of the early and the final classifier, the cascade predicts
f(x) = V1 if max(V1) > threshold else V2 (hard mode at test time). Training uses one of:

- ``msdnet_sum_loss``: CE(V1) + CE(V2) (MSDNet's sum);
- ``soft_cascade_loss``: -log P(y) with P = max(V1) V1 + (1 - max(V1)) V2 (a soft gate);
- ``firm_cascade_loss``: the gate f_alpha(max V1) = 1 / (1 + exp(-alpha (p - 0.5))) (Dadkhahi & Marlin), plus a
  penalty on exiting wrong (``penalty``).
``cascade_loss(name, ...)`` picks one by name (``LOSS_NAMES``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_NAMES = ("sum", "soft", "firm", "firm-max")
DEFAULT_ALPHA, DEFAULT_THRESHOLD, DEFAULT_PENALTY = 128.0, 0.6, 0.6


def f_alpha(p: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """f_α(p) = 1 / (1 + exp(−α (p − 0.5))) (Dadkhahi & Marlin's firm cascade, as used by Pimpley & Indulkar)."""
    return torch.sigmoid(alpha * (p - 0.5))


def g_alpha(p: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """g_α(p) = (f_α(p) − f_α(0)) / (f_α(1) − f_α(0)): a logistic step at 0.5 rescaled so g(0) = 0, g(1) = 1."""
    zero = f_alpha(torch.zeros((), dtype=p.dtype, device=p.device), alpha)
    one = f_alpha(torch.ones((), dtype=p.dtype, device=p.device), alpha)
    return (f_alpha(p, alpha) - zero) / (one - zero)


def msdnet_sum_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSDNet loss (Huang et al. 2018; the paper's baseline): CE(V1, y) + CE(V2, y), batch mean."""
    return F.cross_entropy(early_logits, labels) + F.cross_entropy(final_logits, labels)


def soft_cascade_probability(v1: torch.Tensor, v2: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Soft cascade (Raykar et al. 2010), multi-class form of Pimpley & Indulkar: P = V1 ⊙ V2 (element-wise).

    With ``normalize`` P is divided by Σ_i P_i so that it is a distribution (see ``soft_cascade_loss``).
    """
    product = v1 * v2
    return product / product.sum(dim=1, keepdim=True) if normalize else product


def soft_cascade_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                      normalize: bool = True) -> torch.Tensor:
    """Soft cascade loss: CE(P, y) = −log P[y] with P = V1 ⊙ V2 (Pimpley & Indulkar §3.3), batch mean.

    Unnormalised, −log(V1[y]·V2[y]) = CE(V1) + CE(V2) is *identical* to the sum loss, so (default) P is
    normalised: −log(V1[y]V2[y] / Σ_i V1[i]V2[i]) = CE(softmax(log V1 + log V2), y), computed in log space.
    """
    log_p = F.log_softmax(early_logits, 1) + F.log_softmax(final_logits, 1)
    if normalize:
        return F.cross_entropy(log_p, labels)
    return F.nll_loss(log_p, labels)


def firm_cascade_probability(v1: torch.Tensor, v2: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Firm cascade (Dadkhahi & Marlin 2017), multi-class form: P = g(V1)⊙V1 + (1 − g(V1))⊙g(V2)⊙V2."""
    g1 = g_alpha(v1, alpha)
    return g1 * v1 + (1 - g1) * g_alpha(v2, alpha) * v2


def firm_cascade_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY, gate: str = "elementwise",
                      eps: float = 1e-7) -> torch.Tensor:
    """Firm cascade loss: −log(P[y] + ε) + λ (1 − g_α(max_i V1[i])), batch mean (Pimpley & Indulkar §3.3).

    ``gate="elementwise"`` (the paper): P = g(V1)⊙V1 + (1 − g(V1))⊙g(V2)⊙V2, every product element-wise, with
    g_α(p) = (f_α(p) − f_α(0)) / (f_α(1) − f_α(0)), f_α(p) = 1/(1+exp(−α(p−0.5))); defaults α = 128, λ = 0.6.
    ``gate="max"`` (our variant, loss name ``firm-max``): one gate per sample from the test-time exit rule,
    G = g(max_i V1[i]), P = G·V1 + (1 − G)·g(V2)⊙V2; unlike the element-wise form it punishes an early head
    that is confidently wrong (element-wise, P[y] then falls back to V2[y]).
    The paper writes the penalty as λ(1 − g(V1)) with V1 a vector; we apply it to the early head's confidence
    max_i V1[i] (the quantity the test-time gate thresholds), one number per sample, 0 when the early head is
    sure. ε keeps the log finite *and* its gradient alive where P[y] ≈ 0 (a clamp would zero it).
    """
    v1, v2 = F.softmax(early_logits, 1), F.softmax(final_logits, 1)
    confidence_gate = g_alpha(v1.max(dim=1).values, alpha)
    if gate == "elementwise":
        p = firm_cascade_probability(v1, v2, alpha)
    elif gate == "max":
        p = confidence_gate[:, None] * v1 + (1 - confidence_gate[:, None]) * g_alpha(v2, alpha) * v2
    else:
        raise ValueError(f"gate={gate!r} must be elementwise or max")
    cross_entropy = -torch.log(p.gather(1, labels[:, None]).squeeze(1) + eps)
    return (cross_entropy + penalty * (1 - confidence_gate)).mean()


def cascade_loss(name: str, early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                 alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY) -> torch.Tensor:
    """Dispatch on ``name`` in ``sum`` | ``soft`` | ``firm`` | ``firm-max`` (see ``firm_cascade_loss``)."""
    if name == "sum":
        return msdnet_sum_loss(early_logits, final_logits, labels)
    if name == "soft":
        return soft_cascade_loss(early_logits, final_logits, labels)
    if name in ("firm", "firm-max"):
        gate = "max" if name == "firm-max" else "elementwise"
        return firm_cascade_loss(early_logits, final_logits, labels, alpha, penalty, gate)
    raise ValueError(f"unknown cascade loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")


