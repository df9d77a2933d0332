"""Where the emotion classifier's time goes: ``fer-minixception`` (64x64 grey, batch 1, 1 thread) on OpenVINO in
fp32, bf16 and int8 (the int8 QDQ graph calibrated on the LFW faces), with OpenVINO's per-layer counters
(``PERF_COUNT``) summed by layer type and kernel, beside the wall time of one infer call and of the whole
``predict.Classifier`` call on one face crop (crop preparation, engine call, softmax).

It answers why an int8 (or bf16) copy of this network cannot classify a face 2x faster: the network is 57 K
weights in small depthwise-separable layers, so the layers' own time is a fraction of the call and int8 kernels
barely shorten it.

    .venv/bin/python benchmarks/bench_classifier_layers.py          # ~30 s
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from cnncompress import deploy, measure


def _median_ms(call, runs: int) -> float:
    return 1000 * measure.median(measure.time_calls(call, runs, warmup=max(20, runs // 10)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    from cnncompress import methods
    from cnncompress.deploy import onnx_export
    from cnncompress.data.lfw import lfw_faces
    from cnncompress import hardware as cpu
    from cnncompress.deploy import openvino as ov_engine
    from cnncompress.models.loading import load_model
    from cnncompress.deploy.int8 import int8_graph
    from cnncompress.app.predict import Classifier
    if ov_engine.missing():
        print(f"OpenVINO: {ov_engine.missing()}")
        return 2
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = deploy.to_inference(load_model("fer-minixception"))
    crops = list(lfw_faces())
    reference = Classifier(model, "torch")
    face, calibration = reference.prepare(crops[:1]), reference.prepare(crops)
    int8 = deploy.to_inference(methods.apply(model, "int8", calibration=calibration))
    float_graph = onnx_export.export_bytes(model, torch.zeros(*face.shape))
    print(f"fer-minixception, batch 1, 1 thread; CPU {cpu.cpu_name()}, AMX {cpu.has_amx()}")
    x = face.numpy()
    for precision, graph in (("fp32", float_graph), ("bf16", float_graph), ("int8", int8_graph(int8)[0])):
        if ov_engine.precision_missing(precision):
            print(f"{precision}: {ov_engine.precision_missing(precision)}")
            continue
        compiled_model = ov_engine._read(graph)
        compiled_model.reshape({0: list(x.shape)})
        config = {**ov_engine.config(precision, 1), "PERF_COUNT": True}
        request = ov_engine.core().compile_model(compiled_model, "CPU", config).create_infer_request()
        call_ms = _median_ms(lambda: request.infer(x), args.runs)
        layers: dict[tuple[str, str], float] = {}
        for item in request.get_profiling_info():
            key = (item.node_type, item.exec_type)
            layers[key] = layers.get(key, 0.0) + item.real_time.total_seconds() * 1000
        top = sorted(layers.items(), key=lambda kv: -kv[1])[:5]
        print(f"openvino-{precision}: one infer call {call_ms:.3f} ms (median), its layers {sum(layers.values()):.3f} "
              "ms; by type: " + ", ".join(f"{node} [{kernel}] {ms:.3f}" for (node, kernel), ms in top))
    for name, net in (("original", model), ("int8", int8)):
        classifier = Classifier(net)
        one = [np.asarray(crops[0])]
        call_ms = _median_ms(lambda: classifier(one), args.runs)
        prepare_ms = _median_ms(lambda: classifier.prepare(one), args.runs)
        print(f"Classifier({name}) on {classifier.engine}: one face {call_ms:.3f} ms (crop preparation "
              f"{prepare_ms:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
