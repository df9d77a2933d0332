"""Export a (compressed) model to ONNX, and check onnxruntime against our own output.

Which graph a compressed model exports is each method's own answer: the ``onnx_graph`` hook of its registration
(``methods.register(..., onnx_graph=fn)``, ``fn(model) -> (graph bytes | None, note)``). Asked last method first,
the first hook that returns a graph wins (``int8``: its QDQ graph, real int8 kernels in onnxruntime). Otherwise the
float form of the model is exported (``onnx_export.export_file``) and the notes of the hooks that returned ``None``
say what it is (binary methods: the *float equivalent*, α·sign(W) as fp32 tensors and sign() activations — the
bit-packed XNOR-popcount kernel is ours and has no ONNX operator). Methods without a hook (baseline, decomposed,
pruned, hashed, fp16, ...) are float-expressible and export as themselves: "float graph".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import onnx_export


def methods_of(model: nn.Module) -> list[str]:
    return [entry["method"] for entry in getattr(model, "compression_history", [])]


def _hooks(history: list[str]) -> list:
    """The ``onnx_graph`` hooks of the methods in ``history`` (same order; a method not registered in this process,
    e.g. a user's own, counts as having none)."""
    from . import methods
    from .errors import InputError
    hooks = []
    for name in history:
        try:
            hooks.append(methods.get(name).onnx_graph)
        except InputError:
            hooks.append(None)
    return hooks


def method_graph(model: nn.Module) -> tuple[bytes | None, str]:
    """``(graph, note)``: the ONNX graph a method of the model's history supplies through its ``onnx_graph`` hook
    (the last one that does), else ``None`` and a note on the float form to export."""
    history = methods_of(model)
    notes = []
    for hook in reversed(_hooks(history)):
        if hook is None:
            continue
        graph, note = hook(model)
        if graph is not None:
            return graph, note
        if note and note not in notes:
            notes.insert(0, note)
    if notes:
        return None, f"{'+'.join(history)} model: {'; '.join(notes)}"
    return None, "float graph" + (f" of the {'+'.join(history)} model" if history else "")


def export_onnx_file(model: nn.Module, path: str | Path) -> tuple[Path, str]:
    """Write ``path`` (.onnx); returns (path, note about what was exported)."""
    graph, note = method_graph(model)
    if graph is not None:
        return onnx_export.write_graph(graph, path), note
    spec = model.spec
    shape = (1, spec["in_channels"], spec["input_size"], spec["input_size"])
    return onnx_export.export_file(model.eval(), shape, path), note


@torch.no_grad()
def compare_with_onnxruntime(model: nn.Module, onnx_path: str | Path, images: torch.Tensor,
                             batch_size: int = 64) -> dict:
    """Top-1 agreement (%) and max |Δlogit| between our model and onnxruntime on ``images``."""
    from .measure import DEFAULT_THREADS
    session = onnx_export.session(onnx_path, DEFAULT_THREADS)
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


def deployed(model: nn.Module) -> nn.Module:
    """The model that really runs: a copy with every method's fast kernel swapped in (``methods.to_inference``)."""
    import copy

    from . import methods
    return methods.to_inference(copy.deepcopy(model)).eval()


def check_images(model: nn.Module, data: str | None, count: int = 64) -> tuple[torch.Tensor, str]:
    """Images for a parity check: the test split of ``data`` (default: the dataset the model records), else
    ``count`` seeded random inputs (said so in the returned description)."""
    from .data import build_dataset
    spec = model.spec
    data = data or (getattr(model, "metadata", {}) or {}).get("dataset")
    if data:
        return build_dataset(data, "test", input_size=spec["input_size"], channels=spec["in_channels"]).images, data
    images = torch.randn(count, spec["in_channels"], spec["input_size"], spec["input_size"],
                         generator=torch.Generator().manual_seed(0))
    return images, f"{count} random inputs (no dataset recorded; pass --data)"


def export_model(model: nn.Module, fmt: str, out: str | Path, data: str | None = None,
                 fp16: bool = False) -> dict:
    """``cnncompress export``: write ``model`` as ``.ccz`` or ONNX; an ONNX file is checked in onnxruntime
    against the model that really runs (``to_inference``: int8 with quantised activations, XNOR bit-packed)."""
    from . import storage
    if fmt == "ccz":
        path = storage.save(model, out, float_codec="fp16" if fp16 else None)
        return {"file": str(path), "bytes": path.stat().st_size}
    path, note = export_onnx_file(model, out)
    images, source = check_images(model, data)
    check = compare_with_onnxruntime(deployed(model), path, images)
    return {"file": str(path), "bytes": path.stat().st_size, "exported": note, "checked_on": source,
            "checked_against": "the deployed model (methods.to_inference)",
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in check.items()}}
