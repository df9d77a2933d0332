"""The bench row's own latency columns, each batch 1 at the recipe's threads (``recipe.latency_runs`` runs):
the deployed model in PyTorch, the fp32 baseline re-timed right after the row, and onnxruntime. The engine race
beside them (``experiments.engine_race``) gives the row's speed-up; these are the paper's per-runtime columns.

A model whose cost depends on the image (an early exit) is timed once per test image (mean) and the baseline
alike, inside the row's one read of the test split (``bench.Bench.measure_row``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from cnncompress import measure
from cnncompress.methods.early_exit import EarlyExitNet


def deployed(fast, shape, example, test_images, recipe) -> tuple[dict, float | None]:
    """PyTorch batch-1 latency of the deployed model ``fast`` and its early-exit rate (None without exits)."""
    exits = [m for m in fast.modules() if isinstance(m, EarlyExitNet)]
    if not exits:
        stats = measure.latency(fast, shape, runs=recipe.latency_runs, num_threads=recipe.threads, example=example)
        return {**stats, "protocol": f"median of {stats['runs']} runs on one test image"}, None
    taken: list[int] = []
    stats = measure.per_sample_latency(fast, test_images, recipe.threads,
                                       after=lambda: taken.append(int(exits[0].last_exit[0])))
    return ({**stats, "median_ms": stats["mean_ms"], "layout": "nchw",
             "protocol": f"mean over the {len(taken)} test images at batch 1"},
            taken.count(0) / max(1, len(taken)))


def baseline(base, shape, example, per_sample_images, recipe) -> tuple[float, float | None]:
    """The fp32 baseline's batch-1 latency ``(PyTorch ms, onnxruntime ms or None)``, re-measured right after the
    row so that the row's speed-up compares two timings taken in the same minute (minutes apart, load drift
    dominated); ``per_sample_images``: PyTorch timed like an early-exit row, once per image (mean)."""
    if per_sample_images is not None:
        torch_ms = measure.per_sample_latency(base, per_sample_images, recipe.threads)["mean_ms"]
    else:
        torch_ms = measure.latency(base, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                   example=example)["median_ms"]
    try:
        ort_ms = measure.onnx_latency(base, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                      fallback=False, example=example)["median_ms"]
    except Exception:  # noqa: BLE001 - the baseline row records the export error itself
        ort_ms = None
    return torch_ms, ort_ms


def onnxruntime(model, fast, shape, example, recipe) -> tuple[float | None, str]:
    """onnxruntime column: the deployed model's own ONNX graph where it runs one (int8 QDQ), else ``model``
    exported as float; ``(None, reason)`` when it cannot be exported."""
    source = getattr(fast, "onnx_model", None) or model
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if isinstance(source, bytes):
                (Path(tmp) / "m.onnx").write_bytes(source)
                source = Path(tmp) / "m.onnx"
            return measure.onnx_latency(source, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                        fallback=False, example=example)["median_ms"], ""
    except Exception as error:  # noqa: BLE001 - a model that cannot export gets n/a and the reason
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
