"""Option values checked before anything runs: types from the ``apply_fn`` signature's annotations, ranges and
choices by option name (the same name means the same thing in every method).

``check_values(name, apply_fn, config)`` raises ``ValueError`` naming the option, what it must be and what it
got; ``registry.check_config`` (and so ``apply``, ``compress`` and every recipe, before its first row trains)
calls it. A range is ``(low, high, brackets)``: ``"[]"`` both ends included, ``"(]"`` low excluded, ...
"""
from __future__ import annotations

import inspect
import math

INF = math.inf
RANGES: dict[str, tuple[float, float, str]] = {
    "sparsity": (0.0, 1.0, "[)"), "conv_sparsity": (0.0, 1.0, "[)"), "fc_sparsity": (0.0, 1.0, "[)"),
    "first_conv_sparsity": (0.0, 1.0, "[)"), "last_fc_sparsity": (0.0, 1.0, "[)"),
    "compression": (0.0, 1.0, "(]"), "flops": (0.0, 1.0, "()"), "min_keep": (0.0, 1.0, "(]"),
    "energy": (0.0, 1.0, "(]"), "threshold": (0.0, 1.0, "[]"),
    "conv_bits": (1, 16, "[]"), "fc_bits": (1, 16, "[]"), "il": (0, 32, "[]"), "fl": (0, 32, "[]"),
    "n_iter_max": (1, 100_000, "[]"), "num_calibration": (1, 1_000_000, "[]"), "samples": (1, 1_000_000, "[]"),
    "steps": (1, 100_000, "[]"), "rounds": (1, 1000, "[]"), "steps_per_round": (1, 1_000_000, "[]"),
    "round_to": (1, 4096, "[]"), "cores": (2, 16, "[]"), "alpha": (0.0, INF, "()"), "penalty": (0.0, INF, "[)"),
    "head_pool": (0, 4096, "[]"), "seed": (0, 2**63 - 1, "[]"),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "rounding": ("nearest", "stochastic"), "weights": ("fixed", "shadow"), "compute": ("fp32", "fp16"),
    "scope": ("global", "layer"), "mode": ("expand", "on-the-fly"), "init": ("mean", "fresh"),
    "coding": ("plain", "huffman"), "loss": ("sum", "soft", "firm", "firm-max"),
}
TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _in_range(value, low, high, brackets: str) -> bool:
    above = value >= low if brackets[0] == "[" else value > low
    below = value <= high if brackets[1] == "]" else value < high
    return above and below


def _rank_ok(value) -> bool:
    if value == "auto" or isinstance(value, (list, dict)):
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return value >= 1
    return 0 < value <= 1 or (value > 1 and value.is_integer())


def check_value(option: str, value, annotation) -> None:
    """One option's value against its annotation (``bool``/``int``/``float``/``str``), range and choices."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    kinds = TYPES.get(kind)
    if kinds and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
        raise ValueError(f"option {option} must be {WORDS[kind]}, got {value!r}")
    if option in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high, brackets = RANGES[option]
        if not math.isfinite(value) or not _in_range(value, low, high, brackets):
            raise ValueError(f"option {option} must be in {brackets[0]}{low:g}, {high:g}{brackets[1]}, got {value!r}")
    if option == "rank" and not _rank_ok(value):
        raise ValueError(f"option rank must be 'auto', a positive integer, a fraction in (0, 1] of the full rank or "
                         f"a per-layer list/mapping, got {value!r}")
    if option in CHOICES and isinstance(value, str) and value not in CHOICES[option]:
        raise ValueError(f"option {option} must be one of {', '.join(CHOICES[option])}, got {value!r}")


def check_values(name: str, apply_fn, config: dict) -> None:
    """Every value of ``config`` for method ``name`` (keys already known to be options of ``apply_fn``)."""
    parameters = inspect.signature(apply_fn).parameters
    for option, value in config.items():
        parameter = parameters.get(option)
        annotation = parameter.annotation if parameter is not None else inspect.Parameter.empty
        try:
            check_value(option, value, annotation)
        except ValueError as error:
            raise ValueError(f"method {name!r}: {error}") from error
