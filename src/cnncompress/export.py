"""Export a (compressed) model to ONNX, and check onnxruntime against our own output.

Float-expressible results export as themselves: baseline, decomposed, pruned (physically smaller layers), hashed
(expanded weights), fp16 (computed in fp32 after decoding). ``int8`` models export their QDQ graph (real int8
kernels in onnxruntime). Binary models (bwn, xnor, binact, binaryconnect) export their *float equivalent*:
the binarised weights α·sign(W) as fp32 tensors and sign() activations — the bit-packed XNOR-popcount kernel is
ours and has no ONNX operator, so ``export`` says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

BINARY_METHODS = {"bwn", "xnor", "binact", "binaryconnect"}


def methods_of(model: nn.Module) -> list[str]:
    return [entry["method"] for entry in getattr(model, "compression_history", [])]


def export_onnx_file(model: nn.Module, path: str | Path) -> tuple[Path, str]:
    """Write ``path`` (.onnx); returns (path, note about what was exported)."""
    from . import measure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = methods_of(model)
    spec = model.spec
    shape = (1, spec["in_channels"], spec["input_size"], spec["input_size"])
    if "int8" in history:
        from .methods.int8 import int8_onnx
        path.write_bytes(int8_onnx(model))
        return path, "int8 QDQ graph (onnxruntime runs QLinearConv/QGemm int8 kernels)"
    measure.export_onnx(model.eval(), shape, path)
    binary = sorted(BINARY_METHODS & set(history))
    if binary:
        return path, (f"float equivalent of the {'+'.join(binary)} model (binarised weights stored as fp32; "
                      "the bit-packed kernel has no ONNX operator)")
    return path, "float graph" + (f" of the {'+'.join(history)} model" if history else "")


@torch.no_grad()
def compare_with_onnxruntime(model: nn.Module, onnx_path: str | Path, images: torch.Tensor,
                             batch_size: int = 64) -> dict:
    """Top-1 agreement (%) and max |Δlogit| between our model and onnxruntime on ``images``."""
    from . import measure
    session = measure.onnx_session(onnx_path)
    name = session.get_inputs()[0].name
    agree, worst, total = 0, 0.0, 0
    model = model.eval()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        ours = model(x).float()
        theirs = torch.from_numpy(np.asarray(session.run(None, {name: x.numpy().astype(np.float32)})[0]))
        agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        worst = max(worst, float((ours - theirs).abs().max()))
        total += len(x)
    return {"top1_agreement": 100.0 * agree / max(1, total), "max_abs_logit_diff": worst, "images": total}
