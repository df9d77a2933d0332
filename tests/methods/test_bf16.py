"""bf16: weights on the bfloat16 grid, a half-size .ccz, the layer rule, real bf16 kernels at inference with a
stated fallback, and accuracy within noise of fp32 (top-1 agreement on mnist5k test images)."""
import sys

import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.data import build_dataset
from cnncompress import hardware as cpu
from cnncompress.deploy import openvino
from cnncompress.deploy.torch_bf16 import TorchBf16Model
from cnncompress.errors import InputError
from cnncompress.deploy.export import method_graph
from cnncompress.methods.bf16 import Bf16Conv2d, Bf16Linear
from cnncompress.training.trainer import TrainConfig, Trainer


def _on_grid(tensor: torch.Tensor) -> bool:
    return torch.equal(tensor, tensor.to(torch.bfloat16).float())


def test_every_float_tensor_goes_to_the_bf16_grid(vgg):
    rounded = methods.apply(vgg, "bf16")
    assert isinstance(rounded.features.conv1, Bf16Conv2d) and isinstance(rounded.classifier.fc8, Bf16Linear)
    assert all(_on_grid(t) for t in rounded.state_dict().values() if t.is_floating_point())
    assert not _on_grid(vgg.features.conv1.weight)  # the input model is untouched
    assert rounded.metadata["float_codec"] == "bf16"
    info = methods.info("bf16")
    assert info.size == "real" and info.speed in ("real", "none") and info.family == "reduced precision"


def test_ccz_is_half_and_loads_back_exactly(vgg, tmp_path):
    rounded = methods.apply(vgg, "bf16")
    fp32 = storage.save(vgg, tmp_path / "fp32.ccz").stat().st_size
    half = storage.save(rounded, tmp_path / "bf16.ccz").stat().st_size
    assert round(fp32 / half, 1) == 2.0
    loaded = storage.load(tmp_path / "bf16.ccz")
    assert isinstance(loaded.features.conv2, Bf16Conv2d)
    for name, tensor in rounded.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    manifest, _ = storage.read_manifest(tmp_path / "bf16.ccz")
    assert {entry["codec"] for entry in manifest["tensors"] if entry["dtype"] == "float32"} == {"bf16"}


def test_layers_follow_the_one_rule(vgg):
    some = methods.apply(vgg, "bf16", layers=["features.conv[23]", "fc7"])
    chosen = sorted(path for path, m in some.named_modules() if isinstance(m, (Bf16Conv2d, Bf16Linear)))
    assert chosen == ["classifier.fc7", "features.conv2", "features.conv3"]
    assert type(some.features.conv1) is nn.Conv2d and "float_codec" not in some.metadata
    assert _on_grid(some.features.conv2.weight) and not _on_grid(some.features.conv1.weight)
    with pytest.raises(InputError, match="no layer matches 'fc9'"):
        methods.apply(vgg, "bf16", layers=["fc9"])


def test_fine_tuning_keeps_weights_on_the_grid(vgg):
    rounded = methods.apply(vgg, "bf16").train()
    optimizer = torch.optim.SGD(rounded.parameters(), lr=0.1)
    nn.functional.cross_entropy(rounded(torch.randn(4, 1, 48, 48)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    rounded.features.conv1.after_step()
    assert _on_grid(rounded.features.conv1.weight)


def test_deployed_model_runs_bf16_kernels_and_says_which(vgg):
    fast = deploy.to_inference(methods.apply(vgg, "bf16"))
    compute = fast.metadata["bf16_compute"]
    if openvino.precision_missing("bf16") is None:
        assert isinstance(fast, openvino.OpenVinoModel) and fast.precision == "bf16"
        assert compute.startswith("openvino-bf16")
        graph, note = method_graph(fast)
        assert graph == fast.onnx_model and "float graph" in note
    assert fast.spec == vgg.spec and fast.compression_history[-1]["method"] == "bf16"
    assert deploy.to_inference(fast) is fast


def test_without_openvino_it_uses_torch_bf16(vgg, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(cpu, "has_bf16", lambda: True)
    fast = deploy.to_inference(methods.apply(vgg, "bf16"))
    assert isinstance(fast, TorchBf16Model) and "not installed" in fast.metadata["bf16_compute"]
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert fast(x).dtype == torch.float32 and fast(x).shape == (2, 10)


def test_a_cpu_without_bf16_falls_back_to_fp32_and_says_so(vgg, monkeypatch):
    monkeypatch.setattr(cpu, "has_bf16", lambda: False)
    monkeypatch.setattr(cpu, "has_amx", lambda: False)
    monkeypatch.setattr(openvino, "capabilities", lambda: ["FP32", "INT8"])
    rounded = methods.apply(vgg, "bf16")
    fast = deploy.to_inference(rounded)
    assert isinstance(fast.features.conv1, Bf16Conv2d)  # the reference twin: fp32 arithmetic on bf16 values
    assert fast.metadata["bf16_compute"].startswith("fp32 fallback: no bf16 arithmetic on this CPU")


def test_export_graph_is_the_float_graph(vgg):
    graph, note = method_graph(methods.apply(vgg, "bf16"))
    assert graph is None and "float graph" in note


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train = build_dataset("mnist5k", "train", input_size=48)
    train.images, train.labels = train.images[::4], train.labels[::4]  # every class (the split is class-ordered)
    model = models.build("cascade_cnn", 10, 1, 48)  # learns fastest of the models here (~80 % after one epoch)
    Trainer(model, train, None, TrainConfig(epochs=1, lr=0.02, momentum=0.9, batch_size=32, seed=0),
            progress=False).fit()
    return model.eval(), build_dataset("mnist5k", "val", input_size=48)


def test_accuracy_is_within_noise_of_fp32(trained, tmp_path):
    model, test = trained
    storage.save(methods.apply(model, "bf16"), tmp_path / "bf16.ccz")
    fast = deploy.to_inference(storage.load(tmp_path / "bf16.ccz"))
    with torch.no_grad():
        reference = model(test.images).argmax(1)
        ours = torch.cat([fast(test.images[i:i + 100]) for i in range(0, len(test.images), 100)]).argmax(1)
    assert (reference == test.labels).float().mean() > 0.5  # a model that has learnt something
    assert (ours == reference).float().mean() >= 0.99
