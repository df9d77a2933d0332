"""How a ``bf16`` model runs: OpenVINO bf16 (AMX / AVX512-BF16), else PyTorch bf16 (oneDNN), else (no bf16 on
this CPU) itself in fp32 compute; ``metadata["bf16_compute"]`` of the deployed model says which ran, and why
(Berthelier 2018 §2.5, 16-bit floating point; Kalamkar et al. 2019, bfloat16)."""
from __future__ import annotations

import torch
from torch import nn

from cnncompress import hardware as cpu
from cnncompress.deploy import onnx_export, openvino
from cnncompress.deploy.torch_bf16 import TorchBf16Model
from cnncompress.methods.bf16 import GRAPH_NOTE
from cnncompress.model_card import carry

def _carry(source: nn.Module, target: nn.Module, compute: str) -> nn.Module:
    return carry(source, target, bf16_compute=compute).eval()


def _float_graph(model: nn.Module) -> bytes:
    spec = getattr(model, "spec", None) or {}
    example = torch.zeros(1, spec.get("in_channels", 3), spec.get("input_size", 224), spec.get("input_size", 224))
    return onnx_export.export_bytes(model, example)


def to_inference_bf16(model: nn.Module) -> nn.Module:
    """The model on real bf16 kernels: OpenVINO bf16, else PyTorch bf16, else (no bf16 on this CPU) itself in
    fp32 compute; ``metadata["bf16_compute"]`` says which and why."""
    if isinstance(model, (openvino.OpenVinoModel, TorchBf16Model)):
        return model
    reason = openvino.precision_missing("bf16")
    if reason is None:
        try:
            deployed = openvino.OpenVinoModel(_float_graph(model), "bf16")
            deployed.run()  # compile now: a graph OpenVINO cannot run falls back below, said so
            return _carry(model, deployed, f"openvino-bf16 ({cpu.bf16_note()})")
        except Exception as error:  # noqa: BLE001 - export or compile failed: the next engine, with the reason
            reason = f"OpenVINO failed: {str(error).strip().splitlines()[0] if str(error).strip() else error}"
    if cpu.has_bf16():
        return _carry(model, TorchBf16Model(model), f"torch-bf16 ({reason}; {cpu.bf16_note()})")
    return _carry(model, model, f"fp32 fallback: {cpu.bf16_note()} ({reason})")


def bf16_graph(model: nn.Module) -> tuple[bytes | None, str]:
    """The ``onnx_graph`` hook: the float graph (of a deployed ``OpenVinoModel``: the graph it compiled)."""
    if isinstance(model, openvino.OpenVinoModel):
        return model.onnx_model, GRAPH_NOTE
    return None, GRAPH_NOTE


