"""Real faces that ship with scikit-image: ``lfw-faces`` (unlabelled) and the astronaut's face.

``lfw-faces``: the first 100 of the 200 images in ``skimage/data/lfw_subset.npy`` are 25x25 grey face crops from
Labeled Faces in the Wild (the other 100 are non-faces). They carry no emotion labels (label -1); the split is a
seeded 75/25 partition, so the ``test`` split is a held-out set for measuring agreement with a teacher.
``astronaut_face()``: Eileen Collins' face cropped from ``skimage.data.astronaut()`` with scikit-image's LBP
frontal-face cascade (no OpenCV), a smiling face for sanity checks of emotion models.
"""
from __future__ import annotations

import functools

import numpy as np

from cnncompress.errors import InputError
from cnncompress.data.datasets import register_dataset

LFW_FACES = 100
LFW_TEST_FRACTION = 0.25
LFW_SPLIT_SEED = 0


def lfw_faces() -> np.ndarray:
    """The 100 LFW face crops as uint8 (100, 25, 25)."""
    from skimage import data

    faces = np.asarray(data.lfw_subset())[:LFW_FACES]
    return np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)


def lfw_split(split: str) -> np.ndarray:
    """Sorted indices of the ``train`` (75) or ``test`` (25) faces; seeded and fixed."""
    order = np.random.default_rng(LFW_SPLIT_SEED).permutation(LFW_FACES)
    cut = int(round(LFW_FACES * LFW_TEST_FRACTION))
    return np.sort(order[:cut] if split == "test" else order[cut:])


@register_dataset("lfw-faces", "100 real LFW face crops from scikit-image (unlabelled, label -1); seeded 75/25",
                  needs_path=False, size=64, channels=1)
def _read_lfw_faces(path, split):
    faces = lfw_faces()[lfw_split(split)]
    return faces, np.full(len(faces), -1, dtype=np.int64), []


@functools.lru_cache(maxsize=1)
def _lbp_cascade():
    """scikit-image's LBP frontal-face cascade, parsed once (2 ms a parse: a video searches many times a second)."""
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def detect_faces(image: np.ndarray, min_size: int = 60, max_size: int = 400, scale_factor: float = 1.2,
                 step_ratio: float = 1.0, min_neighbor_number: int = 4) -> list[dict]:
    """Frontal faces in a grey or RGB uint8 image with scikit-image's LBP cascade; dicts with r, c, width,
    height, largest first."""
    from skimage.color import rgb2gray

    grey = rgb2gray(image[:, :, :3]) if image.ndim == 3 else np.asarray(image, dtype=np.float64) / 255.0
    found = _lbp_cascade().detect_multi_scale(img=grey, scale_factor=scale_factor, step_ratio=step_ratio,
                                              min_size=(min_size, min_size), max_size=(max_size, max_size),
                                              min_neighbor_number=min_neighbor_number)
    return sorted(found, key=lambda box: -box["width"] * box["height"])


def crop_face(image: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The largest detected face of ``image`` as a grey uint8 crop (optionally enlarged by ``margin``)."""
    from cnncompress.data.transforms import to_channels

    boxes = detect_faces(image)
    if not boxes:
        raise InputError("no face found by the LBP frontal-face cascade")
    box = boxes[0]
    grow_r, grow_c = int(box["height"] * margin), int(box["width"] * margin)
    r0, c0 = max(0, box["r"] - grow_r), max(0, box["c"] - grow_c)
    r1 = min(image.shape[0], box["r"] + box["height"] + grow_r)
    c1 = min(image.shape[1], box["c"] + box["width"] + grow_c)
    return to_channels(np.asarray(image), 1)[r0:r1, c0:c1, 0]


@register_dataset("faces-detect", "a folder of unlabelled images, each cropped to its largest face found by the "
                  "LBP cascade (images without a face are skipped); seeded 80/20 split", needs_path=True, size=64,
                  channels=1)
def _read_faces_detect(path, split):
    from pathlib import Path

    from cnncompress.data import formats
    from cnncompress.errors import input_error
    faces = []
    for image in formats.read_faces(Path(path)):
        try:
            faces.append(crop_face(image))
        except InputError:
            continue
    if not faces:
        raise input_error(path, "no face found in any image (LBP frontal-face cascade)")
    order = np.random.default_rng(LFW_SPLIT_SEED).permutation(len(faces))
    cut = int(round(len(faces) * 0.2)) if len(faces) > 1 else 0
    chosen = np.sort(order[:cut] if split == "test" else order[cut:])
    return [faces[i] for i in chosen], np.full(len(chosen), -1, dtype=np.int64), []


def astronaut_face() -> np.ndarray:
    """The face in ``skimage.data.astronaut()`` (grey uint8 crop found by the LBP cascade)."""
    from skimage import data

    return crop_face(data.astronaut())
