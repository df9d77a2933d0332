"""The int8 QDQ graph's input quantisation: off the pixel lattice's rounding ties for new calibrations, unchanged
for files written before (``deploy.int8.graph_ranges``, ``Int8Calibration.input_margin``)."""
import onnx
import pytest
import torch
from onnx import numpy_helper

from cnncompress import methods
from cnncompress.data import build_dataset
from cnncompress.deploy import int8 as deploy_int8
from cnncompress.methods.int8 import INPUT_MARGIN, Int8Calibration


def _lattice_faces():
    """mnist digits as fer's input format: pixels p / 255 normalised with mean 0.5, std 0.5 (range [-1, 1])."""
    dataset = build_dataset("mnist5k", "val", input_size=48)
    pixels = dataset.images[:32] * dataset.std + dataset.mean
    return (pixels.clamp(0, 1) * 255).round() / 255 * 2 - 1


def test_the_graph_input_is_quantised_off_the_pixel_lattices_rounding_ties(vgg):
    """With the measured range [-1, 1] every pixel lies on a tie (x / s + z = k + 1/2); the graph's widened range
    moves each at least 0.0009 steps off it, so no engine's float arithmetic decides which way it rounds."""
    images = _lattice_faces()
    quantized = methods.apply(vgg, "int8", calibration=images, num_calibration=len(images))
    lo, hi = quantized.int8_calibration.ranges["input"]
    assert (lo, hi) == pytest.approx((-1.0, 1.0), abs=1e-6)
    lattice = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1

    def distance_from_tie(scale, zero):
        fraction = (lattice / scale + zero) % 1
        return (fraction - 0.5).abs().min().item()
    measured_scale = (hi - lo) / 255
    assert distance_from_tie(measured_scale, round(-lo / measured_scale)) < 1e-4  # the defect the margin removes
    graph = onnx.load_from_string(deploy_int8.int8_onnx(quantized))
    node = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    values = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    scale, zero = float(values[node.input[1]]), float(values[node.input[2]])
    assert quantized.int8_calibration.input_margin == INPUT_MARGIN > 0
    assert scale == pytest.approx(measured_scale * (1 + 2 * INPUT_MARGIN / 255), rel=1e-6)
    assert distance_from_tie(scale, zero) > 9e-4


def _input_scale(model) -> float:
    graph = onnx.load_from_string(deploy_int8.int8_onnx(model))
    node = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(next(numpy_helper.to_array(i) for i in graph.graph.initializer if i.name == node.input[1]))


def test_a_file_written_before_the_margin_keeps_the_graph_its_probes_were_recorded_on(vgg, tmp_path):
    """A calibration stored without ``input_margin`` (a file from before it) builds the unwidened graph; saved and
    loaded back, a new one keeps its margin."""
    from cnncompress import storage
    images = _lattice_faces()
    quantized = methods.apply(vgg, "int8", calibration=images, num_calibration=len(images))
    lo, hi = quantized.int8_calibration.ranges["input"]
    config = quantized.int8_calibration.build_config
    old = {key: value for key, value in config.items() if key != "input_margin"}
    quantized.int8_calibration = Int8Calibration(**old)
    assert _input_scale(quantized) == pytest.approx((hi - lo) / 255, rel=1e-6)
    quantized.int8_calibration = Int8Calibration(**config)
    storage.save(quantized, tmp_path / "q.ccz")
    loaded = storage.load(tmp_path / "q.ccz")
    assert loaded.int8_calibration.input_margin == INPUT_MARGIN
    assert _input_scale(loaded) == pytest.approx((hi - lo) / 255 * (1 + 2 * INPUT_MARGIN / 255), rel=1e-6)
    with pytest.raises(ValueError, match="input_margin"):
        Int8Calibration(**{**config, "input_margin": 1.5})
