"""``emotion-crossfit``: the emotion headline ("8x smaller at 90 % agreement with the original") cross-fitted over
the 100 LFW faces, so that every face is held out exactly once and nothing is chosen on the faces it is scored on.

``table-emotion`` measured its headline on 25 fixed held-out faces after many variants had been scored on them.
Here the label-free pipeline is frozen first (decided 2026-12-07, before any run) and then estimated:

- **Candidates**: the two rows of ``emotion_rows.ROWS`` aimed at 8x, taken from ``ROWS`` by label:
  "k-means 3-bit on the three largest convs, 4-bit elsewhere + Huffman, BatchNorms as affine, fp16 rest" and
  "k-means 5-bit on the stem and depthwise convs, 3-bit on the three largest convs and the classifier, 4-bit
  elsewhere + Huffman, BatchNorms as affine, fp16 rest". Settings: ``emotion_rows.FULL`` unchanged (``QUICK`` for
  ``--quick``).
- **Folds**: the 100 faces of ``lfw-faces`` (its train+val pool of 75 and its sealed test split of 25, opened once
  by ``fold_faces``) permuted with a fixed seed (``FOLD_SEED``) and cut into 4
  folds of 25. In fold k the other 75 faces are split by ``split_validation`` into train / val (67 / 8); the copy
  distils on the train faces (+ the transfer images), and the selection set (augmented val faces + natural crops,
  ``emotion_faces.selection_set``) chooses its epoch and whether recovery is kept; fold k's 25 faces (each with 3
  augmented copies: ``heldout_copies`` = 4 images per face) are only measured.
- **Per fold**: both candidates run at seed 0 (``emotion_table.run_row``: apply, recover, measure). **Selection
  rule** (selection set only): among candidates whose ``.ccz`` is >= 8x smaller than the original's file, the one
  with the highest agreement with the original on the fold's selection images after recovery
  (``selection_agreement``: the copy in the file on ``augment_copies(selection_set(...).images, heldout_copies,
  seed=20_000 + seed)``, the images of run_row's ``val_after``); ties: the smaller file; if none is >= 8x, the one
  with the largest ratio. ``pick`` sees only label, selection agreement, bytes and ratio. The picked candidate then
  runs again at seed 1 in that fold. (``run_row`` measures every row it runs, so the unpicked candidate's row also
  holds held-out figures; they enter neither the pick nor the headline.)
- **Headline**: the picked rows of the 4 folds pooled (100 held-out faces, 2 seeds): agreement with the original
  on the faces alone, with a Wilson 95 % interval per seed (k of 100) and pooled (the mean over seeds as a
  proportion of n = 100 faces: seeds add no faces); and on the faces with their 3 augmented copies, with a 95 %
  two-level bootstrap that resamples seeds, then faces as clusters (a face with its copies; ``stats.delta_interval``
  on the per-face cluster means, the same resampled faces for every seed); the mean size ratio (range over rows).
- **Verdict** (``experiments.verdict``): the finding "8x smaller at 90 %" is a non-inferiority claim against 90 %
  with margin 0: Δ = agreement − 90 points, claim ``above 0``, decided by the interval only, for the faces (pooled
  Wilson) and for the faces with copies (bootstrap); the size by its range (deterministic), claim ``above 8``. It
  **holds** when all three hold, **does not hold** when any does not hold, else **inconclusive**.

Resumable like ``table-emotion``: each fold / candidate / seed writes ``<out>/fold<k>/<slug>-s<seed>/row.json``
and is reused; an ``out`` holding rows of other settings is refused in one line. Writes ``<out>/results.json``
(everything, with each face's fold and per-image agreement vectors) and ``<out>/report.md``.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cnncompress.errors import InputError
from cnncompress.experiments import emotion_faces, emotion_table
from cnncompress.experiments.environment import git_commit
from cnncompress.experiments.emotion_report import describe
from cnncompress.experiments.emotion_rows import FULL, QUICK, ROWS
from cnncompress.experiments.emotion_selection import MIN_RATIO, SELECTION_KEYS, pick, selection_view  # noqa: F401
from cnncompress.experiments.verdict import FAILS, HOLDS, INCONCLUSIVE, Claim, decide, wilson

CANDIDATES = ("k-means 3-bit on the three largest convs, 4-bit elsewhere + Huffman, BatchNorms as affine, fp16 rest",
              "k-means 5-bit on the stem and depthwise convs, 3-bit on the three largest convs and the classifier, "
              "4-bit elsewhere + Huffman, BatchNorms as affine, fp16 rest")
FOLDS = 4
FOLD_SEED = 0  # the fixed permutation of the pooled faces that ``fold_faces`` cuts into folds
PICK_SEED, CONFIRM_SEED = 0, 1
BAR = 90.0
AGREEMENT_CLAIM = Claim("above", 0.0)  # Δ = agreement − BAR points: non-inferiority against 90 %, margin 0
SIZE_CLAIM = Claim("above", MIN_RATIO)


def candidates() -> list[tuple]:
    """``(label, pipeline, recover)`` of each candidate, from ``emotion_rows.ROWS`` by label."""
    rows = {row[0]: row for row in ROWS}
    missing = [label for label in CANDIDATES if label not in rows]
    if missing:
        raise InputError(f"emotion-crossfit: candidate row(s) not in emotion_rows.ROWS: {'; '.join(missing)}")
    return [rows[label] for label in CANDIDATES]


def fold_faces(dataset: str, teacher, fold: int, folds: int = FOLDS) -> dict:
    """``emotion_faces.faces`` for cross-fitting: every face pooled (the ``train+val`` pool, then the sealed
    ``test`` split, opened here once through ``final_evaluation``: each face is held out in exactly one fold),
    permuted with ``FOLD_SEED``, cut into ``folds`` near-equal folds; fold ``fold`` is ``heldout`` (sealed again:
    read only inside ``final_evaluation``), the other faces are split by ``split_validation`` into train / val.
    ``heldout_index`` / ``train_index`` / ``val_index``: each face's index in that pool (train+val pool first), so
    folds can be pooled per face; ``pool_size``: how many faces."""
    from cnncompress.data import final_evaluation, split_validation
    from cnncompress.data.datasets import ImageDataset, validation_indices
    if not (isinstance(folds, int) and folds >= 2) or not (isinstance(fold, int) and 0 <= fold < folds):
        raise InputError(f"fold {fold!r} of {folds!r}: need 0 <= fold < folds and folds >= 2")
    pool, test, fmt = emotion_faces.pooled_faces(dataset, teacher)
    with final_evaluation(test):  # once: cross-fitting holds each of these faces out in exactly one fold
        images = torch.cat([pool.images, test.images])
        labels = torch.cat([pool.labels, test.labels])
    if len(images) < 3 * folds:
        raise InputError(f"{pool.name}: {len(images)} faces are too few for {folds} folds")
    order = np.random.default_rng(FOLD_SEED).permutation(len(images))
    held = np.sort(np.array_split(order, folds)[fold])
    rest = np.setdiff1d(np.arange(len(images)), held)  # sorted
    rest_set = ImageDataset(images[rest], labels[rest], pool.classes, pool.name, pool.mean, pool.std, "train+val")
    train, val = split_validation(rest_set)
    keep, chosen = validation_indices(rest_set)  # the positions split_validation took
    heldout = ImageDataset(images[held], labels[held], pool.classes, pool.name, pool.mean, pool.std, "test",
                           sealed=True)
    return {"train": train, "val": val, "heldout": heldout, "format": fmt, "fold": fold, "folds": folds,
            "pool_size": len(images), "heldout_index": [int(i) for i in held],
            "train_index": [int(rest[i]) for i in keep], "val_index": [int(rest[i]) for i in chosen]}


def clusters(agree_vector, faces: int) -> np.ndarray:
    """A held-out agreement vector (copy-major: the faces, then each augmented copy of them) as (faces, copies)."""
    vector = np.asarray(agree_vector, dtype=np.float64)
    if faces <= 0 or len(vector) % faces:
        raise ValueError(f"{len(vector)} images are not whole copies of {faces} faces")
    return vector.reshape(-1, faces).T


def cluster_interval(per_seed: list[np.ndarray], reps: int = 2000, seed: int = 0) -> dict:
    """Agreement (%) over seeds with a 95 % two-level bootstrap: seeds, then faces as clusters. ``per_seed``: one
    (faces, copies) array per seed over the same faces. ``stats.delta_interval`` on the per-face cluster means
    (resamples the seeds and, for all of them alike, the faces)."""
    from cnncompress.experiments.stats import delta_interval
    means = [np.asarray(m, dtype=np.float64).mean(axis=1) for m in per_seed]
    result = delta_interval([(m, np.zeros_like(m)) for m in means], reps=reps, seed=seed)
    clip = lambda v: min(100.0, max(0.0, v))  # noqa: E731
    return {"agreement": clip(result["delta"]), "low": clip(result["low"]), "high": clip(result["high"]),
            "faces": result["images"], "seeds": result["seeds"], "reps": reps}


def wilson_percent(successes: float, n: int) -> dict:
    low, high = wilson(successes, n)
    return {"agreement": 100.0 * successes / n, "low": 100.0 * low, "high": 100.0 * high, "n": n}


def headline(folds: list[dict]) -> dict:
    """The pooled figures of the picked rows (``folds``: each ``{"heldout_index", "seeds": {seed: {"agree_vector",
    "bytes", "size_ratio"}}}``) and the verdict."""
    seeds = sorted({int(s) for f in folds for s in f["seeds"]})
    per_seed = []
    for s in seeds:  # (faces, copies) of every held-out face, in pool-index order
        parts = [(i, row) for f in folds for i, row in zip(f["heldout_index"],
                                                           clusters(f["seeds"][str(s)]["agree_vector"],
                                                                    len(f["heldout_index"])))]
        per_seed.append(np.stack([row for _, row in sorted(parts, key=lambda p: p[0])]))
    n = per_seed[0].shape[0]
    hits = [int(m[:, 0].sum()) for m in per_seed]
    faces = {"per_seed": {str(s): wilson_percent(k, n) for s, k in zip(seeds, hits)},
             "pooled": wilson_percent(float(np.mean(hits)), n)}
    augmented = cluster_interval(per_seed)
    ratios = [f["seeds"][str(s)]["size_ratio"] for f in folds for s in seeds]
    size = {"mean": float(np.mean(ratios)), "low": float(min(ratios)), "high": float(max(ratios)),
            "bytes": [f["seeds"][str(s)]["bytes"] for f in folds for s in seeds]}
    parts = {"size": decide(size["low"], size["high"], SIZE_CLAIM),
             "faces": decide(faces["pooled"]["low"] - BAR, faces["pooled"]["high"] - BAR, AGREEMENT_CLAIM),
             "faces_with_copies": decide(augmented["low"] - BAR, augmented["high"] - BAR, AGREEMENT_CLAIM)}
    overall = (FAILS if FAILS in parts.values() else HOLDS if set(parts.values()) == {HOLDS} else INCONCLUSIVE)
    return {"faces": faces, "faces_with_copies": augmented, "size_ratio": size, "faces_total": n, "seeds": seeds,
            "verdict": {"finding": f">= {MIN_RATIO:g}x smaller at >= {BAR:g} % agreement with the original",
                        "claim": f"non-inferiority against {BAR:g} %, margin {AGREEMENT_CLAIM.margin:g} points: "
                                 f"Δ = agreement − {BAR:g} {AGREEMENT_CLAIM.text()} (faces: pooled Wilson; faces "
                                 f"with copies: two-level bootstrap); size ratio {SIZE_CLAIM.text()} over every "
                                 "picked row", "parts": parts, "overall": overall}}


def run(out: str | Path, faces_spec: str = "lfw-faces", quick: bool = False, progress: bool = True) -> dict:
    """The cross-fitted estimate into ``out`` (resumable); returns ``results.json``'s content."""
    from cnncompress import hardware, storage
    from cnncompress.models.loading import load_model
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    rows_to_run = candidates()
    settings = {**(QUICK if quick else FULL), "faces": faces_spec,
                "crossfit": {"folds": FOLDS, "fold_seed": FOLD_SEED, "candidates": list(CANDIDATES),
                             "pick_seed": PICK_SEED, "confirm_seed": CONFIRM_SEED, "min_ratio": MIN_RATIO}}
    for k in range(FOLDS):
        emotion_table._refuse_other_settings(out / f"fold{k}", settings)
    teacher = load_model("fer-minixception").eval()
    out.mkdir(parents=True, exist_ok=True)
    original_bytes = storage.save(teacher, out / "original.ccz").stat().st_size
    folds, assignment = [], {}
    for k in range(FOLDS):
        data = fold_faces(faces_spec, teacher, k, FOLDS)
        reference = emotion_table.heldout_reference(teacher, data, settings, original_bytes)
        for i in data["heldout_index"]:
            assignment[i] = k

        def row(label, pipeline, recover, seed):
            reused = (out / f"fold{k}" / f"{emotion_table.slug(label)}-s{seed}" / "row.json").is_file()
            result = emotion_table._row(out / f"fold{k}", {}, label, pipeline, recover, seed, teacher, data,
                                        settings, reference, False)
            if progress:
                print(f"emotion-crossfit fold {k}{' (reused)' if reused else ''}: {describe(result)} (seed {seed}, "
                      f"selection agreement {result.get('selection_agreement') or 0:.1f} %)", flush=True)
            return result
        first = [row(*c, PICK_SEED) for c in rows_to_run]
        chosen = pick(first)
        label, pipeline, recover = next(c for c in rows_to_run if c[0] == chosen["label"])
        picked = {PICK_SEED: next(r for r in first if r["label"] == label),
                  CONFIRM_SEED: row(label, pipeline, recover, CONFIRM_SEED)}
        folds.append(_fold_record(k, data, first, chosen, picked, reference))
    result = {"experiment": "emotion-crossfit", "quick": quick, "settings": settings, "original_bytes": original_bytes,
              "pool_size": len(assignment), "fold_of_face": {str(i): assignment[i] for i in sorted(assignment)},
              "folds": folds, "headline": headline(folds),
              "test_evaluations": _test_evaluations(folds),
              "machine": hardware.summary(), "commit": git_commit(), "started": started.isoformat(timespec="seconds"),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.perf_counter() - clock, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "report.md").write_text(report(result))
    return result


def _fold_record(k: int, data: dict, first: list[dict], chosen: dict, picked: dict, reference: dict) -> dict:
    faces = len(data["heldout_index"])

    def measured(r):
        return {"agreement_heldout": r["agreement_heldout"], "agreement_heldout_aug": r["agreement_heldout_aug"],
                "agree_vector": r["agree_vector"], "bytes": r["bytes"], "size_ratio": r["size_ratio"],
                "selection_agreement": r.get("selection_agreement"), "recovered": r.get("recovered"),
                "seconds": r.get("seconds")}
    return {"fold": k, "heldout_index": data["heldout_index"], "train_index": data["train_index"],
            "val_index": data["val_index"], "n_train": len(data["train"]), "n_val": len(data["val"]),
            "n_heldout": faces, "n_heldout_images": len(reference["heldout_images"]),
            "heldout_opened": data["heldout"].evaluations,  # final_evaluation openings of the sealed fold
            "candidates": [{**selection_view(r), "recovered": r.get("recovered"),
                            "not_applicable": r.get("not_applicable")} for r in first],
            "pick": chosen, "seeds": {str(s): measured(r) for s, r in picked.items()},
            "unpicked_heldout_not_used": {r["label"]: r.get("agreement_heldout_aug") for r in first
                                          if r["label"] != chosen["label"]}}


def _test_evaluations(folds: list[dict]) -> dict:
    """Per seed, how many times each face was scored in the headline (must be exactly 1 for every face)."""
    counts: dict[str, dict[str, int]] = {}
    for f in folds:
        for s in f["seeds"]:
            for i in f["heldout_index"]:
                counts.setdefault(s, {}).setdefault(str(i), 0)
                counts[s][str(i)] += 1
    return {"per_seed": {s: sorted(set(c.values())) for s, c in counts.items()},
            "faces": {s: len(c) for s, c in counts.items()}, "per_face": counts}


def report(result: dict) -> str:
    """``report.md``: a short table per fold, the headline sentence and the verdict."""
    h, settings = result["headline"], result["settings"]
    short = {label: f"C{i + 1}" for i, label in enumerate(CANDIDATES)}
    machine = result["machine"]
    lines = ["# emotion-crossfit: the emotion headline cross-fitted over the 100 LFW faces", "",
             f"`cnncompress reproduce emotion-crossfit{' --quick' if result.get('quick') else ''}`; "
             f"{result['started']} – {result['finished']} ({result['seconds'] / 60:.1f} min); CPU {machine['cpu']} "
             f"({machine['machine']}, logical CPUs this process could run on: {machine['cores']}); "
             f"commit {result['commit']}. Settings: "
             f"copies {settings['copies']}, epochs {settings['epochs']}, transfer {settings['transfer']}, "
             f"heldout_copies {settings['heldout_copies']}. Faces: {settings['faces']}, {result['pool_size']} faces "
             f"in {len(result['folds'])} folds (each held out once).", "",
             "Candidates: " + "; ".join(f"**{short[l]}** = {l}" for l in CANDIDATES) + ".", "",
             "Pick (seed 0, selection set only): >= 8x smaller, then the highest agreement on the selection set "
             "(augmented val faces + natural crops); the pick then runs again at seed 1.", ""]
    for f in result["folds"]:
        lines += [f"## Fold {f['fold']} ({f['n_train']} train / {f['n_val']} val / {f['n_heldout']} held-out faces)",
                  "", "| candidate | selection agreement % | `.ccz` bytes | × smaller | recovered |",
                  "|---|---|---|---|---|"]
        for c in f["candidates"]:
            if c.get("not_applicable"):
                lines.append(f"| {short[c['label']]} | does not fit: {c['not_applicable']} | | | |")
                continue
            lines.append(f"| {short[c['label']]}{' (picked)' if c['label'] == f['pick']['label'] else ''} | "
                         f"{c['selection_agreement']:.2f} | {c['bytes']:,} | {c['size_ratio']:.2f}× | "
                         f"{c['recovered']} |")
        lines += ["", f"Picked {short[f['pick']['label']]}: {f['pick']['reason']}. Held out: " + "; ".join(
            f"seed {s}: faces {r['agreement_heldout']['agreement']:.0f} %, with copies "
            f"{r['agreement_heldout_aug']['agreement']:.1f} %" for s, r in f["seeds"].items()) + ".", ""]
    faces, aug, size, verdict = h["faces"], h["faces_with_copies"], h["size_ratio"], h["verdict"]
    per_seed = "; ".join(f"seed {s}: {v['agreement']:.1f} % [{v['low']:.1f}, {v['high']:.1f}]"
                         for s, v in faces["per_seed"].items())
    pooled, n, folds = faces["pooled"], h["faces_total"], len(result["folds"])
    lines += ["## Headline", "",
              f"Cross-fitted over {n} held-out faces ({folds} folds, every face held out once, {len(h['seeds'])} "
              f"seeds), the picked copies are **{size['mean']:.2f}x smaller** (mean; {size['low']:.2f}–"
              f"{size['high']:.2f}x) and agree with the original on **{pooled['agreement']:.1f} %** of the faces "
              f"(Wilson 95 % [{pooled['low']:.1f}, {pooled['high']:.1f}], mean of the seeds over n = {n} faces; "
              f"{per_seed}) and on **{aug['agreement']:.1f} %** of the faces with their augmented copies (95 % "
              f"bootstrap over seeds and faces as clusters [{aug['low']:.1f}, {aug['high']:.1f}], {aug['faces']} "
              f"faces x {settings['heldout_copies']} images).", "",
              f"Finding \"{verdict['finding']}\" ({verdict['claim']}): **{verdict['overall']}** (size: "
              f"{verdict['parts']['size']}; faces: {verdict['parts']['faces']}; faces with copies: "
              f"{verdict['parts']['faces_with_copies']}).", "",
              "Each held-out face was scored once per seed in the headline (test_evaluations in results.json); the "
              "unpicked candidate's row also measured its fold's held-out faces (run_row measures every row), which "
              "entered neither the pick nor the headline.", ""]
    return "\n".join(lines)
