import json

import pytest
import torch

from cnncompress import methods, models
from cnncompress.errors import InputError
from cnncompress.experiments import stats
from cnncompress.experiments.bench import Bench, run_bench
from cnncompress.experiments.recipe import parse_recipe
from cnncompress.experiments.report import add_ratios, group_seeds, text_table
from cnncompress.methods import MethodInfo
from cnncompress.methods.registry import METHODS


def _halve_classifier(model, scale: float = 0.5):
    """A test-only method: scales the classifier weights (changes outputs, keeps size)."""
    with torch.no_grad():
        model.classifier.conv10.weight.mul_(scale)
    return model


class _Negated(torch.nn.Module):
    """The deployed form of ``test-deploy``: a different model from the trained one (logits negated)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return -self.model(x)


@pytest.fixture
def test_method():
    methods.register(MethodInfo("test-scale", "none", size="real", speed="none"), _halve_classifier)
    yield "test-scale"
    METHODS.pop("test-scale")


@pytest.fixture
def deploy_method():
    seen = []

    def apply(model, data=None):
        seen.append(data)
        return model
    methods.register(MethodInfo("test-deploy", "none", data_option="data"), apply, to_inference=_Negated)
    yield seen
    METHODS.pop("test-deploy")


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


FAST = {"data": "mnist5k", "input_size": 28, "latency_runs": 10, "threads": 1, "memory": False,
        "baselines": {"cascade_cnn": {"width": 0.25, "epochs": 1, "lr": 0.05, "batch_size": 128, "schedule": "paper"}},
        "finetune": {"epochs": 1, "lr": 0.001}}


def test_rows_get_matched_controls_deployed_accuracy_and_intervals(tmp_path, deploy_method):
    recipe = parse_recipe({**FAST, "rows": [{"model": "cascade_cnn", "method": "baseline"},
                                            {"model": "cascade_cnn", "method": "fp16", "finetune": 1},
                                            {"model": "cascade_cnn", "method": "test-deploy", "finetune": 0}]})
    rows = Bench(recipe, tmp_path, progress=False).run()
    base, scaled, deployed = rows
    assert base["accuracy"] > 50
    # the run's training split was handed to the data-dependent method (no hidden dataset)
    assert deploy_method[0].split == "train" and deploy_method[0].name == "mnist5k"
    given = f"the run's mnist5k train split ({len(deploy_method[0])} images)"
    assert deployed["data_given"] == {"test-deploy.data": given}
    # matched budget: the fine-tuned row is compared with the baseline fine-tuned as long, trained once, on disk
    assert scaled["total_finetune"] == 1 and scaled["control"]["epochs"] == 1
    assert len(scaled["control"]["history"]) == len(scaled["history"]) == 1
    assert (tmp_path / "controls" / "cascade_cnn-seed0-ft1" / "result.json").is_file()
    assert deployed["control"]["epochs"] == 0 and deployed["control"]["accuracy"] == pytest.approx(base["accuracy"])
    # the accuracy column is the deployed model's (here: a different model from the trained one)
    assert deployed["accuracy"] < 20 < deployed["accuracy_training_form"]
    assert deployed["accuracy_training_form"] == pytest.approx(base["accuracy"])
    correct = stats.unpack(deployed["correct"], deployed["images"])
    assert deployed["images"] == 1000 and 100 * correct.mean() == pytest.approx(deployed["accuracy"])
    assert base["accuracy_split"] == "test" and base["selection_split"] == "val"
    assert [r["test_evaluations"] for r in rows] == [1] * len(rows)  # the sealed test split, read once per row
    assert scaled["control"]["accuracy"] is not None
    assert all("train_error" in h and "val_error" in h for h in base["history"])
    add_ratios(rows)
    line = group_seeds(rows)[2]
    assert line["ci_low"] <= line["delta"] <= line["ci_high"]
    assert line["delta"] == pytest.approx(deployed["accuracy"] - base["accuracy"])
    table = text_table(rows)
    assert "control %" in table and "Δ acc [95% CI]" in table and f"{line['delta']:+.2f} [" in table
    # a re-run trains nothing and gives the same controls
    again = Bench(recipe, tmp_path, progress=False).run()
    assert again[1]["control"]["accuracy"] == scaled["control"]["accuracy"]


def test_only_with_an_unknown_name_fails_before_anything_is_written(tmp_path, test_method):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**RECIPE, "rows": [{"model": "squeezenet1_1", "method": "baseline"},
                                                     {"model": "squeezenet1_1", "method": test_method,
                                                      "label": "scaled"}]}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.md").write_text("published")
    with pytest.raises(InputError, match="--only 'bwn', 'nope': no row of .* has that method or label "
                                         "\\(methods: test-scale; labels: 'scaled'\\)"):
        run_bench(recipe, tmp_path / "out", only=["bwn", "scaled", "nope"], progress=False)
    assert (tmp_path / "out" / "table.md").read_text() == "published"
    assert not (tmp_path / "out" / "baselines").exists()


def test_speed_up_is_against_the_baseline_on_its_fastest_fp32_engine_and_the_label_follows_it():
    """The race's figures decide the speed-up; a method claiming real speed that measured slower says so."""
    from cnncompress.experiments.report import add_ratios
    base = {"model": "m", "method": "baseline", "seed": 0, "file_bytes": 100, "torch_ms": 2.0, "ort_ms": 1.0,
            "engine": "onnxruntime", "engine_ms": 1.0, "baseline_engine": "onnxruntime", "baseline_engine_ms": 1.0,
            "speed_real": "none"}
    fast = {**base, "method": "xnor", "file_bytes": 10, "torch_ms": 0.5, "engine": "torch", "engine_ms": 0.5,
            "baseline_engine": "openvino-fp32", "baseline_engine_ms": 0.8, "speed_real": "real"}
    slow = {**fast, "method": "cp", "engine": "onnxruntime", "engine_ms": 1.6}
    _, fast_row, slow_row = add_ratios([base, fast, slow])
    assert fast_row["speedup"] == pytest.approx(0.8 / 0.5) and fast_row["baseline_runtime"] == "openvino-fp32"
    assert fast_row["speed_here"] == "real"
    assert slow_row["speedup"] == pytest.approx(0.8 / 1.6) and slow_row["speed_here"] == "none here (slower)"
