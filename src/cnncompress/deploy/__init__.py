"""How a model runs: the one place that decides it. ``to_inference(model)`` (``runtime``) turns a compressed model
into its deployed form (each method's kernel step, then the runtime this package picks for it: int8 on
onnxruntime / OpenVINO, bf16, native XNOR blocks); ``export`` / ``onnx_export`` write its ONNX and OpenVINO graphs;
``int8``, ``bf16``, ``xnor`` hold those runtime steps (``int8_split``: which layers int8 pays for on this CPU,
measured); the engines and their race are below.

Inference engines: run one model on PyTorch, onnxruntime or OpenVINO at a stated precision, and find the
fastest here (DESIGN §5, §7: speed-ups are measured against the *fastest fp32 engine*).

An engine has a ``name``, a ``precision`` (fp32 | bf16 | int8), ``available()`` (falsy with a one-line
``.reason`` when it cannot run here: OpenVINO not installed, no bf16 on this CPU) and
``prepare(model_or_onnx_bytes, input_shape, threads) -> run(x: torch.Tensor) -> torch.Tensor``:

=====================  =========  ==========================================================================
engine                 precision  what runs
=====================  =========  ==========================================================================
``torch``              fp32       PyTorch eager, NCHW
``torch-channels-last`` fp32      PyTorch eager, channels_last
``torch-bf16``         bf16       PyTorch in bf16 (oneDNN), channels_last; only where the CPU has bf16
``onnxruntime``        fp32       the float ONNX graph in onnxruntime
``onnxruntime-int8``   int8       the model's int8 QDQ graph (``int8`` method) in onnxruntime
``openvino-fp32``      fp32       the float graph in OpenVINO, ``INFERENCE_PRECISION_HINT`` f32 (strict)
``openvino-bf16``      bf16       the float graph in OpenVINO at bf16 (AMX / AVX512-BF16); only where supported
``openvino-int8``      int8       the same QDQ graph in OpenVINO (its float remainder in f32)
=====================  =========  ==========================================================================

``fastest(model, input_shape, engines=..., threads=..., runs=...)`` -> ``{engine: median_ms, ..., "fastest":
name, "skipped": {engine: reason}}``, timed interleaved (``measure.alternating``); ``fastest_fp32`` races the
fp32 engines only; ``race({key: (model, engines)}, ...)`` times several models on their engines in one interleaved
race; ``fastest_deployed`` is a deployed model on the fastest engine of its own precision.
``engine_environment()``: CPU flags, OpenVINO / onnxruntime versions, what each engine can do. An unknown engine
name is an ``InputError``; an engine that cannot run is skipped with a note, never a crash.
"""
from cnncompress.deploy.runtime import to_inference
from cnncompress.deploy.race import engine_environment, fastest, fastest_deployed, fastest_fp32, prepared, race
from cnncompress.deploy.openvino import OpenVinoModel, OpenVinoUnavailable
from cnncompress.deploy.engines import (ENGINES, Availability, Engine, EngineUnavailable, get, model_precision, names,
                       precision_of, prepare)

__all__ = ["ENGINES", "Availability", "Engine", "EngineUnavailable", "OpenVinoModel", "OpenVinoUnavailable",
           "engine_environment", "fastest", "fastest_deployed", "fastest_fp32", "get", "model_precision", "names",
           "precision_of", "prepare", "prepared", "race", "to_inference"]
