"""``early-exit``: one intermediate classifier with thresholded, per-sample early exit (Pimpley & Indulkar).

``apply`` attaches the exit head (``cnncompress.early_exit.attach_exit``); fine-tuning uses the chosen cascade
loss (sum / soft / firm); the eval forward is the hard-mode cascade, so the bench's latency is the real,
data-dependent cost of the samples that stop early: the bench times it at batch 1 over the whole test split and
reports the exit rate beside it. The saving is real compute (speed="real": samples that exit skip the rest of the
network); the file grows by the head, so no size saving is claimed (size="none"). ``EarlyExitNet`` registers itself with
``layers.register_layer`` in ``cnncompress.early_exit``. It chooses no layers to replace (``position`` names where
the exit goes), so it takes no ``layers=`` option.
"""
from __future__ import annotations

from torch import nn

from ..early_exit import DEFAULT_ALPHA, DEFAULT_PENALTY, DEFAULT_THRESHOLD, attach_exit, cascade_finetune_loss
from .registry import MethodInfo, register

PAPER = ("Pimpley & Indulkar, Exploring Sophisticated Loss Functions for Early Prediction in CNNs; "
         "Teerapittayanon et al. 2016 (BranchyNet)")


def apply_early_exit(model: nn.Module, position: str = "p2", threshold: float = DEFAULT_THRESHOLD,
                     loss: str = "firm", alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY,
                     head_pool: int = 0) -> nn.Module:
    """Attach an exit after ``position`` (``p1``/``p2`` on cascade_cnn, else a child path like
    ``features.pool2``); eval forward exits per sample when max(V1) > ``threshold``."""
    if head_pool < 0:
        raise ValueError(f"head_pool={head_pool} must be >= 0")
    return attach_exit(model, position, threshold=threshold, loss=loss, alpha=float(alpha), penalty=float(penalty),
                       head_pool=int(head_pool))


register(
    MethodInfo("early-exit", PAPER, size="none", speed="real", family="early exit",
               description="intermediate [FC->softmax] exit; samples with max(V1) > threshold skip the rest",
               bench=({"model": "vgg_s", "config": {"position": "features.pool2", "threshold": 0.6, "loss": "sum",
                                                    "head_pool": 2},
                       "finetune": 1, "label": "early-exit vgg_s pool2 t=0.6"},)),
    apply_early_exit, finetune_loss=cascade_finetune_loss)
