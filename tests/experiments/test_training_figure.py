"""One run's error curve is a PNG, with or without validated epochs."""
from cnncompress.experiments.bench_figures import plot_history


def test_error_curve_png_with_and_without_validation(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_error": 0.5 / e, "val_error": 0.6 / e} for e in (1, 2, 3)]
    for name, rows in (("val.png", history), ("train-only.png", [{"epoch": 1, "train_loss": 0.9}])):
        path = plot_history(rows, tmp_path / name, "toy")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 3000
