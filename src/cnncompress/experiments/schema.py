"""Recipe schemas: every key a YAML recipe may hold, for the three kinds (bench, distill, cascade), and the one
validator that checks a recipe against its schema before anything runs.

A schema is a tree of small value specs: ``Number``, ``Flag``, ``Text``, ``Choice``, ``ListOf``, ``Mapping`` (a
closed set of keys: an unknown key is an error), ``MapOf`` (free names -> one kind of value: model names, method
options), ``Grid`` (option -> non-empty list of values) and ``Either`` (the first alternative whose type fits).
``check(raw, schema, source)`` walks the tree and returns the recipe with numbers normalised (a float field
also takes YAML's ``1e-3``, which YAML reads as a string); the first problem is an ``InputError`` of one line
naming the file and the key, e.g. ``r.yaml: rows[0].finetune=-1 out of range [0, 10000]`` or
``r.yaml: rows[0]: unknown key 'colour' (allowed: ...)``.

The schema covers types, ranges and keys. What needs the registries (model and method names, method options)
or the whole recipe (duplicate rows, grid expansion) is checked by the recipe's own reader right after.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from cnncompress.errors import input_error

ANYTHING = None  # an item spec that accepts any value (method option values)


def _at(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


@dataclass(frozen=True)
class Number:
    """An integer (``kind=int``) or a number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    kind: type = float
    low: float = -math.inf
    high: float = math.inf
    nullable: bool = False
    open_low: bool = False

    def fits(self, value) -> bool:
        return isinstance(value, (int, float, str)) and not isinstance(value, bool)

    def describe(self) -> str:
        return "an integer" if self.kind is int else "a number"

    def check(self, value, source, where):
        if value is None and self.nullable:
            return None
        if self.kind is float and isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-3 (no dot) as a string
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                (self.kind is int and not isinstance(value, int)):
            raise input_error(source, f"{where} must be {self.describe()}, got {value!r}")
        if not (self.low < value if self.open_low else self.low <= value) or not value <= self.high:
            bracket = "(" if self.open_low else "["
            raise input_error(source, f"{where}={value} out of range {bracket}{self.low:g}, {self.high:g}]")
        return value


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false``."""

    def fits(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def check(self, value, source, where):
        if not isinstance(value, bool):
            raise input_error(source, f"{where} must be true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class Text:
    """A name or spec (a YAML scalar: ``2017`` is read as a number and kept as such)."""
    nullable: bool = False

    def fits(self, value) -> bool:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)

    def describe(self) -> str:
        return "a name"

    def check(self, value, source, where):
        if value is None and self.nullable:
            return None
        if not self.fits(value):
            raise input_error(source, f"{where} must be a name, got {value!r}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""
    values: tuple

    def fits(self, value) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return " or ".join(map(repr, self.values))

    def check(self, value, source, where):
        if value not in self.values:
            raise input_error(source, f"{where} must be {self.describe()}, got {value!r}")
        return value


@dataclass(frozen=True)
class ListOf:
    """A list of ``item`` values; ``non_empty`` and ``unique`` when asked."""
    item: object = ANYTHING
    non_empty: bool = False
    unique: bool = False

    def fits(self, value) -> bool:
        return isinstance(value, list)

    def describe(self) -> str:
        return "a list"

    def check(self, value, source, where):
        if not isinstance(value, list) or (self.non_empty and not value):
            raise input_error(source, f"{where} must be a {'non-empty ' if self.non_empty else ''}list, "
                                      f"got {value!r}")
        items = [self.item.check(v, source, _at(where, i)) if self.item is not ANYTHING else v
                 for i, v in enumerate(value)]
        if self.unique:
            seen = []
            for item in items:
                if item in seen:
                    raise input_error(source, f"{where} lists {item!r} twice: {items}")
                seen.append(item)
        return items


@dataclass(frozen=True)
class Mapping:
    """A mapping with a closed set of keys (``fields``); ``required`` keys must be present."""
    fields: dict = field(default_factory=dict)
    required: tuple = ()
    nullable: bool = False  # ``key:`` with nothing after it reads as an empty mapping

    def fits(self, value) -> bool:
        return isinstance(value, dict)

    def describe(self) -> str:
        return "a mapping"

    def check(self, value, source, where):
        if value is None and self.nullable:
            value = {}
        if not isinstance(value, dict):
            raise input_error(source, f"{where or 'a recipe'} must be a mapping, got {value!r}")
        for key in value:
            if key not in self.fields:
                inside = f"{where}: " if where else ""
                raise input_error(source, f"{inside}unknown key {key!r} (allowed: {', '.join(self.fields)})")
        for key in self.required:
            if key not in value:
                raise input_error(source, f"{_at(where, key)} is required")
        return {key: self.fields[key].check(item, source, _at(where, key)) for key, item in value.items()}


@dataclass(frozen=True)
class MapOf:
    """Free names -> ``item`` values (``keys``: the allowed names, when they are a fixed set)."""
    item: object = ANYTHING
    keys: tuple = ()
    nullable: bool = False

    def fits(self, value) -> bool:
        return isinstance(value, dict)

    def describe(self) -> str:
        return "a mapping"

    def check(self, value, source, where):
        if value is None and self.nullable:
            value = {}
        if not isinstance(value, dict):
            raise input_error(source, f"{where} must be a mapping, got {value!r}")
        for key in value:
            if self.keys and key not in self.keys:
                raise input_error(source, f"{where}: unknown key {key!r} (allowed: {', '.join(self.keys)})")
        return {key: (self.item.check(item, source, _at(where, key)) if self.item is not ANYTHING else item)
                for key, item in value.items()}


@dataclass(frozen=True)
class Grid:
    """A sweep: option name -> non-empty list of values (the row expands into their cartesian product)."""

    def fits(self, value) -> bool:
        return isinstance(value, dict)

    def describe(self) -> str:
        return "a grid"

    def check(self, value, source, where):
        if not isinstance(value, dict) or not all(isinstance(v, list) and v for v in value.values()):
            raise input_error(source, f"{where}: grid must map option names to non-empty lists of values")
        return value


@dataclass(frozen=True)
class Either:
    """The first alternative whose type fits the value (``"auto"`` matches a literal string)."""
    alternatives: tuple

    def fits(self, value) -> bool:
        return any(self._fits(alt, value) for alt in self.alternatives)

    @staticmethod
    def _fits(alternative, value) -> bool:
        return value == alternative if isinstance(alternative, str) else alternative.fits(value)

    def describe(self) -> str:
        return " or ".join(repr(a) if isinstance(a, str) else a.describe() for a in self.alternatives)

    def check(self, value, source, where):
        for alternative in self.alternatives:
            if self._fits(alternative, value):
                return value if isinstance(alternative, str) else alternative.check(value, source, where)
        raise input_error(source, f"{where} must be {self.describe()}, got {value!r}")


def check(raw, schema, source: str | Path = "<recipe>"):
    """``raw`` checked against ``schema``: the normalised value, or an InputError naming ``source`` and the key."""
    return schema.check(raw, str(source), "")


def read_yaml(path: str | Path):
    """A YAML file's content; unreadable files and bad YAML are one-line InputErrors naming the file."""
    import yaml
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise input_error(path, f"cannot read recipe: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise input_error(path, f"bad YAML: {str(error).splitlines()[0]}") from error


def load(path: str | Path, schema):
    """Read the YAML recipe at ``path`` and check it against ``schema`` (an empty file is an empty mapping)."""
    raw = read_yaml(path)
    return check({} if raw is None else raw, schema, path)


# ---------------------------------------------------------------- the three kinds of recipe
SEED = Number(int, 0, 2 ** 31)
SEEDS = Either((SEED, ListOf(SEED, non_empty=True, unique=True)))
EPOCHS = Number(int, 0, 10000)
LR = Number(float, 1e-8, 10)
MOMENTUM = Number(float, 0, 0.999)
BATCH = Number(int, 1, 65536)
WIDTH = Number(float, 0.01, 8)

# ``cnncompress bench --recipe``: see cnncompress.experiments.recipe for what each key does
BENCH_STAGE = Mapping({"method": Text(), "config": MapOf(nullable=True), "grid": Grid()}, required=("method",))
BENCH_ROW = Mapping({"model": Text(), "method": Text(), "config": MapOf(nullable=True), "finetune": EPOCHS,
                     "label": Text(), "stages": ListOf(BENCH_STAGE, non_empty=True), "grid": Grid(), "seed": SEEDS},
                    required=("model",))
TRAINING = {  # train.TrainConfig fields a recipe may set (baselines.<model>: epochs is the cap with patience);
    # names (optimizer, augment) are checked by TrainConfig.validate when the recipe is read
    "epochs": EPOCHS, "lr": LR, "momentum": MOMENTUM, "batch_size": BATCH, "weight_decay": Number(float, 0, 1),
    "schedule": Choice(("cosine", "onecycle", "paper")), "warmup": Number(float, 0, 0.99),
    "patience": Number(int, 0, 10000), "augment": Either((Flag(), Text())), "grad_clip": Number(float, 0),
    "optimizer": Text()}
BENCH_BASELINE = Mapping({"width": WIDTH, "seed": SEED, **TRAINING}, nullable=True)
BENCH_FINETUNE = Mapping({  # no patience: a row and its control train equally long
    **{key: value for key, value in TRAINING.items() if key != "patience"}, "lr_scale": Number(float, 1e-6, 10)})
BENCH_RECIPE = Mapping({
    "data": Text(), "input_size": Number(int, 8, 1024), "threads": Number(int, 1, 256),
    "latency_runs": Number(int, 10, 100000), "memory": Flag(), "seed": SEEDS,
    "baselines": MapOf(BENCH_BASELINE), "finetune": BENCH_FINETUNE,
    "rows": Either(("auto", ListOf(BENCH_ROW)))}, required=("baselines",))

# ``cnncompress distill --recipe``: one experiment, or ``experiments: [...]``; see experiments.distill_table
TARGETS = ("labels", "softmax", "hinton")
DISTILL_OPTIONS = {"copies": Number(int, 1, 10000), "epochs": EPOCHS, "lr": LR, "momentum": MOMENTUM,
                   "weight_decay": Number(float, 0, 1), "batch_size": BATCH,
                   "temperature": Number(float, 0, 1000, nullable=True, open_low=True), "alpha": Number(float, 0, 1)}
TEACHER_TRAINING = Mapping({"model": Text(), "data": Text(), "width": WIDTH, "input_size": Number(int, 8, 1024),
                            "epochs": EPOCHS, "lr": LR, "batch_size": BATCH, "seed": SEED}, required=("model",))
DISTILL_EXPERIMENT = Mapping({
    "name": Text(), "description": Text(nullable=True),
    "teacher": Either((Text(), Mapping({"train": TEACHER_TRAINING}, required=("train",)))),
    "unlabeled": Text(), "heldout": Text(nullable=True), "labeled": Text(nullable=True),
    "student": Mapping({"model": Text(), "width": WIDTH}),
    "targets": ListOf(Choice(TARGETS), non_empty=True, unique=True), "seeds": ListOf(SEED, non_empty=True),
    "target_options": MapOf(Mapping(DISTILL_OPTIONS), keys=TARGETS),
    "cache": Text(nullable=True), "device": Choice(("cpu", "cuda")), **DISTILL_OPTIONS},
    required=("teacher", "unlabeled"))
DISTILL_RECIPE = Mapping({"experiments": ListOf(DISTILL_EXPERIMENT, non_empty=True)}, required=("experiments",))

# ``cnncompress cascade --recipe`` (and ``reproduce cascade``); see experiments.cascade_grid
CASCADE_DATASETS = ("mnist5k", "noisy-mnist5k")
CASCADE_LOSSES = ("sum", "soft", "firm", "firm-max")
PROBABILITY = Number(float, 0, 1)
CASCADE_RECIPE = Mapping({
    "datasets": ListOf(Choice(CASCADE_DATASETS), non_empty=True),
    "losses": ListOf(Choice(CASCADE_LOSSES), non_empty=True),
    "positions": ListOf(Choice(("p1", "p2")), non_empty=True), "seeds": ListOf(SEED, non_empty=True),
    "epochs": EPOCHS, "pretrain_epochs": Number(int, 0, 10000, nullable=True), "threshold": PROBABILITY,
    "penalty": Number(float, 0), "alpha": Number(float, 0, open_low=True), "penalties": ListOf(Number(float, 0)),
    "penalty_seed_count": Number(int, 1, 1000), "lr": LR, "momentum": MOMENTUM,
    "firm_lr": Number(float, 1e-8, 10, nullable=True),
    "firm_momentum": Number(float, 0, 0.999, nullable=True), "batch_size": BATCH, "width": WIDTH,
    "limit": Number(int, 0), "thresholds": ListOf(PROBABILITY, non_empty=True)})
