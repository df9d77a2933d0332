"""OpenVINO reads graphs without sending telemetry: its converter runs with its own no-op stub."""
import sys

import pytest
import torch
from onnx import TensorProto, helper

from cnncompress.deploy import openvino as ov_engine


def test_converting_a_graph_uses_openvinos_no_op_telemetry_stub():
    pytest.importorskip("openvino", reason="OpenVINO not installed: nothing converts, nothing is sent")
    graph = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])], "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])]),
        opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    out = ov_engine.OpenVinoModel(graph, "fp32")(torch.tensor([[-1.0, 0.5, 2.0]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.5, 2.0]]))
    from openvino.tools.ovc import convert_impl
    assert sys.modules.get("openvino_telemetry") is None
    assert convert_impl.tm.__name__ == "openvino.tools.ovc.telemetry_stub"
