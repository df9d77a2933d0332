"""The images of the emotion experiments (``table-emotion``, ``emotion_crossfit``), decoded as the teacher's input:
the unlabelled faces and their splits (``faces``, ``pooled_faces``), what a copy distils on (``transfer_set``: the
training faces, augmented, and non-face images) and what chooses its epoch (``selection_set``), and the astronaut
check's face (``astronaut_input``). Rassadin & Savchenko 2017 §4: distillation on unlabelled faces."""
from __future__ import annotations

import numpy as np
import torch

from cnncompress.errors import InputError


def pooled_faces(dataset: str, teacher) -> tuple:
    """``(pool, heldout, format)``: ``dataset``'s faces decoded for the teacher, its ``train+val`` pool and its
    sealed held-out split (``faces`` splits the pool; ``emotion_crossfit.fold_faces`` pools both)."""
    from cnncompress.data import build_dataset
    from cnncompress.models.loading import input_format
    from cnncompress.experiments.distill_table import _held_out
    fmt = input_format(teacher)
    kw = {"input_size": fmt["input_size"], "channels": fmt["channels"], "mean": fmt["mean"], "std": fmt["std"]}
    pool = build_dataset(dataset, "train+val", **kw)
    heldout = build_dataset(dataset, "test", **kw)
    pool, heldout = _held_out(pool, heldout)
    if len(pool) < 2 or heldout is None or len(heldout) == 0:
        raise InputError(f"{dataset}: need at least 3 decodable face images (found {len(pool)} + "
                         f"{0 if heldout is None else len(heldout)})")
    return pool, heldout, fmt


def faces(dataset: str, teacher) -> dict:
    """Unlabelled faces decoded for the teacher: ``train`` (distillation), ``val`` (chooses the epoch) and
    ``heldout`` (reported only), as in ``cnncompress distill``."""
    from cnncompress.data import split_validation
    pool, heldout, fmt = pooled_faces(dataset, teacher)
    train, val = split_validation(pool)
    return {"train": train, "val": val, "heldout": heldout, "format": fmt}


def transfer_inputs(fmt: dict, count: int, seed: int, nonfaces: bool = True) -> torch.Tensor:
    """``data.transfer.transfer_images`` (LFW's non-faces, then ``count`` natural crops; only the crops without
    ``nonfaces``) decoded as the teacher's input (size, channels, normalisation)."""
    from cnncompress.data.transfer import natural_crops, transfer_images
    pixels = transfer_images(fmt["input_size"], count, seed) if nonfaces else natural_crops(fmt["input_size"], count,
                                                                                              seed)
    raw = torch.from_numpy(pixels).float()[:, None] / 255.0
    return ((raw - fmt["mean"]) / fmt["std"]).repeat(1, fmt["channels"], 1, 1)


def unlabelled(images: torch.Tensor, like, name: str):
    """``images`` as one dataset with label -1, with the classes, normalisation and split of dataset ``like``."""
    from cnncompress.data.datasets import ImageDataset
    return ImageDataset(images, torch.full((len(images),), -1, dtype=torch.int64), like.classes, name, like.mean,
                        like.std, like.split)


def transfer_set(data: dict, settings: dict, seed: int = 0):
    """The unlabelled images a copy distils on: the training faces and ``copies - 1`` augmented copies of each, then
    ``settings["transfer"]`` non-face images (``data.transfer``: LFW non-faces + crops of scikit-image's
    photographs), decoded as the teacher's input. One dataset (label -1)."""
    from cnncompress.training.distill import augment_copies
    train = data["train"]
    images = torch.cat([augment_copies(train.images, settings["copies"], seed=seed),
                        transfer_inputs(data["format"], settings["transfer"], seed)])
    return unlabelled(images, train, "faces+transfer")


def selection_set(data: dict, settings: dict, seed: int = 0):
    """The images that choose a copy's epoch and whether its recovery is kept: ``select_transfer`` natural crops
    (another draw than the distillation's; not LFW's non-faces, which it trains on) and ``select_faces`` augmented
    versions of the val faces (``distill.augment_copies``; as many as crops: faces and non-faces weigh the same,
    and every val face is in at least once); each image then
    gets ``heldout_copies - 1`` augmented copies in ``distill``. 8 val faces alone (32 images) chose epochs by
    3-point steps of agreement (one row ended at 83-91 % held-out agreement over three seeds); 256 crops beside
    them (the 2026-12-02 run) weighed non-faces 32:1, and a change that raised agreement on that set by 2 points
    at every seed lowered it on the held-out faces (``moving-indices``, docs/results/table-emotion-2026-12-02)."""
    from cnncompress.training.distill import augment_copies
    crops = transfer_inputs(data["format"], settings["select_transfer"], 10_000 + seed, nonfaces=False)
    val, count = data["val"].images, max(settings["select_faces"], len(data["val"]))
    faces = augment_copies(val, -(-count // len(val)), seed=30_000 + seed)[:count]  # copy-major: originals first
    return unlabelled(torch.cat([faces, crops]), data["val"], "val faces+crops")


def astronaut_input(fmt: dict) -> torch.Tensor:
    """The astronaut's face, decoded as the model's input (grey, size, normalisation)."""
    import torch.nn.functional as F

    from cnncompress.data.lfw import astronaut_face
    face = torch.from_numpy(astronaut_face().astype(np.float32) / 255.0)[None, None]
    face = F.interpolate(face, size=(fmt["input_size"], fmt["input_size"]), mode="bilinear", align_corners=False)
    return ((face - fmt["mean"]) / fmt["std"]).repeat(1, fmt["channels"], 1, 1)
