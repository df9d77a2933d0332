"""Trainer: SGD/AdamW loop with learning-rate schedules, validation-based early stopping and best-epoch weights,
per-epoch checkpoints, bit-exact resume, error-curve history.

Rassadin & Savchenko 2017 train with SGD, momentum 0.9, lr 0.001 fixed, batch 20 (VGG-S) / 32 (SqueezeNet):
``schedule="paper"``. At the CPU input sizes those settings stay far from convergence in a few epochs, so each model
has a recommended preset (``preset(name)``, table in ``models.DEFAULT_TRAINING``: cosine schedule with warm-up,
VGG-S SGD, the BN-free SqueezeNet AdamW) chosen on the validation split; ``preset(name, "finetune")`` is the
matching fine-tuning of a compressed model (``FINETUNE``).
Determinism: epoch ``e`` shuffles with a generator seeded ``seed * 1_000_003 + e`` and re-seeds torch's global
RNG (dropout) with ``seed + e``, so a run resumed from the checkpoint of epoch ``e-1`` is bit-identical to an
uninterrupted one. Every compressed layer's ``after_step()`` (``layers.CompressedLayer``: e.g. weight clipping of
binary layers) is called after every optimizer step.

Inside a torch.distributed process group (``cnncompress train --ddp N`` or torchrun) the model is wrapped in
DistributedDataParallel, each rank trains on its shard of every global batch (``cnncompress.training.distributed``: the
same steps as one process at the same global ``batch_size``), only rank 0 evaluates, prints and writes
checkpoints, and every rank resumes from the same checkpoint (which any world size can continue).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnncompress.training import distributed
from cnncompress.errors import InputError, input_error
from cnncompress.storage.checkpoint_io import atomic_json as _atomic_json
from cnncompress.storage.checkpoint_io import atomic_safetensors as _atomic_safetensors
from cnncompress.storage.checkpoint_io import atomic_write, read_checkpoint, write_checkpoint  # noqa: F401 (atomic_write: re-export)
from cnncompress.storage.checkpoint_io import load_optimizer_tensors as _load_optimizer_tensors
from cnncompress.storage.checkpoint_io import optimizer_tensors as _optimizer_tensors
from cnncompress.layers import after_step
from cnncompress.measure import error_rate  # noqa: F401  (re-exported: the trainer's validation error)
from cnncompress.storage.weights_file import load_weights, save_weights  # noqa: F401 (re-exported: the public place)

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
    augment: bool | str = False  # AUGMENTS: random shifts of up to 2 pixels, plus horizontal flips unless "shift"
    grad_clip: float = 0.0  # clip the global gradient norm to this value (0 = off)
    schedule: str = "cosine"  # SCHEDULES: "paper" keeps the papers' fixed learning rate
    warmup: float = 0.05  # fraction of all steps with a linear warm-up (cosine, onecycle)
    patience: int = 0  # stop when the validation error has not improved for this many epochs (0 = never)
    restore_best: bool = True  # end on the epoch with the lowest validation error (when there is a validation set)
    optimizer: str = "sgd"  # OPTIMIZERS: "sgd" (the papers', with momentum) or "adamw" (betas 0.9/0.999)
    freeze_norm: bool = False  # batch-norm layers stay in eval mode (running statistics kept): recovering a
    # pretrained model on a few hundred images, where batch statistics would drag the learned ones

    def validate(self) -> "TrainConfig":
        problems = []
        if self.augment not in AUGMENTS:
            problems.append(f"augment={self.augment!r} must be one of {', '.join(map(repr, AUGMENTS))}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1:
            problems.append(f"warmup={self.warmup} must be in [0, 1)")
        if self.patience < 0:
            problems.append(f"patience={self.patience} must be >= 0")
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


SCHEDULES = ("cosine", "onecycle", "paper")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = (False, True, "shift", "flip+shift")  # True = "flip+shift"; digits want "shift" (no mirror images)


def best_record(history: list[dict]) -> dict | None:
    """The epoch record with the lowest validation error (the latest of equals), or None when no epoch was
    validated: the one rule for "the best validation epoch" (the trainer, its figures, the bench)."""
    scored = [h for h in history if "val_error" in h]
    return min(scored, key=lambda h: (h["val_error"], -h["epoch"])) if scored else None


def best_epoch(history: list[dict]) -> int | None:
    """The epoch number of ``best_record(history)``, or None."""
    best = best_record(history)
    return None if best is None else best["epoch"]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the papers') or AdamW (decoupled weight decay, Loshchilov & Hutter 2019)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    ``paper``: lr fixed (Rassadin & Savchenko 2017: SGD, lr 0.001). ``cosine``: linear warm-up over the first
    ``warmup`` fraction of the steps, then lr * (1 + cos(pi * t)) / 2 with t the fraction of the remaining steps
    done (Loshchilov & Hutter 2017, no restarts). ``onecycle`` (Smith 2018): from lr/25 up to lr over the first
    30 % of the steps, then cosine down to lr/1e4.
    """
    lr = config.lr
    if config.schedule == "paper" or total_steps <= 1:
        return lr
    if config.schedule == "onecycle":
        peak = max(1, int(0.3 * total_steps))
        if step < peak:
            return lr / 25 + (lr - lr / 25) * step / peak
        t = (step - peak) / max(1, total_steps - peak)
        return lr / 1e4 + (lr - lr / 1e4) * 0.5 * (1 + math.cos(math.pi * t))
    warm = int(config.warmup * total_steps)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


FINETUNE = {"epochs": 1, "lr_scale": 0.1, "schedule": "cosine", "warmup": 0.05, "patience": 0}
"""Fine-tuning a compressed model: ``epochs`` (1-3) of the baseline's optimiser, cosine over the fine-tuning steps
after a short linear warm-up, at the model's fine-tuning lr (``models.DEFAULT_FINETUNE``; else ``lr_scale`` x the
baseline's). Measured at the bench's input sizes (README): VGG-S SGD 0.003 (0.001 left BWN at 87.6% after one cosine
epoch, 0.003 at 96.4%); SqueezeNet AdamW 0.002 (a compressed SqueezeNet starts at 10%: it needs the full lr)."""


def preset(model: str, stage: str = "baseline", **overrides) -> TrainConfig:
    """The recommended ``TrainConfig`` for training ``model`` (``models.DEFAULT_TRAINING``): ``stage="baseline"``
    from scratch, ``"finetune"`` after compression (``FINETUNE``). ``overrides`` (any TrainConfig field, e.g.
    ``seed``, ``epochs``) win. Unknown models get the TrainConfig defaults."""
    from cnncompress.models import DEFAULT_FINETUNE, DEFAULT_TRAINING
    if stage not in ("baseline", "finetune"):
        raise InputError(f"stage must be 'baseline' or 'finetune', got {stage!r}")
    settings = dict(DEFAULT_TRAINING.get(model, {}))
    if stage == "finetune":
        settings.update({k: v for k, v in FINETUNE.items() if k != "lr_scale"},
                        lr=settings.get("lr", TrainConfig.lr) * FINETUNE["lr_scale"])
        settings.update(DEFAULT_FINETUNE.get(model, {}))
    unknown = set(overrides) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**settings, **overrides}).validate()


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def checkpoint_info(meta: Path, config: TrainConfig, any_epochs: bool = False) -> dict:
    """The JSON record (epoch, config, history) of a finished run's ``checkpoint.json``, checked against
    ``config`` (``check_checkpoint_config``)."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as error:
        raise input_error(meta, f"unreadable checkpoint: {error}") from error
    if not isinstance(info, dict) or not isinstance(info.get("history"), list):
        raise input_error(meta, "unreadable checkpoint: not a record with a history list")
    return check_checkpoint_config(meta, info, config, any_epochs)


def check_checkpoint_config(path: Path, info: dict, config: TrainConfig, any_epochs: bool = False) -> dict:
    """``info`` if its config is ``config``: a ``TrainConfig`` field added since the file was written counts as
    its default; ``any_epochs`` ignores the epoch count."""
    saved, defaults = info.get("config") or {}, asdict(TrainConfig())
    ignored = {"epochs": 0} if any_epochs else {}
    if not isinstance(saved, dict) or set(saved) - set(defaults) or \
            {**defaults, **saved, **ignored} != {**asdict(config), **ignored}:
        raise input_error(path, f"checkpoint was made with a different config {info.get('config')}")
    return info


class TrainProbe:
    """A fixed, seeded subset of the training split (for the bench: the size of the validation split): its error
    after every epoch is the ``train_error`` of the error-curve figures (Rassadin & Savchenko Figs. 1-6)."""

    def __init__(self, train_set, size: int, seed: int = 0):
        index = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:max(1, size)]
        self.images, self.labels = train_set.images[index], train_set.labels[index]

    def __len__(self) -> int:
        return len(self.labels)


class Trainer:
    """Trains ``model`` on in-memory datasets (``.images``, ``.labels``); checkpoints to ``out_dir``.

    ``val_set`` is the validation split: its error after every epoch (``val_error`` in the history) decides early
    stopping (``patience``) and which epoch's weights the model ends with (``restore_best``). Pass the test split
    here only when nothing is being chosen; the test split is for the one reported number. ``train_probe`` > 0:
    also record ``train_error`` on that many (fixed, seeded) training images after every epoch (eval mode).
    """

    def __init__(self, model: nn.Module, train_set, val_set=None, config: TrainConfig | None = None,
                 out_dir: str | Path | None = None, loss_fn: LossFn = cross_entropy_loss, progress: bool = True,
                 evaluate: Callable[[nn.Module], float] | None = None, train_probe: "int | TrainProbe" = 0):
        self.config = (config or TrainConfig()).validate()
        self.model = model.to(self.config.device)
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir) if out_dir else None
        self.rank, self.world_size = distributed.world()
        self.loss_fn, self.progress = loss_fn, progress and self.rank == 0
        self.parallel = distributed.wrap(self.model, self.config.device)  # the model itself in one process
        self.evaluate = evaluate or (lambda m: error_rate(m, val_set, device=self.config.device))
        self.optimizer = make_optimizer(self.model, self.config)
        self.history: list[dict] = []
        self.best: dict[str, torch.Tensor] | None = None  # weights of the epoch with the lowest val_error
        self.stopped = False
        if len(train_set) == 0:
            raise InputError(f"training set {getattr(train_set, 'name', '')} is empty")
        self.steps_per_epoch = math.ceil(len(train_set) / self.config.batch_size)
        self.probe = None  # train_probe > 0: a fixed, seeded subset of the training images, for train_error
        if isinstance(train_probe, TrainProbe):
            self.probe = train_probe
        elif train_probe > 0 and hasattr(train_set, "images"):
            self.probe = TrainProbe(train_set, train_probe, seed=0)

    @property
    def checkpoint_paths(self) -> tuple[Path, Path]:
        assert self.out_dir is not None
        return self.out_dir / "checkpoint.safetensors", self.out_dir / "checkpoint.json"

    def resume(self) -> int:
        """Load the last checkpoint if there is one (verified by its digest, checked against this config);
        returns the number of finished epochs."""
        weights, meta = self.checkpoint_paths
        if not weights.exists():
            if meta.exists():
                raise input_error(weights, "missing: checkpoint.json has no checkpoint weights beside it")
            return 0
        tensors, info = read_checkpoint(weights)
        check_checkpoint_config(weights, info, self.config, any_epochs=True)  # more epochs may be asked for
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as error:
            raise input_error(weights, f"checkpoint does not fit this model: {str(error).splitlines()[0]}") from error
        _load_optimizer_tensors(self.optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")})
        self.best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        self.history, self.stopped = info["history"], bool(info.get("stopped", False))
        return int(info["epoch"])

    def _save_checkpoint(self, epoch: int) -> None:
        """One atomic file holds weights and record (checkpoint_io); checkpoint.json is its readable copy."""
        weights, meta = self.checkpoint_paths
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"optim.{k}": v for k, v in _optimizer_tensors(self.optimizer).items()})
        tensors.update({f"best.{k}": v for k, v in (self.best or {}).items()})
        record = {"epoch": epoch, "config": asdict(self.config), "history": self.history, "stopped": self.stopped}
        write_checkpoint(weights, tensors, record)
        _atomic_json(meta, record)

    def _epoch(self, epoch: int) -> dict:
        cfg = self.config
        torch.manual_seed(cfg.seed + epoch)
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        augment_rng = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        self.model.train()
        if cfg.freeze_norm:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        total_loss, seen, steps = 0.0, 0, 0
        started = time.perf_counter()
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="step", mininterval=1.0,
                   disable=not (self.progress and sys.stderr.isatty()))  # not a terminal: one line per epoch
        total_steps = self.steps_per_epoch * cfg.epochs
        for step, start in enumerate(bar, start=(epoch - 1) * self.steps_per_epoch):
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps)
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
                  "ms_per_step": 1000.0 * seconds / steps, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.val_set is not None and self.rank == 0:
            record["val_error"] = self.evaluate(self.model)
        if self.probe is not None and self.rank == 0:
            record["train_error"] = error_rate(self.model, self.probe, device=cfg.device)
        return record

    def _track_best(self, record: dict) -> None:
        """Keep the weights of the lowest validation error; set ``stopped`` after ``patience`` epochs without a
        new best."""
        if "val_error" not in record:
            return
        errors = [h["val_error"] for h in self.history if "val_error" in h]
        if record["val_error"] <= min(errors):
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        patience = self.config.patience
        if patience and record["epoch"] - self.best_epoch >= patience:
            self.stopped = True

    def _batch(self, index: torch.Tensor, augment_rng: torch.Generator) -> tuple:
        """(images, labels, loss weight) of this rank's shard of the global batch ``index`` (weight 1 alone)."""
        cfg = self.config
        images, labels, weight = self.train_set.images[index], self.train_set.labels[index], 1.0
        if cfg.augment:  # the global batch (same random draws in every process), sharded below
            from cnncompress.data.transforms import augment
            images = augment(images, augment_rng, flip=cfg.augment != "shift")
        if self.world_size > 1:
            position = distributed.shard(torch.arange(len(index)), self.rank, self.world_size)
            weight = len(position) * self.world_size / len(index)
            if not len(position):  # an empty shard forwards the batch with weight 0: DDP needs every rank
                position = torch.arange(len(index))
            images, labels = images[position], labels[position]
        return images.to(cfg.device), labels.to(cfg.device), weight

    def fit(self, resume: bool = False) -> list[dict]:
        """Train for at most ``config.epochs`` epochs (continuing after the last checkpoint when ``resume``),
        stopping early on a validation plateau (``patience``); ends on the best validation epoch's weights when
        ``restore_best``."""
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        done = self.resume() if (resume and self.out_dir) else 0
        for epoch in range(done + 1, self.config.epochs + 1):
            if self.stopped:
                break
            record = self._epoch(epoch)
            self.history.append(record)
            self._track_best(record)
            if self.world_size > 1:  # rank 0 alone evaluates: every rank stops with it
                self.stopped = distributed.all_sum([float(self.stopped)])[0] > 0
            if self.progress:
                error = f", val error {100 * record['val_error']:.2f}%" if "val_error" in record else ""
                stop = " (validation plateau: stopping)" if self.stopped else ""
                tqdm.write(f"epoch {epoch}: loss {record['train_loss']:.4f}{error}, {record['seconds']:.1f}s{stop}")
            if self.out_dir and self.rank == 0:
                self._save_checkpoint(epoch)
            distributed.barrier()
        if self.config.restore_best and self.best is not None:
            self.model.load_state_dict(self.best)
        self.model.eval()
        return self.history

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights the model ends with (the lowest validation error), if any was measured."""
        return best_epoch(self.history)


class ProbedTrainer(Trainer):
    """``Trainer`` whose epoch records carry ``train_error`` on a given ``TrainProbe`` (the bench's trainer)."""

    def __init__(self, *args, probe: TrainProbe | None = None, **kwargs):
        super().__init__(*args, train_probe=probe or 0, **kwargs)
