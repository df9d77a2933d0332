"""Per-layer sensitivity: what each setting of each layer costs in accuracy and saves in bytes, one at a time.

For every Conv2d/Linear layer of a float model (``surgery.select``) and every setting of the grid below, the
model is compressed with only that layer changed, no fine-tuning, and measured:

- ``drop``: validation accuracy of the float model minus that of the changed model (points; the validation
  split, never the test split),
- ``bytes``: the layer's bytes in the real ``.ccz`` file (``storage.save`` of the changed model minus the
  unchanged file, plus the layer's fp32 bytes: exact, from the codecs, not estimated).

A setting is Deep Compression's per-layer pair (Han et al. 2016; Berthelier et al. 2018 §3): magnitude
pruning to ``sparsity`` (0 = none) then k-means weight sharing with ``bits`` (None = fp32 values), Huffman-coded
when shared. ``optimizer.search`` picks one setting per layer from this table (Distiller-style sensitivity
analysis feeding a knapsack). Results are cached in ``cache`` (JSON, one entry per finished measurement, with a
fingerprint of the model and the validation images), so a killed run resumes without redoing finished layers, and
a cache made for another model or data is refused.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import methods, storage, surgery
from .checkpoint_io import checkpoint_digest
from .errors import InputError
from .measure import accuracy

SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)
BITS = (None, 8, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class Setting:
    """One layer's compression: prune to ``sparsity`` then share ``bits``-bit codebook values (None: fp32)."""

    sparsity: float = 0.0
    bits: int | None = None

    @property
    def unchanged(self) -> bool:
        return self.sparsity == 0.0 and self.bits is None

    def label(self) -> str:
        parts = ([f"prune {100 * self.sparsity:.0f}%"] if self.sparsity else []) + \
                ([f"{self.bits}-bit shared"] if self.bits else [])
        return " + ".join(parts) or "unchanged"


def grid() -> list[Setting]:
    return [Setting(s, b) for s in SPARSITIES for b in BITS]


def apply_settings(model: nn.Module, settings: dict[str, Setting], seed: int = 0, fp16_rest: bool = False) -> nn.Module:
    """A compressed copy of ``model``: every layer in ``settings`` pruned and shared as its setting says (one
    ``prune-magnitude`` call with per-layer targets, then one ``kmeans`` call per bit width, Huffman coded);
    ``fp16_rest``: then the ``fp16`` method, which stores every float tensor left (unchanged layers, biases,
    batch norms, codebooks) in half precision."""
    model = _apply_shared(model, settings, seed)
    return methods.apply(model, "fp16") if fp16_rest else model


def _apply_shared(model: nn.Module, settings: dict[str, Setting], seed: int) -> nn.Module:
    from .methods.share import HUFFMAN_INDEX_BITS, _SharedMixin
    chosen = {path: s for path, s in settings.items() if not s.unchanged}
    if not chosen:
        return model
    pruned = {path: s.sparsity for path, s in chosen.items() if s.sparsity}
    if pruned:
        model = methods.apply(model, "prune-magnitude", scope="layer", layers=sorted(pruned), per_layer=pruned)
    for bits in sorted({s.bits for s in chosen.values() if s.bits}):
        paths = sorted(p for p, s in chosen.items() if s.bits == bits)
        model = methods.apply(model, "kmeans", conv_bits=bits, fc_bits=bits, layers=paths, coding="huffman",
                              seed=seed)
    for module in model.modules():
        if isinstance(module, _SharedMixin):
            module.index_bits = HUFFMAN_INDEX_BITS
    return model


def file_size(model: nn.Module) -> int:
    """Bytes of ``model`` saved as a ``.ccz`` (a temporary file)."""
    with tempfile.TemporaryDirectory(prefix="cnncompress-size-") as tmp:
        return storage.save(model, Path(tmp) / "m.ccz").stat().st_size


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = surgery.select(model, "all")
    if not found:
        raise InputError("the model has no Conv2d or Linear layer to compress")
    return found


def fingerprint(model: nn.Module, val_set) -> str:
    """SHA-256 of the model's tensors and the validation images (``checkpoint_io.checkpoint_digest``): a cache
    made for anything else is refused."""
    return checkpoint_digest("", {**model.state_dict(), "validation images": val_set.images})


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable sensitivity cache ({error}); delete it to start over") from error
    return cached if isinstance(cached, dict) else {}


def _save_cache(path: Path | None, cache: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=0))
    os.replace(tmp, path)


def measure(model: nn.Module, val_set, cache: str | Path | None = None, settings: list[Setting] | None = None,
            progress=None, fp16_rest: bool = False) -> dict:
    """``{"base_accuracy", "base_bytes", "fp16_rest", "layers": {path: {"fp32_bytes", "stored_bytes", "options":
    [{"sparsity", "bits", "accuracy", "drop", "bytes"}, ...]}}}`` (accuracy in %, bytes of the layer in the file;
    ``stored_bytes``: the unchanged layer's, half its fp32 bytes with ``fp16_rest``). With ``fp16_rest`` every
    model measured, the base too, stores what its settings leave in half precision (``apply_settings``)."""
    model = model.eval()
    cache_path = Path(cache) if cache else None
    table = _load_cache(cache_path)
    digest = fingerprint(model, val_set) + ("+fp16-rest" if fp16_rest else "")
    if table and table.get("fingerprint") != digest:
        raise InputError(f"{cache_path}: holds the sensitivity of another model, data or fp16 setting; use another "
                         "--out")
    if "base_accuracy" not in table:
        base = apply_settings(model, {}, fp16_rest=fp16_rest)
        table = {"fingerprint": digest, "base_accuracy": accuracy(methods.to_inference(base), val_set),
                 "base_bytes": file_size(base), "fp16_rest": fp16_rest, "layers": {}}
        _save_cache(cache_path, table)
    for path, layer in layers(model):
        fp32_bytes = sum(p.numel() * 4 for p in layer.parameters())
        entry = table["layers"].setdefault(path, {"fp32_bytes": fp32_bytes, "options": [],
                                                  "stored_bytes": fp32_bytes // 2 if fp16_rest else fp32_bytes})
        done = {(o["sparsity"], o["bits"]) for o in entry["options"]}
        for setting in settings or grid():
            if (setting.sparsity, setting.bits) in done:
                continue
            if setting.unchanged:
                acc, size = table["base_accuracy"], table["base_bytes"]
            else:
                changed = apply_settings(model, {path: setting}, fp16_rest=fp16_rest)
                acc, size = accuracy(methods.to_inference(changed), val_set), file_size(changed)
            entry["options"].append({"sparsity": setting.sparsity, "bits": setting.bits, "accuracy": acc,
                                     "drop": table["base_accuracy"] - acc,
                                     "bytes": stored_bytes(entry) + size - table["base_bytes"]})
            _save_cache(cache_path, table)
        if progress:
            progress(f"sensitivity {path}: {len(entry['options'])} settings measured")
    return table


def stored_bytes(entry: dict) -> int:
    """A layer's bytes in the base file (caches written before ``fp16_rest`` existed: its fp32 bytes)."""
    return entry.get("stored_bytes", entry["fp32_bytes"])


def markdown(table: dict) -> str:
    """Per layer: the accuracy drop (points) of each setting, and its bytes in the file."""
    lines = [f"base: {table['base_accuracy']:.2f}% validation accuracy, {table['base_bytes']:,} bytes", "",
             "| layer | fp32 bytes | setting | bytes | Δ acc (points, val) |", "|---|---|---|---|---|"]
    for path, entry in table["layers"].items():
        for option in sorted(entry["options"], key=lambda o: o["bytes"]):
            label = Setting(option["sparsity"], option["bits"]).label()
            lines.append(f"| {path} | {entry['fp32_bytes']:,} | {label} | {option['bytes']:,} | "
                         f"{-option['drop']:+.2f} |")
    return "\n".join(lines) + "\n"


def heatmap(table: dict, path: str | Path) -> Path:
    """Accuracy drop per layer (rows) and setting (columns) as a PNG heat map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = grid()
    names = list(table["layers"])
    values = torch.full((len(names), len(settings)), float("nan"))
    for i, name in enumerate(names):
        for option in table["layers"][name]["options"]:
            j = settings.index(Setting(option["sparsity"], option["bits"]))
            values[i, j] = option["drop"]
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(settings)), 0.45 * len(names) + 2))
    image = ax.imshow(values.clamp(min=0).numpy(), aspect="auto", cmap="magma_r")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(len(settings)), [s.label() for s in settings], rotation=90, fontsize=6)
    fig.colorbar(image, ax=ax, label="validation accuracy drop (points)")
    ax.set_title("per-layer sensitivity (one layer changed, no fine-tuning)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
