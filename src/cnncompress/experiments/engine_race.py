"""The bench's speed figure: a row's deployed model on every engine of its precision, raced against the fp32
baseline on every fp32 engine (PyTorch NCHW and channels_last, onnxruntime, OpenVINO f32), all in one
interleaved timing right after the row (``measure.alternating``: turns of ``block`` calls, order rotating), so
load drift on a shared CPU hits both sides alike.

``speed-up = baseline on its fastest fp32 engine / row on its fastest engine`` (DESIGN: speed claims are made
against the fastest fp32 engine a user could pick; the baseline never changes precision silently). A row runs at
its method's precision: int8 rows on the int8 engines (onnxruntime, OpenVINO), bf16 rows on the bf16 engines,
every other row on the fp32 engines (the XNOR kernel runs inside the PyTorch engines). Engines that cannot run a
model (OpenVINO missing, no bf16 on this CPU, a graph that does not export) are skipped and the reason kept.
"""
from __future__ import annotations

import torch

from cnncompress import deploy



def race(row_model, baseline, shape: tuple[int, ...], example: torch.Tensor, row_precision: str = "fp32",
         threads: int | None = 1, runs: int = 20, block: int = 3, images: torch.Tensor | None = None) -> dict:
    """``{"engine", "engine_ms", "engines_ms", "baseline_engine", "baseline_engine_ms", "baseline_engines_ms",
    "engines_skipped"}``; the ``engine`` keys are None when no engine of the row's precision can run it.
    ``images``: real images (the run's validation split) every engine is checked on before it is timed."""
    times, skipped = deploy.race({"row": (row_model, deploy.names(row_precision)),
                                   "base": (baseline, deploy.names("fp32"))}, shape, threads, runs, block,
                                  example[:1].to(torch.float32), images)
    row_ms = {name: ms for (side, name), ms in times.items() if side == "row"}
    base_ms = {name: ms for (side, name), ms in times.items() if side == "base"}
    row_best = min(row_ms, key=row_ms.get) if row_ms else None
    base_best = min(base_ms, key=base_ms.get) if base_ms else None
    return {"engine": row_best, "engine_ms": row_ms.get(row_best), "engines_ms": row_ms,
            "baseline_engine": base_best, "baseline_engine_ms": base_ms.get(base_best),
            "baseline_engines_ms": base_ms, "engine_precision": row_precision,
            "engines_skipped": {f"{'row' if side == 'row' else 'baseline'} {name}": reason
                                for (side, name), reason in skipped.items()}}


NOISE = 0.05  # interleaved medians on a shared 2-core CPU move by a few per cent between runs


def preset_label(speedups: dict) -> str:
    """The speed label a speed-"real" method earns from measurements at several input sizes: ``speedups`` maps a
    preset (input size) to its speed-ups vs the fastest fp32 engine (one per thread count; None: not measured).
    With ``worst`` the slowest of a preset's ratios: ``real`` when worst >= 1 + NOISE, ``none`` when worst < 1 -
    NOISE, else ``same speed``; e.g. ``"none at 48 (0.72×); real at 224 (2.10×)"``, ``"not measured"`` when nothing
    was timed."""
    parts = []
    for preset, ratios in speedups.items():
        measured = [r for r in ratios if r is not None]
        if not measured:
            continue
        worst = min(measured)
        verdict = "real" if worst >= 1 + NOISE else "none" if worst < 1 - NOISE else "same speed"
        parts.append(f"{verdict} at {preset} ({worst:.2f}×)")
    return "; ".join(parts) if parts else "not measured"
