"""Bench recipes (YAML) -> validated ``Recipe``; every problem is reported before any training starts.

```yaml
data: mnist5k            # dataset spec
input_size: 48
threads: 2
latency_runs: 100
baselines:               # model -> build and training settings
  vgg_s: {width: 0.25, epochs: 3, lr: 0.01}
finetune: {epochs: 1, lr: 0.001}
rows: auto               # baselines + every registered method's MethodInfo.bench rows, or a list:
# rows:
#   - {model: vgg_s, method: bwn, config: {}, finetune: 1, label: bwn}
#   - model: squeezenet1_1          # a combined pipeline: stages applied in order, fine-tuned after each
#     label: prune+kmeans
#     stages: [{method: prune-magnitude, config: {sparsity: 0.8}}, {method: kmeans, config: {bits: 5}}]
```
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import methods, models
from .errors import InputError, input_error

BASELINE = "baseline"
BASELINE_KEYS = {"width", "epochs", "lr", "momentum", "batch_size", "seed"}
TOP_KEYS = {"data", "input_size", "threads", "latency_runs", "baselines", "finetune", "rows", "seed"}
ROW_KEYS = {"model", "method", "config", "finetune", "label", "stages"}


@dataclass
class Row:
    model: str
    method: str
    config: dict = field(default_factory=dict)
    finetune: int = 1
    label: str = ""
    stages: list = field(default_factory=list)

    @property
    def pipeline(self) -> list[dict]:
        """The methods applied in order: ``[{"method", "config"}]`` (one stage unless the row chains several)."""
        return self.stages or [{"method": self.method, "config": self.config}]

    @property
    def key(self) -> str:
        """Stable id of the row: label + hash of everything that defines it."""
        blob = json.dumps([self.model, self.method, self.config, self.finetune] + ([self.stages] if self.stages else []),
                          sort_keys=True, default=str)
        return f"{self.model}-{self.label or self.method}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


@dataclass
class Recipe:
    data: str = "mnist5k"
    input_size: int = 48
    threads: int = 2
    latency_runs: int = 100
    seed: int = 0
    baselines: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=lambda: {"epochs": 1, "lr": 0.001})
    rows: list[Row] = field(default_factory=list)


def _number(source, key, value, kind, low, high):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (kind is int and not isinstance(value, int)):
        raise input_error(source, f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not low <= value <= high:
        raise input_error(source, f"{key}={value} out of range [{low}, {high}]")
    return value


def _check_baseline(source, name, settings) -> dict:
    if name not in models.available():
        raise input_error(source, f"unknown model {name!r} in baselines (known: {', '.join(models.available())})")
    if not isinstance(settings, dict) or set(settings) - BASELINE_KEYS:
        raise input_error(source, f"baselines.{name}: allowed keys {sorted(BASELINE_KEYS)}")
    for key, kind, low, high in (("width", float, 0.01, 8), ("epochs", int, 0, 10000), ("lr", float, 1e-8, 10),
                                 ("momentum", float, 0, 0.999), ("batch_size", int, 1, 65536), ("seed", int, 0, 2**31)):
        if key in settings:
            _number(source, f"baselines.{name}.{key}", settings[key], kind, low, high)
    return settings


def _rows(source, raw, baselines) -> list[Row]:
    if raw == "auto":
        rows = [Row(name, BASELINE, {}, 0, BASELINE) for name in baselines]
        for method_name in methods.available():
            for entry in methods.info(method_name).bench:
                if entry.get("model") in baselines:
                    rows.append(Row(entry["model"], method_name, dict(entry.get("config", {})),
                                    int(entry.get("finetune", 1)), entry.get("label", method_name)))
        return rows
    if not isinstance(raw, list):
        raise input_error(source, "rows must be 'auto' or a list of {model, method, config, finetune, label}")
    rows = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) - ROW_KEYS or "model" not in entry or \
                ("method" in entry) == ("stages" in entry):
            raise input_error(source, f"rows[{index}]: needs model and either method or stages; "
                                      f"allowed keys {sorted(ROW_KEYS)}")
        stages = entry.get("stages") or []
        if "stages" in entry:
            if not isinstance(stages, list) or not stages or not all(
                    isinstance(st, dict) and "method" in st and set(st) <= {"method", "config"} and
                    isinstance(st.get("config", {}), dict) for st in stages):
                raise input_error(source, f"rows[{index}]: stages must be a list of {{method, config}}")
            stages = [{"method": st["method"], "config": st.get("config") or {}} for st in stages]
            entry = {**entry, "method": "+".join(st["method"] for st in stages)}
        if entry["model"] not in baselines:
            raise input_error(source, f"rows[{index}]: model {entry['model']!r} has no entry in baselines")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise input_error(source, f"rows[{index}]: config must be a mapping")
        finetune = _number(source, f"rows[{index}].finetune", entry.get("finetune", 1), int, 0, 10000)
        rows.append(Row(entry["model"], entry["method"], config, finetune, entry.get("label", entry["method"]), stages))
    return rows


def validate_rows(source, rows: list[Row]) -> None:
    """Unknown methods and unknown option names fail here, before any training."""
    for row in rows:
        if row.method == BASELINE:
            continue
        for stage in row.pipeline:
            try:
                methods.check_config(stage["method"], stage["config"])
            except InputError as error:
                raise input_error(source, f"row {row.label or row.method}: {error}") from error


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise input_error(path, f"cannot read recipe: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise input_error(path, f"bad YAML: {str(error).splitlines()[0]}") from error
    return parse_recipe(raw, str(path))


def parse_recipe(raw, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise input_error(source, "a recipe must be a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise input_error(source, f"unknown key(s) {sorted(unknown)}; allowed {sorted(TOP_KEYS)}")
    recipe = Recipe()
    recipe.data = str(raw.get("data", recipe.data))
    recipe.input_size = _number(source, "input_size", raw.get("input_size", recipe.input_size), int, 8, 1024)
    recipe.threads = _number(source, "threads", raw.get("threads", recipe.threads), int, 1, 256)
    recipe.latency_runs = _number(source, "latency_runs", raw.get("latency_runs", recipe.latency_runs), int, 10, 100000)
    recipe.seed = _number(source, "seed", raw.get("seed", 0), int, 0, 2**31)
    baselines = raw.get("baselines") or {}
    if not isinstance(baselines, dict) or not baselines:
        raise input_error(source, "baselines must map at least one model name to its settings")
    recipe.baselines = {name: _check_baseline(source, name, settings or {}) for name, settings in baselines.items()}
    finetune = raw.get("finetune", recipe.finetune)
    if not isinstance(finetune, dict) or set(finetune) - {"epochs", "lr", "momentum"}:
        raise input_error(source, "finetune must be a mapping with epochs, lr, momentum")
    recipe.finetune = {**recipe.finetune, **finetune}
    recipe.rows = _rows(source, raw.get("rows", "auto"), recipe.baselines)
    validate_rows(source, recipe.rows)
    return recipe
