"""Measurement overhead: batch-1 latency of a no-op model must be <= 50 us (issue: measurement bar).

    .venv/bin/python benchmarks/bench_measure.py
"""
import torch
from torch import nn

from cnncompress import measure

if __name__ == "__main__":
    stats = measure.latency(nn.Identity(), (1, 1, 48, 48), runs=1000, try_channels_last=False)
    print(f"no-op model latency: median {1000 * stats['median_ms']:.2f} us, mean {1000 * stats['mean_ms']:.2f} us "
          f"over {stats['runs']} runs (bar: <= 50 us) -> {'PASS' if stats['median_ms'] <= 0.05 else 'FAIL'}")
    torch.set_num_threads(2)
