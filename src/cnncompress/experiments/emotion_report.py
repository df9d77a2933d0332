"""The ``table-emotion`` report: the table of rows (the experiment itself is ``emotion_table``; the verdict on
"a copy >= 8x smaller agrees on >= 90 %" is ``emotion_crossfit``'s, whose held-out faces chose nothing)."""
from __future__ import annotations

import numpy as np


def percent(agreement: dict, unit: str = "%") -> str:
    """An agreement with its interval as text: ``91.0% [85.0, 96.0]`` (``unit=""`` in the table's cells)."""
    return f"{agreement['agreement']:.1f}{unit} [{agreement['low']:.1f}, {agreement['high']:.1f}]"


NEAR_TIE = 0.1  # the original's top-2 softmax margin below which it is nearly undecided between two emotions


def near_tie_disagreements(agree_vector, margins, cut: float = NEAR_TIE) -> tuple[int, int]:
    """(disagreements on images where the original's top-2 margin is below ``cut``, all disagreements): a copy
    that differs only where the original itself hesitates differs where a small perturbation flips the answer."""
    disagree = ~np.asarray(agree_vector, dtype=bool)
    return int((disagree & (np.asarray(margins) < cut)).sum()), int(disagree.sum())


def table(rows: list[dict]) -> str:
    original = rows[0]
    classes = original.get("classes") or []
    margins = original.get("heldout_margins")

    def name(index):
        return classes[index] if isinstance(index, int) and 0 <= index < len(classes) else str(index)
    base_ms = original["latency"].get("ms")
    lines = [f"Original: `fer-minixception`, {original['bytes']:,} bytes, "
             f"{'—' if base_ms is None else f'{base_ms:.3f} ms'} on {original['latency'].get('engine')} (batch 1, 1 "
             f"thread; every row's latency timed in one interleaved race with it), astronaut = {name(original['astronaut'])}. Faces: {original['settings']['faces']} "
             f"({original['n_train']} train x {original['settings']['copies']} copies"
             f" + {original['settings'].get('transfer', 0) + 100} non-face images to distil on, {original['n_val']} val, "
             f"{original['n_heldout']} held out; {original['n_heldout_aug']} held-out images with augmented copies). "
             f"A model that always answers one class agrees on up to {original['constant_agreement']:.0f}% of the "
             f"held-out images (the original calls most of these faces the same emotion): read agreement against "
             f"that floor."
             + (f" The original is nearly undecided (top-2 softmax margin < {NEAR_TIE}) on "
                f"{int((np.asarray(margins) < NEAR_TIE).sum())} of them; the last column counts how many of a row's "
                f"disagreements (with augmented copies) fall on those." if margins else ""),
             "",
             "| method | recovered | agreement held-out faces % [95% CI] | + augmented copies % [95% CI] | before "
             "recovery % | `.ccz` bytes | × smaller | latency ms (engine) | × faster | astronaut | disagreements on "
             "near-ties |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def ties(row):
        if not margins or len(row.get("agree_vector") or ()) != len(margins):
            return "—"
        on_ties, total = near_tie_disagreements(row["agree_vector"], margins)
        return f"{on_ties} of {total}"
    first_seed = (original.get("settings") or {}).get("seeds", [None])[0]
    for row in rows[1:]:
        if row.get("seed", first_seed) != first_seed:  # a confirmation seed of the row the selection set picked
            row = {**row, "label": f"{row['label']} (seed {row['seed']})"}
        if "not_applicable" in row:
            lines.append(f"| {row['label']} | — | does not fit: {row['not_applicable']} | | | | | | | | |")
            continue
        a, b, lat = row["agreement_heldout"], row["agreement_heldout_aug"], row["latency"]
        ms = lat.get("ms")
        speed = "—" if ms is None or base_ms is None else f"{base_ms / ms:.2f}×"
        lines.append(f"| {row['label']} | {row['recovered']} | "
                     f"{percent(a, '')} | {percent(b, '')} | {row['agreement_before']:.1f} | {row['bytes']:,} | "
                     f"{row['size_ratio']:.2f}× | {'—' if ms is None else f'{ms:.3f}'} ({lat.get('engine')}) | "
                     f"{speed} | {name(row['astronaut'])}{'' if row['astronaut_same'] else ' (differs)'} | "
                     f"{ties(row)} |")
    return "\n".join(lines) + "\n"


def describe(row: dict) -> str:
    """One progress line for a finished row: agreement with its interval, bytes, ratio, latency."""
    if "not_applicable" in row:
        return f"{row['label']}: does not fit ({row['not_applicable']})"
    a = row["agreement_heldout_aug"]
    lat = row["latency"]
    ms = "—" if lat.get("ms") is None else f"{lat['ms']:.3f} ms on {lat['engine']}"
    return (f"{row['label']}: agreement {percent(a)}, "
            f"{row['bytes']:,} bytes ({row['size_ratio']:.2f}x smaller), {ms}")
