"""OpenVINO on the CPU: compile an ONNX graph at a stated precision, and run it as a ``torch`` module.

Precision is set explicitly on every compile, never left to the device default (OpenVINO's CPU plugin computes
in bf16 by default wherever the CPU supports it, so an "fp32" baseline would silently be bf16). The properties
(OpenVINO docs: "Precision Control" — ``ov::hint::inference_precision``; "Performance Hints and Thread Scheduling"
— ``ov::inference_num_threads``, ``ov::num_streams``, ``ov::hint::performance_mode``) are passed to
``Core.compile_model(model, "CPU", config)`` by their Python property objects:

* ``openvino.properties.hint.inference_precision``: ``Type.f32`` (strict fp32: the baseline engine and the
  float remainder of an int8 QDQ graph) or ``Type.bf16``;
* ``openvino.properties.inference_num_threads``: the thread count (like onnxruntime's intra-op threads);
* ``openvino.properties.streams.num``: 1 (one request at a time: batch-1 latency);
* ``openvino.properties.hint.performance_mode``: ``PerformanceMode.LATENCY``;
* ``openvino.properties.hint.enable_cpu_pinning``: False, ``hint.enable_cpu_reservation``: False (``SHARING``).
  OpenVINO shares the cores with the other engines of a race and the user's own threads: with pinning on (the
  Linux default of the latency hint, "Performance Hints and Thread Scheduling") the thread that runs an infer
  request is bound to one core for the call (OpenVINO 2026.4 on a 2-core AMD EPYC: the calling thread's
  ``Cpus_allowed_list`` reads ``0`` during ``infer``, ``0-1`` before and after), and an XNOR model timed beside
  an OpenVINO f32 model slowed from 42.5-48.9 ms to 67.9-80.6 ms (issue 34, an AVX2 host; 50.6 ms with pinning
  off). Reservation (default off) would keep the cores from others.

After compiling, the precision the compiled model reports is read back and must be the one asked for.
bf16 is offered only where ``Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")`` lists ``BF16``.

No telemetry. ``openvino.convert_model`` reports usage to Google Analytics through ``openvino_telemetry`` (a pip
dependency of openvino) unless the user has opted out: from a background thread it forks a process that sends
the event. This project makes no network call at run time, and that fork, made while the main thread was in an
OpenBLAS matrix product, deadlocked the test suite in CI (OpenBLAS's fork handler waits for its busy workers;
seen with gdb: ``openvino_telemetry/backend/backend_ga4.py`` ``send`` -> ``os.fork``). Importing this module
makes ``import openvino_telemetry`` fail (``sys.modules`` entry None, unless it was imported before), and
OpenVINO then uses its own no-op stub (``openvino.tools.ovc.telemetry_stub``).
"""
from __future__ import annotations

import functools
import io
import sys

import numpy as np
import torch
from torch import nn

from cnncompress.model_card import carry

sys.modules.setdefault("openvino_telemetry", None)  # module docstring: "No telemetry"

PRECISIONS = ("fp32", "bf16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the graph's QDQ ops decide; the rest runs fp32


class OpenVinoUnavailable(RuntimeError):
    """OpenVINO cannot run here (not installed, no bf16) or cannot run this graph; the message is one line."""


def missing() -> str | None:
    """``None`` when OpenVINO can be imported, else a one-line reason."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"openvino is not installed (pip install openvino): {error}"
    return None


@functools.lru_cache(maxsize=1)
def core():
    """The process's ``openvino.Core`` (one per process: creating it loads the device plugins)."""
    reason = missing()
    if reason:
        raise OpenVinoUnavailable(reason)
    import openvino as ov
    return ov.Core()


def capabilities() -> list[str]:
    """The CPU device's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32``, ``BF16``, ``INT8``)."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def precision_missing(precision: str) -> str | None:
    """``None`` when OpenVINO can compile at ``precision`` here, else a one-line reason."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    reason = missing()
    if reason or precision != "bf16":
        return reason
    if "BF16" not in capabilities():
        return "this CPU has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES lists no BF16)"
    return None


def version() -> str | None:
    if missing():
        return None
    import openvino as ov
    return ov.get_version()


def environment() -> dict:
    """OpenVINO's version, CPU device name, capabilities, default inference precision and the device's defaults of
    the ``SHARING`` properties that every compile overrides (or why OpenVINO is missing)."""
    reason = missing()
    if reason:
        return {"available": False, "note": reason}
    import openvino.properties.hint as hints
    return {"available": True, "version": version(), "device": str(core().get_property("CPU", "FULL_DEVICE_NAME")),
            "capabilities": capabilities(),
            "default_precision": core().get_property("CPU", hints.inference_precision()).to_string(),
            "precision_hints": dict(_HINTS),
            "device_defaults": {key: bool(core().get_property("CPU", key)) for key in SHARING}}


def _read(graph: bytes):
    import openvino as ov
    try:
        return ov.convert_model(io.BytesIO(graph))
    except Exception as error:  # noqa: BLE001 - the frontend's errors are plain RuntimeErrors
        raise OpenVinoUnavailable(f"OpenVINO cannot read the ONNX graph: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    """The first informative line of an OpenVINO error (its "Exception from src/..." location lines skipped)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[0] if lines else type(error).__name__


def _type(precision: str):
    import openvino as ov
    return {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[_HINTS[precision]]


SHARING = {"ENABLE_CPU_PINNING": False, "ENABLE_CPU_RESERVATION": False}
"""Properties that keep OpenVINO from binding or reserving cores another engine needs (set on every compile)."""


def config(precision: str, threads: int | None) -> dict:
    """The ``compile_model`` configuration for ``precision`` at ``threads`` (0/None: OpenVINO's own choice), with
    ``SHARING``'s properties."""
    import openvino.properties as props
    import openvino.properties.hint as hints
    import openvino.properties.streams as streams
    settings = {hints.inference_precision: _type(precision), streams.num: 1,
                hints.performance_mode: hints.PerformanceMode.LATENCY,
                hints.enable_cpu_pinning: SHARING["ENABLE_CPU_PINNING"],
                hints.enable_cpu_reservation: SHARING["ENABLE_CPU_RESERVATION"]}
    if threads:
        settings[props.inference_num_threads] = int(threads)
    return settings


def compile_graph(graph, precision: str, threads: int | None = None, input_shape: tuple[int, ...] | None = None):
    """Compile an ONNX graph (serialized bytes, or an ``openvino.Model``) for the CPU at ``precision``; with
    ``input_shape`` the input is made static (batch-1 latency), else it keeps the graph's dynamic batch.
    Raises ``OpenVinoUnavailable`` (one line) when OpenVINO is missing, lacks the precision, or cannot compile."""
    reason = precision_missing(precision)
    if reason:
        raise OpenVinoUnavailable(reason)
    import openvino.properties.hint as hints
    model = _read(graph) if isinstance(graph, (bytes, bytearray)) else graph
    try:
        if input_shape is not None:
            model.reshape({0: list(input_shape)})
        compiled = core().compile_model(model, "CPU", config(precision, threads))
    except Exception as error:  # noqa: BLE001
        raise OpenVinoUnavailable(f"OpenVINO cannot compile the graph: {first_line(error)}") from error
    got = compiled.get_property(hints.inference_precision())
    if got != _type(precision):
        raise OpenVinoUnavailable(f"OpenVINO compiled at {got.to_string()}, not {_HINTS[precision]} as asked")
    return compiled


def runner(compiled):
    """``run(x: torch.Tensor) -> torch.Tensor`` through one infer request of ``compiled`` (input shared, output
    copied out of the request's buffer)."""
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(request.infer(array, share_inputs=True)[0])
    return run


class OpenVinoModel(nn.Module):
    """An ONNX graph compiled by OpenVINO at ``precision``, as a module: float32 tensor in, float32 tensor out.

    One compiled model per thread count (``torch.get_num_threads()`` at call time, as ``measure.threads`` sets
    it), created lazily, with a dynamic batch. ``onnx_model`` holds the serialized graph; ``runtime`` names the
    engine for result tables (``openvino-bf16``, ...).
    """

    def __init__(self, onnx_model: bytes, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
        self.onnx_model, self.precision = onnx_model, precision
        self.runtime = f"openvino-{precision}"
        self._runs: dict[int, object] = {}

    def run(self, threads: int | None = None):
        threads = threads or torch.get_num_threads()
        if threads not in self._runs:
            self._runs[threads] = runner(compile_graph(self.onnx_model, self.precision, threads))
        return self._runs[threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run()(x)

    def __deepcopy__(self, memo):
        copied = OpenVinoModel(self.onnx_model, self.precision)
        return carry(self, copied).train(self.training)
