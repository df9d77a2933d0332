import json

import pytest
import torch

from cnncompress import deploy, methods, models, storage
from cnncompress.deploy import openvino
from cnncompress.deploy.export import compare_with_onnxruntime, export_onnx_file


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 10, 1, 48, width=0.25).eval()
    model.metadata = {"dataset": "mnist5k"}
    return model


@pytest.fixture(scope="module")
def images():
    from cnncompress.data import build_dataset
    return build_dataset("mnist5k", "val", input_size=48).images[:200]


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
    fast = deploy.to_inference(model)
    check = compare_with_onnxruntime(fast, path, images)
    assert check["top1_agreement"] >= 99.5


def test_export_cli(run_cli, tmp_path, base):
    path = storage.save(base, tmp_path / "model.ccz")
    code, out, err = run_cli("export", path, "--format", "onnx")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["top1_agreement"] >= 99.5 and (tmp_path / "model.onnx").exists()
    assert report["checked_on"] == "mnist5k"


def test_export_cli_checks_the_model_that_runs(run_cli, tmp_path, base, images):
    """The parity check of an int8 file compares onnxruntime with the deployed int8 model (quantised
    activations), not with the training-form model (which disagreed on 2 % of images, |dlogit| up to 20)."""
    model = methods.apply(base, "int8", calibration=images[:64])
    path = storage.save(model, tmp_path / "q.ccz")
    code, out, err = run_cli("export", path, "--format", "onnx")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["top1_agreement"] == 100.0 and report["max_abs_logit_diff"] < 1e-3, report
    assert "deployed" in report["checked_against"]


def test_export_asks_each_methods_onnx_graph_hook(tmp_path, monkeypatch, base):
    """``export`` knows no method by name: it asks the ``onnx_graph`` hook of each method in the history."""
    from cnncompress.deploy.export import method_graph
    from cnncompress.methods import registry

    info = registry.MethodInfo("toy", "none")
    notes = []

    def float_form(model):
        notes.append("asked")
        return None, "float form of toy"
    graph = b"a graph of the method's own"  # written as given
    monkeypatch.setitem(registry.METHODS, "toy-float", registry.Method(info, lambda m: m, onnx_graph=float_form))
    monkeypatch.setitem(registry.METHODS, "toy-graph", registry.Method(info, lambda m: m,
                                                                       onnx_graph=lambda m: (graph, "own graph")))
    monkeypatch.setitem(registry.METHODS, "toy-none", registry.Method(info, lambda m: m))

    def history(*names):
        model = methods.apply(base, "toy-none")
        model.compression_history = [{"method": name, "config": {}} for name in names]
        return model
    assert method_graph(history("toy-none")) == (None, "float graph of the toy-none model")
    assert method_graph(history("not-registered")) == (None, "float graph of the not-registered model")
    assert method_graph(history("toy-none", "toy-float")) == (None, "toy-none+toy-float model: float form of toy")
    path, note = export_onnx_file(history("toy-float", "toy-graph"), tmp_path / "own.onnx")
    assert note == "own graph" and path.read_bytes() == graph and notes == ["asked"]  # last method first
    path, note = export_onnx_file(history("toy-float"), tmp_path / "float.onnx")
    assert note == "toy-float model: float form of toy"
    assert compare_with_onnxruntime(base, path, torch.randn(4, 1, 48, 48))["top1_agreement"] == 100


needs_openvino = pytest.mark.skipif(openvino.missing() is not None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def vgg():
    """A VGG-S whose logits are not all alike (an untrained SqueezeNet's final ReLU zeroes most of them)."""
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, width=0.125).eval()
    model.metadata = {"dataset": "mnist5k"}
    return model


@needs_openvino
def test_export_openvino_writes_xml_and_bin_and_reports_agreement(run_cli, tmp_path, vgg):
    path = storage.save(vgg, tmp_path / "model.ccz")
    code, out, err = run_cli("export", path, "--format", "openvino")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    xml, weights = tmp_path / "model.xml", tmp_path / "model.bin"
    assert report["file"] == str(xml) and report["weights"] == str(weights) and xml.exists() and weights.exists()
    assert report["bytes"] == xml.stat().st_size + weights.stat().st_size
    assert weights.stat().st_size > 4 * 0.9 * sum(p.numel() for p in vgg.parameters())  # fp32, not fp16
    assert report["top1_agreement"] == 100.0 and report["max_abs_logit_diff"] < 1e-3, report
    assert report["checked_on"] == "mnist5k" and report["openvino_precision"] == "f32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.ccz", "model.xml"]  # no temp left


@needs_openvino
def test_export_openvino_of_int8_and_bf16_models(tmp_path, vgg, images):
    from cnncompress.deploy.export import export_model
    report = export_model(methods.apply(vgg, "int8", calibration=images[:64]), "openvino", tmp_path / "q.xml",
                          data="mnist5k")
    assert "int8" in report["exported"] and report["top1_agreement"] >= 99.0, report
    assert (tmp_path / "q.bin").stat().st_size < (tmp_path / "q.xml").stat().st_size + \
        sum(p.numel() for p in vgg.parameters()) * 2  # int8 weights stay int8 in the IR
    report = export_model(methods.apply(vgg, "bf16"), "openvino", tmp_path / "b.xml")
    assert "float graph" in report["exported"] and report["top1_agreement"] >= 99.0, report


def test_a_failing_export_leaves_no_file(run_cli, tmp_path, vgg, monkeypatch):
    from cnncompress.deploy import export
    path = storage.save(vgg, tmp_path / "model.ccz")

    def garbage(model, target):
        target.write_bytes(b"not an onnx graph")
        return target, "float graph"
    monkeypatch.setattr(export, "export_onnx_file", garbage)
    code, out, err = run_cli("export", path, "--format", "openvino", "--out", tmp_path / "sub" / "m.xml")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "m.xml" in err and ("OpenVINO cannot" in err or "not installed" in err)
    code, out, err = run_cli("export", path, "--format", "onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1, err  # onnxruntime cannot load it: internal error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ccz"]  # nothing half-written, no folder made


def test_export_openvino_without_openvino_is_one_line_exit_2(run_cli, tmp_path, vgg, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "openvino", None)
    path = storage.save(vgg, tmp_path / "model.ccz")
    code, out, err = run_cli("export", path, "--format", "openvino")
    assert code == 2 and "openvino is not installed" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ccz"]


def test_the_int8_method_stores_the_exporter_names_deploy_knows():
    """``methods.int8`` validates a stored calibration's exporter and opset without importing deploy: its copy of
    the names must be deploy's."""
    from cnncompress.deploy import onnx_export
    from cnncompress.methods import int8
    assert int8.EXPORTERS == onnx_export.EXPORTERS and int8.OPSET == onnx_export.OPSET


def test_a_ccz_export_carries_probes_of_the_val_split_and_reports_its_check(run_cli, tmp_path, base, images):
    """An int8 file exported as .ccz gets probes of the model's dataset's val split (never noise); the export
    reports the file's check on this machine, in the JSON and in one stderr line; re-exported it keeps them."""
    from cnncompress.storage import probe_section as probe_store
    path = storage.save(methods.apply(base, "int8", calibration=images[:64]), tmp_path / "q.ccz")
    code, out, err = run_cli("export", path, "--format", "ccz", "--out", tmp_path / "checked.ccz")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["probes"] == {"count": 32, "source": "mnist5k val split"}
    check = report["probe_check"]
    assert check["passed"] and check["engine"] == "onnxruntime-int8-qdq" and check["agreement"] >= 99.0, check
    assert err.strip().splitlines() == [f"probe check: int8 on onnxruntime-int8-qdq: {check['agreeing']}/32 probe "
                                        f"images agree with the file's reference ({check['agreement']:g} % >= 99 %) "
                                        f"on {check['cpu']} [{check['isa']}]; engine used"]
    carried = probe_store.of(storage.load(tmp_path / "checked.ccz"))
    code, out, err = run_cli("export", tmp_path / "checked.ccz", "--format", "ccz", "--out", tmp_path / "again.ccz",
                             "--fp16")
    assert code == 0, err
    assert torch.equal(probe_store.of(storage.load(tmp_path / "again.ccz")).codes, carried.codes)
    base_file = storage.save(base, tmp_path / "float.ccz")
    code, out, err = run_cli("export", base_file, "--format", "ccz", "--out", tmp_path / "float2.ccz")
    assert code == 0 and "probes" not in json.loads(out.strip().splitlines()[-1]) and err == ""
