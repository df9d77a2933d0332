"""Faces in photos and video frames -> emotion per face.

Faces are found with scikit-image's LBP frontal-face cascade, cropped, converted to the model's channels and
size, normalised as the model was trained (``(x/255 - mean)/std`` from the model's metadata), and classified.
Works with the pretrained ``fer-minixception`` teacher and any ``.ccz`` / ``.safetensors`` student (loaded by
``cnncompress.models.loading.load_model``).

Video (``predict_video``): a full-frame scan every ``detect_every`` frames; on the frames between, each tracked
face is searched for again only in a window around its last box (``FaceFinder``; the full scan is ~100x the cost
of a window search); boxes keep their identity through ``tracking.Tracker``; the faces of a frame are classified
on the engine ``Classifier`` picks (the fastest of the model's precision, raced at start-up); ``--smooth``
averages each track's probabilities over time. ``stream.run`` drives it over a source and keeps the per-stage
times.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncompress.data.formats import read_image
from cnncompress.data.transforms import prepare
from cnncompress.errors import InputError
from cnncompress.measure import threads as measure_threads
from cnncompress.app.tracking import Box, Tracker

DETECT_EVERY = 10
VIDEO_SCALE_FACTOR = 1.25  # full scans of video frames: 1.27x faster than photos' 1.2 (223 vs 284 ms at 640x480 on
# 2 loaded cores), the same faces found in every 3rd frame of the test clip (16/16 frames exact)
ROI_MARGIN = 0.35  # the window searched around a tracked face: its box grown by this fraction on every side
ROI_SCALES = (0.8, 1.3)  # face sizes searched in that window, relative to the tracked box
ROI_NEIGHBOURS = 3  # the cascade's min_neighbor_number in a window (4 in a full scan)


def _crop(image: np.ndarray, box: dict) -> np.ndarray:
    return image[box["r"]:box["r"] + box["height"], box["c"]:box["c"] + box["width"]]


def detector_window(shape: tuple[int, ...]) -> tuple[int, int]:
    """Smallest and largest face side searched in an image of ``shape``: from 1/8 of the shorter side (24 to 60 px)
    up to all of it."""
    side = min(shape[:2])
    return max(24, min(60, side // 8)), max(24, side)


def find_faces(image: np.ndarray, scale_factor: float = 1.2) -> list[dict]:
    """Every frontal face of ``image`` (a full scan): dicts r, c, height, width, largest first."""
    from cnncompress.data.lfw import detect_faces
    low, high = detector_window(image.shape)
    return detect_faces(image, min_size=low, max_size=high, scale_factor=scale_factor)


def _as_box(found: dict, dr: int = 0, dc: int = 0) -> Box:
    return int(found["r"]) + dr, int(found["c"]) + dc, int(found["height"]), int(found["width"])


def search_near(image: np.ndarray, box: Box) -> Box | None:
    """The face nearest ``box`` in a window around it (the tracked face in the next frame), or None."""
    from cnncompress.data.lfw import detect_faces
    from cnncompress.app.tracking import iou
    r, c, h, w = box
    margin = int(round(max(h, w) * ROI_MARGIN))
    r0, c0 = max(0, r - margin), max(0, c - margin)
    window = image[r0:r + h + margin, c0:c + w + margin]
    side = max(h, w)
    low, high = max(24, int(side * ROI_SCALES[0])), max(25, int(side * ROI_SCALES[1]))
    if min(window.shape[:2]) < low:
        return None
    found = detect_faces(window, min_size=low, max_size=min(high, min(window.shape[:2])), scale_factor=1.1,
                         min_neighbor_number=ROI_NEIGHBOURS)
    boxes = [_as_box(f, r0, c0) for f in found]
    return max(boxes, key=lambda b: iou(b, box)) if boxes else None


class FaceFinder:
    """Faces of consecutive frames: a full scan every ``detect_every`` frames (the first frame included), window
    searches around the tracked faces in between. Counts both."""

    def __init__(self, detect_every: int = DETECT_EVERY, max_missed: int = 5):
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        self.detect_every = detect_every
        self.tracker = Tracker(max_missed=max_missed)
        self.full_scans = self.window_searches = 0
        self._since_scan = None

    def __call__(self, image: np.ndarray):
        """The tracks found in ``image`` (``tracking.Track`` with ``box`` and a stable ``id``)."""
        if self._since_scan is None or self._since_scan + 1 >= self.detect_every:
            boxes = [_as_box(f) for f in find_faces(image, VIDEO_SCALE_FACTOR)]
            self.full_scans += 1
            self._since_scan = 0
        else:
            boxes = []
            for track in self.tracker.tracks:
                found = search_near(image, track.box)
                self.window_searches += 1
                if found is not None and not _duplicate(found, boxes):
                    boxes.append(found)
            self._since_scan += 1
        return self.tracker.update(boxes)


def _duplicate(box: Box, boxes: list[Box]) -> bool:
    from cnncompress.app.tracking import iou
    return any(iou(box, other) > 0.5 for other in boxes)


class Classifier:
    """Face crops -> class probabilities ``(N, classes)`` for one model on one engine (``engine`` says which).

    ``engine="auto"``: the engines of the model's precision (fp32 for a float model, int8 for an int8 one, bf16
    for a bf16 one; ``engines``) race on one face at start-up and the fastest runs every face; or name one engine
    (``deploy.names()``). ``threads``: intra-op threads of the engine (default 1). The faces of one frame are a
    batch too small to share out, and a second onnxruntime thread spins between calls, taking a core from
    decoding and detection: measured in the pipeline on 2 cores, 1 thread gave 44-52 FPS where 2 gave 26-30."""

    def __init__(self, model: nn.Module, engine: str = "auto", threads: int = 1):
        from cnncompress.models.loading import input_format
        self.model, self.threads = model.eval(), threads
        self.format = input_format(model)
        self.classes = self.format["classes"]
        self.engine, self.engine_ms, self._run = _engine(self.model, self.format, engine, threads)

    def prepare(self, crops: list[np.ndarray]) -> torch.Tensor:
        fmt = self.format
        return prepare(crops, fmt["input_size"], fmt["channels"], fmt["mean"], fmt["std"])

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batch = self.prepare(crops)
        if self.engine.startswith("torch"):  # torch's own intra-op threads; the other engines were given theirs
            with measure_threads(self.threads):  # engines prepared for batch 1: one call per face
                logits = np.concatenate([self._run(batch[i:i + 1]).float().numpy() for i in range(len(batch))])
        else:  # no torch op here: each would wake torch's OpenMP workers, which spin against the engine's thread
            logits = np.concatenate([np.asarray(self._run(batch[i:i + 1]), dtype=np.float32)
                                     for i in range(len(batch))])
        return softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum), returned as float32."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def _engine(model: nn.Module, fmt: dict, engine: str, threads: int):
    """``(engine name, its ms per face or None, run)``: ``auto`` races the engines of the model's precision on
    one face (``deploy.fastest``) and keeps the fastest; a named engine is prepared as it is."""
    from cnncompress import deploy
    shape = (1, fmt["channels"], fmt["input_size"], fmt["input_size"])
    if engine == "auto":
        times = deploy.fastest(model, shape, deploy.names(deploy.model_precision(model)), threads=threads, runs=10)
        engine, engine_ms = times["fastest"], times[times["fastest"]]
    else:
        engine_ms = None
    try:
        return engine, engine_ms, deploy.prepare(engine, model, shape, threads)
    except deploy.EngineUnavailable as error:
        raise InputError(f"--engine {engine}: {error}") from error


def probe_check_line(model: nn.Module) -> str | None:
    """The line ``predict`` prints (stderr) on a deployed model's probe check (``deploy.self_check``) when it used
    its engine; ``None`` when it carried no probes, or refused the engine (``to_inference`` said so already)."""
    from cnncompress.deploy.self_check import describe, record_of
    record = record_of(model)
    return describe(record) if record and record.get("passed") else None


def face_record(box: Box, probabilities: np.ndarray, classes: list[str], top: int = 1) -> dict:
    """``{"box": [r, c, h, w], "emotion", "probability", "top": [(class, p), ...]}`` of one face."""
    p = torch.as_tensor(probabilities)
    order = torch.argsort(p, descending=True)[:max(1, top)]
    return {"box": [int(v) for v in box], "emotion": classes[int(order[0])], "probability": float(p[order[0]]),
            "top": [(classes[int(i)], float(p[i])) for i in order]}


@torch.no_grad()
def predict_image(model: nn.Module, path: str | Path, whole_image: bool = False, top: int = 1) -> list[dict]:
    """Per face found in the image at ``path``: ``{"box": [row, col, height, width], "emotion", "probability",
    "top": [(class, p), ...]}``. With ``whole_image`` and no face found, the whole image is classified."""
    from cnncompress.models.loading import input_format
    image = read_image(path)
    fmt = input_format(model)
    boxes = find_faces(image)
    if not boxes and whole_image:
        boxes = [{"r": 0, "c": 0, "height": image.shape[0], "width": image.shape[1]}]
    if not boxes:
        return []
    batch = prepare([_crop(image, box) for box in boxes], fmt["input_size"], fmt["channels"], fmt["mean"], fmt["std"])
    probabilities = torch.softmax(model.eval()(batch).float(), dim=1)
    classes = fmt["classes"] or [str(i) for i in range(probabilities.shape[1])]
    return [face_record(_as_box(box), p, classes, top) for box, p in zip(boxes, probabilities)]
