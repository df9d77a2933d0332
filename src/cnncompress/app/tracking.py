"""Face tracks across video frames: IoU / nearest-box association and per-track probability smoothing.

A box is ``(r, c, h, w)`` (row, column, height, width in pixels). ``Tracker.update(boxes)`` matches the boxes
found in a frame to the live tracks greedily by IoU (a box whose IoU with every track is below ``min_iou`` may
still match the nearest track whose centre lies within one box size: a fast face), starts a new track for every
unmatched box and counts a miss for every unmatched track; a track missed more than ``max_missed`` frames in a
row is dropped. ``smooth(track, p, alpha)`` is the exponential moving average ``s = alpha * p + (1 - alpha) *
s_prev`` of a track's class probabilities (``alpha = 1``: no smoothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]


@dataclass
class Track:
    id: int
    box: Box
    missed: int = 0  # frames in a row without a detection (0: found in this frame)
    smoothed: dict = field(default_factory=dict, repr=False)  # per classifier: EMA of its probabilities


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (r, c, h, w) boxes."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, bottom - top) * max(0, right - left)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(a: Box, b: Box) -> float:
    return float(np.hypot(a[0] + a[2] / 2 - b[0] - b[2] / 2, a[1] + a[3] / 2 - b[1] - b[3] / 2))


def associate(tracks: list[Track], boxes: list[Box], min_iou: float = 0.2) -> list[tuple[int, int]]:
    """Greedy matching ``[(track index, box index), ...]``: best IoU first, then nearest centre within a box size."""
    pairs = sorted(((iou(t.box, b), i, j) for i, t in enumerate(tracks) for j, b in enumerate(boxes)), reverse=True)
    used_t, used_b, matches = set(), set(), []
    for score, i, j in pairs:
        if score < min_iou:
            break
        if i not in used_t and j not in used_b:
            used_t.add(i), used_b.add(j), matches.append((i, j))
    near = sorted((_centre_distance(t.box, b), i, j) for i, t in enumerate(tracks) for j, b in enumerate(boxes)
                  if i not in used_t and j not in used_b)
    for distance, i, j in near:
        if i not in used_t and j not in used_b and distance <= max(tracks[i].box[2], boxes[j][2]):
            used_t.add(i), used_b.add(j), matches.append((i, j))
    return matches


class Tracker:
    """Live face tracks; ``update`` with the boxes of each frame (see the module docstring)."""

    def __init__(self, max_missed: int = 5, min_iou: float = 0.2):
        self.max_missed, self.min_iou = max_missed, min_iou
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, boxes: list[Box]) -> list[Track]:
        """Match ``boxes`` to the tracks; the tracks found in this frame (``missed == 0``), in box order."""
        matches = associate(self.tracks, boxes, self.min_iou)
        matched_tracks = {i for i, _ in matches}
        by_box = {j: self.tracks[i] for i, j in matches}
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.missed += 1
        for j, box in enumerate(boxes):
            track = by_box.get(j)
            if track is None:
                track = Track(self._next_id, box)
                self._next_id += 1
                self.tracks.append(track)
            track.box, track.missed = tuple(int(v) for v in box), 0
            by_box[j] = track
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return [by_box[j] for j in range(len(boxes))]


def smooth(track: Track, probabilities: np.ndarray, alpha: float | None, key: int = 0) -> np.ndarray:
    """The track's probabilities after this frame for classifier ``key``: EMA with weight ``alpha`` on the new
    frame (None: off, the frame's own probabilities)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    previous = track.smoothed.get(key)
    if alpha is not None and previous is not None and previous.shape == probabilities.shape:
        probabilities = alpha * probabilities + (1 - alpha) * previous
    track.smoothed[key] = probabilities
    return probabilities
