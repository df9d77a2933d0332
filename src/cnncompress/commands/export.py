"""``cnncompress export MODEL --format onnx|ccz|openvino``: write ONNX (checked in onnxruntime), OpenVINO IR
(``.xml`` + ``.bin``, checked in OpenVINO at fp32) or a ``.ccz`` (with probes where its deployed numerics depend
on the engine or CPU). The JSON report has the model's probe check here (``probe_check``); one line on stderr
says it."""
from __future__ import annotations

import json
import sys
from pathlib import Path


from cnncompress.commands import add_model_arguments, load_model_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX (verified in onnxruntime), OpenVINO IR "
                                                  "(verified in OpenVINO) or .ccz")
    add_model_arguments(parser, "the model to export")
    parser.add_argument("--format", choices=["onnx", "ccz", "openvino"], default="onnx")
    parser.add_argument("--out", help="output file (default: next to the model, model.onnx / model.ccz / "
                                      "model.xml + model.bin)")
    parser.add_argument("--data", help="dataset spec for the agreement check (default: the model's own dataset)")
    parser.add_argument("--fp16", action="store_true", help="ccz: store float tensors as fp16")
    parser.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.deploy.export import export_model
    from cnncompress.errors import InputError
    from cnncompress.models.loading import model_file
    model = load_model_arguments(args)
    suffix = {"openvino": ".xml"}.get(args.format, f".{args.format}")
    if not args.out and not args.model:
        raise InputError("--out: name the output file (the model came from --model, not from a file)")
    out = Path(args.out) if args.out else (model_file(args.model) or Path(args.model)).with_suffix(suffix)
    report = export_model(model, args.format, out, args.data, args.fp16)
    _say_probe_check(report)
    print(json.dumps(report))
    return 0


def _say_probe_check(report: dict) -> None:
    """The probe check of the exported model on this machine, one line on stderr (a refusal was said already)."""
    from cnncompress.deploy.self_check import describe
    line = describe(report.get("probe_check"))
    if line and report["probe_check"].get("passed"):
        print(line, file=sys.stderr)
    elif "probes" in report and not report["probes"]["count"]:
        print(f"probe check: the file carries no probes ({report['probes']['source']})", file=sys.stderr)
