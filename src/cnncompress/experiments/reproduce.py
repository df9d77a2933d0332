"""``cnncompress reproduce``: run the papers' experiments, keep their raw results, and write ``report.md`` from them
(``reproduce_render``), each finding decided by its interval against the margin pre-registered in
``experiments/findings.yaml`` (``findings``).

Table 2 (Rassadin & Savchenko 2017) and the survey's methods (Berthelier et al. 2018): the bench on a recipe
(``experiments/table2.yaml``; ``--quick``: ``experiments/quick/table2.yaml``), then ONE interleaved race of the
models the speed findings compare (``table2/race.json``: every round's time, so a latency ratio gets an interval
over rounds). Table 3: the distillation recipe. Early exits (Pimpley & Indulkar): the cascade grid (quick CPU grid
by default, the recipe's full grid with ``--full``). Ours run at CPU scale on offline data, so absolute values
differ from the papers'; the findings are what is checked. ``write_report`` is the whole job; finished bench rows
and distillations are reused (kill it any time).
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

from cnncompress.errors import InputError

EXPERIMENTS = ("table2", "table3", "cascade", "table-emotion")
FINDINGS = Path(__file__).resolve().parents[3] / "experiments" / "findings.yaml"
RACED = ("VGG-S (baseline)", "SqueezeNet-1.1 (baseline)", "SqueezeNet-1.1, CP-Decomposition", "HashedNets",
         "Binary-Weight-Network (BWN)", "XNOR-Net")
"""The Table-2 rows whose latencies the findings compare: raced together, once, after the bench."""
RACE_ROUNDS, RACE_BLOCK, RACE_THREADS = 30, 3, 1

QUICK_CASCADE = {"datasets": ["mnist5k", "noisy-mnist5k"], "losses": ["sum", "soft", "firm"], "positions": ["p1", "p2"],
                 "seeds": [0, 1], "epochs": 3, "pretrain_epochs": 3, "width": 0.5, "lr": 0.01, "momentum": 0.9,
                 "firm_lr": 0.001, "firm_momentum": 0.5,  # firm fine-tuning at the paper's settings (lr 0.01 collapses)
                 "penalties": [0.0, 1.0]}


def _race_table2(out: Path, rows: list[dict], data: str) -> None:
    """Every raced row's deployed model (its ``.ccz`` loaded back, ``to_inference``) on every engine of its
    precision, in one interleaved race (``deploy.race``: each engine first checked on 32 real validation images of
    ``data``, one validation image timed); the per-round medians go to ``table2/race.json``."""
    from cnncompress import deploy, storage
    from cnncompress.data import build_dataset
    first = min(x.get("seed", 0) for x in rows)
    chosen = {r["label"]: r for r in rows if r.get("label") in RACED and "error" not in r and r.get("ccz")
              and r.get("seed", 0) == first}
    contenders, shape = {}, None
    for label, row in chosen.items():
        model = deploy.to_inference(storage.load(row["ccz"])).eval()
        spec = getattr(model, "spec", {}) or {}
        shape = (1, spec.get("in_channels", 1), spec.get("input_size", 48), spec.get("input_size", 48))
        contenders[label] = (model, deploy.names(deploy.model_precision(model)))
    rounds: dict = {}
    skipped = {}
    if contenders:
        val = build_dataset(data, "val", input_size=shape[-1], channels=shape[1]).images
        _, why = deploy.race(contenders, shape, RACE_THREADS, RACE_ROUNDS, RACE_BLOCK, example=val[:1],
                             images=val[:32], rounds=rounds)
        skipped = {f"{label} / {engine}": reason for (label, engine), reason in why.items()}
    by_label: dict = {}
    for (label, engine), times in rounds.items():
        by_label.setdefault(label, {})[engine] = times
    (out / "table2" / "race.json").write_text(json.dumps({
        "input_shape": list(shape or ()), "threads": RACE_THREADS, "rounds_count": RACE_ROUNDS, "block": RACE_BLOCK,
        "input": "one validation image; engines checked on 32", "rounds": by_label, "skipped": skipped}, indent=1))


def run_table2(out: Path, recipe_path: Path) -> list[str]:
    from cnncompress.experiments.bench import run_bench
    from cnncompress.experiments.recipe import load_recipe
    rows = run_bench(recipe_path, out / "table2", progress=True)
    _race_table2(out, rows, load_recipe(recipe_path).data)
    return []


def run_table3(out: Path, recipe_path: Path, seeds: list[int] | None) -> list[str]:
    from cnncompress.experiments.distill_table import run_table
    run_table(recipe_path, out / "table3", seeds)
    return []


def run_cascade(out: Path, recipe_path: Path | None, quick: bool) -> list[str]:
    from cnncompress.experiments.cascade_grid import load_config, run_study
    config = load_config(recipe_path) if recipe_path and not quick else load_config(None, QUICK_CASCADE)
    _, figures = run_study(config, out / "cascade")
    return [figure.name for figure in figures]


def run_emotion(out: Path, faces: str, quick: bool) -> None:
    from cnncompress.experiments import emotion_table
    rows = emotion_table.run(out / "table-emotion", faces, quick=quick)
    (out / "table-emotion" / "rows.json").write_text(json.dumps(rows, indent=1, default=str))


def _at_start() -> dict:
    """What the report says of the machine before the runs: the load average and the checked-out commit."""
    from cnncompress.experiments.environment import git_commit
    return {"load": " ".join(f"{v:.2f}" for v in os.getloadavg()), "git_commit": git_commit()}


def _meta(out: Path, sections: list[str], quick: bool, recipes: dict, seconds: float, figures: dict,
          start: dict) -> dict:
    """``meta.json``: the run's sections, recipes, time and machine; ``start`` (``_at_start``) gives the load and
    the commit before the runs, and ``git_commit_at_end`` is added when the checkout changed during them."""
    from cnncompress import hardware
    from cnncompress.experiments.environment import environment
    env = environment()
    end = {"git_commit_at_end": env["git_commit"]} if env["git_commit"] != start["git_commit"] else {}
    return {"sections": sections, "quick": quick, "recipes": recipes, "seconds": seconds, "figures": figures,
            "date": datetime.date.today().isoformat(),
            "environment": {"cpu": env["cpu"], "cores": env["cores"], "isa": " ".join(hardware.summary()["isa"]),
                            "load": start["load"], "torch": env["torch"], "onnxruntime": env["onnxruntime"],
                            "openvino": (env["engines"].get("openvino") or {}).get("version"),
                            "git_commit": start["git_commit"], **end}}


def _relative(path) -> str:
    """A recipe path as the report prints it: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(FINDINGS.parents[1]))
    except ValueError:
        return str(path)


def _register(out: Path, findings_path: Path) -> None:
    """Copy the pre-registered findings into ``out`` with the date they last changed (git), before any run."""
    from cnncompress.experiments import findings
    findings.load(findings_path)  # a bad file fails here, before hours of runs
    text = findings_path.read_text()
    try:
        changed = subprocess.run(["git", "log", "-1", "--format=%cI", "--", findings_path.name], capture_output=True,
                                 text=True, cwd=findings_path.parent).stdout.strip()
    except OSError:
        changed = ""
    target = out / "findings.yaml"
    header = f"# registered_from: {findings_path.name} (last changed {changed or 'not committed'})\n"
    if target.is_file() and target.read_text().split("\n", 1)[-1] != text:
        raise InputError(f"{target}: the findings changed since this folder's runs started; use a new --out")
    if not target.is_file():
        target.write_text(header + text)


def write_report(what: list[str], out: str | Path, table2_recipe: str | Path, table3_recipe: str | Path,
                 cascade_recipe: str | Path, seeds: list[int] | None = None, full: bool = False,
                 faces: str = "lfw-faces", quick: bool = False, findings_path: str | Path = FINDINGS) -> Path:
    """Run the experiments named in ``what`` (``table2``, ``table3``, ``cascade``, ``table-emotion``; empty or
    ``all``: every one, but with ``quick`` not ``table-emotion``, which decides no finding and takes longer than the
    rest together) into ``out``, keep their raw files and write ``out/report.md`` from them; returns its path."""
    from cnncompress.experiments.reproduce_render import render
    unknown = sorted(set(what) - {*EXPERIMENTS, "all"})
    if unknown:
        raise InputError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}, all")
    every = [e for e in EXPERIMENTS if not (quick and e == "table-emotion")]  # --quick all: the findings' runs
    wanted = [e for e in EXPERIMENTS if e in what or ((not what or "all" in what) and e in every)]
    for flag, recipe in (("table2-recipe", table2_recipe), ("table3-recipe", table3_recipe)):
        if not Path(recipe).is_file():
            raise InputError(f"{recipe}: recipe not found (run from the repository, or pass --{flag})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _register(out, Path(findings_path))
    start = _at_start()
    started = time.perf_counter()
    figures = {}
    if "table2" in wanted:
        run_table2(out, Path(table2_recipe))
    if "table3" in wanted:
        run_table3(out, Path(table3_recipe), seeds)
    if "cascade" in wanted:
        figures["cascade"] = run_cascade(out, Path(cascade_recipe), quick=not full)
    if "table-emotion" in wanted:
        run_emotion(out, faces, quick)
    recipes = {"table2": _relative(table2_recipe), "table3": _relative(table3_recipe),
               "cascade": "quick grid" if not full else _relative(cascade_recipe), "table-emotion": faces}
    meta = _meta(out, wanted, quick, recipes, time.perf_counter() - started, figures, start)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    (out / "report.md").write_text(render(out))
    return out / "report.md"
