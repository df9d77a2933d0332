"""``optimize``: the most accurate copy of a model within a byte budget (and, when given, a latency budget),
chosen from measured per-layer sensitivity and accepted only on measured bytes and latency.

1. ``sensitivity.measure``: each layer's accuracy drop (validation split) and exact bytes for every setting.
2. ``budget_search.search``: one setting per layer maximising the predicted accuracy under Σ bytes ≤ budget
   (a multiple-choice knapsack; the cost model is additive).
3. The chosen settings are applied, the model fine-tuned with the model's fine-tuning preset (``train.preset``,
   ``finetune`` epochs; the validation split picks the epoch), saved, and the real ``.ccz`` bytes measured. When
   the file is over the budget (the additive model erred), the search is re-run with the budget lowered by the
   overshoot, up to ``ATTEMPTS`` times. The latency of the deployed model is measured on the fastest engine of
   its precision (``engines``) at batch 1, raced with the original, beside the latency the per-layer cost model
   (``latency_model``) predicted for it.
4. Per-layer pruning and weight sharing make the file smaller, not the forward faster. When that model is over
   ``max_ms``, whole-model pipelines of the methods that do make it faster (``LATENCY_LADDER``: int8 on the
   int8 engines, L1 filter pruning, both) are built from the original, fine-tuned, and measured (bytes, validation
   accuracy, latency on the engine); the most accurate one within both budgets is returned, and none within them
   is a one-line error naming the fastest and the smallest measured.

Unlabelled data (``lfw-faces``, ``faces:DIR``: every label -1) is labelled with the original's answers, so every
accuracy above is top-1 agreement with the original, and fine-tuning is distillation from the original (softmax
targets on augmented copies, batch norms re-estimated then frozen: ``_fine_tune``), as ``table-emotion`` recovers.

Every candidate built is kept in ``report["candidates"]`` (predicted vs measured bytes, accuracy and latency);
``optimize_report`` writes them as markdown, JSON and a Pareto figure.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from cnncompress import deploy, methods, storage
from cnncompress.errors import InputError
from cnncompress.budget.latency_model import FLOAT_TWIN, LatencyModel, LayerShape, layer_shapes
from cnncompress.measure import accuracy
from cnncompress.budget.budget_search import search
from cnncompress.budget.sensitivity import DECOMPOSITION_KINDS, Setting, apply_settings
from cnncompress.budget.sensitivity import measure as measure_sensitivity

GRAD_CLIP = 1.0
ATTEMPTS = 3
DISTIL = {"copies": 8, "lr": 0.001, "batch_size": 32, "optimizer": "adamw", "freeze_norm": True}
LATENCY_LADDER = (  # whole-model pipelines of speed-"real" methods, mildest first (benchmarks/bench_presets.py)
    ("int8", [("int8", {})]),
    ("L1 filters -50% MACs", [("prune-l1", {"flops": 0.5})]),
    ("L1 filters -50% MACs + int8", [("prune-l1", {"flops": 0.5}), ("int8", {})]),
    ("L1 filters -75% MACs + int8", [("prune-l1", {"flops": 0.75}), ("int8", {})]),
)


def parse_bytes(text: str | int | float, original: int | None = None) -> int:
    """``400000``, ``400KB``/``0.4MB`` (10^3 units), ``300KiB``, or ``1/16`` (of ``original``'s bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().replace(" ", "")
        units = {"KIB": 2**10, "MIB": 2**20, "KB": 1e3, "MB": 1e6, "B": 1}
        try:
            if "/" in raw:
                top, bottom = raw.split("/", 1)
                if original is None:
                    raise InputError(f"--max-bytes {text}: a fraction needs the original's size")
                value = float(top) / float(bottom) * original
            else:
                unit = next((u for u in units if raw.upper().endswith(u)), "B")
                value = float(raw[: len(raw) - len(unit)] if raw.upper().endswith(unit) else raw) * units[unit]
        except (ValueError, ZeroDivisionError) as error:
            raise InputError(f"--max-bytes {text!r}: expected bytes (400000, 400KB, 0.4MB) or a fraction (1/16)") \
                from error
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--max-bytes {text!r}: must be a positive size")
    return int(value)


def check_arguments(max_bytes, max_ms=None, engine: str | None = None, finetune: int = 2) -> None:
    """Every budget and option checked before any work (one-line ``InputError``)."""
    parse_bytes(max_bytes, 1)
    if not isinstance(finetune, int) or isinstance(finetune, bool) or finetune < 0:
        raise InputError(f"--finetune {finetune!r}: must be a whole number of epochs, 0 or more")
    if engine is not None:
        deploy.get(engine)  # an unknown engine name fails before any work
    if max_ms is not None and not (isinstance(max_ms, (int, float)) and math.isfinite(max_ms) and max_ms > 0):
        raise InputError(f"--max-ms {max_ms!r}: must be a positive number of milliseconds")


def is_unlabelled(dataset) -> bool:
    """True for a set of images without labels (``lfw-faces``, ``faces:DIR``: every label is -1)."""
    return bool(len(dataset.labels)) and bool((dataset.labels < 0).all())


def teacher_labelled(original: nn.Module, dataset):
    """A copy of ``dataset`` labelled with ``original``'s top-1 answers: its accuracy on it is the agreement with
    the original (what an unlabelled ``--data`` can measure)."""
    relabelled = copy.copy(dataset)
    with torch.inference_mode():
        original.eval()
        relabelled.labels = torch.cat([original(dataset.images[i:i + 256]).argmax(1)
                                       for i in range(0, len(dataset), 256)]).to(torch.int64)
    return relabelled


def _fine_tune(model: nn.Module, train_set, val_set, epochs: int, seed: int,
               teacher: nn.Module | None = None) -> nn.Module:
    """The model's fine-tuning preset with the global gradient norm clipped at ``GRAD_CLIP`` (a shared codebook's
    gradient sums over every weight that uses a centroid: 2-bit fc layers diverged at the preset's lr without
    it); with a ``teacher`` (unlabelled data) distillation from it instead, as ``table-emotion`` recovers: batch
    norms re-estimated on the images, then softmax targets with them frozen (``DISTIL``). The untuned model is
    kept when fine-tuning did not raise the validation accuracy."""
    from cnncompress.training.trainer import Trainer, TrainConfig, preset
    if epochs <= 0:
        return model.eval()
    before, untuned = accuracy(deploy.to_inference(model), val_set), copy.deepcopy(model.state_dict())
    torch.manual_seed(seed)
    if teacher is not None:
        from cnncompress.training.distill import augment_copies, distill, recalibrate_batch_norm
        recalibrate_batch_norm(model, augment_copies(train_set.images, DISTIL["copies"], seed=seed))
        distill(teacher, model, train_set, targets="softmax", val=val_set, epochs=epochs, seed=seed,
                heldout_copies=1, **DISTIL)
    else:
        name = (getattr(model, "spec", None) or {}).get("name", "")
        config = preset(name, "finetune", epochs=epochs, seed=seed, grad_clip=GRAD_CLIP) if name else \
            TrainConfig(epochs=epochs, seed=seed, grad_clip=GRAD_CLIP)
        Trainer(model, train_set, val_set, config, progress=False).fit()
    if accuracy(deploy.to_inference(model), val_set) < before:
        model.load_state_dict(untuned)
    return model.eval()


def measured_latency(latency: LatencyModel, deployed: nn.Module, shapes: dict | None, engine: str | None,
                     float_layers: frozenset = frozenset(), blocks: dict | None = None) -> dict:
    """The deployed model's median ms at batch 1 on ``engine`` (default: the fastest engine of its precision),
    raced with the original, and the latency model's prediction for that engine made before it is corrected by
    this measurement (``latency_model``; None without ``shapes``). ``float_layers``: layers of ``shapes`` that
    stay fp32 in an int8 graph; ``blocks``: layers deployed as a network of their own (``deployed_layers``)."""
    names = [engine] if engine else deploy.names(deploy.model_precision(deployed))
    measured, original = latency.race(deployed, names)
    if not measured:
        raise InputError(f"no engine of {', '.join(names)} can run the optimized model")
    best = min(measured, key=measured.get)
    twin = FLOAT_TWIN.get(best, best)
    predicted = None
    if shapes and twin in original:
        predicted = latency.predict(shapes, best, original[twin], float_layers, blocks)
        latency.observe(predicted, measured[best], best)
    return {"engine": best, "latency_ms": measured[best], "predicted_ms": predicted}


def optimize(model: nn.Module, train_set, val_set, max_bytes: int | str, max_ms: float | None = None,
             engine: str | None = None, finetune: int = 2, seed: int = 0, work: str | Path | None = None,
             progress=None, fp16_rest: bool = False, grid: list[Setting] | None = None,
             executor=None, fold_norms: bool = False) -> tuple[nn.Module, dict]:
    """The most accurate compressed copy of ``model`` whose real ``.ccz`` fits ``max_bytes`` (see the module
    docstring). Returns ``(model, report)``; a budget the original already meets returns the original.
    ``fp16_rest``: what the per-layer settings leave (unchanged layers, biases, batch norms, codebooks) is stored
    in half precision, in the sensitivity table and in the result alike. ``grid``: the settings tried per layer
    (default ``sensitivity.grid()``). ``executor`` (``experiments.executors``: ``LocalExecutor`` / ``RayExecutor``):
    where the latency candidates are built and fine-tuned (``call_all``); timing always happens here.
    ``fold_norms``: first fold every BatchNorm that follows a conv into it (``batchnorm_folding``; the same
    function, fewer tensors to store), then search; the budget stays a fraction of the original's bytes."""
    say = progress or (lambda line: None)
    check_arguments(max_bytes, max_ms, engine, finetune)
    model = model.eval()
    base_bytes = _size(model)
    budget = parse_bytes(max_bytes, base_bytes)
    shape = (1, *val_set.images.shape[1:])
    report = {"budget_bytes": budget, "budget_ms": max_ms, "original_bytes": base_bytes, "candidates": [],
              "unlabelled": is_unlabelled(val_set)}
    if base_bytes <= budget:
        report.update(chosen="original", reason="the original already fits the byte budget")
        return model, report
    teacher = None
    if report["unlabelled"]:  # accuracy = agreement with the original; recovery = distillation from it
        from cnncompress.training.distill import augment_copies
        teacher = copy.deepcopy(model).eval()
        val_set = copy.copy(val_set)  # a few faces score coarsely: they and augmented copies of them
        val_set.images = augment_copies(val_set.images, DISTIL["copies"], seed=20_000 + seed)
        val_set.labels = torch.full((len(val_set.images),), -1, dtype=torch.int64)
        train_set, val_set = teacher_labelled(model, train_set), teacher_labelled(model, val_set)
        say("unlabelled data: accuracy below is top-1 agreement with the original; fine-tuning distils from it")
    if fold_norms:
        from cnncompress.methods.batchnorm_folding import fold_batch_norms
        model, folded = fold_batch_norms(model, val_set.images[:8])
        report["folded_norms"] = [norm for _, norm in folded]
        say(f"folded {len(folded)} BatchNorms into their convs: {_size(model):,} bytes before any setting")
    cache = Path(work) / "sensitivity.json" if work else None
    table = measure_sensitivity(model, val_set, cache, settings=grid, progress=say, fp16_rest=fp16_rest,
                                calibration=train_set)
    report["sensitivity"] = {"base_accuracy": table["base_accuracy"], "base_bytes": table["base_bytes"]}
    target, final = budget, None
    for attempt in range(1, ATTEMPTS + 1):
        settings, predicted = search(table, target)
        key = {"fingerprint": table["fingerprint"], "settings": sorted((p, list(s.key)) for p, s in settings.items()),
               "finetune": finetune, "seed": seed, "train": len(train_set.images)}
        candidate, _ = _resumed(work, key, lambda: (_build(model, settings, seed, fp16_rest, train_set, val_set,
                                                           finetune, teacher), None), model)
        measured = {"bytes": _size(candidate), "accuracy": accuracy(deploy.to_inference(candidate), val_set)}
        entry = {"attempt": attempt, "target_bytes": target, "predicted": predicted, "measured": measured,
                 "settings": {p: s.label() for p, s in settings.items()}}
        report["candidates"].append(entry)
        say(f"candidate {attempt}: predicted {predicted['bytes']:,} B / {predicted['accuracy']:.2f}%, measured "
            f"{measured['bytes']:,} B / {measured['accuracy']:.2f}% (val)")
        if measured["bytes"] <= budget:
            final = (candidate, entry)
            break
        target = int(target * budget / measured["bytes"]) - 64  # shrink by the overshoot and retry
    if final is None:
        raise InputError(f"--max-bytes {budget:,}: after {ATTEMPTS} attempts the smallest model measured "
                         f"{min(c['measured']['bytes'] for c in report['candidates']):,} bytes; give a larger budget")
    candidate, entry = final
    latency = LatencyModel(model, shape)
    float_layers, blocks = deployed_layers(latency, candidate, settings)
    entry.update(measured_latency(latency, deploy.to_inference(candidate), latency.shapes, engine, float_layers,
                                  blocks))
    ms = entry["latency_ms"]
    entry["latency_met"] = max_ms is None or ms <= max_ms
    report.update(chosen=entry, settings=entry["settings"])
    original = deploy.fastest_deployed(model, shape, engine)
    report["original_ms"] = {"engine": original["engine"], "ms": original["ms"]}
    if max_ms is None or ms <= max_ms:
        return candidate, report
    say(f"candidate {entry['attempt']} fits the bytes but runs in {ms:.3f} ms on {entry['engine']} > {max_ms:g} ms: "
        f"trying whole-model pipelines that cut latency")
    return _latency_search(model, train_set, val_set, budget, max_ms, engine, finetune, seed, latency, say, report,
                           teacher, executor, work, table["fingerprint"])


def _build(model: nn.Module, settings: dict[str, Setting], seed: int, fp16_rest: bool, train_set, val_set,
           finetune: int, teacher) -> nn.Module:
    """``settings`` applied to a copy of ``model`` and fine-tuned; ``int8`` layers are made after fine-tuning and
    calibrated on ``train_set`` (their activation ranges are the recovered model's), then the fp16 rest."""
    late = {path: s for path, s in settings.items() if s.kind == "int8"}
    if not late:
        return _fine_tune(apply_settings(copy.deepcopy(model), settings, seed, fp16_rest), train_set, val_set,
                          finetune, seed, teacher)
    early = {path: s for path, s in settings.items() if path not in late}
    candidate = _fine_tune(apply_settings(copy.deepcopy(model), early, seed), train_set, val_set, finetune, seed,
                           teacher)
    return apply_settings(candidate, late, seed, fp16_rest, calibration=train_set)


def deployed_layers(latency: LatencyModel, candidate: nn.Module,
                    settings: dict[str, Setting]) -> tuple[frozenset, dict]:
    """What the latency of a per-layer candidate is predicted from, beside every layer at its original shape
    (pruned, shared, binary-weight and half-precision layers run as the same dense layer): the layers that stay
    fp32 when some are int8, and ``{path: deployed network}`` for the layers a decomposition replaced (its factor
    convs, timed together as one graph)."""
    eight = {path for path, s in settings.items() if s.kind == "int8"}
    floats = frozenset(p for p in latency.shapes if eight and p not in eight)
    decomposed = [path for path, s in settings.items() if s.kind in DECOMPOSITION_KINDS]
    if not decomposed:
        return floats, {}
    source = candidate if eight else deploy.to_inference(candidate)  # an int8 model deploys as one graph
    return floats, {path: source.get_submodule(path) for path in decomposed}


def _resumed(work, key: dict, build, network: nn.Module | None = None):
    """``build() -> (model, shapes)``, or what an earlier run with the same ``key`` saved in ``work/candidates``
    (a killed ``optimize`` does not fine-tune a finished candidate again). ``model`` None: nothing to save.
    ``network``: the float network the candidates come from (what a user network's file is loaded into)."""
    if work is None:
        return build()
    folder = Path(work) / "candidates"
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model_path, meta_path = folder / f"{name}.ccz", folder / f"{name}.json"
    if model_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        shapes = meta.get("shapes")
        return storage.load(model_path, model=network), (None if shapes is None else
                                          {p: LayerShape(**{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in s.items()}) for p, s in shapes.items()})
    model, shapes = build()
    if model is not None:
        folder.mkdir(parents=True, exist_ok=True)
        storage.save(model, model_path)
        meta = {"key": key, "shapes": None if not isinstance(shapes, dict) else
                {p: dataclasses.asdict(s) for p, s in shapes.items()}}
        meta_path.write_text(json.dumps(meta, default=str))  # written last: a kill before it leaves no entry
    return model, shapes


def build_pipeline(model: nn.Module, pipeline: list, train_set, val_set, finetune: int, seed: int, teacher=None,
                   input_shape: tuple[int, ...] | None = None):
    """One ``LATENCY_LADDER`` candidate: its float stages applied to a copy of ``model``, fine-tuned (or distilled
    from ``teacher``), then int8 when the pipeline asks. Returns ``(candidate, Conv/Linear shapes of the float
    stage)`` or ``(None, why)`` for a pipeline the model cannot take. A plain function of its arguments, so an
    executor can run it anywhere (``executors.RayExecutor.call_all``)."""
    candidate = copy.deepcopy(model)
    float_stages = [(method, config) for method, config in pipeline if method != "int8"]
    try:
        for method, config in float_stages:
            candidate = methods.apply(candidate, method, **methods.with_data(method, config, train_set))
        if float_stages:  # recover before int8 calibrates on the recovered model
            candidate = _fine_tune(candidate, train_set, val_set, finetune, seed, teacher)
        shapes = layer_shapes(candidate, input_shape or (1, *val_set.images.shape[1:]))  # what int8 will run
        if len(float_stages) < len(pipeline):
            candidate = methods.apply(candidate, "int8", **methods.with_data("int8", {}, train_set))
    except InputError as error:  # e.g. no filter chain to prune
        return None, str(error)
    return candidate, shapes


def _latency_search(model, train_set, val_set, budget: int, max_ms: float, engine, finetune: int, seed: int,
                    latency: LatencyModel, say, report: dict, teacher=None, executor=None, work=None,
                    fingerprint: str = "") -> tuple[nn.Module, dict]:
    """Step 4 of the module docstring: every ``LATENCY_LADDER`` pipeline built and fine-tuned (by ``executor``,
    e.g. Ray tasks in parallel, when given; finished ones reused from ``work``), then measured here one at a time."""
    feasible = []
    keys = [{"fingerprint": fingerprint, "pipeline": pipeline, "finetune": finetune, "seed": seed,
             "train": len(train_set.images)} for _, pipeline in LATENCY_LADDER]
    saved = [_resumed(work, key, lambda: (None, None), model) for key in keys]  # (None, None): not built yet
    calls = [(model, pipeline, train_set, val_set, finetune, seed, teacher, latency.input_shape)
             for (_, pipeline), (done, _) in zip(LATENCY_LADDER, saved) if done is None]
    fresh = iter(executor.call_all(build_pipeline, calls) if executor is not None else
                 [build_pipeline(*arguments) for arguments in calls])
    built = [pair if pair[0] is not None else _resumed(work, key, lambda: next(fresh), model)
             for pair, key in zip(saved, keys)]
    for (label, _), (candidate, shapes) in zip(LATENCY_LADDER, built):
        if candidate is None:
            report["candidates"].append({"pipeline": label, "skipped": shapes})
            continue
        deployed = deploy.to_inference(candidate)
        timed = measured_latency(latency, deployed, shapes, engine)
        measured = {"bytes": _size(candidate), "accuracy": accuracy(deployed, val_set)}
        entry = {"pipeline": label, "measured": measured, **timed, "latency_met": timed["latency_ms"] <= max_ms,
                 "bytes_met": measured["bytes"] <= budget}
        report["candidates"].append(entry)
        predicted = f" (predicted {timed['predicted_ms']:.3f})" if timed["predicted_ms"] is not None else ""
        say(f"{label}: {measured['bytes']:,} B, {measured['accuracy']:.2f}% (val), {timed['latency_ms']:.3f} ms"
            f"{predicted} on {timed['engine']}")
        if entry["latency_met"] and entry["bytes_met"]:
            feasible.append((measured["accuracy"], candidate, entry))
    if not feasible:
        timed = [c for c in report["candidates"] if "latency_ms" in c]
        fastest = min(timed, key=lambda c: c["latency_ms"], default=None)
        smallest = min(timed, key=lambda c: c["measured"]["bytes"], default=None)
        where = (f"; the fastest measured: {fastest['pipeline']} {fastest['latency_ms']:.3f} ms "
                 f"({fastest['measured']['bytes']:,} bytes), the smallest: {smallest['pipeline']} "
                 f"{smallest['measured']['bytes']:,} bytes" if fastest else "")
        raise InputError(f"--max-ms {max_ms:g} with --max-bytes {budget:,}: no candidate meets both{where}")
    _, candidate, entry = max(feasible, key=lambda item: item[0])
    report.update(chosen=entry, settings={"whole model": entry["pipeline"]})
    return candidate, report


def _size(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory(prefix="cnncompress-opt-") as tmp:
        return storage.save(model, Path(tmp) / "m.ccz").stat().st_size
