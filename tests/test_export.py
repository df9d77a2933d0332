import json

import pytest
import torch

from cnncompress import methods, models, storage
from cnncompress.export import compare_with_onnxruntime, export_onnx_file


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 10, 1, 48, width=0.25).eval()
    model.metadata = {"dataset": "mnist5k"}
    return model


@pytest.fixture(scope="module")
def images():
    from cnncompress.data import build_dataset
    return build_dataset("mnist5k", "test", input_size=48).images[:200]


@pytest.mark.parametrize("method, config", [(None, {}), ("fp16", {}), ("tucker", {"layers": ["features.fire9.expand3x3"], "rank": 8}),
                                            ("prune-l1", {"flops": 0.5}), ("hashed", {})])
def test_float_results_export_and_agree(tmp_path, base, images, method, config):
    if method and method not in methods.available():
        pytest.skip(f"{method} not registered")
    model = methods.apply(base, method, **config) if method else base
    path, note = export_onnx_file(model, tmp_path / "m.onnx")
    check = compare_with_onnxruntime(model, path, images)
    assert check["top1_agreement"] >= 99.5 and check["max_abs_logit_diff"] < 1e-3, check
    assert "float graph" in note


def test_binary_exports_float_equivalent_and_says_so(tmp_path, base, images):
    model = methods.apply(base, "bwn")
    path, note = export_onnx_file(model, tmp_path / "b.onnx")
    assert "float equivalent" in note
    assert compare_with_onnxruntime(model, path, images)["top1_agreement"] >= 99.5


def test_int8_exports_qdq_graph(tmp_path, base, images):
    import onnx
    model = methods.apply(base, "int8", calibration=images[:64])
    path, note = export_onnx_file(model, tmp_path / "q.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "int8" in note and "QuantizeLinear" in ops
    fast = methods.to_inference(model)
    check = compare_with_onnxruntime(fast, path, images)
    assert check["top1_agreement"] >= 99.5


def test_export_cli(run_cli, tmp_path, base):
    path = storage.save(base, tmp_path / "model.ccz")
    code, out, err = run_cli("export", path, "--format", "onnx")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["top1_agreement"] >= 99.5 and (tmp_path / "model.onnx").exists()
    assert report["checked_on"] == "mnist5k"
