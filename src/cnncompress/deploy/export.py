"""Export a (compressed) model to ONNX or OpenVINO IR, and check the engine against the model that really runs.

Which graph a compressed model exports is each method's own answer: the ``onnx_graph`` hook of its registration
(``methods.register(..., onnx_graph=fn)``, ``fn(model) -> (graph bytes | None, note)``). Asked last method first,
the first hook that returns a graph wins (``int8``: its QDQ graph, real int8 kernels in onnxruntime). Otherwise the
float form of the model is exported (``onnx_export.export_file``) and the notes of the hooks that returned ``None``
say what it is (binary methods: the *float equivalent*, α·sign(W) as fp32 tensors and sign() activations — the
bit-packed XNOR-popcount kernel is ours and has no ONNX operator). Methods without a hook (baseline, decomposed,
pruned, hashed, fp16, ...) are float-expressible and export as themselves: "float graph".

OpenVINO IR (``--format openvino``): that same ONNX graph converted by ``openvino.convert_model`` and written by
``openvino.save_model(..., compress_to_fp16=False)`` (``.xml`` + ``.bin``, fp32 weights), then compiled at fp32
(``INFERENCE_PRECISION_HINT`` f32; a QDQ graph keeps its int8 ops) and compared with the deployed model. Every
export is written in a temporary folder beside its target and moved into place only once checked.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncompress.deploy import onnx_export
from cnncompress.errors import InputError, environment_errno


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_quantized(graph: bytes) -> bool:
    """True when the serialized ONNX graph has QuantizeLinear/DequantizeLinear nodes (an int8 QDQ graph)."""
    import onnx
    return any(node.op_type in QDQ_OPS for node in onnx.load_from_string(graph).graph.node)


def methods_of(model: nn.Module) -> list[str]:
    return [entry["method"] for entry in getattr(model, "compression_history", [])]


def _hooks(history: list[str]) -> list:
    """The graph hooks of the methods in ``history`` (``runtime.graph_hook``; same order; a method not
    registered in this process, e.g. a user's own, counts as having none)."""
    from cnncompress import methods
    from cnncompress.deploy.runtime import graph_hook
    methods.available()
    return [graph_hook(name) for name in history]


def method_graph(model: nn.Module) -> tuple[bytes | None, str]:
    """``(graph, note)``: the ONNX graph a method of the model's history supplies through its ``onnx_graph`` hook
    (the last one that does), else ``None`` and a note on the float form to export."""
    history = methods_of(model)
    notes = []
    for hook in reversed(_hooks(history)):
        if hook is None:
            continue
        graph, note = hook(model)
        if graph is not None:
            return graph, note
        if note and note not in notes:
            notes.insert(0, note)
    if notes:
        return None, f"{'+'.join(history)} model: {'; '.join(notes)}"
    return None, "float graph" + (f" of the {'+'.join(history)} model" if history else "")


def export_onnx_file(model: nn.Module, path: str | Path) -> tuple[Path, str]:
    """Write ``path`` (.onnx); returns (path, note about what was exported)."""
    graph, note = method_graph(model)
    if graph is not None:
        return onnx_export.write_graph(graph, path), note
    spec = model.spec
    shape = (1, spec["in_channels"], spec["input_size"], spec["input_size"])
    return onnx_export.export_file(model.eval(), shape, path), note


@torch.no_grad()
def agreement(model: nn.Module, run, images: torch.Tensor, batch_size: int = 64) -> dict:
    """Top-1 agreement (%) and max |Δlogit| between ``model`` and ``run(x) -> logits`` (an engine) on ``images``."""
    agree, worst, total = 0, 0.0, 0
    model = model.eval()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        ours, theirs = model(x).float(), run(x).float()
        agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        worst = max(worst, float((ours - theirs).abs().max()))
        total += len(x)
    return {"top1_agreement": 100.0 * agree / max(1, total), "max_abs_logit_diff": worst, "images": total}


def compare_with_onnxruntime(model: nn.Module, onnx_path: str | Path, images: torch.Tensor,
                             batch_size: int = 64) -> dict:
    """Top-1 agreement (%) and max |Δlogit| between our model and onnxruntime on ``images``."""
    from cnncompress.timing import DEFAULT_THREADS
    session = onnx_export.session(onnx_path, DEFAULT_THREADS)
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(np.asarray(session.run(None, {name: x.numpy().astype(np.float32)})[0]))
    return agreement(model, run, images, batch_size)


def deployed(model: nn.Module) -> nn.Module:
    """The model that really runs: a copy with every method's fast kernel swapped in (``to_inference``)."""
    import copy

    from cnncompress.deploy.runtime import to_inference
    return to_inference(copy.deepcopy(model)).eval()


def check_images(model: nn.Module, data: str | None, count: int = 64) -> tuple[torch.Tensor, str]:
    """Images for a parity check: the validation split of ``data`` (default: the dataset the model records; the
    test split is sealed for final evaluations), else ``count`` seeded random inputs (said so in the returned
    description)."""
    from cnncompress.data import build_dataset
    spec = model.spec
    data = data or (getattr(model, "metadata", {}) or {}).get("dataset")
    if data:
        return build_dataset(data, "val", input_size=spec["input_size"], channels=spec["in_channels"]).images, data
    images = torch.randn(count, spec["in_channels"], spec["input_size"], spec["input_size"],
                         generator=torch.Generator().manual_seed(0))
    return images, f"{count} random inputs (no dataset recorded; pass --data)"


FORMATS = ("onnx", "ccz", "openvino")


@contextlib.contextmanager
def staging(out: Path):
    """A temporary folder beside ``out`` for files that are moved into place (``publish``) only once complete and
    checked; removed afterwards, with the folder ``out`` was to go in if this export created it and it failed.
    A full disk or read-only folder (``errors.environment_errno``) met on the way is an ``OSError`` naming ``out``
    (not the staging name, nor nothing: some writers lose the file name), so the one-line exit-3 error says where."""
    created = not out.parent.exists()
    folder, ok = None, False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        yield folder
        ok = True
    except Exception as error:
        found = environment_errno(error)
        if found and (found[1] is None or found[1].startswith(str(out.parent / f".{out.name}."))):
            raise OSError(found[0], os.strerror(found[0]), str(out)) from error
        raise
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if created and not ok:
            with contextlib.suppress(OSError):
                out.parent.rmdir()


def publish(files: list[tuple[Path, Path]]) -> None:
    """Move each staged ``(source, target)`` into place (``os.replace``, atomic on one filesystem), in order: the
    file that names the others last (OpenVINO: ``.bin`` before ``.xml``)."""
    for source, target in files:
        os.replace(source, target)


def export_openvino_ir(model: nn.Module, xml: Path) -> tuple[Path, Path, str, str]:
    """Write OpenVINO IR (``xml`` + the ``.bin`` beside it, fp32 weights) of the model's ONNX graph (the one
    ``export_onnx_file`` writes: the method's own graph or the float form). Returns ``(xml, bin, note,
    precision)``, precision ``int8`` for a QDQ graph, else ``fp32``. ``OpenVinoUnavailable`` (one line) when
    OpenVINO is missing or cannot read the graph."""
    from cnncompress.deploy import openvino
    reason = openvino.missing()
    if reason:
        raise openvino.OpenVinoUnavailable(reason)
    import openvino as ov
    with tempfile.TemporaryDirectory(prefix="cnncompress-ir-") as tmp:
        path, note = export_onnx_file(model, Path(tmp) / "model.onnx")
        try:
            converted = ov.convert_model(str(path))
            precision = "int8" if is_quantized(path.read_bytes()) else "fp32"
            ov.save_model(converted, str(xml), compress_to_fp16=False)
        except Exception as error:  # noqa: BLE001 - the frontend's errors are plain RuntimeErrors
            raise openvino.OpenVinoUnavailable(f"OpenVINO cannot convert the graph: {openvino.first_line(error)}") \
                from error
    return xml, xml.with_suffix(".bin"), note, precision


def compare_with_openvino(model: nn.Module, xml: str | Path, images: torch.Tensor, precision: str = "fp32",
                          batch_size: int = 64) -> dict:
    """Top-1 agreement and max |Δlogit| between our model and the IR compiled by OpenVINO with
    ``INFERENCE_PRECISION_HINT`` f32 (``precision="int8"``: a QDQ graph, its int8 ops kept, the rest f32)."""
    from cnncompress.deploy import openvino
    from cnncompress.timing import DEFAULT_THREADS
    try:
        graph = openvino.core().read_model(str(xml))
    except Exception as error:  # noqa: BLE001
        raise openvino.OpenVinoUnavailable(f"OpenVINO cannot read the IR: {openvino.first_line(error)}") from error
    run = openvino.runner(openvino.compile_graph(graph, precision, DEFAULT_THREADS))
    return {**agreement(model, run, images, batch_size), "openvino_precision": "f32"}


def _rounded(check: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in check.items()}


def _export_openvino(model: nn.Module, out: Path, data: str | None) -> dict:
    from cnncompress.deploy.openvino import OpenVinoUnavailable
    xml = out.with_suffix(".xml")
    with staging(xml) as folder:
        try:
            staged_xml, staged_bin, note, precision = export_openvino_ir(model, folder / xml.name)
            images, source = check_images(model, data)
            reference = deployed(model)
            check = compare_with_openvino(reference, staged_xml, images, precision)
        except OpenVinoUnavailable as error:
            raise InputError(f"{xml}: {error}") from error
        publish([(staged_bin, xml.with_suffix(".bin")), (staged_xml, xml)])
    size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    return {"file": str(xml), "weights": str(xml.with_suffix(".bin")), "bytes": size, "exported": note,
            "engine": "openvino", "checked_on": source,
            "checked_against": "the deployed model (to_inference)", **_rounded(check), **_probe_check(reference)}


def export_model(model: nn.Module, fmt: str, out: str | Path, data: str | None = None,
                 fp16: bool = False) -> dict:
    """``cnncompress export``: write ``model`` as ``.ccz``, ONNX or OpenVINO IR. An ONNX file is checked in
    onnxruntime and an IR in OpenVINO (compiled at fp32) against the model that really runs (``to_inference``:
    int8 with quantised activations, XNOR bit-packed). Files are written under a temporary name and moved into
    place only when complete and checked: a failed export leaves nothing. A ``.ccz`` whose deployed numerics
    depend on the engine or CPU carries probes (``deploy.probes``) and reports its check here (``probe_check``);
    every export reports the check of the deployed model it compared against."""
    out = Path(out)
    targets = [out.with_suffix(".xml"), out.with_suffix(".bin")] if fmt == "openvino" else [out]
    for target in [out, *targets]:
        if target.is_dir():
            raise InputError(f"{target}: is a folder; --out takes a file name (nothing was written)")
    if fmt == "ccz":  # written in a private staging folder beside ``out`` (a unique name), then moved into place
        return _export_ccz(model, out, data, fp16)
    if fmt == "openvino":
        return _export_openvino(model, out, data)
    if fmt != "onnx":
        raise InputError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    with staging(out) as folder:
        path, note = export_onnx_file(model, folder / out.name)
        images, source = check_images(model, data)
        reference = deployed(model)
        check = compare_with_onnxruntime(reference, path, images)
        publish([(path, out)])
    return {"file": str(out), "bytes": out.stat().st_size, "exported": note, "checked_on": source,
            "checked_against": "the deployed model (to_inference)", **_rounded(check), **_probe_check(reference)}


def _probe_check(model: nn.Module) -> dict:
    """``{"probe_check": record}`` of a deployed model that checked itself on its probes (``self_check``)."""
    record = (getattr(model, "metadata", None) or {}).get("probe_check")
    return {"probe_check": record} if record else {}


def probe_source(model: nn.Module, data: str | None):
    """What a ``.ccz`` export of ``model`` carries probes of (``deploy.probes``): the probes it carries already
    (their images kept), else the validation split of ``data`` (default: the dataset the model records); ``(None,
    why)`` without real images. Never noise."""
    from cnncompress.storage import probe_section as probe_store
    carried = probe_store.of(model)
    if carried is not None:
        return carried, carried.source
    data = data or (getattr(model, "metadata", {}) or {}).get("dataset")
    if not data:
        return None, "none: no dataset recorded (pass --data)"
    from cnncompress.data import build_dataset
    spec = model.spec
    split = build_dataset(data, "val", input_size=spec.get("input_size"), channels=spec.get("in_channels"))
    return split.images, f"{data} val split"


def _export_ccz(model: nn.Module, out: Path, data: str | None, fp16: bool) -> dict:
    """The ``.ccz`` (with probes where its deployed numerics depend on the engine or CPU), and its check here."""
    from cnncompress import model_card, storage
    from cnncompress.deploy import probes
    from cnncompress.deploy.runtime import to_inference
    needed = probes.needs_probes(model)
    images, source = probe_source(model, data) if needed else (None, "")
    network = model_card.float_skeleton(model) if model_card.is_user(getattr(model, "spec", None)) else None
    with staging(out) as folder:
        path, written = probes.save(model, folder / out.name, images, source, network,
                                    float_codec="fp16" if fp16 else None)
        publish([(path, out)])
    report = {"file": str(out), "bytes": out.stat().st_size}
    if needed:
        report["probes"] = {"count": written.count if written else 0, "source": source}
        if written is not None:
            report.update(_probe_check(to_inference(storage.load(out, model=network))))
    return report
