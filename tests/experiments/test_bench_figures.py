"""The bench's figures: the Pareto front keeps exactly the points nothing beats; every figure is written as a PNG
with one marker per table line (seeds grouped) and one curve set per model."""
from cnncompress.experiments.bench_figures import pareto, plot_all


def test_pareto_front_keeps_only_unbeaten_points_sorted_by_size():
    points = [(4.0, 80.0), (1.0, 70.0), (2.0, 75.0), (2.5, 72.0), (1.0, 65.0), (8.0, 79.0)]
    assert pareto(points) == [(1.0, 70.0), (2.0, 75.0), (4.0, 80.0)]  # (2.5, 72) and (8, 79) are beaten
    assert pareto([]) == []


def _row(model, method, seed, accuracy, size_mb, ms):
    history = [{"epoch": e, "val_error": 0.5 / e, "train_error": 0.4 / e} for e in (1, 2, 3)]
    return {"model": model, "method": method, "label": method, "config": {}, "seed": seed, "finetune_epochs": 1,
            "accuracy": accuracy, "size_mb": size_mb, "torch_ms": ms, "ort_ms": None, "history": history}


def test_plot_all_writes_curves_per_model_and_both_scatter_plots(tmp_path):
    rows = [_row("vgg", "baseline", 0, 90.0, 4.0, 2.0), _row("vgg", "baseline", 1, 91.0, 4.0, 2.1),
            _row("vgg", "kmeans", 0, 88.0, 0.5, 2.0), _row("sq", "baseline", 0, 85.0, 1.0, 1.0),
            {"model": "sq", "method": "bwn", "label": "bwn", "error": "it failed", "key": "x"}]
    paths = plot_all(rows, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_vs_latency.png", "accuracy_vs_size.png", "error_curves_sq.png",
                     "error_curves_vgg.png"]  # one curve figure per model; the failed row draws nothing
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
