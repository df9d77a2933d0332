"""Per-layer sensitivity: what each setting of each layer costs in accuracy and saves in bytes, one at a time.

For every Conv2d/Linear layer of a float model (``surgery.select``) and every setting of the grid below, the
model is compressed with only that layer changed, no fine-tuning, and measured:

- ``drop``: validation accuracy of the float model minus that of the changed model (points; the validation
  split, never the test split),
- ``bytes``: the layer's bytes in the real ``.ccz`` file (``storage.save`` of the changed model minus the
  unchanged file, plus the layer's fp32 bytes: exact, from the codecs, not estimated).

- ``ms_saved`` (with an engine): the layer's latency minus that of what replaces it, each timed alone at its
  real shapes on the engine at batch 1 (``latency_model``; an int8 / bf16 layer on the int8 / bf16 engine of the
  same runtime, ``precision_engine``); 0 for settings whose deployed layer is the same dense fp32 layer (pruning,
  sharing, BWN, fp16 storage all run as dense fp32 on the engines).

Settings (``Setting.kind``):

- ``share``: Deep Compression's per-layer pair (Han et al. 2016; Berthelier et al. 2018 §3): magnitude pruning to
  ``sparsity`` (0 = none) then k-means weight sharing with ``bits`` (None = fp32 values), Huffman-coded;
- ``bwn``: binary weights, ``alpha_o sign(W_o)`` (Rastegari et al. 2016; 1 bit per weight + one scale per filter);
- ``fp16``: the layer's weights stored in IEEE half precision (Berthelier et al. 2018 §2.5);
- ``cp``: CP decomposition of a conv at ``rank`` (a fraction of the full rank; Lebedev et al. 2014, as Rassadin &
  Savchenko apply it); ``tucker``: Tucker-2 of a conv at ``rank`` (Kim et al. 2016). A setting a layer cannot take
  (a decomposition of a linear or depthwise conv) is left out of its row, with the reason.

- ``int8``: the layer's weights per-channel int8 and its input/output activations uint8 (calibrated min/max on
  ``calibration`` images), run by a real int8 kernel: the deployed QDQ graph quantises only the int8 layers
  (``methods.int8``), so the accuracy drop is the real one, activation rounding included;
- ``bf16``: the layer's weights stored in bfloat16 (Kalamkar et al. 2019); deployed, the model runs on a bf16
  engine (OpenVINO's precision hint is per graph, so every layer computes in bf16 there).

``int8`` and ``bf16`` are not in the default grid (``DEFAULT_KINDS``): they change the engine the whole model
deploys on, so they are asked for (``--kinds ... int8``); one model takes layers of one of the two, not both
(``apply_settings``, ``budget_search.search``).

``budget_search.search`` picks one setting per layer from this table (Distiller-style sensitivity analysis feeding a
knapsack). Results are cached in ``cache`` (JSON, one entry per finished measurement, with a
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

from cnncompress import deploy, methods, storage, surgery
from cnncompress.storage.checkpoint_io import checkpoint_digest
from cnncompress.errors import InputError
from cnncompress.measure import accuracy

SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)
BITS = (None, 8, 6, 5, 4, 3, 2)
KINDS = ("share", "bwn", "fp16", "cp", "tucker", "int8", "bf16")
DEFAULT_KINDS = KINDS[:5]  # int8 / bf16 change the deployment engine: asked for by name
PRECISION_KINDS = ("int8", "bf16")
DECOMPOSITION_KINDS = ("cp", "tucker")  # replace the layer by a network of convs
DECOMPOSITION_RANKS = (0.5, 0.25)  # fractions of the full rank, for ``cp`` and ``tucker`` alike


@dataclass(frozen=True)
class Setting:
    """One layer's compression. ``kind="share"``: prune to ``sparsity`` then share ``bits``-bit codebook values
    (None: fp32); ``"bwn"``: binary weights; ``"fp16"``: half-precision weights; ``"cp"`` / ``"tucker"``: a
    decomposition at ``rank``; ``"int8"``: int8 weights and activations; ``"bf16"``: bfloat16 weights."""

    sparsity: float = 0.0
    bits: int | None = None
    kind: str = "share"
    rank: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown setting kind {self.kind!r} (one of {', '.join(KINDS)})")

    @classmethod
    def from_option(cls, option: dict) -> "Setting":
        """The setting of one measured option (caches written before kinds existed hold ``share`` options)."""
        return cls(option["sparsity"], option["bits"], option.get("kind", "share"), option.get("rank"))

    @property
    def key(self) -> tuple:
        return self.kind, self.sparsity, self.bits, self.rank

    @property
    def unchanged(self) -> bool:
        return self.kind == "share" and self.sparsity == 0.0 and self.bits is None

    @property
    def dense(self) -> bool:
        """The deployed layer is the same dense fp32 layer (no latency saved on a dense engine)."""
        return self.kind not in (*DECOMPOSITION_KINDS, *PRECISION_KINDS)

    def label(self) -> str:
        if self.kind == "bwn":
            return "binary weights (BWN)"
        if self.kind == "fp16":
            return "fp16 weights"
        if self.kind == "int8":
            return "int8 weights + activations"
        if self.kind == "bf16":
            return "bf16 weights"
        if self.kind in DECOMPOSITION_KINDS:
            return f"{'CP' if self.kind == 'cp' else 'Tucker'} rank {self.rank:g} of full"
        parts = ([f"prune {100 * self.sparsity:.0f}%"] if self.sparsity else []) + \
                ([f"{self.bits}-bit shared"] if self.bits else [])
        return " + ".join(parts) or "unchanged"


def grid(kinds=DEFAULT_KINDS) -> list[Setting]:
    """Every setting of the given ``kinds`` (default ``DEFAULT_KINDS``): sparsity x bits for ``share``, one each
    for ``bwn``, ``fp16``, ``int8`` and ``bf16``, the ``DECOMPOSITION_RANKS`` for ``cp`` and ``tucker``."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise InputError(f"--kinds {' '.join(map(str, kinds))}: choose from {', '.join(KINDS)}")
    every = [Setting(s, b) for s in SPARSITIES for b in BITS] + [Setting(kind="bwn"), Setting(kind="fp16")] + \
        [Setting(kind=kind, rank=r) for kind in DECOMPOSITION_KINDS for r in DECOMPOSITION_RANKS] + \
        [Setting(kind=kind) for kind in PRECISION_KINDS]
    return [s for s in every if s.kind in kinds or s.unchanged]


def apply_settings(model: nn.Module, settings: dict[str, Setting], seed: int = 0, fp16_rest: bool = False,
                   calibration=None) -> nn.Module:
    """A compressed copy of ``model``: every layer in ``settings`` pruned and shared as its setting says (one
    ``prune-magnitude`` call with per-layer targets, then one ``kmeans`` call per bit width, Huffman coded);
    ``fp16_rest``: then the ``fp16`` method, which stores every float tensor left (unchanged layers, biases,
    batch norms, codebooks) in half precision. The other kinds are their methods applied to their layers only
    (``cp`` / ``tucker`` first: they replace the layer by a sequence of convs; ``int8`` last before the fp16
    rest, calibrated on ``calibration``: images, a dataset; required when a layer is int8)."""
    for kind, rank in sorted({(s.kind, s.rank) for s in settings.values() if s.kind in DECOMPOSITION_KINDS}):
        paths = sorted(p for p, s in settings.items() if s.kind == kind and s.rank == rank)
        extra = {"n_iter_max": 50, "seed": seed} if kind == "cp" else {}
        model = methods.apply(model, kind, layers=paths, rank=rank, **extra)
    model = _apply_shared(model, {p: s for p, s in settings.items() if s.kind == "share"}, seed)
    binary = sorted(p for p, s in settings.items() if s.kind == "bwn")
    if binary:
        model = methods.apply(model, "bwn", layers=binary, keep_first=False, keep_last=False)
    half = sorted(p for p, s in settings.items() if s.kind == "fp16")
    if half and not fp16_rest:
        model = methods.apply(model, "fp16", layers=half)
    model = _apply_precision(model, settings, calibration)
    return methods.apply(model, "fp16") if fp16_rest else model


def _apply_precision(model: nn.Module, settings: dict[str, Setting], calibration) -> nn.Module:
    """The ``int8`` and ``bf16`` layers of ``settings`` (one of the two per model: one deployed graph)."""
    chosen = {kind: sorted(p for p, s in settings.items() if s.kind == kind) for kind in PRECISION_KINDS}
    if all(chosen.values()):
        raise InputError(f"int8 layers ({', '.join(chosen['int8'])}) and bf16 layers ({', '.join(chosen['bf16'])}) "
                         "in one model: its graph deploys at one precision")
    if chosen["int8"]:
        if calibration is None:
            raise InputError("int8 settings need calibration images (the run's training data)")
        model = methods.apply(model, "int8", layers=chosen["int8"], calibration=calibration)
    if chosen["bf16"]:
        model = methods.apply(model, "bf16", layers=chosen["bf16"])
    return model


def precision_engine(engine: str, kind: str) -> str:
    """The engine an ``int8`` / ``bf16`` layer runs on when the model's float layers run on ``engine``: the same
    runtime at that precision (onnxruntime has no bf16: OpenVINO's; PyTorch has no int8: onnxruntime's)."""
    runtime = deploy.get(engine).runtime
    if kind == "int8":
        return "openvino-int8" if runtime == "openvino" else "onnxruntime-int8"
    return "torch-bf16" if runtime == "torch" else "openvino-bf16"


def _apply_shared(model: nn.Module, settings: dict[str, Setting], seed: int) -> nn.Module:
    from cnncompress.methods.share import HUFFMAN_INDEX_BITS, _SharedMixin
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
            progress=None, fp16_rest: bool = False, engine: str | None = None, calibration=None) -> dict:
    """``{"base_accuracy", "base_bytes", "fp16_rest", "engine", "layers": {path: {"fp32_bytes", "stored_bytes",
    "options": [{"kind", "sparsity", "bits", "rank", "accuracy", "drop", "bytes", "ms_saved"}, ...],
    "not_applicable": {setting label: why}}}}`` (accuracy in %, bytes of the layer in the file; ``stored_bytes``:
    the unchanged layer's, half its fp32 bytes with ``fp16_rest``; ``ms_saved`` only with ``engine``). With
    ``fp16_rest`` every model measured, the base too, stores what its settings leave in half precision
    (``apply_settings``). ``calibration``: the images ``int8`` settings calibrate on (default: ``val_set``'s)."""
    model = model.eval()
    cache_path = Path(cache) if cache else None
    table = _load_cache(cache_path)
    digest = fingerprint(model, val_set) + ("+fp16-rest" if fp16_rest else "")
    if table and table.get("fingerprint") != digest:
        raise InputError(f"{cache_path}: holds the sensitivity of another model, data or fp16 setting; use another "
                         "--out")
    if "base_accuracy" not in table:
        base = apply_settings(model, {}, fp16_rest=fp16_rest)
        table = {"fingerprint": digest, "base_accuracy": accuracy(deploy.to_inference(base), val_set),
                 "base_bytes": file_size(base), "fp16_rest": fp16_rest, "layers": {}}
        _save_cache(cache_path, table)
    timer = _LayerTimer(model, tuple(val_set.images.shape[1:]), engine) if engine else None
    table["engine"] = engine or table.get("engine")
    for path, layer in layers(model):
        fp32_bytes = sum(p.numel() * 4 for p in layer.parameters())
        entry = table["layers"].setdefault(path, {"fp32_bytes": fp32_bytes, "options": [],
                                                  "stored_bytes": fp32_bytes // 2 if fp16_rest else fp32_bytes})
        skipped = entry.setdefault("not_applicable", {})
        done = {Setting.from_option(o).key for o in entry["options"]}
        for setting in settings or grid():
            if setting.key in done or setting.label() in skipped:
                continue
            if setting.unchanged:
                acc, size, changed = table["base_accuracy"], table["base_bytes"], None
            else:
                try:
                    changed = apply_settings(model, {path: setting}, fp16_rest=fp16_rest,
                                             calibration=val_set if calibration is None else calibration)
                except (InputError, ValueError) as error:  # e.g. CP of a linear or depthwise layer
                    skipped[setting.label()] = str(error).splitlines()[0]
                    _save_cache(cache_path, table)
                    continue
                acc, size = accuracy(deploy.to_inference(changed), val_set), file_size(changed)
            option = {"kind": setting.kind, "sparsity": setting.sparsity, "bits": setting.bits, "rank": setting.rank,
                      "accuracy": acc, "drop": table["base_accuracy"] - acc,
                      "bytes": stored_bytes(entry) + size - table["base_bytes"]}
            if timer:
                option["ms_saved"] = 0.0 if setting.dense or changed is None else timer.saved(path, changed,
                                                                                                setting.kind)
            entry["options"].append(option)
            _save_cache(cache_path, table)
        if progress:
            progress(f"sensitivity {path}: {len(entry['options'])} settings measured")
    return table


class _LayerTimer:
    """Latency saved by a setting: the layer alone at its real shapes on ``engine`` minus what replaces it
    (``latency_model.LatencyModel``: a one-layer graph, or the replacing network as one graph, timed at batch 1,
    the engine's call cost taken off)."""

    def __init__(self, model: nn.Module, input_shape: tuple, engine: str):
        from cnncompress.budget.latency_model import LatencyModel
        self.engine = engine
        self.model = LatencyModel(model, (1, *input_shape))

    def saved(self, path: str, changed: nn.Module, kind: str = "cp") -> float | None:
        """ms saved (None: the int8 / bf16 engine it would run on is not available on this machine)."""
        before = self.model.layer_ms(self.model.shapes[path], self.engine)
        if kind in PRECISION_KINDS:  # the same layer at another precision: on that precision's engine
            other = precision_engine(self.engine, kind)
            if not deploy.get(other).available():
                return None
            return before - self.model.layer_ms(self.model.shapes[path], other)
        # a decomposition's factor convs, timed together as one graph (``LatencyModel.block_ms``)
        return before - self.model.block_ms(path, deploy.to_inference(changed).get_submodule(path), self.engine)


def stored_bytes(entry: dict) -> int:
    """A layer's bytes in the base file (caches written before ``fp16_rest`` existed: its fp32 bytes)."""
    return entry.get("stored_bytes", entry["fp32_bytes"])


def markdown(table: dict) -> str:
    """Per layer: the accuracy drop (points) of each setting, and its bytes in the file."""
    engine = table.get("engine")
    timed = f" ms saved on {engine} |" if engine else ""
    lines = [f"base: {table['base_accuracy']:.2f}% validation accuracy, {table['base_bytes']:,} bytes", "",
             "| layer | fp32 bytes | setting | bytes | Δ acc (points, val) |" + timed,
             "|---|---|---|---|---|" + ("---|" if engine else "")]
    for path, entry in table["layers"].items():
        for option in sorted(entry["options"], key=lambda o: o["bytes"]):
            label = Setting.from_option(option).label()
            saved = option.get("ms_saved")
            cell = (f" {saved:+.3f} |" if saved is not None else " — |") if engine else ""
            lines.append(f"| {path} | {entry['fp32_bytes']:,} | {label} | {option['bytes']:,} | "
                         f"{-option['drop']:+.2f} |" + cell)
        for label, why in entry.get("not_applicable", {}).items():
            lines.append(f"| {path} | {entry['fp32_bytes']:,} | {label} | not applicable: {why} | |" +
                         (" |" if engine else ""))
    return "\n".join(lines) + "\n"


def heatmap(table: dict, path: str | Path) -> Path:
    """Accuracy drop per layer (rows) and setting (columns) as a PNG heat map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(table["layers"])
    settings = list(dict.fromkeys(Setting.from_option(o) for name in names for o in table["layers"][name]["options"]))
    settings.sort(key=lambda s: (KINDS.index(s.kind), s.sparsity, -(s.bits or 99), -(s.rank or 0)))
    values = torch.full((len(names), len(settings)), float("nan"))
    for i, name in enumerate(names):
        for option in table["layers"][name]["options"]:
            values[i, settings.index(Setting.from_option(option))] = option["drop"]
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
