"""Engines: every engine runs the same model and agrees with PyTorch; unknown names and missing OpenVINO are
one-line notes, never crashes. No timed assertions (speed bars live in benchmarks/bench_engines.py)."""
import copy
import sys

import pytest
import torch

from cnncompress import deploy, methods, models
from cnncompress import hardware as cpu
from cnncompress.deploy import openvino
from cnncompress.errors import InputError

SHAPE = (3, 1, 48, 48)
HAS_OPENVINO = openvino.missing() is None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def int8(vgg):
    return methods.apply(vgg, "int8", calibration="noise", num_calibration=16)


def _scale(reference: torch.Tensor) -> float:
    return float(reference.abs().max())


@pytest.mark.parametrize("name", deploy.names("fp32"))
def test_fp32_engines_equal_torch(vgg, x, name):
    if not deploy.get(name).available():
        pytest.skip(deploy.get(name).available().reason)
    with torch.no_grad():
        reference = vgg(x)
    out = deploy.prepare(name, vgg, SHAPE, threads=1)(x)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=1e-4 * max(1.0, _scale(reference)), rtol=1e-4), name


@pytest.mark.parametrize("name", deploy.names("bf16"))
def test_bf16_engines_are_close_to_torch(vgg, x, name):
    engine = deploy.get(name)
    if not engine.available():
        pytest.skip(engine.available().reason)
    with torch.no_grad():
        reference = vgg(x)
    out = engine.prepare(vgg, SHAPE, threads=1)(x)
    assert (out - reference).abs().max() <= 0.05 * _scale(reference) + 1e-3  # bf16: 8 mantissa bits


def test_int8_engines_run_the_same_qdq_graph(int8, x):
    outputs = {}
    for name in deploy.names("int8"):
        if deploy.get(name).available():
            outputs[name] = deploy.prepare(name, int8, SHAPE, threads=1)(x)
    reference = deploy.to_inference(int8)(x)  # the deployed int8 model (onnxruntime)
    for name, out in outputs.items():
        assert torch.allclose(out, reference, atol=0.05 * _scale(reference) + 1e-3), name
    assert "onnxruntime-int8" in outputs


def test_float_engines_refuse_what_they_would_not_run_at_their_precision(vgg, int8):
    qdq = deploy.to_inference(int8).onnx_model
    with pytest.raises(deploy.EngineUnavailable, match="int8 QDQ"):
        deploy.prepare("onnxruntime", qdq, SHAPE)
    with pytest.raises(deploy.EngineUnavailable, match="no int8 QDQ graph"):
        deploy.prepare("onnxruntime-int8", vgg, SHAPE)
    with pytest.raises(deploy.EngineUnavailable, match="needs a torch model"):
        deploy.prepare("torch", qdq, SHAPE)
    with pytest.raises(deploy.EngineUnavailable, match="another engine inside"):
        deploy.prepare("torch", deploy.to_inference(int8), SHAPE)
    assert isinstance(deploy.EngineUnavailable("x"), InputError)


def test_unknown_engine_is_a_one_line_input_error(vgg):
    for call in (lambda: deploy.get("tensorrt"), lambda: deploy.prepare("tensorrt", vgg, SHAPE),
                 lambda: deploy.fastest(vgg, (1, 1, 48, 48), engines=["torch", "tensorrt"], runs=1)):
        with pytest.raises(InputError, match="unknown engine 'tensorrt'") as error:
            call()
        assert "\n" not in str(error.value) and "openvino-fp32" in str(error.value)


def test_fastest_times_every_engine_that_runs_and_names_the_fastest(vgg):
    result = deploy.fastest(vgg, (1, 1, 48, 48), engines=["torch", "onnxruntime", "onnxruntime-int8"], threads=1,
                             runs=2, block=2)
    assert set(result) == {"torch", "onnxruntime", "fastest", "skipped"}
    assert result["fastest"] in ("torch", "onnxruntime") and result["torch"] > 0 and result["onnxruntime"] > 0
    assert "int8" in result["skipped"]["onnxruntime-int8"]
    assert torch.get_num_threads() == 2  # restored


def test_fastest_fp32_races_fp32_engines_only(vgg):
    result = deploy.fastest_fp32(vgg, (1, 1, 48, 48), threads=1, runs=1, block=1)
    timed = {k for k in result if k not in ("fastest", "skipped")}
    assert timed and all(deploy.get(name).precision == "fp32" for name in timed | set(result["skipped"]))
    assert "openvino-bf16" not in result and "torch-bf16" not in result
    with pytest.raises(InputError, match="no fp32 engine"):
        deploy.fastest_fp32(vgg, (1, 1, 48, 48), engines=["onnxruntime-int8"])


def test_missing_openvino_is_skipped_with_a_note(vgg, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    for name in ("openvino-fp32", "openvino-bf16", "openvino-int8"):
        availability = deploy.get(name).available()
        assert not availability and "openvino is not installed" in availability.reason
        with pytest.raises(deploy.EngineUnavailable, match="not installed"):
            deploy.prepare(name, vgg, SHAPE)
    result = deploy.fastest(vgg, (1, 1, 48, 48), engines=["onnxruntime", "openvino-fp32"], runs=1, block=1)
    assert result["fastest"] == "onnxruntime" and "not installed" in result["skipped"]["openvino-fp32"]
    environment = deploy.engine_environment()
    assert environment["openvino"]["available"] is False and "not installed" in environment["openvino"]["note"]
    with pytest.raises(InputError, match="no engine can run"):
        deploy.fastest(vgg, (1, 1, 48, 48), engines=["openvino-fp32"], runs=1)


def test_no_bf16_cpu_makes_bf16_engines_unavailable(monkeypatch):
    monkeypatch.setattr(cpu, "has_bf16", lambda: False)
    assert not deploy.get("torch-bf16").available()
    monkeypatch.setattr(openvino, "capabilities", lambda: ["FP32", "INT8"])
    if HAS_OPENVINO:
        reason = deploy.get("openvino-bf16").available().reason
        assert "no bf16" in reason and "\n" not in reason
    assert deploy.get("openvino-fp32").available() or not HAS_OPENVINO


@needs_openvino
def test_openvino_precision_hint_is_set_and_read_back(vgg):
    import openvino as ov
    import openvino.properties.hint as hints
    from cnncompress.deploy.onnx_export import export_bytes
    graph = export_bytes(vgg, torch.zeros(1, 1, 48, 48))
    compiled = openvino.compile_graph(graph, "fp32", threads=1, input_shape=(1, 1, 48, 48))
    assert compiled.get_property(hints.inference_precision()) == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    if openvino.precision_missing("bf16") is None:
        compiled = openvino.compile_graph(graph, "bf16", threads=1)
        assert compiled.get_property(hints.inference_precision()) == ov.Type.bf16
    with pytest.raises(openvino.OpenVinoUnavailable, match="cannot read"):
        openvino.compile_graph(b"not an onnx graph", "fp32")


@needs_openvino
def test_openvino_model_is_a_module_that_copies(vgg, x):
    from cnncompress.deploy.onnx_export import export_bytes
    module = openvino.OpenVinoModel(export_bytes(vgg, x[:1]), "fp32")
    module.spec = {"name": "vgg_s"}
    copied = copy.deepcopy(module)
    assert copied.onnx_model == module.onnx_model and copied.spec == module.spec and copied.runtime == "openvino-fp32"
    with torch.no_grad():
        assert torch.allclose(copied(x), vgg(x), atol=1e-4)
        assert copied(x[:1]).shape == (1, 10)  # dynamic batch


def test_engine_environment_records_isa_flags_and_versions():
    environment = deploy.engine_environment()
    assert set(cpu.ISA_FLAGS) <= set(environment["isa"]) and isinstance(environment["amx"], bool)
    assert environment["onnxruntime"] and environment["torch"] and environment["cpu"]
    assert set(environment["engines"]) == set(deploy.ENGINES)
    if HAS_OPENVINO:
        assert environment["openvino"]["version"] and "FP32" in environment["openvino"]["capabilities"]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx512f amx_tile amx_bf16 avx512_vnni\n")
    monkeypatch.setattr(cpu, "CPUINFO", fake)
    cpu._cpuinfo.cache_clear()
    try:
        assert cpu.cpu_name() == "Test Xeon" and cpu.has_amx() and cpu.has_bf16()
        assert cpu.isa_flags()["avx512_vnni"] and not cpu.isa_flags()["avx512_bf16"]
        assert "AMX" in cpu.bf16_note()
    finally:
        cpu._cpuinfo.cache_clear()


def test_an_engine_that_computes_something_else_is_skipped_not_timed(vgg, monkeypatch):
    """An ONNX export that froze a native kernel's output into a constant runs fast and wrong: the output check
    against the model's own forward skips it, with the error in the note."""
    import dataclasses
    registry = sys.modules["cnncompress.deploy.engines"]
    wrong = dataclasses.replace(deploy.get("onnxruntime"), _prepare=lambda s, shape, t: (lambda x: torch.zeros(1, 10)))
    monkeypatch.setitem(registry.ENGINES, "onnxruntime", wrong)
    runs, skipped = deploy.prepared(vgg, (1, 1, 48, 48), ["torch", "onnxruntime"], threads=1)
    assert list(runs) == ["torch"] and skipped["onnxruntime"].startswith("output differs from the model")


def test_model_precision_follows_the_compression_history():
    """A deployed bf16 model carries its own (bf16) ONNX graph: it still runs at bf16, not on the int8 engines."""
    from cnncompress import methods, models
    net = models.build("vgg_s", 10, 1, 48, 0.25).eval()
    half = deploy.to_inference(methods.apply(net, "bf16"))
    int8 = deploy.to_inference(methods.apply(net, "int8", calibration=torch.randn(8, 1, 48, 48)))
    assert isinstance(getattr(half, "onnx_model", None), bytes)
    assert [deploy.model_precision(m) for m in (net, half, int8)] == ["fp32", "bf16", "int8"]
