"""Probes for a model file that checks itself: which images, their reference outputs, and the file written with them.

- ``needs_probes(model)``: a method of its history is in ``runtime.EXACT`` (int8, bf16, binary, fixed point: the
  deployed numerics depend on the engine or the CPU).
- ``choose(images)``: up to ``COUNT`` (32) of the run's real images (a seeded random subset, never noise), at most
  ``MAX_BYTES`` of uint8 codes (2 MiB: 13 images at 3x224x224, all 32 at 1x48x48).
- ``make(model, images, source)``: the images as uint8 codes (``storage.probe_section.quantize``) and the outputs of the
  model's exact form (``runtime.exact_form``) on the decoded images, at batch 1.
- ``save(model, path, images, source)``: ``storage.save``; when the model needs probes and images are given, the
  model is first written to a scratch file and loaded back, so the reference is computed on what the file holds
  (an fp16 float codec rounds weights), then ``path`` is written once, with its probes. ``deploy.to_inference``
  checks them (``self_check``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from cnncompress import storage
from cnncompress.deploy import runtime
from cnncompress.storage.probe_section import Probes, dequantize, quantize

COUNT = 32
MAX_BYTES = 2 << 20
BINARY = "the PyTorch module: sign() binarisation in fp32 arithmetic"
FORMS = {"int8": "the fake-quant twin of its int8 QDQ graph (fp32 arithmetic)",
         "bf16": "the PyTorch module: bf16-valued weights in fp32 arithmetic",
         "fixed-point": "the PyTorch module: fixed point simulated in fp32", "binaryconnect": BINARY, "bwn": BINARY,
         "xnor": BINARY, "binact": BINARY}
"""What the exact form (``runtime.EXACT``) of each method is, in words."""


def needs_probes(model: nn.Module) -> bool:
    """Whether ``model``'s deployed numerics depend on the engine or CPU (a method of ``runtime.EXACT``)."""
    return bool(runtime.checked_methods(model))


def choose(images: torch.Tensor, count: int = COUNT, seed: int = 0) -> torch.Tensor:
    """Up to ``count`` of ``images`` ``(N, C, H, W)`` (a seeded random subset), fewer where ``count`` would take
    more than ``MAX_BYTES`` of uint8 codes (at least one)."""
    images = torch.as_tensor(images)
    per_image = max(1, images[0].numel()) if len(images) else 1
    count = max(1, min(count, len(images), MAX_BYTES // per_image))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return images[order.sort().values]


def form_of(model: nn.Module) -> str:
    """The exact form's description for ``model``'s checked methods."""
    names = runtime.checked_methods(model)
    return "; ".join(f"{n}: {FORMS.get(n, 'the PyTorch module')}" for n in names)


@torch.no_grad()
def make(model: nn.Module, images: torch.Tensor | Probes, source: str) -> Probes:
    """``Probes`` of ``model`` on ``images`` (all of them: ``choose`` first; or the images of other ``Probes``,
    their codes kept): uint8 codes and the exact form's outputs on the decoded images, for ``model``'s
    compression history."""
    codes, low, step = (images.codes, images.low, images.step) if isinstance(images, Probes) else quantize(images)
    exact = runtime.exact_form(model)
    reference = torch.cat([torch.as_tensor(exact(x.unsqueeze(0))).float().reshape(1, -1)
                           for x in dequantize(codes, low, step)])
    return Probes(codes, low, step, reference, form_of(model), source,
                  list(getattr(model, "compression_history", None) or []))


def save(model: nn.Module, path: str | Path, images: torch.Tensor | Probes | None = None, source: str = "",
         network=None, **options) -> tuple[Path, Probes | None]:
    """Write ``model`` to ``path`` (``storage.save(..., **options)``) with probes of ``choose(images)`` (or of the
    images of ``Probes``: a re-saved file keeps its probe images, their reference recomputed) when it needs them
    (``needs_probes``) and images are given; returns ``(path, probes or None)``. ``network``: a user network's
    float network or builder, to load the file back (``storage.load``)."""
    if images is None or not needs_probes(model) or (not isinstance(images, Probes) and not len(images)):
        return storage.save(model, path, **options), None
    kept = images if isinstance(images, Probes) else choose(images)
    with tempfile.TemporaryDirectory() as scratch:  # what the file will hold, read back: ``path`` is written once
        held = storage.load(storage.save(model, Path(scratch) / "model.ccz", **options), model=network)
    probes = make(held, kept, images.source if isinstance(images, Probes) else source)
    return storage.save(model, path, probes=probes, **options), probes
