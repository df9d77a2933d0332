"""``to_inference`` checks a file that carries probes: the deployed engine is used where it agrees with the file's
reference, refused in one line (the exact form instead) where it does not."""
import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.deploy import probes, runtime
from cnncompress.deploy.exact import FakeQuantModel
from cnncompress.deploy.int8 import OrtInt8Model
from cnncompress.storage import probe_section as probe_store


@pytest.fixture(scope="module")
def val():
    from cnncompress.data import build_dataset
    return build_dataset("mnist5k", "val", input_size=48)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory, base, val):
    model = methods.apply(base, "int8", calibration=val.images[:64])
    path, written = probes.save(model, tmp_path_factory.mktemp("int8") / "q.ccz", val.images, "mnist5k val split")
    assert written.count == probes.COUNT
    return path


@pytest.mark.parametrize("method", ["int8", "xnor"])
def test_a_file_deployed_where_it_agrees_with_its_probes_uses_its_engine(tmp_path, base, val, int8_file, method,
                                                                          capfd):
    if method == "int8":
        path = int8_file
    else:
        path, _ = probes.save(methods.apply(base, method), tmp_path / "x.ccz", val.images, "mnist5k val split")
    deployed = deploy.to_inference(storage.load(path))
    record = deployed.metadata["probe_check"]
    assert record["passed"] and record["agreement"] >= 99.0 and record["probes"] == 32, record
    assert record["isa"] and record["cpu"] and record["methods"] == method
    if method == "int8":
        assert isinstance(deployed, OrtInt8Model) and record["engine"] == "onnxruntime-int8-qdq"
    else:
        assert "cnncompress kernels" in record["engine"]
    assert capfd.readouterr().err == ""


def test_a_deliberately_broken_engine_is_refused_in_one_line(int8_file, monkeypatch, capfd):
    """The int8 engine here returns permuted logits: refused with one warning line; the exact form (the fake-quant
    twin) runs instead, and its outputs are the exact path's."""
    honest = OrtInt8Model.forward
    monkeypatch.setattr(OrtInt8Model, "forward", lambda self, x: honest(self, x).roll(1, dims=1))
    loaded = storage.load(int8_file)
    capfd.readouterr()
    fallback = deploy.to_inference(loaded)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("warning: int8 on onnxruntime-int8-qdq: only 0/32 probe images agree") and \
        "engine refused, running the exact form (onnxruntime-fake-quant) instead" in err[0], err[0]
    assert isinstance(fallback, FakeQuantModel) and not fallback.metadata["probe_check"]["passed"]
    x = probe_store.of(storage.load(int8_file)).inputs()
    assert torch.equal(fallback(x), runtime.exact_form(storage.load(int8_file))(x))


class _Permuted(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).roll(1, dims=1)


def test_a_broken_binary_runtime_falls_back_to_the_pytorch_module(tmp_path, base, val, monkeypatch, capfd):
    path, _ = probes.save(methods.apply(base, "xnor"), tmp_path / "x.ccz", val.images[:8], "mnist5k val split")
    monkeypatch.setitem(runtime.RUNTIMES, "xnor", _Permuted)
    capfd.readouterr()
    fallback = deploy.to_inference(storage.load(path))
    assert len(capfd.readouterr().err.strip().splitlines()) == 1
    x = val.images[:4]
    with torch.no_grad():
        assert torch.equal(fallback(x), storage.load(path)(x))  # the PyTorch module the file holds


def test_models_without_probes_or_with_stale_ones_are_not_checked(base, val, int8_file, capfd):
    plain = deploy.to_inference(methods.apply(base, "xnor"))
    assert "probe_check" not in plain.metadata
    stale = methods.apply(storage.load(int8_file), "fp16")
    assert probe_store.of(stale) is None
    assert "probe_check" not in runtime.to_inference(stale).metadata


def test_the_exact_form_skips_every_engine_step(base, val):
    model = methods.apply(base, "int8", calibration=val.images[:64])
    assert isinstance(runtime.exact_form(model), FakeQuantModel)
    binary = methods.apply(base, "xnor")
    exact = runtime.exact_form(binary)
    assert [type(m) for m in exact.modules()] == [type(m) for m in binary.modules()]
    assert runtime.checked_methods(methods.apply(base, "fp16")) == []


def test_an_engine_race_over_a_file_model_checks_engines_on_its_probes(int8_file, monkeypatch):
    """A model loaded from a ``.ccz`` (and the deployed form of it) carries its probes; the race checks every
    engine on those real images, never on noise: an int8 engine returning permuted logits is skipped with the
    figure, the honest one runs."""
    import dataclasses
    import sys
    loaded = storage.load(int8_file)
    deployed = deploy.to_inference(storage.load(int8_file))
    assert probe_store.of(deployed) is not None
    shape = (1, 1, 48, 48)
    for model in (loaded, deployed):
        runs, skipped = deploy.prepared(model, shape, ["onnxruntime-int8"], threads=1)
        assert list(runs) == ["onnxruntime-int8"], skipped
    registry = sys.modules["cnncompress.deploy.engines"]
    honest = registry.ENGINES["onnxruntime-int8"]
    broken = dataclasses.replace(honest, _prepare=lambda s, sh, t: (lambda x, run=honest.prepare(s, sh, t):
                                                                    run(x).roll(1, dims=1)))
    monkeypatch.setitem(registry.ENGINES, "onnxruntime-int8", broken)
    for model in (loaded, deployed):
        runs, skipped = deploy.prepared(model, shape, ["onnxruntime-int8"], threads=1)
        assert not runs and skipped["onnxruntime-int8"].startswith("agrees with its fake-quant twin on") and \
            "of 32 real images" in skipped["onnxruntime-int8"], skipped
