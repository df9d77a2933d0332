"""Every registered method's ``size`` / ``speed`` labels, derived from what its model really does (not compared
with constants copied from the registrations).

For each method (config: its quick-bench row, else its first row in ``experiments/table2.yaml``, so every method
must have one there), on a small model of the bench's architecture:

* size ``real``  <=> the method's ``.ccz`` file is smaller than the float baseline's;
  ``simulated`` / ``none`` => it is not smaller.
* speed ``real`` <=> the deployed model (the ``.ccz`` loaded back and ``deploy.to_inference``d) runs fewer
  multiply-accumulates in PyTorch's dense conv/matmul kernels than the float baseline (``measure.dense_macs``:
  onnxruntime int8, the bit-packed XNOR kernel, sparse CSR products, smaller or factorised layers and samples that
  stopped at an early exit all do less); ``none`` / ``simulated`` => it does not.
* speed ``real`` and the method has a ``to_inference``: that swap really changes something (module types, or fewer
  dense MACs than the loaded model before the swap); speed ``none``: any swap leaves the dense work as it is.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnncompress import deploy, measure, methods, models, storage
from cnncompress.experiments.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
WIDTH = {"vgg_s": 0.125, "squeezenet1_1": 0.25}
# Kept small for a quick test; each override keeps what the label is about.
OVERRIDES = {
    "cp": {"rank": 48},  # rank 192 exceeds the layers at width 0.25 (paper width: smaller); 48 is the r48 row
    "early-exit": {"threshold": 0.0},  # an untrained head is never confident: at 0 every sample exits
    "prune-taylor": {"samples": 32},
}
# CSR beats dense at batch 1 only on layers big enough for its overhead: the bench's width (fc 1024 -> 1024)
PRESET_WIDTH = {"prune-magnitude": 0.25, "deep-compression": 0.25}
TRIES = 3  # to_inference picks CSR or dense per fc layer by timing it (one thread: a busy CPU stalls two-thread
# sparse products for milliseconds); a spoilt measurement is retried


def _configs() -> dict[str, tuple[str, dict]]:
    table2 = load_recipe(REPO / "experiments" / "table2.yaml")
    found = {}
    for row in table2.rows:
        for stage in row.pipeline if row.method != "baseline" else []:
            found.setdefault(stage["method"], (row.model, stage["config"]))
    for name in methods.available():
        for entry in methods.info(name).bench:
            found[name] = (entry["model"], entry.get("config", {}))
    return found


CONFIGS = _configs()
BUILTIN = sorted(n for n in methods.available() if methods.get(n).apply_fn.__module__.startswith("cnncompress."))


def test_every_method_has_a_row_in_the_full_grid():
    missing = [name for name in BUILTIN if name not in CONFIGS]
    assert not missing, f"add a row to experiments/table2.yaml for {missing}"


def _types(model) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules()})


@pytest.mark.parametrize("name", BUILTIN)
def test_labels_are_derived_from_the_deployed_model(name, tmp_path, random_images):
    info = methods.info(name)
    model_name, config = CONFIGS[name]
    width = PRESET_WIDTH.get(name, WIDTH[model_name])
    torch.manual_seed(0)
    base = models.build(model_name, 10, 1, 48, width).eval()
    data = random_images(64)
    config = methods.with_data(name, {**config, **OVERRIDES.get(name, {})}, (data.images, data.labels))
    compressed = methods.apply(base, name, **config).eval()
    smaller = storage.save(compressed, tmp_path / "m.ccz").stat().st_size < \
        storage.save(base, tmp_path / "base.ccz").stat().st_size
    x = data.images[:2]
    base_macs = measure.dense_macs(base, x)
    for _ in range(TRIES):
        loaded = storage.load(tmp_path / "m.ccz")
        before_types, before_macs = _types(loaded), measure.dense_macs(loaded, x)
        with measure.threads(1):
            deployed = deploy.to_inference(loaded)
        cheaper = measure.dense_macs(deployed, x) < base_macs
        if cheaper:
            break
    assert (info.size == "real") == smaller, f"{name}: size={info.size} but .ccz smaller: {smaller}"
    assert (info.speed == "real") == cheaper, f"{name}: speed={info.speed} but deployed does less dense work: {cheaper}"
    if methods.get(name).to_inference is not None:
        swapped = _types(deployed) != before_types or measure.dense_macs(deployed, x) < before_macs
        if info.speed == "real":
            assert swapped, f"{name}: speed real, but to_inference changes nothing"
        else:
            assert measure.dense_macs(deployed, x) >= before_macs, f"{name}: speed {info.speed} but a faster swap"


def test_labels_allow_none_for_size():
    from cnncompress.methods import MethodInfo
    assert MethodInfo("x", "p", size="none", speed="none").size == "none"
    with pytest.raises(ValueError, match="real|simulated|none"):
        MethodInfo("x", "p", size="some")


def test_quick_bench_has_one_representative_row_per_family():
    families = {methods.info(n).family for n in BUILTIN}
    assert families == {"binarize", "hashing", "decompose", "prune", "deep compression", "reduced precision",
                        "early exit"}
    rows = [(methods.info(n).family, n) for n in BUILTIN for _ in methods.info(n).bench]
    assert sorted(f for f, _ in rows) == sorted(families), rows
