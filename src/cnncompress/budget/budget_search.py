"""The byte-budget search of ``optimize``: one setting per layer from a measured sensitivity table
(``sensitivity.measure``: per layer, per setting, the exact bytes and the accuracy drop) with Σ cost minimal
(``_cost``: the drop plus a small charge per halving of the layer's bytes) under Σ bytes ≤ budget. A
multiple-choice knapsack by dynamic programming over the exact byte totals, partial solutions merged in
``STATES`` buckets of the budget and pruned to their Pareto front (``_pareto``); the cost model is additive,
so ``optimize`` measures the real file afterwards and searches again when it is over."""
from __future__ import annotations

import math

from cnncompress.errors import InputError
from cnncompress.budget.sensitivity import Setting, stored_bytes

STATES = 20_000  # the knapsack keeps at most this many partial solutions per layer
AGGRESSION = 0.1  # points of predicted accuracy charged per halving of a layer's bytes (``_cost``)


def search(table: dict, max_bytes: int) -> tuple[dict[str, Setting], dict]:
    """One setting per layer with the least total accuracy drop whose predicted file size fits ``max_bytes``.
    Returns ``(settings, prediction)``; ``InputError`` naming the smallest reachable size when none fits. A model
    takes int8 layers or bf16 layers, not both (one deployed graph, one precision): with both in the table, the
    search runs once without each and keeps the better."""
    fixed = table["base_bytes"] - sum(stored_bytes(e) for e in table["layers"].values())  # header, BN, ...
    kinds = {o.get("kind", "share") for e in table["layers"].values() for o in e["options"]}
    excluded = [{"bf16"}, {"int8"}] if {"int8", "bf16"} <= kinds else [set()]
    found = [_knapsack(table, max_bytes, fixed, without) for without in excluded]
    found = [f for f in found if f is not None]
    if not found:
        smallest = fixed + sum(min(o["bytes"] for o in e["options"]) for e in table["layers"].values())
        raise InputError(f"--max-bytes {max_bytes:,}: no setting reaches it; the smallest reachable file is about "
                         f"{smallest:,} bytes")
    _, used, choices = min(found, key=lambda state: state[:2])
    settings = {p: Setting.from_option(o) for p, o in zip(table["layers"], choices)}
    drop = sum(max(0.0, o["drop"]) for o in choices)
    return settings, {"bytes": fixed + used, "accuracy": table["base_accuracy"] - drop}


def _knapsack(table: dict, max_bytes: int, fixed: int, without: set) -> tuple[float, int, list] | None:
    """The multiple-choice knapsack of ``search`` over the options whose kind is not in ``without``:
    ``(total cost, layer bytes, one option per layer)``, or None when no choice fits."""
    step = max(1, (max_bytes - fixed) // STATES)  # states merge per `step` bytes; sizes themselves stay exact
    best = {0: (0.0, 0, [])}  # bucket -> (total cost, exact layer bytes, choices): the least cost per bucket
    for path, entry in table["layers"].items():
        nxt: dict[int, tuple[float, int, list]] = {}
        for drop, used, choices in best.values():
            for option in entry["options"]:
                total = used + option["bytes"]
                if fixed + total > max_bytes or option.get("kind", "share") in without:
                    continue
                state = (drop + _cost(option, entry["fp32_bytes"]), total, choices + [option])
                key = total // step
                if key not in nxt or state[:2] < nxt[key][:2]:
                    nxt[key] = state
        best = _pareto(nxt)
    return min(best.values(), key=lambda state: state[:2]) if best else None


def _cost(option: dict, fp32_bytes: int) -> float:
    """What the search minimises per layer: the measured drop (points), plus ``AGGRESSION`` points per halving
    of the layer's bytes. One layer's drop measured alone under-states what many compressed layers cost together
    (the additive model is optimistic), and measured drops of 0 would otherwise tie: the term spends the budget
    on mild settings spread over the layers that save the most, rather than on the most extreme ones."""
    return max(0.0, option["drop"]) + AGGRESSION * math.log2(max(1.0, fp32_bytes / max(1, option["bytes"])))


def _pareto(states: dict[int, tuple]) -> dict[int, tuple]:
    """Keep a state only if no smaller one has a drop as low (it can never be the better choice)."""
    kept, lowest = {}, math.inf
    for key in sorted(states):
        if states[key][0] < lowest:
            kept[key], lowest = states[key], states[key][0]
    return kept
