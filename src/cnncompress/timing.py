"""The one timing primitive of the toolkit: ``time_calls(call, runs, warmup)`` -> seconds per call, and its summaries.

A leaf module (standard library only) so that every layer of the package can time with it: ``measure`` builds
its latency / alternating / train-step figures on it and re-exports it, ``kernels.sparse.choose_path`` picks its
path with it (``kernels`` imports nothing above itself), benchmarks reach it through ``measure``.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

clock = time.perf_counter
"""The clock every timing uses (monotonic, highest resolution)."""


def time_calls(call: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Call ``call()`` ``warmup`` times untimed, then ``runs`` times; the seconds each timed call took."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def best(samples: list[float]) -> float:
    """The fastest sample (seconds): the steadier figure on a shared, busy CPU."""
    return min(samples)


def median(samples: list[float]) -> float:
    """The median sample (seconds)."""
    return statistics.median(samples)


def summary(samples: list[float]) -> dict:
    """``{median_ms, mean_ms, runs}`` of samples in seconds."""
    return {"median_ms": 1000 * statistics.median(samples), "mean_ms": 1000 * statistics.fmean(samples),
            "runs": len(samples)}
