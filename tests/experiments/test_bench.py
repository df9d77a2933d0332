import json

import pytest
import torch

from cnncompress import methods
from cnncompress.experiments.bench import Bench
from cnncompress.methods import MethodInfo
from cnncompress.methods.registry import METHODS
from cnncompress.experiments.recipe import parse_recipe
from cnncompress.experiments.report import add_ratios, text_table


def _halve_classifier(model, scale: float = 0.5):
    """A test-only method: scales the classifier weights (changes outputs, keeps size)."""
    with torch.no_grad():
        model.classifier.conv10.weight.mul_(scale)
    return model


@pytest.fixture
def test_method():
    methods.register(MethodInfo("test-scale", "none", size="real", speed="none"), _halve_classifier)
    yield "test-scale"
    METHODS.pop("test-scale")


RECIPE = {"data": "mnist5k", "input_size": 28, "latency_runs": 10, "threads": 1,
          "baselines": {"squeezenet1_1": {"width": 0.25, "epochs": 1, "lr": 0.01, "batch_size": 64}},
          "finetune": {"epochs": 1, "lr": 0.001}}


def test_bench_rows_resume_after_kill(tmp_path, test_method, monkeypatch):
    recipe = parse_recipe({**RECIPE, "rows": [{"model": "squeezenet1_1", "method": "baseline"},
                                              {"model": "squeezenet1_1", "method": test_method, "finetune": 0}]})
    bench = Bench(recipe, tmp_path, progress=False)
    original = Bench.run_row
    calls = []

    def killed_on_second_row(self, row):
        calls.append(row.method)
        if row.method == test_method:
            raise KeyboardInterrupt
        return original(self, row)
    monkeypatch.setattr(Bench, "run_row", killed_on_second_row)
    with pytest.raises(KeyboardInterrupt):
        bench.run()
    assert calls == ["baseline", test_method]
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 1

    calls.clear()
    monkeypatch.setattr(Bench, "run_row", lambda self, row: (calls.append(row.method), original(self, row))[1])
    rows = Bench(recipe, tmp_path, progress=False).run()
    assert calls == [test_method]  # the finished baseline row is not recomputed
    assert [r["method"] for r in rows] == ["baseline", test_method]
    add_ratios(rows)
    base, scaled = rows
    assert base["file_bytes"] > 0 and base["x_smaller"] == pytest.approx(1.0)
    assert scaled["x_smaller"] == pytest.approx(1.0, rel=0.01)
    for key in ("accuracy", "train_ms_step", "torch_ms", "throughput_b32", "mem_infer_mb", "mem_train_mb"):
        assert base[key] is not None and base[key] >= 0, key
    assert base["ort_ms"] and base["ort_ms"] > 0
    assert scaled["baseline_torch_ms"] > 0 and scaled["baseline_ort_ms"] > 0  # baseline re-timed beside the row
    assert "speed-up" in text_table(rows)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert stored[1]["config"] == {} and stored[1]["ccz"].endswith("model.ccz")
