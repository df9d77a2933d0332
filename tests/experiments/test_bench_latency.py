"""The bench row's latency columns: an early exit is timed once per test image (mean) with its exit rate; a plain
model by the median of the recipe's runs on one image."""
import torch

from cnncompress import methods, models
from cnncompress.experiments import bench_latency as latency


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("no graph here")


class _Recipe:
    latency_runs, threads = 5, 1


def test_early_exit_latency_is_the_mean_over_the_test_split():
    torch.manual_seed(0)
    images = torch.randn(24, 1, 48, 48)
    net = models.build("vgg_s", 10, 1, 48, 0.125).eval()
    for threshold, rate in ((0.0, 1.0), (1.0, 0.0)):
        exits = methods.apply(net, "early-exit", position="features.pool2", threshold=threshold).eval()
        timing, exit_rate = latency.deployed(exits, (1, 1, 48, 48), images[:1], images, _Recipe)
        assert timing["runs"] == 24 and timing["protocol"] == "mean over the 24 test images at batch 1"
        assert exit_rate == rate
    timing, exit_rate = latency.deployed(net, (1, 1, 48, 48), images[:1], images, _Recipe)
    assert exit_rate is None and timing["runs"] == 5 and timing["protocol"] == "median of 5 runs on one test image"


def test_baseline_and_onnxruntime_columns():
    torch.manual_seed(0)
    images = torch.randn(6, 1, 48, 48)
    net = models.build("vgg_s", 10, 1, 48, 0.125).eval()
    torch_ms, ort_ms = latency.baseline(net, (1, 1, 48, 48), images[:1], None, _Recipe)
    assert torch_ms > 0 and ort_ms > 0
    per_image, _ = latency.baseline(net, (1, 1, 48, 48), images[:1], images, _Recipe)
    assert per_image > 0
    ms, why = latency.onnxruntime(net, net, (1, 1, 48, 48), images[:1], _Recipe)
    assert ms > 0 and why == ""
    ms, why = latency.onnxruntime(_Unexportable(), torch.nn.Module(), (1, 1, 48, 48), images[:1], _Recipe)
    assert ms is None and why.startswith("RuntimeError: no graph here"), why  # n/a with the reason
