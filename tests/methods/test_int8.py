"""int8: per-channel codec, calibrated onnxruntime QDQ int8 model vs fp32, .ccz round trip and size."""
import os

import pytest
import torch

from cnncompress import deploy, methods, models, storage
from cnncompress.data import ImageDataset, build_dataset, final_evaluation
from cnncompress.errors import InputError
from cnncompress.deploy.int8 import OrtInt8Model
from cnncompress.methods.int8 import Int8Conv2d, Int8Linear
from cnncompress.storage.codec_int8 import INT8, dequantize_per_channel, quantize_per_channel
from cnncompress.training.trainer import TrainConfig, Trainer


def test_codec_round_trip_and_error_bound():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 2, 16)[:, None, None, None]
    for symmetric in (True, False):
        data, meta = INT8.encode(w, axis=0, symmetric=symmetric)
        INT8.check(len(data), meta, tuple(w.shape))
        assert len(data) == w.numel() + 5 * 16
        decoded = INT8.decode(data, meta, tuple(w.shape), "float32")
        q, scale, zero = quantize_per_channel(w, 0, symmetric)
        assert q.dtype == torch.int8
        assert torch.all((decoded - w).abs() <= scale[:, None, None, None] / 2 + 1e-6)
        again = INT8.decode(*INT8.encode(decoded, axis=0, symmetric=symmetric), tuple(w.shape), "float32")
        assert torch.allclose(again, decoded, atol=1e-6)
    q, scale, zero = quantize_per_channel(w, 0, True)
    assert q.abs().amax((1, 2, 3)).eq(127).all() and zero.eq(0).all()
    assert torch.allclose(dequantize_per_channel(q, scale, zero, 0), w, atol=float(scale.max()) / 2 + 1e-6)
    with pytest.raises(ValueError):
        INT8.check(len(data) - 1, meta, tuple(w.shape))
    with pytest.raises(ValueError):
        INT8.check(len(data), {"axis": 7}, tuple(w.shape))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train = build_dataset("mnist5k", "train", input_size=48)
    sealed = build_dataset("mnist5k", "test", input_size=48)
    with final_evaluation(sealed):  # these unit tests use the test images as plain held-out images
        test = ImageDataset(sealed.images, sealed.labels, sealed.classes, sealed.name, sealed.mean, sealed.std)
    train.images, train.labels = train.images[:1200], train.labels[:1200]
    model = models.build("vgg_s", 10, 1, 48, 0.25)
    Trainer(model, train, None, TrainConfig(epochs=1, lr=0.01, momentum=0.9, batch_size=32, seed=0),
            progress=False).fit()
    return model.eval(), train, test


def test_int8_agrees_with_fp32_and_ccz_is_4x_smaller(trained, tmp_path):
    model, train, test = trained
    quantized = methods.apply(model, "int8", calibration=train, num_calibration=256)
    assert isinstance(quantized.features.conv1, Int8Conv2d) and isinstance(quantized.classifier.fc6, Int8Linear)
    assert quantized.int8_calibration.num_images == 256
    inference = deploy.to_inference(quantized)
    assert isinstance(inference, OrtInt8Model) and b"QuantizeLinear" in inference.onnx_model
    images = test.images[:500]
    with torch.no_grad():
        reference = model(images).argmax(1)
        grid = quantized(images).argmax(1)
    int8 = inference(images).argmax(1)
    assert (int8 == reference).float().mean().item() >= 0.98
    assert (grid == reference).float().mean().item() >= 0.98
    storage.save(model, tmp_path / "fp32.ccz")
    storage.save(quantized, tmp_path / "int8.ccz")
    ratio = os.path.getsize(tmp_path / "fp32.ccz") / os.path.getsize(tmp_path / "int8.ccz")
    assert 3.7 < ratio < 4.0, ratio
    loaded = storage.load(tmp_path / "int8.ccz")
    assert torch.allclose(loaded.features.conv1.weight, quantized.features.conv1.weight, atol=1e-6)
    assert torch.equal(loaded.features.conv1.int8_weight()[0], quantized.features.conv1.int8_weight()[0])
    assert torch.allclose(deploy.to_inference(loaded)(images[:64]), inference(images[:64]), atol=1e-5)


def test_int8_needs_the_runs_data_noise_only_when_asked_and_bad_options_fail():
    model = models.build("squeezenet1_1", 10, 1, 48, 0.25)
    with pytest.raises(InputError, match="int8 needs calibration images"):  # no silent fallback to noise
        methods.apply(model, "int8", num_calibration=8)
    quantized = methods.apply(model, "int8", num_calibration=8, calibration="noise")
    assert quantized.compression_history[-1]["config"]["calibration"] == "noise"  # the row says so
    assert deploy.to_inference(quantized)(torch.randn(2, 1, 48, 48)).shape == (2, 10)
    with pytest.raises(InputError, match="num_calibration"):
        methods.apply(model, "int8", num_calibration=0)
    with pytest.raises(ValueError, match="no int8 calibration"):
        methods.get("int8").to_inference(model)


@pytest.mark.parametrize("calibration, problem", [
    (torch.randn(8, 3, 48, 48), "has 3 channel"),
    (torch.randn(8, 1, 32, 32), "32x32; the model takes 48x48"),
    ((torch.randn(8, 1, 48, 48), torch.full((8,), 12)), "labels in \\[12, 12\\]"),
    ("no-such-dataset", "unknown dataset"),
])
def test_int8_calibration_that_does_not_fit_the_model_is_one_line(calibration, problem):
    model = models.build("squeezenet1_1", 10, 1, 48, 0.25)
    with pytest.raises(InputError, match=problem) as error:
        methods.apply(model, "int8", num_calibration=8, calibration=calibration)
    assert "\n" not in str(error.value)


def test_int8_calibration_class_count_must_match():
    model = models.build("squeezenet1_1", 7, 1, 48, 0.25)  # a 7-class model calibrated on 10 digit classes
    with pytest.raises(InputError, match="has 10 classes; the model has 7"):
        methods.apply(model, "int8", num_calibration=8, calibration="mnist5k")


def test_int8_graph_exporters_agree_and_old_files_rebuild():
    """Calibration ranges are keyed by the exported graph's tensor names; a model calibrated with the older
    ``torchscript`` export (stored in its file) must still rebuild, and give the same logits as the default."""
    from cnncompress.deploy.int8 import int8_onnx
    from cnncompress.methods.int8 import DEFAULT_EXPORTER
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, 0.25).eval()
    images = torch.randn(64, 1, 48, 48)
    default = methods.apply(model, "int8", calibration=images, num_calibration=64)
    assert default.int8_calibration.exporter == DEFAULT_EXPORTER
    import onnx

    def ops(graph_bytes):
        return {node.op_type for node in onnx.load_from_string(graph_bytes).graph.node}
    graph = int8_onnx(default)
    assert not {"Pow", "If", "Shape"} & ops(graph)
    old = methods.apply(model, "int8", calibration=images, num_calibration=64)
    old.int8_calibration.exporter = "torchscript"
    old_graph = int8_onnx(old)
    assert {"Pow", "If", "Shape"} <= ops(old_graph)
    x = images[:8]
    new_logits, old_logits = OrtInt8Model(graph)(x), OrtInt8Model(old_graph)(x)
    assert torch.equal(new_logits.argmax(1), old_logits.argmax(1))
    assert torch.allclose(new_logits, old_logits, atol=0.05 * float(old_logits.abs().max()))


def test_int8_layers_option_chooses_layers_by_the_shared_rule(vgg):
    from torch import nn
    images = torch.randn(16, 1, 48, 48)
    convs = methods.apply(vgg, "int8", calibration=images, num_calibration=16, layers="conv")
    kinds = {type(m) for m in convs.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert kinds == {Int8Conv2d, nn.Linear}
    assert convs.compression_history[-1]["config"]["layers"] == "conv"
    with torch.no_grad():
        expected = convs(images[:4])
    assert torch.allclose(deploy.to_inference(convs)(images[:4]), expected, atol=0.1 * float(expected.abs().max()))
    one = methods.apply(vgg, "int8", calibration=images, num_calibration=16, layers=["fc6"])
    assert [p for p, m in one.named_modules() if isinstance(m, (Int8Conv2d, Int8Linear))] == ["classifier.fc6"]
    # the deployed graph runs int8 only where the model has int8 layers; with every layer int8, all of them
    assert _int8_weighted_nodes(deploy.to_inference(one).onnx_model) == ["classifier.fc6.weight"]
    assert _int8_weighted_nodes(deploy.to_inference(convs).onnx_model) == \
        [f"features.conv{i}.weight" for i in range(1, 6)]
    every = methods.apply(vgg, "int8", calibration=images, num_calibration=16)
    assert len(_int8_weighted_nodes(deploy.to_inference(every).onnx_model)) == 8
    with pytest.raises(InputError, match="no layer matches 'conv9'"):
        methods.apply(vgg, "int8", calibration=images, num_calibration=16, layers="conv9")


def _int8_weighted_nodes(graph: bytes) -> list[str]:
    """The float weight names of the Conv/Gemm nodes of a QDQ graph whose weight input is dequantised int8."""
    import onnx
    proto = onnx.load_from_string(graph)
    dequantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return sorted(dequantized[n.input[1]].removesuffix("_quantized") for n in proto.graph.node
                  if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dequantized)


def test_int8_calibrates_on_an_unlabelled_face_set():
    """Calibration is label-free: an unlabelled ImageDataset (labels -1, e.g. lfw-faces or faces:DIR) is accepted."""
    from cnncompress.data import build_dataset
    teacher = models.build("mini_xception", num_classes=7, in_channels=1, input_size=64).eval()
    faces = build_dataset("lfw-faces", "train", input_size=64, channels=1)
    assert bool((faces.labels < 0).all())
    quantized = methods.apply(teacher, "int8", calibration=faces)
    assert quantized.int8_calibration.num_images == len(faces)
