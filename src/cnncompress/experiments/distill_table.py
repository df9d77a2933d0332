"""Distillation experiments (Rassadin & Savchenko 2017 §4, Table 3) around ``cnncompress.training.distill``.

``distill_once(cfg, out)``: one teacher -> student distillation from a dict of the ``cnncompress distill`` options
(teacher spec, student architecture, unlabelled/held-out/labelled data specs, targets, training settings); writes
``out/model.ccz`` and ``out/distill.json`` and returns the result row. ``run_recipe(path, out)``: every
(experiment, targets, seed) of a Table-3 recipe (keys: ``schema.DISTILL_RECIPE``), reusing finished runs, and
``run_table`` on top of it writes ``table.md`` and ``results.json``. ``table(rows)``: the Table-3-style summary.
A recipe teacher may be ``{train: {...}}``: trained once by ``train_teacher`` and reused.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from cnncompress.errors import InputError, input_error
from cnncompress.models.loading import input_format, load_model
from cnncompress.experiments import schema


def _held_out(unlabeled, heldout):
    """If the held-out split is the same images as the unlabelled one (``faces:<dir>``), split off 20%."""
    import torch
    from cnncompress.data import ImageDataset
    if heldout is None or heldout._images.shape != unlabeled.images.shape \
            or not torch.equal(heldout._images, unlabeled.images):  # which images, not what a model makes of them
        return unlabeled, heldout
    order = torch.randperm(len(unlabeled), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(order) // 5) if len(order) > 1 else 0

    def part(index, sealed):
        return ImageDataset(unlabeled.images[index], unlabeled.labels[index], unlabeled.classes, unlabeled.name,
                            unlabeled.mean, unlabeled.std, "test" if sealed else "train", sealed=sealed)
    return part(order[cut:].sort().values, False), part(order[:cut].sort().values, True)


RECORDED = ("teacher", "student", "width", "unlabeled", "targets", "copies", "epochs", "lr", "seed", "labeled")
TRAINING = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "optimizer", "schedule")
"""Training settings a run may give; the ones it leaves out come from the student's preset (``train.preset``)."""


def distill_once(cfg: dict, out: Path | None, progress: bool = False) -> dict:
    """One distillation from a dict of the CLI options; returns the result row (also written to out/)."""
    from cnncompress import models, storage
    from cnncompress.data import build_dataset, split_validation
    from cnncompress.training.distill import distill, size_report
    teacher = load_model(cfg["teacher"], cfg.get("teacher_model"), cfg.get("teacher_weights"))
    fmt = input_format(teacher)
    kw = {"input_size": fmt["input_size"], "channels": fmt["channels"], "mean": fmt["mean"], "std": fmt["std"]}
    pool = build_dataset(cfg["unlabeled"], "train+val", **kw)
    heldout = build_dataset(cfg.get("heldout") or cfg["unlabeled"], "test", **kw)
    pool, heldout = _held_out(pool, heldout)
    if len(pool) == 0:
        raise input_error(cfg["unlabeled"], "no unlabelled images")
    unlabeled, val = split_validation(pool) if len(pool) > 1 else (pool, None)  # val: chooses the epoch
    labeled_train = test = None
    if cfg.get("labeled"):
        test = build_dataset(cfg["labeled"], "test", **kw)
        if test.num_classes != len(fmt["classes"]):
            raise InputError(f"labelled set {cfg['labeled']} has {test.num_classes} classes but the teacher has "
                             f"{len(fmt['classes'])}")
        if cfg["targets"] == "hinton":
            labeled_train = build_dataset(cfg["labeled"], "train", **kw)
    student = models.build(cfg["student"], num_classes=len(fmt["classes"]), in_channels=fmt["channels"],
                           input_size=fmt["input_size"], width=float(cfg.get("width", 1.0)))
    result = distill(teacher, student, unlabeled, targets=cfg["targets"], temperature=cfg.get("temperature"),
                     alpha=float(cfg.get("alpha", 0.9)), labeled=labeled_train, seed=int(cfg.get("seed", 0)),
                     copies=int(cfg.get("copies", 1)), heldout=heldout, val=val, test=test, cache_dir=cfg.get("cache"),
                     out_dir=out, resume=bool(cfg.get("resume")), device=cfg.get("device", "cpu"),
                     progress=progress, **{k: cfg[k] for k in TRAINING if cfg.get(k) is not None})
    shape = (1, fmt["channels"], fmt["input_size"], fmt["input_size"])
    row = {**{k: cfg.get(k) for k in RECORDED},
           **{k: v for k, v in result.to_dict().items() if k != "history"},
           "n_unlabeled": len(unlabeled), "n_heldout": len(heldout) if heldout is not None else 0,
           "n_val": len(val) if val is not None else 0,
           "teacher_size": size_report(teacher, shape), "student_size": size_report(student.cpu(), shape)}
    if out:
        student.metadata = {"classes": fmt["classes"], "mean": fmt["mean"], "std": fmt["std"],
                            "input_size": fmt["input_size"], "channels": fmt["channels"],
                            "distilled_from": cfg["teacher"], "targets": cfg["targets"]}
        row["student_ccz_bytes"] = storage.save(student, out / "model.ccz").stat().st_size
        (out / "distill.json").write_text(json.dumps({**row, "history": result.history}, indent=1))
    return row


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}%"


def describe(row: dict) -> str:
    t, s = row["teacher_size"], row["student_size"]
    acc = f", test accuracy {_pct(row['accuracy'])}" if row.get("accuracy") is not None else ""
    return (f"{row['student']} x{row['width']} ({row['targets']} targets, T={row['temperature']:g}): agreement with "
            f"{row['teacher']} on {row['n_heldout']} held-out images {_pct(row['agreement_heldout'])} "
            f"(with augmented copies {_pct(row['agreement_heldout_aug'])}; majority-class reference "
            f"{_pct(row['heldout_majority'])}; on the {row['n_unlabeled']} distillation "
            f"images {_pct(row['agreement_train'])}){acc}; {_chosen(row)}; student {s['params']:,} params "
            f"{s['latency_ms']:.2f} ms vs teacher {t['params']:,} params {t['latency_ms']:.2f} ms; "
            f"teacher outputs {'from cache' if row['teacher_cached'] else 'computed'}; {row['seconds']:.0f}s")


def _chosen(row: dict) -> str:
    config = row.get("config") or {}
    trained = f"{config.get('optimizer', '?')} lr {config.get('lr', 0):g}, {config.get('schedule', '?')}"
    if not row.get("n_val"):
        return f"{trained}, last epoch kept (no validation images)"
    return (f"{trained}, epoch {row.get('best_epoch')} of {config.get('epochs', '?')} kept "
            f"(validation agreement {_pct(row.get('agreement_val'))} on {row['n_val']} images)")


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(rows: list[dict]) -> str:
    """Markdown Table-3-style summary: one column per target, mean ± std over seeds."""
    targets = list(dict.fromkeys(r["targets"] for r in rows))
    lines = ["| metric (%, mean ± std over seeds) | " + " | ".join(targets) + " |",
             "|---|" + "---|" * len(targets)]
    metrics = [("agreement, distillation images", "agreement_train"),
               ("agreement, validation images (chose the epoch)", "agreement_val"),
               ("agreement, held-out images", "agreement_heldout"),
               ("agreement, held-out + augmented copies", "agreement_heldout_aug"),
               ("reference: teacher's majority class, held-out", "heldout_majority"),
               ("accuracy, labelled test set", "accuracy")]
    for label, key in metrics:
        cells = [_mean_std([r.get(key) for r in rows if r["targets"] == t]) for t in targets]
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    lines.append(f"\nseeds {seeds}; teacher {r0['teacher']} {r0['teacher_size']['params']:,} params, "
                 f"{r0['teacher_size']['latency_ms']:.2f} ms/image; student {r0['student']} x{r0['width']} "
                 f"{r0['student_size']['params']:,} params, {r0['student_size']['latency_ms']:.2f} ms/image "
                 f"(batch 1, CPU, median)")
    return "\n".join(lines)


def train_teacher(settings: dict, out: Path | None) -> str:
    """A recipe teacher given as ``{train: {model, data, width, input_size, epochs, lr, ...}}``: trained once with
    the Trainer and the model's preset for what the recipe leaves out (validation split for the epoch kept; reused
    when ``model.safetensors`` exists), returned as a file path."""
    import hashlib

    import torch

    from cnncompress import models
    from cnncompress.data import build_dataset, final_evaluation
    from cnncompress.data.assets import cache_dir
    from cnncompress.training.trainer import Trainer, error_rate, preset, save_weights
    cfg = dict(settings["train"])
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    folder = (out / "teacher") if out else cache_dir() / "teachers" / key
    path = folder / "model.safetensors"
    if path.exists():
        return str(path)
    data, size = cfg.get("data", "mnist5k"), cfg.get("input_size")
    train_set, val_set, test_set = (build_dataset(data, split, input_size=size) for split in ("train", "val", "test"))
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = models.build(cfg["model"], num_classes=train_set.num_classes, in_channels=train_set.channels,
                         input_size=train_set.input_size, width=float(cfg.get("width", 1.0)))
    given = {k: cfg[k] for k in ("epochs", "lr", "batch_size", "seed") if cfg.get(k) is not None}
    trainer = Trainer(model, train_set, val_set, preset(cfg["model"], **given), out_dir=folder, progress=False)
    trainer.fit(resume=True)
    meta = {"classes": train_set.classes, "mean": train_set.mean, "std": train_set.std, "dataset": data}
    save_weights(model.cpu(), path, {"cnncompress.metadata": json.dumps(meta)})
    with final_evaluation(test_set):
        accuracy = 1 - error_rate(model, test_set)
    print(f"teacher {cfg['model']} trained on {data}: test accuracy {100 * accuracy:.2f}% "
          f"(validation epoch {trainer.best_epoch} of {len(trainer.history)}) -> {path}", flush=True)
    return str(path)


def load_recipe(path: str | Path) -> list[dict]:
    """The experiments of a distill recipe: one experiment mapping, or ``experiments: [...]`` of them; checked
    against ``schema.DISTILL_RECIPE`` (an unknown key or a bad value is an InputError naming the file)."""
    raw = schema.read_yaml(path)
    if isinstance(raw, dict) and "experiments" in raw:
        return schema.check(raw, schema.DISTILL_RECIPE, path)["experiments"]
    return [schema.check(raw, schema.DISTILL_EXPERIMENT, path)]


def run_recipe(path: str | Path, out: Path | None = None, seeds: list[int] | None = None,
               progress: bool = False, only: str | None = None) -> dict[str, list[dict]]:
    """Run every (experiment, target, seed) of a Table-3 recipe; prints one line per run; returns the rows per
    experiment name. Finished runs (``out/<name>/<target>-seed<k>/distill.json``) are reused: rerun to resume."""
    tables: dict[str, list[dict]] = {}
    for index, recipe in enumerate(load_recipe(path)):
        name = str(recipe.get("name", f"experiment{index}"))
        if only and name != only:
            continue
        folder = out / name if out else None
        teacher = recipe["teacher"]
        if isinstance(teacher, dict):
            teacher = train_teacher(teacher, folder)
        student = recipe.get("student", {})
        skip = ("targets", "seeds", "student", "name", "description", "teacher", "target_options")
        base = {k: v for k, v in recipe.items() if k not in skip}
        base.update({"teacher": teacher, "student": student.get("model", "squeezenet1_1"),
                     "width": student.get("width", 1.0)})
        rows = tables.setdefault(name, [])
        for seed in seeds or recipe.get("seeds", [0]):
            for targets in recipe.get("targets", ["labels", "softmax"]):
                run_out = folder / f"{targets}-seed{seed}" if folder else None
                done = run_out / "distill.json" if run_out else None
                cfg = {**base, **dict(recipe.get("target_options", {}).get(targets, {})),
                       "targets": targets, "seed": seed, "resume": bool(run_out)}
                if done and done.exists():
                    row = {k: v for k, v in json.loads(done.read_text()).items() if k != "history"}
                    changed = [k for k in RECORDED if k in row and row[k] != cfg.get(k)]
                    if changed:
                        raise input_error(done, f"made with other settings ({', '.join(changed)}); "
                                                f"use another --out")
                else:
                    row = distill_once(cfg, run_out, progress)
                print(f"[{name}] " + describe(row), flush=True)
                rows.append(row)
    if only and not tables:
        raise InputError(f"no experiment named {only!r} in {path}")
    return tables


def run_table(path: str | Path, out: str | Path | None = None, seeds: list[int] | None = None,
              only: str | None = None) -> str:
    """``run_recipe``, then the Table-3-style tables as markdown (also ``out/table.md`` and ``out/results.json``)."""
    out = Path(out) if out else None
    tables = run_recipe(path, out, seeds, progress=False, only=only)
    text = "\n\n".join(f"### {name}\n\n{table(rows)}" for name, rows in tables.items())
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        (out / "results.json").write_text(json.dumps(tables, indent=1))
    return text
