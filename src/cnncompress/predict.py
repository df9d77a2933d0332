"""Faces in photos -> emotion per face.

Faces are found with scikit-image's LBP frontal-face cascade, cropped, converted to the model's channels and
size, normalised as the model was trained (``(x/255 - mean)/std`` from the model's metadata), and classified.
Works with the pretrained ``fer-minixception`` teacher and any ``.ccz`` / ``.safetensors`` student (loaded by
``cnncompress.loading.load_model``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.formats import read_image
from .data.transforms import prepare


def _crop(image: np.ndarray, box: dict) -> np.ndarray:
    return image[box["r"]:box["r"] + box["height"], box["c"]:box["c"] + box["width"]]


@torch.no_grad()
def predict_image(model: nn.Module, path: str | Path, whole_image: bool = False, top: int = 1) -> list[dict]:
    """Per face found in the image at ``path``: ``{"box": [row, col, height, width], "emotion", "probability",
    "top": [(class, p), ...]}``. With ``whole_image`` and no face found, the whole image is classified."""
    from .data.lfw import detect_faces
    from .loading import input_format
    image = read_image(path)
    fmt = input_format(model)
    side = min(image.shape[:2])  # the detector looks for faces from 1/8 of the image (at least 24 px) up to all of it
    boxes = detect_faces(image, min_size=max(24, min(60, side // 8)), max_size=max(24, side))
    if not boxes and whole_image:
        boxes = [{"r": 0, "c": 0, "height": image.shape[0], "width": image.shape[1]}]
    if not boxes:
        return []
    batch = prepare([_crop(image, box) for box in boxes], fmt["input_size"], fmt["channels"], fmt["mean"], fmt["std"])
    probabilities = torch.softmax(model.eval()(batch).float(), dim=1)
    classes = fmt["classes"] or [str(i) for i in range(probabilities.shape[1])]
    faces = []
    for box, p in zip(boxes, probabilities):
        order = torch.argsort(p, descending=True)[:max(1, top)]
        faces.append({"box": [int(box["r"]), int(box["c"]), int(box["height"]), int(box["width"])],
                      "emotion": classes[int(order[0])], "probability": float(p[order[0]]),
                      "top": [(classes[int(i)], float(p[i])) for i in order]})
    return faces
