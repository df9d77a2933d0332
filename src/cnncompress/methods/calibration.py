"""The data a data-dependent method looks at (int8 activation ranges, Taylor importance): what the run hands over,
checked against the model; a method never picks a dataset of its own and never falls back to noise silently.

The run hands its data to the option named by ``MethodInfo.data_option`` (``methods.with_data``): the bench gives
the recipe's training split, ``cnncompress compress`` the training split of ``--data``. Accepted values:

* an ``ImageDataset`` (what the bench hands over),
* a dataset spec such as ``"fashion-mnist"`` (its training split decoded for the model, as ``cnncompress train``
  decodes it: the model's input size and grey/RGB channels; its class count must be the model's),
* a tensor of images ``(N, C, H, W)`` or an ``(images, labels)`` pair (already prepared: channels and size must be
  the model's),
* any iterable of batches (tensors or ``(images, labels)``).

Data that does not fit the model (channels, image size, class count) is a ``ValueError`` of one line, which
``methods.apply`` turns into an ``InputError`` (exit 2 on the command line).
"""
from __future__ import annotations

import torch
from torch import nn


def model_shape(model: nn.Module) -> tuple[int | None, int | None, int | None]:
    """``(channels, input size, classes)`` from the model's build spec (``None`` where it does not say)."""
    spec = getattr(model, "spec", None) or {}
    return spec.get("in_channels"), spec.get("input_size"), spec.get("num_classes")


def check_fits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
               classes: int | None = None, what: str = "data") -> None:
    """Raise ``ValueError`` when ``images`` (``(N, C, H, W)``), ``labels`` or the dataset's class count
    ``classes`` do not fit ``model``."""
    channels, size, num_classes = model_shape(model)
    if images.dim() != 4:
        raise ValueError(f"{what}: images must be (N, C, H, W), got shape {list(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what} has {images.shape[1]} channel(s); the model takes {channels}")
    if size is not None and tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"{what} images are {images.shape[2]}x{images.shape[3]}; the model takes {size}x{size}")
    if num_classes is not None and classes is not None and classes != num_classes:
        raise ValueError(f"{what} has {classes} classes; the model has {num_classes}")
    if num_classes is not None and labels is not None and len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{what} has labels in [{low}, {high}]; the model has {num_classes} classes "
                             f"(labels 0..{num_classes - 1}; unlabelled images cannot be used here)")


def _from_dataset(model: nn.Module, dataset: str):
    from cnncompress.data import build_dataset
    from cnncompress.errors import InputError
    channels, size, _ = model_shape(model)
    try:
        return build_dataset(dataset, "train", input_size=size, channels=channels)
    except InputError as error:
        raise ValueError(str(error)) from error


def _subset(images: torch.Tensor, labels: torch.Tensor | None, count: int, seed: int):
    if len(images) > count:
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        images, labels = images[index], (labels[index] if labels is not None else None)
    return images, labels


def take(model: nn.Module, data, count: int, seed: int = 0, what: str = "data",
         labelled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to ``count`` images (a seeded random subset) and their labels (``None`` for bare images) of ``data``,
    checked to fit ``model``. ``labelled``: labels are required."""
    if data is None:
        raise ValueError(f"{what}: no data given (the run hands over its training split; pass a dataset spec, an "
                         f"ImageDataset or images)")
    classes = None
    if isinstance(data, str):
        data = _from_dataset(model, data)
    if hasattr(data, "images") and hasattr(data, "labels"):
        classes = len(data.classes) if getattr(data, "classes", None) else None
        images, labels = torch.as_tensor(data.images), torch.as_tensor(data.labels)
    elif isinstance(data, torch.Tensor):
        images, labels = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        images, labels = data
    elif hasattr(data, "__iter__"):
        batches = []
        for batch in data:  # a DataLoader or any iterable of tensors / (images, labels)
            batches.append(batch if isinstance(batch, (list, tuple)) else (batch,))
            if sum(len(b[0]) for b in batches) >= count:
                break
        if not batches:
            raise ValueError(f"{what}: the data is empty")
        images = torch.cat([torch.as_tensor(b[0]) for b in batches])
        labels = torch.cat([torch.as_tensor(b[1]) for b in batches]) if all(len(b) > 1 for b in batches) else None
    else:
        raise ValueError(f"{what}: expected a dataset spec, an ImageDataset, images or (images, labels), "
                         f"got {type(data).__name__}")
    if not labelled and labels is not None and len(labels) and bool((torch.as_tensor(labels) < 0).all()):
        labels, classes = None, None  # an unlabelled set (faces:DIR, lfw-faces): its images are all a calibration needs
    if len(images) == 0:
        raise ValueError(f"{what}: the data is empty")
    check_fits(model, images, labels, classes, what)
    if labelled and labels is None:
        raise ValueError(f"{what}: labelled images are needed")
    images, labels = _subset(images.float(), labels, count, seed)
    return images, labels
