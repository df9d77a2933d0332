"""timing: the one timing primitive (measure re-exports it; kernels.sparse.choose_path times with it)."""
import time

import pytest
import torch

from cnncompress import measure, timing
from cnncompress.kernels.sparse import choose_path


def test_time_calls_warms_up_then_times_each_run():
    log = []
    samples = timing.time_calls(lambda: log.append(1), runs=5, warmup=3)
    assert len(log) == 8 and len(samples) == 5 and all(s >= 0 for s in samples)
    assert timing.time_calls(lambda: log.append(1), runs=0, warmup=2) == [] and len(log) == 10
    slow = timing.time_calls(lambda: time.sleep(0.01), runs=2)
    assert all(s >= 0.009 for s in slow)


def test_summaries():
    samples = [0.003, 0.001, 0.002, 0.010]
    assert timing.best(samples) == 0.001
    assert timing.median(samples) == pytest.approx(0.0025)
    assert timing.summary(samples) == pytest.approx({"median_ms": 2.5, "mean_ms": 4.0, "runs": 4})


def test_measure_reexports_the_one_timer():
    assert measure.time_calls is timing.time_calls and measure.best is timing.best
    assert measure.summary is timing.summary and measure.median is timing.median


def test_choose_path_times_both_paths():
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    assert choose_path(weight, None)[0] == "dense"  # dense weights are not timed
    weight[torch.rand_like(weight) < 0.97] = 0
    path, dense_s, csr_s = choose_path(weight, torch.zeros(64), repeats=3)
    assert path in ("dense", "csr") and dense_s > 0 and csr_s > 0
    assert path == ("csr" if csr_s < dense_s else "dense")
