import copy

import pytest
import torch

from cnncompress import deploy, models

from cnncompress.budget import sensitivity
from cnncompress.budget.budget_search import search
from cnncompress.data import build_dataset
from cnncompress.errors import InputError
from cnncompress.budget.optimizer import optimize, parse_bytes
from cnncompress.budget.sensitivity import Setting


@pytest.mark.parametrize("text, expected", [("400000", 400000), ("400KB", 400000), ("0.5MB", 500000),
                                            ("2KiB", 2048), ("1/16", 1000), (1600, 1600)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text, 16000) == expected


@pytest.mark.parametrize("text", ["-3", "0", "lots", "1/0", "nan"])
def test_parse_bytes_refuses(text):
    with pytest.raises(InputError, match="--max-bytes"):
        parse_bytes(text, 16000)


@pytest.fixture(scope="module")
def digits():
    train, val = build_dataset("mnist5k", "train"), build_dataset("mnist5k", "val")
    train.images, train.labels = train.images[:512], train.labels[:512]
    val.images, val.labels = val.images[:200], val.labels[:200]
    return train, val


@pytest.fixture(scope="module")
def trained(digits):
    """cascade_cnn x0.5 after two epochs on 512 digits: well above chance, so accuracy drops can show."""
    from cnncompress.training.trainer import Trainer, TrainConfig
    torch.manual_seed(0)
    model = models.build("cascade_cnn", 10, 1, 28, width=0.5)
    Trainer(model, digits[0], digits[1], TrainConfig(epochs=2, lr=0.05, batch_size=32), progress=False).fit()
    return model.eval()


def test_sensitivity_measures_real_bytes_and_resumes(tmp_path, digits, trained, monkeypatch):
    _, val = digits
    model = trained
    grid = [Setting(), Setting(0.9, None), Setting(0.0, 4)]
    table = sensitivity.measure(model, val, tmp_path / "s.json", settings=grid)
    assert 10 < table["base_accuracy"] <= 100  # percent, on the validation split
    for entry in table["layers"].values():
        by = {(o["sparsity"], o["bits"]): o for o in entry["options"]}
        assert by[(0.0, None)]["drop"] == 0 and by[(0.0, None)]["bytes"] == entry["fp32_bytes"]
    largest = max(table["layers"].values(), key=lambda e: e["fp32_bytes"])  # small layers: manifest overhead
    by = {(o["sparsity"], o["bits"]): o for o in largest["options"]}
    assert by[(0.0, 4)]["bytes"] < largest["fp32_bytes"] / 4  # 4-bit indices + a codebook, Huffman coded
    assert by[(0.9, None)]["bytes"] < largest["fp32_bytes"] / 2  # CSR: a tenth of the values + their indices
    monkeypatch.setattr(sensitivity, "apply_settings", lambda *a, **k: pytest.fail("recomputed a cached entry"))
    assert sensitivity.measure(model, val, tmp_path / "s.json", settings=grid) == table
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(InputError, match="s.json: holds the sensitivity of another model"):
        sensitivity.measure(other, val, tmp_path / "s.json", settings=grid)


def test_sensitivity_of_binary_half_precision_and_cp_settings(tmp_path, digits, trained):
    from torch import nn
    _, val = digits
    grid = [Setting(), Setting(kind="bwn"), Setting(kind="fp16"), Setting(kind="cp", rank=0.5),
            Setting(kind="tucker", rank=0.5)]
    table = sensitivity.measure(trained, val, tmp_path / "s.json", settings=grid, engine="onnxruntime")
    assert table["engine"] == "onnxruntime"
    convs = {p: e for p, e in table["layers"].items() if isinstance(trained.get_submodule(p), nn.Conv2d)}
    linears = {p: e for p, e in table["layers"].items() if isinstance(trained.get_submodule(p), nn.Linear)}
    largest = max(table["layers"].values(), key=lambda e: e["fp32_bytes"])
    by = {Setting.from_option(o).kind: o for o in largest["options"]}
    assert by["bwn"]["bytes"] < largest["fp32_bytes"] / 16  # 1 bit per weight + a scale per filter (+ bias)
    assert largest["fp32_bytes"] / 2.2 < by["fp16"]["bytes"] < largest["fp32_bytes"] / 1.8
    for entry in linears.values():  # CP decomposes convs only: said, not measured
        assert {"CP rank 0.5 of full", "Tucker rank 0.5 of full"} <= set(entry["not_applicable"])
    for entry in convs.values():
        kinds = {Setting.from_option(o).kind: o for o in entry["options"]}
        assert isinstance(kinds["cp"]["ms_saved"], float) and isinstance(kinds["tucker"]["ms_saved"], float)
        assert kinds["tucker"]["bytes"] < entry["fp32_bytes"]  # a smaller core and two 1x1 factors
        assert kinds["bwn"]["ms_saved"] == 0.0 and kinds["fp16"]["ms_saved"] == 0.0  # same dense layer deployed
    path = next(iter(convs))
    changed = sensitivity.apply_settings(trained, {path: Setting(kind="bwn")})
    assert type(changed.get_submodule(path)).__name__ == "BinaryConv2d"
    text = sensitivity.markdown(table)
    assert "ms saved on onnxruntime" in text and "binary weights (BWN)" in text and "not applicable" in text
    sensitivity.heatmap(table, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_sensitivity_of_int8_and_bf16_settings(tmp_path, digits, trained):
    """int8 (real int8 kernel for that layer alone, calibrated on the training images) and bf16: measured bytes,
    accuracy of the deployed model, ms saved on the precision's own engine; never both in one model."""
    train, val = digits
    grid = [Setting(), Setting(kind="int8"), Setting(kind="bf16")]
    assert set(sensitivity.grid(("int8", "bf16"))) == set(grid) and not set(grid[1:]) & set(sensitivity.grid())
    table = sensitivity.measure(trained, val, tmp_path / "s.json", settings=grid, engine="onnxruntime",
                                calibration=train)
    largest = max(table["layers"].values(), key=lambda e: e["fp32_bytes"])
    by = {Setting.from_option(o).kind: o for o in largest["options"]}
    assert by["int8"]["bytes"] < largest["fp32_bytes"] / 3  # 1 byte per weight + scales (+ the ranges stored)
    assert largest["fp32_bytes"] / 2.2 < by["bf16"]["bytes"] < largest["fp32_bytes"] / 1.8
    for entry in table["layers"].values():
        kinds = {Setting.from_option(o).kind: o for o in entry["options"]}
        assert kinds["int8"]["drop"] < 5 and isinstance(kinds["int8"]["ms_saved"], float)
        assert kinds["bf16"]["ms_saved"] is None or isinstance(kinds["bf16"]["ms_saved"], float)
    path = max(table["layers"], key=lambda p: table["layers"][p]["fp32_bytes"])
    changed = sensitivity.apply_settings(trained, {path: Setting(kind="int8")}, calibration=train)
    assert type(changed.get_submodule(path)).__name__ in ("Int8Conv2d", "Int8Linear")
    assert deploy.model_precision(changed) == "int8"
    others = [p for p in table["layers"] if p != path]
    with pytest.raises(InputError, match="one precision"):
        sensitivity.apply_settings(trained, {path: Setting(kind="int8"), others[0]: Setting(kind="bf16")},
                                   calibration=train)
    with pytest.raises(InputError, match="calibration"):
        sensitivity.apply_settings(trained, {path: Setting(kind="int8")})
    assert "int8 weights + activations" in sensitivity.markdown(table)


def test_optimize_with_int8_layers_calibrates_after_fine_tuning(tmp_path, digits, trained):
    train, val = digits
    original = sensitivity.file_size(trained)
    best, report = optimize(trained, train, val, "1/3", finetune=1, work=tmp_path,
                            grid=[Setting(), Setting(kind="int8")])
    assert sensitivity.file_size(best) <= original / 3
    assert "int8 weights + activations" in report["chosen"]["settings"].values()
    assert deploy.model_precision(best) == "int8" and report["chosen"]["engine"].endswith("int8")
    assert best.compression_history[-1]["method"] == "int8"  # made last, on the fine-tuned model
    assert report["chosen"]["predicted_ms"] > 0  # int8 layers timed on the int8 engine, the others on its fp32 twin
    assert abs(report["chosen"]["measured"]["accuracy"] - report["sensitivity"]["base_accuracy"]) < 5


def test_latency_prediction_sees_the_layers_a_candidate_deploys(digits, trained):
    """A CP layer is predicted as the factor network it deploys (timed as one graph), an int8 layer on the int8
    engine beside layers that stay fp32, every other per-layer setting as the same dense layer."""
    from cnncompress.budget.latency_model import LatencyModel
    from cnncompress.budget.optimizer import deployed_layers
    train, _ = digits
    latency = LatencyModel(trained, (1, 1, 28, 28))
    conv = next(p for p, s in latency.shapes.items() if s.kind == "conv" and s.weight[1] > 1)
    settings = {conv: Setting(kind="cp", rank=0.5), next(p for p in latency.shapes if p != conv): Setting(0.5, 4)}
    floats, blocks = deployed_layers(latency, sensitivity.apply_settings(trained, settings), settings)
    assert not floats and list(blocks) == [conv]
    factors = [m for m in blocks[conv].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(factors) >= 2 and factors[0].in_channels == latency.shapes[conv].weight[1]
    assert latency.block_ms(conv, blocks[conv], "onnxruntime") >= 0.0  # exported and run as one graph
    eight = {conv: Setting(kind="int8")}
    floats, blocks = deployed_layers(latency, sensitivity.apply_settings(trained, eight, calibration=train), eight)
    assert floats == set(latency.shapes) - {conv} and not blocks


def test_optimize_meets_the_byte_budget_in_the_real_file(tmp_path, digits, trained):
    train, val = digits
    model = trained
    original = sensitivity.file_size(model)
    best, report = optimize(model, train, val, "1/8", finetune=1, work=tmp_path)
    assert sensitivity.file_size(best) <= original / 8 and report["chosen"]["measured"]["bytes"] <= original / 8
    assert report["chosen"]["engine"] in deploy.names() and report["chosen"]["latency_ms"] > 0
    assert report["chosen"]["predicted_ms"] > 0  # the per-layer cost model's figure, beside the measured one
    assert 0 <= report["chosen"]["measured"]["accuracy"] <= 100
    import cnncompress.budget.optimizer as optimizer_module
    with pytest.MonkeyPatch.context() as patch:  # a second run (as after a kill) reuses the finished candidate
        patch.setattr(optimizer_module, "_fine_tune", lambda *a, **k: pytest.fail("fine-tuned a finished candidate"))
        again, report_again = optimize(model, train, val, "1/8", finetune=1, work=tmp_path)
    assert report_again["chosen"]["measured"] == report["chosen"]["measured"]
    assert sensitivity.file_size(again) == sensitivity.file_size(best)
    same, report = optimize(model, train, val, original * 2, work=tmp_path)
    assert same is model and report["chosen"] == "original"
    with pytest.raises(InputError, match="unknown engine"):
        optimize(model, train, val, "1/8", engine="tpu")
    with pytest.raises(InputError, match="smallest reachable"):
        optimize(model, train, val, 100, work=tmp_path)


def test_cli_bad_budgets_engines_and_models_exit_2(run_cli, tmp_path, trained):
    from cnncompress import methods, storage
    from cnncompress.training.trainer import save_weights
    trained.metadata = {"dataset": "mnist5k"}
    path = save_weights(trained, tmp_path / "m.safetensors")
    packed = storage.save(methods.apply(trained, "bwn"), tmp_path / "bwn.ccz")
    for argv, problem in (
            (["--max-bytes", "lots"], "--max-bytes 'lots'"),
            (["--max-bytes", "1/4", "--engine", "tpu"], "unknown engine 'tpu'"),
            (["--max-bytes", "1/4", "--max-ms", "-1"], "--max-ms"),
            (["--max-bytes", "1/4", "--finetune", "-1"], "--finetune"),
            (["--max-bytes", "1/4", "--kinds", "share", "ternary"], "--kinds share ternary: choose from")):
        code, _, err = run_cli("optimize", path, "--data", "mnist5k", "--out", tmp_path / "o", *argv)
        assert code == 2 and problem in err.strip().splitlines()[-1], (argv, err)
    code, _, err = run_cli("sensitivity", path, "--data", "mnist5k", "--out", tmp_path / "s", "--engine", "tpu")
    assert code == 2 and "unknown engine 'tpu'" in err.strip().splitlines()[-1]
    code, _, err = run_cli("optimize", packed, "--data", "mnist5k", "--out", tmp_path / "o", "--max-bytes", "1/4")
    assert code == 2 and "already compressed (bwn)" in err
    assert not (tmp_path / "o" / "model.ccz").exists()


def test_latency_budget_takes_the_most_accurate_pipeline_measured_within_it(tmp_path, monkeypatch):
    """Latency figures are stubbed (no timed unit tests; the real ones: README, docs/results/optimize): the
    per-layer model misses --max-ms, so the ladder's pipelines are built, fine-tuned and measured, and the most
    accurate one within both budgets is returned; none within them is a one-line error naming the fastest."""
    import cnncompress.budget.optimizer as optimizer_module
    from cnncompress import deploy as engine_registry

    def fake_latency(latency, model, shapes, engine, float_layers=frozenset(), blocks=None):
        history = [step["method"] for step in getattr(model, "compression_history", []) or []]
        ms = 1.0 - 0.5 * ("prune-l1" in history) - 0.3 * (engine_registry.model_precision(model) == "int8")
        return {"engine": "onnxruntime", "latency_ms": ms, "predicted_ms": None}
    monkeypatch.setattr(optimizer_module, "measured_latency", fake_latency)
    small_grid = [Setting(), Setting(0.5, None), Setting(0.0, 8)]  # a short sensitivity table: this test is not about it
    from cnncompress.training.trainer import Trainer, TrainConfig
    train, val = (build_dataset("mnist5k", split, input_size=48) for split in ("train", "val"))
    train.images, train.labels, val.images, val.labels = train.images[:256], train.labels[:256], val.images[:100], \
        val.labels[:100]
    torch.manual_seed(0)
    trained = models.build("vgg_s", 10, 1, 48, width=0.125)  # filter pruning needs a filter chain: VGG-S has one
    Trainer(trained, train, val, TrainConfig(epochs=1, lr=0.01, batch_size=32), progress=False).fit()
    trained.eval()
    from cnncompress.experiments.executors import LocalExecutor
    best, report = optimize(trained, train, val, "1/2", max_ms=0.55, finetune=1, work=tmp_path, grid=small_grid,
                            executor=LocalExecutor())  # candidates built through call_all
    timed = [c for c in report["candidates"] if "pipeline" in c and "latency_ms" in c]
    assert {c["pipeline"] for c in timed} >= {"int8", "L1 filters -50% MACs + int8"}
    feasible = [c for c in timed if c["latency_ms"] <= 0.55 and c["measured"]["bytes"] <= report["budget_bytes"]]
    chosen = report["chosen"]
    assert chosen in feasible and chosen["measured"]["accuracy"] == max(c["measured"]["accuracy"] for c in feasible)
    assert sensitivity.file_size(best) == chosen["measured"]["bytes"]
    with pytest.raises(InputError, match=r"no candidate meets both; the fastest measured: .* 0\.200 ms"):
        optimize(trained, train, val, "1/2", max_ms=0.1, finetune=0, work=tmp_path, grid=small_grid)


def test_fp16_rest_is_measured_in_every_file_and_cached_apart(tmp_path, digits, trained):
    """With fp16_rest the base and every option are measured with the rest in half precision: the unchanged layer
    costs half its fp32 bytes, the table is smaller, and a cache of the other kind is refused."""
    _, val = digits
    grid = [Setting(), Setting(0.0, 4)]
    plain = sensitivity.measure(trained, val, tmp_path / "plain.json", settings=grid)
    half = sensitivity.measure(trained, val, tmp_path / "half.json", settings=grid, fp16_rest=True)
    assert half["base_bytes"] < 0.6 * plain["base_bytes"]
    for path, entry in half["layers"].items():
        assert entry["stored_bytes"] == entry["fp32_bytes"] // 2
        unchanged = next(o for o in entry["options"] if o["bits"] is None)
        assert unchanged["bytes"] == entry["stored_bytes"]
    with pytest.raises(InputError, match="fp16 setting"):
        sensitivity.measure(trained, val, tmp_path / "plain.json", settings=grid, fp16_rest=True)
    settings, predicted = search(half, int(half["base_bytes"] * 0.7))
    model = sensitivity.apply_settings(copy.deepcopy(trained), settings, fp16_rest=True)
    assert abs(sensitivity.file_size(model) - predicted["bytes"]) < 0.05 * predicted["bytes"]


def test_unlabelled_data_scores_agreement_with_the_original():
    from cnncompress.budget.optimizer import is_unlabelled, teacher_labelled
    faces = build_dataset("lfw-faces", "val")
    assert is_unlabelled(faces) and not is_unlabelled(build_dataset("mnist5k", "val"))
    torch.manual_seed(0)
    model = models.build("cascade_cnn", 10, 1, 64, width=0.25).eval()
    labelled = teacher_labelled(model, faces)
    from cnncompress.measure import accuracy
    assert accuracy(model, labelled) == 100.0 and faces.labels.eq(-1).all()  # the original agrees with itself
