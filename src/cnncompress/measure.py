"""Measurements every bench row carries (Rassadin & Savchenko Table 2 + memory), each usable on its own.

- ``accuracy``: top-1 in percent; ``correct``: per-image top-1 correctness (what intervals are bootstrapped from).
- ``per_sample_latency``: batch-1 latency averaged over every image of a split (data-dependent models such as
  early exits, whose cost depends on the image).
- ``dense_macs``: multiply-accumulates one forward runs in PyTorch's dense conv/matmul kernels (what a fast path
  removes: sparse, onnxruntime and bit-packed kernels are not counted).
- ``train_step_time``: median ms of one SGD mini-batch step (forward, backward, update).
- ``latency``: batch-1 inference, median and mean ms over ``runs`` after ``warmup``, threads fixed; PyTorch in
  NCHW and channels_last (the faster is reported, and which it was).
- ``throughput``: images/s at batch 32.
- ``onnx_latency``: the same model exported with ``torch.onnx.export`` and run in onnxruntime.
- ``param_count``, ``file_bytes`` (``os.stat`` of the real file, never an estimate).
- ``peak_memory``: RSS high-water mark of a fresh subprocess that loads a ``.ccz`` and runs inference or training
  (``python -m cnncompress.experiments.memory_probe``), minus the same process's RSS before loading, so rows do not pollute
  each other.

Every timing goes through ``timing.time_calls`` (re-exported here with ``best``, ``median``, ``summary``), and
every ONNX export through ``onnx_export`` (``export_onnx`` and ``onnx_session`` delegate to it).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnncompress.timing import (DEFAULT_THREADS, alternating, best, median, summary, threads,  # noqa: F401
                                time_calls)  # the one timer and the race loop, re-exported for benchmarks

@torch.no_grad()
def accuracy(model: nn.Module, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) on an in-memory labelled dataset."""
    return 100.0 * (1.0 - error_rate(model, dataset, batch_size))


@torch.no_grad()
def correct(model: nn.Module, dataset, batch_size: int = 256) -> torch.Tensor:
    """Per-image top-1 correctness (bool, one per image of ``dataset``, in order)."""
    was_training = model.training
    model.eval()
    hits = [model(dataset.images[i:i + batch_size]).argmax(1) == dataset.labels[i:i + batch_size]
            for i in range(0, len(dataset), batch_size)]
    model.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def per_sample_latency(model: nn.Module, images: torch.Tensor, num_threads: int | None = DEFAULT_THREADS,
                       warmup: int = 10, after=None) -> dict:
    """Batch-1 latency over every image of ``images`` (each run once, in order, after ``warmup`` untimed calls):
    ``{mean_ms, median_ms, runs}``; ``after()`` is called after each timed call (untimed), e.g. to read which exit
    a sample took."""
    model.eval()
    samples = []
    with threads(num_threads):
        for i in range(min(warmup, len(images))):
            model(images[i:i + 1])
        for i in range(len(images)):
            x = images[i:i + 1]
            start = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - start)
            if after is not None:
                after()
    return summary(samples)


@torch.no_grad()
def dense_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``x`` in PyTorch's dense convolution and matrix-multiply kernels
    (``torch.utils.flop_counter``). Work done elsewhere is not counted: sparse CSR products, onnxruntime sessions,
    the bit-packed XNOR kernel, and rows an early exit skipped."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def file_bytes(path: str | Path) -> int:
    """Bytes of the real file on disk."""
    return os.stat(path).st_size


@torch.no_grad()
def error_rate(model: nn.Module, dataset, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 error (fraction) of ``model`` on a labelled in-memory dataset."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size].to(device)
        labels = dataset.labels[start:start + batch_size].to(device)
        wrong += int((model(images).argmax(1) != labels).sum())
    model.train(was_training)
    return wrong / max(1, len(dataset))


def _example(input_shape: tuple[int, ...], example: torch.Tensor | None) -> torch.Tensor:
    """The timed input: real images (repeated to the batch size) when given — data-dependent models such as early
    exits must be timed on real data — else standard-normal noise."""
    if example is None:
        return torch.randn(*input_shape)
    reps = -(-input_shape[0] // len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:input_shape[0]].contiguous()


@torch.no_grad()
def latency(model: nn.Module, input_shape: tuple[int, ...], runs: int = 100, warmup: int = 10,
            num_threads: int | None = DEFAULT_THREADS, try_channels_last: bool = True,
            example: torch.Tensor | None = None) -> dict:
    """Batch-``input_shape[0]`` latency in PyTorch: {median_ms, mean_ms, runs, layout, threads}."""
    model.eval()
    x = _example(input_shape, example)
    results = {}
    with threads(num_threads):
        results["nchw"] = summary(time_calls(lambda: model(x), runs, warmup))
        if try_channels_last and x.dim() == 4:
            try:
                fast = model.to(memory_format=torch.channels_last)
                xc = x.contiguous(memory_format=torch.channels_last)
                results["channels_last"] = summary(time_calls(lambda: fast(xc), runs, warmup))
            except (RuntimeError, TypeError, NotImplementedError):
                pass
            finally:
                model.to(memory_format=torch.contiguous_format)
    layout = min(results, key=lambda k: results[k]["median_ms"])
    return {**results[layout], "layout": layout, "threads": num_threads or torch.get_num_threads(),
            "nchw_median_ms": results["nchw"]["median_ms"]}


def throughput(model: nn.Module, input_shape: tuple[int, ...], batch: int = 32, runs: int = 10,
               num_threads: int | None = DEFAULT_THREADS, example: torch.Tensor | None = None) -> float:
    """Images per second at batch ``batch`` (PyTorch)."""
    stats = latency(model, (batch, *input_shape[1:]), runs=runs, warmup=2, num_threads=num_threads, example=example)
    return batch / (stats["median_ms"] / 1000)


def train_step_time(model: nn.Module, dataset, batch_size: int = 32, steps: int = 10, loss_fn=None,
                    num_threads: int | None = DEFAULT_THREADS) -> float:
    """Median ms of one SGD step on a copy of the model (the model itself is not changed)."""
    import copy

    from cnncompress.layers import after_step
    loss_fn = loss_fn or (lambda net, images, labels: torch.nn.functional.cross_entropy(net(images), labels))
    trial = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(trial.parameters(), lr=1e-4, momentum=0.9)
    images, labels = dataset.images[:batch_size], dataset.labels[:batch_size]

    def step():
        loss = loss_fn(trial, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step(trial)
    with threads(num_threads):
        return 1000 * median(time_calls(step, steps, 2))


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, fallback: bool = True) -> Path:
    """Export to ``path`` (``onnx_export.export_file``: TorchScript exporter after ``onnx_export.onnx_friendly``,
    the dynamo one if that fails and ``fallback``); input ``input`` and output ``logits``, dynamic batch."""
    from cnncompress.deploy.onnx_export import export_file
    return export_file(model, input_shape, path, fallback)


def onnx_session(path: str | Path | bytes, num_threads: int | None = DEFAULT_THREADS):
    """An onnxruntime CPU session of a ``.onnx`` path or serialized graph (``onnx_export.session``) at
    ``num_threads`` intra-op threads."""
    from cnncompress.deploy.onnx_export import session
    return session(path, num_threads)


def onnx_latency(model_or_path, input_shape: tuple[int, ...], runs: int = 100, warmup: int = 10,
                 num_threads: int | None = DEFAULT_THREADS, fallback: bool = True,
                 example: torch.Tensor | None = None) -> dict:
    """Latency in onnxruntime of ``model`` (exported to a temporary file) or of an existing ``.onnx`` path."""
    import numpy as np
    with tempfile.TemporaryDirectory() as tmp:
        path = model_or_path
        if isinstance(model_or_path, nn.Module):
            path = export_onnx(model_or_path, input_shape, Path(tmp) / "model.onnx", fallback)
        session = onnx_session(path, num_threads)
        feed = {session.get_inputs()[0].name: _example(input_shape, example).numpy().astype(np.float32)}
        stats = summary(time_calls(lambda: session.run(None, feed), runs, warmup))
    return {**stats, "threads": num_threads}


def peak_memory(ccz_path: str | Path, mode: str = "infer", batch: int = 1, num_threads: int = DEFAULT_THREADS,
                timeout: float = 300, entry: str | None = None) -> float:
    """Peak RSS growth (MB) of a fresh process that loads ``ccz_path`` and runs ``mode`` (infer|train); ``entry``:
    a user network's entry point (the probe rebuilds it from what the caller names, never from the file)."""
    return peak_memories(ccz_path, [(mode, batch)], num_threads, timeout, entry)[0]


def peak_memories(ccz_path: str | Path, probes: list[tuple[str, int]], num_threads: int = DEFAULT_THREADS,
                  timeout: float = 300, entry: str | None = None) -> list[float]:
    """``peak_memory`` for several (mode, batch) probes, each in its own fresh process, run side by side (the
    processes share nothing, so one's peak does not affect another's; only their wall time overlaps). The
    probes die with this process (Linux: ``PR_SET_PDEATHSIG``), and a probe past ``timeout`` (``TimeoutExpired``)
    or a failed one takes the others down with it."""
    running = []
    try:
        for mode, batch in probes:
            running.append(subprocess.Popen(
                [sys.executable, "-m", "cnncompress.experiments.memory_probe", str(ccz_path), mode, str(batch),
                 str(num_threads), *([entry] if entry else [])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent()))
        peaks = []
        for process in running:
            out, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"memory probe failed: {(err.strip().splitlines() or ['?'])[-1]}")
            peaks.append(float(json.loads(out.strip().splitlines()[-1])["peak_mb"]))
        return peaks
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """A ``preexec_fn`` that makes a child get SIGKILL when this process dies (Linux ``prctl(PR_SET_PDEATHSIG)``),
    or None where there is no such call. The C function is looked up here, in the parent: between fork and exec
    the child only calls it (no library loading there)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import signal
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, kill = os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody left to signal us
            os._exit(1)
    return preexec
