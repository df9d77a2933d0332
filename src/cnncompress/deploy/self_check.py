"""The check a model file runs on itself where it is deployed: its probe images (``storage.probe_section``) through the
deployed engine, top-1 against the reference outputs of its exact form stored in the file.

Rule: ``agreement = 100 * #{i : argmax deployed(x_i) == argmax reference_i} / N`` over the N probes, each run
at batch 1 (as ``predict`` runs a face). At least ``THRESHOLD`` % (99): the deployed engine is used. Below it the
engine is refused: one warning line on stderr (the methods, the engine, the agreement, the CPU, what runs
instead) and the exact form runs instead. Either way the returned model records the result in
``metadata["probe_check"]`` (``record_of``; ``describe`` says it in one line: what ``cnncompress export`` and
``predict`` print) and carries the probes on, so that an engine race over it checks every engine on them.
``deploy.runtime.to_inference`` decides when to check; this module only checks.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import nn

from cnncompress import hardware, model_card
from cnncompress.storage import probe_section
from cnncompress.storage.probe_section import Probes

THRESHOLD = 99.0
"""Least top-1 agreement (%) with the file's reference at which the deployed engine is used."""
KEY = "probe_check"
KERNEL_MODULES = ("cnncompress.kernels", "cnncompress.deploy.xnor", "cnncompress.methods.binarize_inference")
"""Modules whose layers run the package's C kernels (the XNOR-popcount GEMM, fused epilogues, native stem)."""


def engine_of(model: nn.Module) -> str:
    """What runs ``model``: its engine's ``runtime`` name (``onnxruntime-int8-qdq``, ``openvino-bf16``, ...), a bf16
    model's ``bf16_compute``, else PyTorch (with the package's kernels and their ISA path where a layer of
    ``KERNEL_MODULES`` runs)."""
    runtime = getattr(model, "runtime", None)
    if isinstance(runtime, str):
        return runtime
    compute = model_card.read(model).metadata.get("bf16_compute")
    if compute:
        return f"bf16 {compute}"
    if any(type(m).__module__.startswith(KERNEL_MODULES) for m in model.modules()):
        return f"pytorch + cnncompress kernels ({kernel_path()} path)"
    return "pytorch"


def kernel_path() -> str:
    """The ISA path the package's C kernels take: the one ``CNNCOMPRESS_ISA`` forces, else the native best."""
    from cnncompress.kernels.native import IsaError, requested_isa
    try:
        return requested_isa() or "native"
    except IsaError as error:
        return f"unusable CNNCOMPRESS_ISA ({error})"


@torch.no_grad()
def run_probes(model: nn.Module, probes: Probes) -> tuple[int, float]:
    """``(probes whose top-1 equals the reference's, max |logit - reference|)`` of ``model`` over ``probes``, one
    image per call."""
    inputs, agreeing, worst = probes.inputs(), 0, 0.0
    model.eval()
    for x, reference in zip(inputs, probes.reference):
        out = torch.as_tensor(model(x.unsqueeze(0))).float().reshape(-1)
        if out.shape != reference.shape:
            raise ValueError(f"the model gives {out.numel()} outputs, its probes' reference {reference.numel()}")
        agreeing += int(out.argmax() == reference.argmax())
        worst = max(worst, float((out - reference).abs().max()))
    return agreeing, worst


def check(deployed: nn.Module, probes: Probes, exact: Callable[[], nn.Module] | None, methods: str) -> nn.Module:
    """``deployed`` when it agrees with ``probes`` on at least ``THRESHOLD`` %; else one warning line and
    ``exact()`` (the model's exact form; ``None``: the deployed form is the exact one, kept). The result is
    recorded in the returned model's ``metadata["probe_check"]``."""
    agreeing, worst = run_probes(deployed, probes)
    passed = 100.0 * agreeing / probes.count >= THRESHOLD
    record = {"methods": methods, "engine": engine_of(deployed), "agreement": round(100.0 * agreeing / probes.count, 2),
              "agreeing": agreeing, "probes": probes.count, "max_abs_logit_diff": round(worst, 6),
              "threshold": THRESHOLD, "reference": probes.form, "probe_source": probes.source,
              "cpu": hardware.cpu_name(), "isa": " ".join(hardware.summary()["isa"]), "passed": True,
              "runs": "deployed engine"}
    if passed:
        return _recorded(deployed, record, probes)
    fallback = deployed if exact is None else exact()
    record.update(passed=False, runs="the deployed form: it is the exact form, there is no other" if exact is None
                  else f"the exact form ({engine_of(fallback)})")
    print(f"warning: {refusal(record)}", file=sys.stderr)
    return _recorded(fallback, record, probes)


def _recorded(model: nn.Module, record: dict, probes: Probes) -> nn.Module:
    """``model`` with the check's record in its metadata, still carrying the file's probes (an engine race over it
    checks every engine on those real images, ``deploy.race.prepared``)."""
    model.metadata = {**model_card.read(model).metadata, KEY: record}
    probe_section.attach(model, probes)
    return model


def _agreement(record: dict) -> str:
    return (f"{record['agreeing']}/{record['probes']} probe images agree with the file's reference "
            f"({record['agreement']:g} % {'>=' if record['passed'] else '<'} {record['threshold']:g} %)")


def refusal(record: dict) -> str:
    """The one line that says an engine was refused."""
    return (f"{record['methods']} on {record['engine']}: only {_agreement(record)} on {record['cpu']} "
            f"[{record['isa']}]; engine refused, running {record['runs']} instead")


def record_of(model: nn.Module) -> dict | None:
    """The probe check ``model`` records (``None``: it carried no probes, or is not a deployed model)."""
    record = model_card.read(model).metadata.get(KEY)
    return record if isinstance(record, dict) else None


def describe(record: dict | None) -> str | None:
    """One line on a probe check (``record_of``; ``None`` for none)."""
    if not record:
        return None
    if not record.get("passed"):
        return f"probe check: {refusal(record)}"
    return (f"probe check: {record['methods']} on {record['engine']}: {_agreement(record)} on {record['cpu']} "
            f"[{record['isa']}]; engine used")
