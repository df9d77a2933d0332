"""Knowledge distillation on unlabelled images (Rassadin & Savchenko 2017 §4, Table 3; Hinton et al. 2015).

A teacher labels an unlabelled image set once (its logits are cached to disk, keyed by the teacher's weights
and the exact images), then a student of any architecture learns from those outputs:

- ``labels``  (label-only):      L = CE(z_s, argmax z_t)
- ``softmax`` (softmax outputs): L = KL(p_t || p_s) = sum_k p_t,k (log p_t,k - log p_s,k),  p = softmax(z / T)
- ``hinton``:                    L = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y)
                                 (the CE term only on images with a true label, from ``labeled``)

A student of the teacher's own architecture (a compressed copy recovering) can also match the teacher's
intermediate outputs, ``hints=[module paths]`` (FitNets' hint loss, formula in ``cnncompress.training.hints``).

The paper's finding: the student learns the teacher better from softmax posteriors than from labels alone
(RaFD test accuracy 46.9% vs 40.9%). Augmentation is done before the teacher sees the data: ``copies`` seeded
random flips / small rotations / scalings / shifts of every image, each labelled by the teacher once, so the
cache stays valid and training needs no teacher forward pass. Training uses ``cnncompress.training.trainer.Trainer`` with the
student's recommended settings (``train.preset``), so ``out_dir`` gets per-epoch checkpoints and ``resume=True``
continues an interrupted run bit-exactly; validation images (``val``) choose the epoch the student ends on, the
held-out images and the labelled test set are only reported.

Teachers and students are loaded by ``cnncompress.models.loading.load_model``; the CLI's single run and the Table-3
recipe runner live in ``cnncompress.experiments.distill_table``.
"""
from __future__ import annotations

import contextlib

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cnncompress import measure
from cnncompress.errors import InputError, input_error
from cnncompress.training.hints import capture_outputs, check_hints, hint_loss
from cnncompress.training.trainer import Trainer, preset

TARGETS = ("labels", "softmax", "hinton")
LOSSES: dict[str, Callable[..., torch.Tensor]] = {}


def register_loss(name: str):
    """Decorator: ``loss(student_logits, teacher_logits, labels, temperature, alpha) -> scalar``."""
    def wrap(fn):
        LOSSES[name] = fn
        return fn
    return wrap


@register_loss("labels")
def label_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
               alpha: float = 1.0) -> torch.Tensor:
    """Label-only distillation: CE(z_s, argmax z_t) (Tramèr et al. 2016; the paper's "label-only")."""
    return F.cross_entropy(student, teacher.argmax(1))


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                    reduction="batchmean", log_target=True)


@register_loss("softmax")
def softmax_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                 alpha: float = 1.0) -> torch.Tensor:
    """Softmax-output distillation (Rassadin & Savchenko §4): KL(p_t || p_s), p = softmax(z / T), T = 1 default."""
    return soft_kl(student, teacher, temperature)


@register_loss("hinton")
def hinton_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 4.0,
                alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al. 2015: alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y) over labelled images."""
    loss = alpha * temperature ** 2 * soft_kl(student, teacher, temperature)
    known = labels >= 0
    if alpha < 1 and bool(known.any()):
        loss = loss + (1 - alpha) * F.cross_entropy(student[known], labels[known])
    return loss


# ---------------------------------------------------------------- augmentation done once, before the teacher
def augment_copies(images: torch.Tensor, copies: int, seed: int = 0, max_rotation: float = 15.0,
                   max_scale: float = 0.15, max_shift: float = 0.1, jitter: float = 0.2) -> torch.Tensor:
    """``copies`` versions of every image (copy 0 = the original): random horizontal flip, rotation within
    +-``max_rotation`` degrees, scale 1 +- ``max_scale``, shift within +-``max_shift`` of the half-width, then
    contrast 1 +- ``jitter`` and brightness +- ``jitter`` (in normalised pixel units). Seeded; returns
    (N * copies, C, H, W) ordered copy-major."""
    if copies < 1:
        raise InputError(f"copies={copies} must be >= 1")
    out = [images]
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    for _ in range(copies - 1):
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation)
        scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * max_scale
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        out.append(moved * contrast + brightness)
    return torch.cat(out).contiguous()


# ---------------------------------------------------------------- teacher outputs, computed once and cached
def tensor_hash(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_hash(model: nn.Module) -> str:
    state = model.state_dict()
    return tensor_hash(*[state[k].float() for k in sorted(state)]) + type(model).__name__


def default_cache_dir() -> Path:
    from cnncompress.data.assets import cache_dir
    return cache_dir() / "teacher-outputs"


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Re-estimate every batch-norm layer's running mean and variance on ``images`` (cumulative average over the
    batches, no gradient step): after pruning or quantising a network the stored statistics no longer describe
    its activations. Returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: torch.Tensor, cache_dir: str | Path | None = None,
                   batch_size: int = 256, device: str = "cpu") -> tuple[torch.Tensor, bool]:
    """The teacher's logits (N, K) for ``images``, read from ``cache_dir`` when cached (key: sha256 of the
    teacher's weights and of the images). Returns (logits, from_cache)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256((model_hash(teacher) + tensor_hash(images)).encode()).hexdigest()[:32]
    path = root / f"teacher-{key}.safetensors"
    if path.exists():
        try:
            cached = load_file(str(path))["logits"]
            if cached.shape[0] == images.shape[0]:
                return cached, True
        except Exception:  # noqa: BLE001 - a broken cache file is recomputed
            pass
    was_training = teacher.training
    teacher.eval().to(device)
    chunks = [teacher(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    teacher.train(was_training)
    logits = torch.cat(chunks) if chunks else torch.zeros(0, 0)
    if logits.ndim != 2:
        raise InputError(f"teacher output has shape {tuple(logits.shape)}; expected (N, classes)")
    root.mkdir(parents=True, exist_ok=True)
    from cnncompress.storage.checkpoint_io import atomic_safetensors  # a unique temporary name, removed on failure
    atomic_safetensors(path, {"logits": logits.contiguous()}, {"n": str(len(images))})
    return logits, False


@torch.no_grad()
def agreement(student: nn.Module, images: torch.Tensor, teacher_out: torch.Tensor, batch_size: int = 256,
              device: str = "cpu") -> float:
    """Fraction of images on which the student's top-1 class equals the teacher's."""
    if len(images) == 0:
        return float("nan")
    was_training = student.training
    student.eval()
    preds = torch.cat([student(images[i:i + batch_size].to(device)).argmax(1).cpu()
                       for i in range(0, len(images), batch_size)])
    student.train(was_training)
    return float((preds == teacher_out.argmax(1)).float().mean())


# ---------------------------------------------------------------- the distillation run
class _IndexedSet:
    """Training set for the Trainer: the images, with each sample's index as its "label" (targets looked up)."""

    def __init__(self, images: torch.Tensor, name: str):
        self.images, self.labels, self.name = images, torch.arange(len(images)), name

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DistillResult:
    targets: str
    temperature: float
    alpha: float
    history: list = field(default_factory=list)
    agreement_train: float = float("nan")      # on the (un-augmented) distillation images
    agreement_heldout: float = float("nan")    # on held-out images (un-augmented)
    agreement_heldout_aug: float = float("nan")  # on held-out images and their augmented copies
    heldout_majority: float = float("nan")     # reference: always answering the teacher's most common class
    accuracy: float | None = None               # on a labelled test set, when one is given
    test_evaluations: int = 0                   # times the held-out / test data were read (1: once, at the end)
    teacher_cached: bool = False
    seconds: float = 0.0
    agreement_val: float = float("nan")         # on the validation images (+ copies) that chose the epoch
    best_epoch: int | None = None               # the epoch the student ends on (None: no validation images)
    config: dict = field(default_factory=dict)  # the TrainConfig the student trained with

    def to_dict(self) -> dict:
        return asdict(self)


def _check_compatible(teacher_out: torch.Tensor, student: nn.Module, images: torch.Tensor, labeled) -> None:
    classes = teacher_out.shape[1]
    entry = (getattr(student, "spec", None) or {}).get("entry_point")
    who = f"student {entry}" if entry else "student"  # a user network: named by its entry point
    with torch.no_grad():
        was = student.training
        try:
            out = student.eval()(images[:1])
        except RuntimeError as error:
            raise InputError(f"{who} cannot take the images {tuple(images.shape[1:])}: "
                             f"{str(error).splitlines()[0]}") from error
        finally:
            student.train(was)
    if out.shape[-1] != classes:
        raise InputError(f"{who} has {out.shape[-1]} outputs but the teacher has {classes} classes")
    if labeled is not None:
        if labeled.num_classes != classes:
            raise InputError(f"labelled set {labeled.name} has {labeled.num_classes} classes but the teacher has "
                             f"{classes}")
        if tuple(labeled.images.shape[1:]) != tuple(images.shape[1:]):
            raise InputError(f"labelled set {labeled.name} images {tuple(labeled.images.shape[1:])} differ from "
                             f"the unlabelled {tuple(images.shape[1:])}")


def distill(teacher: nn.Module, student: nn.Module, unlabeled, targets: str = "softmax",
            temperature: float | None = None, alpha: float = 0.9, labeled=None, epochs: int | None = None,
            lr: float | None = None, momentum: float | None = None, weight_decay: float | None = None,
            batch_size: int | None = None, seed: int = 0, copies: int = 1, heldout=None, heldout_copies: int = 4,
            test=None, val=None, cache_dir: str | Path | None = None,
            out_dir: str | Path | None = None, resume: bool = False, device: str = "cpu",
            progress: bool = False, optimizer: str | None = None, schedule: str | None = None,
            freeze_norm: bool = False, hints=(), hint_weight: float = 1.0) -> DistillResult:
    """Train ``student`` (in place) to mimic ``teacher`` on ``unlabeled`` images (a dataset with ``.images``).

    ``targets``: labels | softmax | hinton (formulas in the module docstring). ``temperature`` defaults to 1
    (4 for hinton). ``labeled``: a labelled set mixed in (its images also get teacher outputs; CE on true labels
    in ``hinton``). ``copies``: augmented copies per unlabelled image. ``val``: held-out unlabelled images that
    choose the epoch the student ends on (the highest agreement with the teacher there; they and
    ``heldout_copies - 1`` augmented copies of each); ``heldout``: images never trained on nor chosen with, for
    the reported agreement; ``test``: a labelled set for accuracy. Training settings left None come from the
    student's recommended preset (``train.preset(student.spec["name"])``: its optimiser, schedule, learning
    rate, epochs ...), so a registered student trains as its baseline does. ``freeze_norm``: batch-norm layers keep
    their running statistics (a pretrained student recovering on few images). Teacher outputs are cached in
    ``cache_dir``. ``hints``: module paths whose outputs the student also matches to the teacher's, weighted by
    ``hint_weight`` (``cnncompress.training.hints``: FitNets' hint loss, for a student of the teacher's architecture).
    """
    if targets not in LOSSES:
        raise InputError(f"targets must be one of {', '.join(LOSSES)}, got {targets!r}")
    temperature = float(temperature if temperature is not None else (4.0 if targets == "hinton" else 1.0))
    if not (temperature > 0 and math.isfinite(temperature)) or not 0 <= alpha <= 1:
        raise InputError(f"need temperature > 0 and 0 <= alpha <= 1 (got {temperature}, {alpha})")
    if len(unlabeled) == 0:
        raise InputError(f"unlabelled set {getattr(unlabeled, 'name', '')} is empty")
    if not (isinstance(hint_weight, (int, float)) and math.isfinite(hint_weight) and hint_weight >= 0):
        raise InputError(f"hint_weight must be a finite number >= 0, got {hint_weight!r}")
    started = time.perf_counter()
    images = augment_copies(unlabeled.images, copies, seed=seed)
    true = torch.full((len(images),), -1, dtype=torch.int64)
    if labeled is not None:
        images = torch.cat([images, labeled.images])
        true = torch.cat([true, labeled.labels.to(torch.int64)])
    t_out, cached = teacher_logits(teacher, images, cache_dir, device=device)
    _check_compatible(t_out, student, images, labeled)
    val_images = val_out = None
    if val is not None and len(val):  # model selection: agreement with the teacher on the validation images
        val_images = augment_copies(val.images, max(1, heldout_copies), seed=20_000 + seed)
        val_out, _ = teacher_logits(teacher, val_images, cache_dir, device=device)
    settings = {"targets": targets, "temperature": temperature, "alpha": alpha, "copies": copies,
                "teacher": model_hash(teacher)[:16], "data": tensor_hash(images)[:16],
                "val": tensor_hash(val_images)[:16] if val_images is not None else None}
    hint_paths = check_hints(teacher, student, hints, images[:2]) if hints else ()
    if hint_paths:  # only then, so settings files of runs without hints stay as they were
        settings |= {"hints": list(hint_paths), "hint_weight": float(hint_weight)}
        teacher.eval().to(device)  # it runs every batch (cached logits alone never needed it on the device)
    if out_dir:
        _check_settings(Path(out_dir), settings, resume)
    loss = LOSSES[targets]
    t_dev, true_dev = t_out.to(device), true.to(device)

    def loss_fn(model, batch, index):
        if not hint_paths:
            return loss(model(batch), t_dev[index], true_dev[index], temperature, alpha)
        with capture_outputs(student, hint_paths) as student_points, \
                capture_outputs(teacher, hint_paths) as teacher_points:
            logits = model(batch)
            with torch.no_grad():
                teacher(batch)
        return (loss(logits, t_dev[index], true_dev[index], temperature, alpha)
                + hint_weight * hint_loss(student_points, teacher_points))

    def evaluate(model):
        return 1.0 - agreement(model, val_images, val_out, device=device)

    given = {"epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
             "batch_size": batch_size, "optimizer": optimizer, "schedule": schedule,
             "freeze_norm": freeze_norm or None}
    config = preset(getattr(student, "spec", {}).get("name", ""), seed=seed, device=device,
                    **{k: v for k, v in given.items() if v is not None})
    trainer = Trainer(student, _IndexedSet(images, getattr(unlabeled, "name", "unlabeled")),
                      val_set=val_images, config=config, out_dir=out_dir, loss_fn=loss_fn, progress=progress,
                      evaluate=evaluate)
    history = trainer.fit(resume=resume)
    n = len(unlabeled)
    result = DistillResult(targets, temperature, alpha, history, teacher_cached=cached,
                           agreement_train=agreement(student, images[:n], t_out[:n], device=device),
                           best_epoch=trainer.best_epoch, config=asdict(config))
    if val_images is not None:
        result.agreement_val = agreement(student, val_images, val_out, device=device)
    from cnncompress.data import final_evaluation
    sealed = [d for d in (heldout, test) if d is not None and len(d)]
    with final_evaluation(*sealed) if sealed else contextlib.nullcontext():  # the one read of held-out / test
        if heldout is not None and len(heldout):
            ho_images = augment_copies(heldout.images, max(1, heldout_copies), seed=10_000 + seed)
            ho_out, _ = teacher_logits(teacher, ho_images, cache_dir, device=device)
            result.agreement_heldout = agreement(student, ho_images[:len(heldout)], ho_out[:len(heldout)],
                                                 device=device)
            result.agreement_heldout_aug = agreement(student, ho_images, ho_out, device=device)
            common = torch.bincount(t_out[:n].argmax(1), minlength=t_out.shape[1]).argmax()
            result.heldout_majority = float((ho_out[:len(heldout)].argmax(1) == common).float().mean())
        if test is not None and len(test) and int(test.labels.min()) >= 0:
            from cnncompress.training.trainer import error_rate
            result.accuracy = 1.0 - error_rate(student, test, device=device)
    result.test_evaluations = max([d.evaluations for d in sealed], default=0)
    result.seconds = time.perf_counter() - started
    return result


def _check_settings(out_dir: Path, settings: dict, resume: bool) -> None:
    path = out_dir / "distill-settings.json"
    if resume and path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            raise input_error(path, f"--resume with different distillation settings (was {old}, now {settings})")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


# ---------------------------------------------------------------- reports
def size_report(model: nn.Module, shape: tuple) -> dict:
    """Parameters, fp32 bytes of parameters + buffers, batch-1 latency (median ms, this process's threads)."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    timing = measure.latency(model, shape, runs=20, warmup=3, num_threads=None, try_channels_last=False)
    return {"params": params, "fp32_bytes": 4 * params + buffers, "latency_ms": timing["median_ms"]}
