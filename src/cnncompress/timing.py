"""The one timing primitive of the toolkit: ``time_calls(call, runs, warmup)`` -> seconds per call, and its summaries.

A leaf module (standard library only; ``threads`` imports torch when called) so that every layer of the package can time with it: ``measure`` builds
its latency / alternating / train-step figures on it and re-exports it, ``kernels.sparse.choose_path`` picks its
path with it (``kernels`` imports nothing above itself), benchmarks reach it through ``measure``.
"""
from __future__ import annotations

import contextlib
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


DEFAULT_THREADS = 2


@contextlib.contextmanager
def threads(count: int | None):
    """Fix torch's intra-op thread count for the duration."""
    import torch
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def alternating(calls: dict, runs: int, block: int = 1, warmup: int = 2, minimum: dict | None = None,
                pause: float = 0.0, rounds: dict | None = None) -> dict:
    """Median ms per call of several competing calls timed in one process, taking turns so that drift in machine
    load hits all of them alike; the order rotates each round so that none always follows another.

    ``block=1``: the calls alternate call by call (``runs`` samples each). ``block=k > 1``: each takes its turn as
    ``k`` calls in a row and the first of them is not counted (``runs * (k - 1)`` samples each): the steady,
    warm-cache latency of one engine, without the thread-pool spin and cache eviction the previous engine leaves
    behind (call-by-call alternation of PyTorch and onnxruntime at two threads on two cores measured int8
    VGG-S at 1.0x of fp32 where turns of 5 calls measured 1.75x). ``pause`` seconds of sleep before each turn let
    the previous engine's spinning worker threads go idle. ``minimum`` (a dict) receives each fastest run;
    ``rounds`` (a dict) receives each call's per-round ms (the median of its turn in that round), the raw data a
    paired interval over rounds is drawn from (round i of every call ran under the same load).
    """
    if runs < 1 or block < 1:
        raise ValueError(f"runs and block must be positive, got {runs}, {block}")
    names = list(calls)
    for name in names:
        time_calls(calls[name], 0, warmup)
    samples = {name: [] for name in names}
    per_round = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if pause:
                time.sleep(pause)
            untimed = 1 if block > 1 else 0  # a turn of k > 1 calls: the first one is not counted
            turn = time_calls(calls[name], block - untimed, warmup=untimed)
            samples[name].extend(turn)
            per_round[name].append(1000 * median(turn))
    if rounds is not None:
        rounds.update(per_round)
    if minimum is not None:
        minimum.update({name: 1000 * best(values) for name, values in samples.items()})
    return {name: 1000 * median(values) for name, values in samples.items()}
