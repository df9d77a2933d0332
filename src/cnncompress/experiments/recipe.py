"""Bench recipes (YAML) -> validated ``Recipe``; every problem is reported before any training starts.

Keys, types and ranges are checked against ``schema.BENCH_RECIPE`` (the validator shared with the distill and
cascade recipes); this module then checks what needs the registries (model names, method names and options)
and expands grids and seeds into rows.

```yaml
data: mnist5k            # dataset spec: train (minus a seeded 10 % val split) trains, val chooses, test scores
input_size: 48
threads: 2
latency_runs: 100
memory: true             # peak-memory probes: two fresh processes per row (false: n/a, a faster sweep)
baselines:               # model -> width + training settings (schema.TRAINING: epochs is the cap; schedule,
  vgg_s: {width: 0.25, epochs: 12, lr: 0.01, schedule: cosine, patience: 3}   # patience, ...)
finetune: {epochs: 1, lr: 0.001}   # rows AND their matched controls fine-tune with this (a row's finetune: epochs)
rows: auto               # baselines + every registered method's MethodInfo.bench rows, or a list:
# rows:
#   - {model: vgg_s, method: bwn, config: {}, finetune: 1, label: bwn}   # finetune default: finetune.epochs
#   - model: squeezenet1_1          # a combined pipeline: stages applied in order, fine-tuned after each
#     label: prune+kmeans
#     stages: [{method: prune-magnitude, config: {sparsity: 0.8}}, {method: kmeans, config: {bits: 5}}]
```

Sweeps. ``grid`` (in a row, or in a stage of a pipeline row) maps option names to value lists; the row expands
into the cartesian product, each merged into ``config`` and labelled ``"<label> k=v,..."``. ``seed`` (top level
or per row) may be a list: every row is repeated per seed with the SAME label, and the table shows mean ± std
over the seeds. A seed selects the fine-tuning order, the method's random choices and, unless
``baselines.<model>.seed`` fixes it, the baseline's initialisation (one baseline per model and seed).
A plain list in ``config`` is never expanded: options such as ``layers`` or Tucker's ``rank`` take lists.

```yaml
seed: [0, 1, 2]
rows:
  - {model: vgg_s, method: baseline}
  - {model: vgg_s, method: tucker, config: {layers: [features.conv2]}, grid: {rank: [8, 16, 32]}}
  - {model: vgg_s, method: prune-magnitude, grid: {sparsity: [0.5, 0.9]}, seed: [0, 1, 2, 3, 4]}
```
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnncompress import methods, models
from cnncompress.errors import InputError, input_error
from cnncompress.experiments import schema

BASELINE = "baseline"
MAX_ROWS = 100000


@dataclass
class Row:
    model: str
    method: str
    config: dict = field(default_factory=dict)
    finetune: int = 1
    label: str = ""
    stages: list = field(default_factory=list)
    seed: int = 0

    @property
    def pipeline(self) -> list[dict]:
        """The methods applied in order: ``[{"method", "config"}]`` (one stage unless the row chains several)."""
        return self.stages or [{"method": self.method, "config": self.config}]

    @property
    def total_finetune(self) -> int:
        """Fine-tuning epochs the row gets in all (after each stage of a pipeline): its matched control is the
        baseline fine-tuned this long."""
        return 0 if self.method == BASELINE else self.finetune * len(self.pipeline)

    @property
    def key(self) -> str:
        """Stable id of the row: label + hash of everything that defines it."""
        blob = json.dumps([self.model, self.method, self.config, self.finetune] + ([self.stages] if self.stages else [])
                          + ([{"seed": self.seed}] if self.seed else []), sort_keys=True, default=str)
        name = (self.label or self.method).replace("/", "_").replace("\\", "_")  # the key names a folder
        return f"{self.model}-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


@dataclass
class Recipe:
    data: str = "mnist5k"
    input_size: int = 48
    threads: int = 2
    latency_runs: int = 100
    memory: bool = True                             # peak-memory probes (two fresh processes per row)
    seed: int = 0                                   # the first (default) seed
    seeds: list[int] = field(default_factory=lambda: [0])
    baselines: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=lambda: {"epochs": 1})
    rows: list[Row] = field(default_factory=list)

    def baseline_seed(self, model: str, seed: int) -> int:
        """The seed of the baseline a row with ``seed`` starts from (``baselines.<model>.seed`` wins)."""
        return int(self.baselines.get(model, {}).get("seed", seed))


def train_settings(settings: dict) -> dict:
    """The ``TrainConfig`` fields among a recipe's ``baselines.<model>`` or ``finetune`` settings."""
    return {key: settings[key] for key in schema.TRAINING if key in settings}


INHERITED = ("optimizer", "momentum", "weight_decay", "batch_size", "augment", "grad_clip")
"""What fine-tuning takes from the model's baseline settings unless ``finetune`` sets it (the same optimiser)."""


def baseline_settings(recipe: "Recipe", model: str) -> dict:
    """``TrainConfig`` keywords of ``model``'s baseline: its ``baselines.<model>`` settings over the defaults
    (epochs 3, lr 0.001, the papers' batch size). The place where converged training settings go."""
    return {"epochs": 3, "lr": 0.001, "batch_size": models.DEFAULT_BATCH_SIZE.get(model, 32),
            **train_settings(recipe.baselines[model])}


def finetune_settings(recipe: "Recipe", model: str) -> dict:
    """``TrainConfig`` keywords for fine-tuning ``model`` (its rows and their matched controls alike): the
    baseline's optimiser settings (``INHERITED``), then the recipe's ``finetune`` block; the learning rate is
    ``finetune.lr``, else ``finetune.lr_scale`` (default 0.1) x the baseline's; no early stopping."""
    base = baseline_settings(recipe, model)
    tune = dict(recipe.finetune)
    scale = tune.pop("lr_scale", 0.1)
    return {**{k: base[k] for k in INHERITED if k in base}, **train_settings(tune),
            "lr": tune.get("lr", base["lr"] * scale), "patience": 0}


def _check_training(source, recipe: "Recipe") -> None:
    """Every model's baseline and fine-tuning settings make a valid ``TrainConfig`` (checked before training)."""
    from cnncompress.training.trainer import TrainConfig
    for model in recipe.baselines:
        for what, settings in (("baselines." + model, baseline_settings(recipe, model)),
                               ("finetune", finetune_settings(recipe, model))):
            try:
                TrainConfig(**settings).validate()
            except (TypeError, InputError) as error:
                raise input_error(source, f"{what}: {error}") from error


def _check_baseline(source, name, settings) -> dict:
    from cnncompress.models.entry_point import is_entry_point, resolve
    if is_entry_point(name):  # a user network: FILE.py:FUNCTION or package.module:FUNCTION, checked importable now
        try:
            resolve(name)
        except InputError as error:
            raise input_error(source, f"baselines: {error}") from error
        return settings
    if name not in models.available():
        raise input_error(source, f"unknown model {name!r} in baselines (known: {', '.join(models.available())}, or "
                                  f"a user network FILE.py:FUNCTION)")
    return settings


def _seeds(value) -> list[int]:
    """A seed or a list of seeds (already checked by the schema) -> a list."""
    return list(value) if isinstance(value, list) else [value]


def _grid(grid) -> list[dict]:
    """``{option: [values]}`` -> the cartesian product as a list of ``{option: value}`` (insertion order)."""
    if grid is None:
        return [{}]
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _value(value) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _expand(source, index, entry, seeds) -> list[dict]:
    """One recipe row -> its grid points x seeds, as plain row dicts (config/stages merged with grid values)."""
    where = f"rows[{index}]"
    if "seed" in entry:
        seeds = _seeds(entry["seed"])
    if "stages" in entry:
        stage_grids = [_grid(st.get("grid")) for st in entry["stages"]]
        points = []
        for combo in itertools.product(*stage_grids):
            stages = [{"method": st["method"], "config": {**(st.get("config") or {}), **point}}
                      for st, point in zip(entry["stages"], combo)]
            tag = ",".join(f"{st['method']}.{k}={_value(v)}" if len(stages) > 1 else f"{k}={_value(v)}"
                           for st, point in zip(entry["stages"], combo) for k, v in point.items())
            points.append(({"stages": stages}, tag))
    else:
        config = entry.get("config") or {}
        points = [({"config": {**config, **point}}, ",".join(f"{k}={_value(v)}" for k, v in point.items()))
                  for point in _grid(entry.get("grid"))]
    label = entry["label"] if "label" in entry else \
        entry.get("method") or "+".join(st["method"] for st in entry["stages"])
    out = []
    for fields, tag in points:
        for seed in seeds:
            out.append({**entry, **fields, "label": f"{label} {tag}" if tag else label, "seed": seed})
    if len(out) > MAX_ROWS:
        raise input_error(source, f"{where}: the grid expands to {len(out)} rows (more than {MAX_ROWS})")
    return out


def _rows(source, raw, baselines, seeds: list[int], finetune: int) -> list[Row]:
    """Recipe rows -> ``Row``s (``finetune``: the recipe's ``finetune.epochs``, for rows that do not say)."""
    if raw == "auto":
        rows = [Row(name, BASELINE, {}, 0, BASELINE, seed=seed) for name in baselines for seed in seeds]
        for method_name in methods.available():
            for entry in methods.info(method_name).bench:
                if entry.get("model") in baselines:
                    rows.extend(Row(entry["model"], method_name, dict(entry.get("config", {})),
                                    int(entry.get("finetune", finetune)), entry.get("label", method_name), seed=seed)
                                for seed in seeds)
        return _unique(source, rows, baselines)
    rows = []
    for index, entry in enumerate(raw):
        if ("method" in entry) == ("stages" in entry):
            raise input_error(source, f"rows[{index}]: needs model and either method or stages")
        if "stages" in entry and "grid" in entry:
            raise input_error(source, f"rows[{index}]: put grid inside a stage of a pipeline row")
        if entry["model"] not in baselines:
            raise input_error(source, f"rows[{index}]: model {entry['model']!r} has no entry in baselines")
        epochs = entry.get("finetune", 0 if entry.get("method") == BASELINE else finetune)
        for point in _expand(source, index, entry, seeds):
            stages = point.get("stages") or []
            method = point["method"] if "method" in point else "+".join(st["method"] for st in stages)
            rows.append(Row(point["model"], method, point.get("config") or {}, epochs, point["label"], stages,
                            point["seed"]))
    if len(rows) > MAX_ROWS:
        raise input_error(source, f"the recipe expands to {len(rows)} rows (more than {MAX_ROWS})")
    return _unique(source, rows, baselines)


def _unique(source, rows: list[Row], baselines: dict) -> list[Row]:
    """Baseline rows take their baseline's seed (so a fixed ``baselines.<model>.seed`` gives one baseline row);
    any other row defined twice is an error."""
    seen, out = set(), []
    for row in rows:
        if row.method == BASELINE:
            row.seed = int(baselines[row.model].get("seed", row.seed))
            if row.key in seen:
                continue
        elif row.key in seen:
            raise input_error(source, f"row {row.model}/{row.label} (seed {row.seed}) is defined twice")
        seen.add(row.key)
        out.append(row)
    return out


def validate_rows(source, rows: list[Row], recipe: Recipe | None = None) -> None:
    """Unknown methods, unknown options, option values of the wrong type, range or choice, and (given the recipe)
    layer names its model does not have fail here, naming the recipe and the row, before any training."""
    skeletons: dict[str, torch.nn.Module] = {}
    for row in rows:
        if row.method == BASELINE:
            continue
        for number, stage in enumerate(row.pipeline):
            try:
                methods.check_config(stage["method"], stage["config"])
                if recipe is not None and number == 0:  # later stages may name layers an earlier one made
                    _check_layer_names(row, stage["config"], recipe, skeletons)
            except (InputError, ValueError) as error:
                raise input_error(source, f"row {row.label or row.method}: {error}") from error


def _check_layer_names(row: Row, config: dict, recipe: Recipe, skeletons: dict) -> None:
    """``layers``/``exclude`` of a row's first stage against its model, built on the meta device (no memory)."""
    from cnncompress import surgery
    if not any(key in config for key in ("layers", "exclude")) or row.model not in recipe.baselines:
        return
    if row.model not in skeletons:
        width = recipe.baselines[row.model].get("width", 1.0)
        with torch.device("meta"):
            skeletons[row.model] = models.build(row.model, 10, 1, recipe.input_size, width)
    model = skeletons[row.model]
    for key in ("layers", "exclude"):
        if key in config and config[key] not in ("all", (), [], None):
            surgery.select(model, config[key], types=(torch.nn.Module,), required=False)


def load_recipe(path: str | Path) -> Recipe:
    """The bench recipe at ``path``, checked (``schema.BENCH_RECIPE``, then models, methods, options)."""
    return parse_recipe(schema.read_yaml(path), str(path))


def parse_recipe(raw, source: str = "<recipe>") -> Recipe:
    raw = schema.check(raw, schema.BENCH_RECIPE, source)
    recipe = Recipe()
    recipe.data = str(raw.get("data", recipe.data))
    recipe.input_size = raw.get("input_size", recipe.input_size)
    recipe.threads = raw.get("threads", recipe.threads)
    recipe.latency_runs = raw.get("latency_runs", recipe.latency_runs)
    recipe.memory = raw.get("memory", True)
    recipe.seeds = _seeds(raw.get("seed", 0))
    recipe.seed = recipe.seeds[0]
    if not raw["baselines"]:
        raise input_error(source, "baselines must map at least one model name to its settings")
    recipe.baselines = {name: _check_baseline(source, name, settings) for name, settings in raw["baselines"].items()}
    recipe.finetune = {"epochs": 1, **raw.get("finetune", {})}
    _check_training(source, recipe)
    recipe.rows = _rows(source, raw.get("rows", "auto"), recipe.baselines, recipe.seeds, recipe.finetune["epochs"])
    validate_rows(source, recipe.rows, recipe)
    return recipe


def select_rows(recipe: Recipe, only: list[str], source: str) -> list[Row]:
    """The rows ``--only`` names (by method or label) and the baselines; an unknown name is an InputError that
    lists the valid ones (nothing runs, nothing is written)."""
    names = sorted({r.method for r in recipe.rows if r.method != BASELINE})
    labels = sorted({r.label for r in recipe.rows if r.method != BASELINE})
    unknown = [name for name in only if name not in names and name not in labels and name != BASELINE]
    if unknown:
        raise InputError(f"--only {', '.join(map(repr, unknown))}: no row of {source} has that method or label "
                         f"(methods: {', '.join(names)}; labels: {', '.join(map(repr, labels))})")
    return [r for r in recipe.rows if r.method in only or r.label in only or r.method == BASELINE]
