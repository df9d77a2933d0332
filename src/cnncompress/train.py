"""Trainer: SGD loop with the paper's defaults, per-epoch checkpoints, bit-exact resume, error-curve history.

Rassadin & Savchenko 2017: SGD, momentum 0.9, lr 0.001 fixed, batch 20 (VGG-S) / 32 (SqueezeNet).
Determinism: epoch ``e`` shuffles with a generator seeded ``seed * 1_000_003 + e`` and re-seeds torch's global
RNG (dropout) with ``seed + e``, so a run resumed from the checkpoint of epoch ``e-1`` is bit-identical to an
uninterrupted one. Every compressed layer's ``after_step()`` (``layers.CompressedLayer``: e.g. weight clipping of
binary layers) is called after every optimizer step.

Inside a torch.distributed process group (``cnncompress train --ddp N`` or torchrun) the model is wrapped in
DistributedDataParallel, each rank trains on its shard of every global batch (``cnncompress.distributed``: the
same steps as one process at the same global ``batch_size``), only rank 0 evaluates, prints and writes
checkpoints, and every rank resumes from the same checkpoint (which any world size can continue).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import distributed
from .errors import InputError, input_error
from .layers import after_step

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.001
    momentum: float = 0.9
    batch_size: int = 32
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    augment: bool = False
    grad_clip: float = 0.0  # clip the global gradient norm to this value (0 = off)

    def validate(self) -> "TrainConfig":
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs={self.epochs} must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr={self.lr} must be a positive number")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum={self.momentum} must be in [0, 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if self.device not in ("cpu", "cuda"):
            problems.append(f"device={self.device!r} must be cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            problems.append("device=cuda but no CUDA device is available")
        if problems:
            raise InputError("bad training config: " + "; ".join(problems))
        return self


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


@torch.no_grad()
def error_rate(model: nn.Module, dataset, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 error (fraction) of ``model`` on a labelled in-memory dataset."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size].to(device)
        labels = dataset.labels[start:start + batch_size].to(device)
        wrong += int((model(images).argmax(1) != labels).sum())
    model.train(was_training)
    return wrong / max(1, len(dataset))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file (named by this process) renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_json(path: Path, payload: dict) -> None:
    atomic_write(path, json.dumps(payload, indent=1).encode())


def _atomic_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[f"{index}.{key}"] = value
    return out


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def checkpoint_info(meta: Path, config: TrainConfig, any_epochs: bool = False) -> dict:
    """The JSON record (epoch, config, history) of a checkpoint, checked against ``config``: a ``TrainConfig``
    field added since the file was written counts as its default; ``any_epochs`` ignores the epoch count."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as error:
        raise input_error(meta, f"unreadable checkpoint: {error}") from error
    saved, defaults = info.get("config") or {}, asdict(TrainConfig())
    ignored = {"epochs": 0} if any_epochs else {}
    if set(saved) - set(defaults) or {**defaults, **saved, **ignored} != {**asdict(config), **ignored}:
        raise input_error(meta, f"checkpoint was made with a different config {info.get('config')}")
    return info


class Trainer:
    """Trains ``model`` on in-memory datasets (``.images``, ``.labels``); checkpoints to ``out_dir``."""

    def __init__(self, model: nn.Module, train_set, test_set=None, config: TrainConfig | None = None,
                 out_dir: str | Path | None = None, loss_fn: LossFn = cross_entropy_loss, progress: bool = True,
                 evaluate: Callable[[nn.Module], float] | None = None):
        self.config = (config or TrainConfig()).validate()
        self.model = model.to(self.config.device)
        self.train_set, self.test_set = train_set, test_set
        self.out_dir = Path(out_dir) if out_dir else None
        self.rank, self.world_size = distributed.world()
        self.loss_fn, self.progress = loss_fn, progress and self.rank == 0
        self.parallel = distributed.wrap(self.model, self.config.device)  # the model itself in one process
        self.evaluate = evaluate or (lambda m: error_rate(m, test_set, device=self.config.device))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr,
                                         momentum=self.config.momentum, weight_decay=self.config.weight_decay)
        self.history: list[dict] = []
        if len(train_set) == 0:
            raise InputError(f"training set {getattr(train_set, 'name', '')} is empty")

    @property
    def checkpoint_paths(self) -> tuple[Path, Path]:
        assert self.out_dir is not None
        return self.out_dir / "checkpoint.safetensors", self.out_dir / "checkpoint.json"

    def resume(self) -> int:
        """Load the last checkpoint if there is one; returns the number of finished epochs."""
        weights, meta = self.checkpoint_paths
        if not meta.exists():
            return 0
        info = checkpoint_info(meta, self.config, any_epochs=True)  # more epochs may be asked for
        try:
            tensors = load_file(str(weights))
        except (OSError, ValueError) as error:
            raise input_error(meta, f"unreadable checkpoint: {error}") from error
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        _load_optimizer_tensors(self.optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")})
        self.history = info["history"]
        return int(info["epoch"])

    def _save_checkpoint(self, epoch: int) -> None:
        weights, meta = self.checkpoint_paths
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"optim.{k}": v for k, v in _optimizer_tensors(self.optimizer).items()})
        _atomic_safetensors(weights, tensors)
        _atomic_json(meta, {"epoch": epoch, "config": asdict(self.config), "history": self.history})

    def _epoch(self, epoch: int) -> dict:
        cfg = self.config
        torch.manual_seed(cfg.seed + epoch)
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        augment_rng = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        self.model.train()
        total_loss, seen, steps = 0.0, 0, 0
        started = time.perf_counter()
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not self.progress, unit="step",
                   mininterval=1.0)
        for start in bar:
            index = order[start:start + cfg.batch_size]
            images, labels, weight = self._batch(index, augment_rng)
            loss = self.loss_fn(self.parallel, images, labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {float(loss)} at epoch {epoch}; lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight if self.world_size > 1 else loss).backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            after_step(self.model)
            share = len(index) * weight / self.world_size if self.world_size > 1 else len(index)  # this rank's
            total_loss += loss.item() * share
            seen += share
            steps += 1
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}")
        if self.world_size > 1:  # the epoch's mean loss over the whole data set, as in one process
            total_loss, seen = distributed.all_sum([total_loss, seen])
        seconds = time.perf_counter() - started
        record = {"epoch": epoch, "train_loss": total_loss / seen, "seconds": seconds,
                  "ms_per_step": 1000.0 * seconds / steps}
        if self.test_set is not None and self.rank == 0:
            record["test_error"] = self.evaluate(self.model)
        return record

    def _batch(self, index: torch.Tensor, augment_rng: torch.Generator) -> tuple:
        """(images, labels, loss weight) of this rank's shard of the global batch ``index`` (weight 1 alone)."""
        cfg = self.config
        images, labels, weight = self.train_set.images[index], self.train_set.labels[index], 1.0
        if cfg.augment:  # the global batch (same random draws in every process), sharded below
            from .data.transforms import augment
            images = augment(images, augment_rng)
        if self.world_size > 1:
            position = distributed.shard(torch.arange(len(index)), self.rank, self.world_size)
            weight = len(position) * self.world_size / len(index)
            if not len(position):  # an empty shard forwards the batch with weight 0: DDP needs every rank
                position = torch.arange(len(index))
            images, labels = images[position], labels[position]
        return images.to(cfg.device), labels.to(cfg.device), weight

    def fit(self, resume: bool = False) -> list[dict]:
        """Train for ``config.epochs`` epochs (continuing after the last checkpoint when ``resume``)."""
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        done = self.resume() if (resume and self.out_dir) else 0
        for epoch in range(done + 1, self.config.epochs + 1):
            record = self._epoch(epoch)
            self.history.append(record)
            if self.progress:
                error = f", test error {100 * record['test_error']:.2f}%" if "test_error" in record else ""
                tqdm.write(f"epoch {epoch}: loss {record['train_loss']:.4f}{error}, {record['seconds']:.1f}s")
            if self.out_dir and self.rank == 0:
                self._save_checkpoint(epoch)
            distributed.barrier()
        self.model.eval()
        return self.history


def save_weights(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Save a float model's weights with safetensors; its build spec goes into the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"cnncompress.spec": json.dumps(getattr(model, "spec", {})), **(extra or {})}
    _atomic_safetensors(path, model.state_dict(), metadata)
    return path


def load_weights(path: str | Path) -> nn.Module:
    """Rebuild a float model saved by ``save_weights`` (safetensors only; nothing is unpickled)."""
    from safetensors import safe_open

    from .models import build_from_spec
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            spec = json.loads((handle.metadata() or {}).get("cnncompress.spec", "{}"))
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise input_error(path, f"not a valid safetensors model ({type(error).__name__}: {error})") from error
    if not spec:
        raise input_error(path, "no cnncompress.spec in the metadata; not saved by cnncompress")
    model = build_from_spec(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise input_error(path, f"weights do not fit {spec.get('name')}: {str(error).splitlines()[0]}") from error
    return model.eval()


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Per-epoch test error (and train loss) curve to PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if history and "test_error" in history[0]:
        ax.plot(epochs, [100 * h["test_error"] for h in history], marker="o", label="test error %")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["train_loss"] for h in history], color="tab:orange", linestyle="--", label="train loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("test error (%)"), ax2.set_ylabel("train loss")
    ax.set_title(title)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
