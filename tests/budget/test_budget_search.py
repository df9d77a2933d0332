"""The byte-budget knapsack: the least predicted drop that fits, checked against every combination; the
smallest reachable size named when nothing fits; one deployed precision (int8 or bf16 layers, never both)."""
import itertools

import pytest

from cnncompress.budget import budget_search
from cnncompress.budget.budget_search import search
from cnncompress.errors import InputError
from cnncompress.budget.sensitivity import Setting


def _table():
    """A synthetic sensitivity table: 3 layers, 3 options each (bytes, drop)."""
    options = {"a": [(4000, 0.0), (1000, 0.5), (300, 4.0)], "b": [(8000, 0.0), (2000, 1.0), (500, 2.0)],
               "c": [(2000, 0.0), (600, 0.1), (200, 3.0)]}
    layers = {name: {"fp32_bytes": opts[0][0], "options": [
        {"sparsity": 0.5 * i, "bits": None, "bytes": b, "drop": d, "accuracy": 99 - d}
        for i, (b, d) in enumerate(opts)]} for name, opts in options.items()}
    return {"base_accuracy": 99.0, "base_bytes": 14000 + 100, "layers": layers}


@pytest.mark.parametrize("budget", [14100, 8000, 4000, 2500, 1200])
def test_search_finds_the_least_drop_that_fits(budget):
    table = _table()
    settings, predicted = search(table, budget)
    assert predicted["bytes"] <= budget
    choices = [table["layers"][n]["options"] for n in "abc"]
    fits = [combo for combo in itertools.product(*choices) if 100 + sum(o["bytes"] for o in combo) <= budget]
    best = min(sum(o["drop"] for o in combo) for combo in fits)
    assert table["base_accuracy"] - predicted["accuracy"] == pytest.approx(best, abs=1e-9)


def test_search_names_the_smallest_reachable_size():
    with pytest.raises(InputError, match="smallest reachable file is about 1,100 bytes"):
        search(_table(), 900)


def test_search_takes_int8_or_bf16_layers_never_both():
    """Each kind alone would be chosen for the layer it suits best; one model deploys at one precision, so the
    search keeps the better of "no bf16" and "no int8", checked against every exclusive combination."""
    table = _table()
    for name, (int8, bf16) in {"a": ((1000, 0.05), (2000, 0.0)), "b": ((2000, 0.6), (4000, 0.0)),
                               "c": ((500, 0.0), (1000, 0.05))}.items():
        table["layers"][name]["options"] += [
            {"kind": "int8", "sparsity": 0.0, "bits": None, "bytes": int8[0], "drop": int8[1]},
            {"kind": "bf16", "sparsity": 0.0, "bits": None, "bytes": bf16[0], "drop": bf16[1]}]
    budget = 5200
    settings, predicted = search(table, budget)
    kinds = {s.kind for s in settings.values()}
    assert not {"int8", "bf16"} <= kinds and kinds & {"int8", "bf16"}
    cost = lambda combo: sum(budget_search._cost(o, table["layers"][n]["fp32_bytes"]) for n, o in zip("abc", combo))  # noqa: E731
    fits = [combo for combo in itertools.product(*(table["layers"][n]["options"] for n in "abc"))
            if 100 + sum(o["bytes"] for o in combo) <= budget
            and not {"int8", "bf16"} <= {o.get("kind", "share") for o in combo}]
    chosen = [next(o for o in table["layers"][n]["options"] if Setting.from_option(o) == settings[n]) for n in "abc"]
    assert cost(chosen) == pytest.approx(min(cost(combo) for combo in fits))
    assert predicted["bytes"] <= budget
