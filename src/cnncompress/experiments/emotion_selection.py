"""The frozen selection rule of the emotion experiments: which compressed copy to keep, read from selection-set
figures only (``selection_view``: label, selection-set agreement, bytes, ratio; nothing measured on held-out
faces). ``emotion_crossfit`` picks each fold's headline row by it, ``emotion_table`` the row its confirmation seeds
go to."""
from __future__ import annotations

from cnncompress.errors import InputError

MIN_RATIO = 8.0  # the aim: a copy at least 8x smaller than the original's file
SELECTION_KEYS = ("label", "selection_agreement", "bytes", "size_ratio")  # all that ``pick`` may see


def selection_view(row: dict) -> dict:
    """What the selection rule may read of a row: nothing measured on the held-out faces."""
    return {key: row.get(key) for key in SELECTION_KEYS}


def pick(rows: list[dict], min_ratio: float = MIN_RATIO) -> dict:
    """The frozen selection rule over one fold's seed-0 rows: ``{"label", "reason"}``. Reads ``selection_view``
    only (a row's held-out figures cannot change the pick)."""
    views = [selection_view(r) for r in rows if "not_applicable" not in r and r.get("bytes")]
    if not views:
        raise InputError("emotion-crossfit: no candidate could be applied in this fold")
    small = [v for v in views if v["size_ratio"] >= min_ratio]
    if small:
        if any(v["selection_agreement"] is None for v in small):
            raise InputError("emotion-crossfit: a candidate row has no selection_agreement (not recovered?)")
        best = max(small, key=lambda v: (v["selection_agreement"], -v["bytes"]))
        tied = [v for v in small if v["selection_agreement"] == best["selection_agreement"]]
        reason = (f">= {min_ratio:g}x smaller and the highest selection-set agreement "
                  f"({best['selection_agreement']:.2f} %)" + (" (tie: the smaller file)" if len(tied) > 1 else ""))
    else:
        best = max(views, key=lambda v: v["size_ratio"])
        reason = f"no candidate >= {min_ratio:g}x smaller: the largest ratio ({best['size_ratio']:.2f}x)"
    return {"label": best["label"], "reason": reason}
