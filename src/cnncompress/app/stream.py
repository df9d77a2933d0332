"""The per-frame video pipeline: decode -> find faces -> classify (one or two models) -> record / draw / encode.

``run(classifiers, source, ...)`` times every stage of every frame with ``timing.clock`` and returns a summary:
frames, faces, seconds per stage (decode, detect = full scans, window searches and tracking, classify per model,
other = smoothing, records, drawing and encoding), frames per second overall and, with two classifiers (original and compressed, ``--compare``), each
model's own FPS (the frame time with only its own classify stage), its classifier's share of the frame time, and
the top-1 agreement of the two on the same detections (per face, and per frame: every face of the frame agrees).
The two classifiers take turns going first frame by frame, so neither always runs on a cold cache.

Per-frame records (``--jsonl``) read ``{"frame", "time", "faces": [{"track", "box": [r, c, h, w], "emotion",
"probability", "probabilities": {class: p}}]}``; with two models each face also has ``"compressed"`` (the same
three keys) and ``"agree"``. Files are written under a temporary name and renamed when the run completes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from cnncompress.errors import input_error
from cnncompress.app.predict import DETECT_EVERY, Classifier, FaceFinder
from cnncompress.timing import clock
from cnncompress.app.tracking import smooth
from cnncompress.app.video import VideoSource, VideoWriter, annotate, partial_name
from cnncompress import deploy


class RecordWriter:
    """JSON lines to a file (temporary name, renamed on ``close``) or to stdout for ``-``."""

    def __init__(self, path: str | Path):
        self.path = None if str(path) == "-" else Path(path)
        if self.path is None:
            self.handle = sys.stdout
            return
        self.temporary = partial_name(self.path)
        try:
            self.handle = open(self.temporary, "w")
        except OSError as error:
            raise input_error(self.path, f"--jsonl: cannot write ({error.strerror or error})") from error

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.path is not None:
            self.handle.close()
            os.replace(self.temporary, self.path)

    def abort(self) -> None:
        if self.path is not None:
            self.handle.close()
            self.temporary.unlink(missing_ok=True)


def _prediction(probabilities: np.ndarray, classes: list[str]) -> dict:
    best = int(np.argmax(probabilities))
    return {"emotion": classes[best], "probability": round(float(probabilities[best]), 6),
            "probabilities": {name: round(float(p), 6) for name, p in zip(classes, probabilities)}}


def predict_video(models: list, video: str | Path | None = None, camera: int | None = None, engine: str = "auto",
                  fps: float = 30.0, detect_every: int = DETECT_EVERY, alpha: float | None = None,
                  out: str | Path | None = None, jsonl: str | Path | None = None,
                  max_frames: int | None = None) -> dict:
    """Run the pipeline of ``models`` (one, or original and compressed: names ``loading.load_model`` takes, or
    modules) over ``video`` (a file or a folder of frames) or ``camera``; the summary (module docstring).

    ``alpha``: EMA weight of the current frame in each track's smoothed probabilities (None: off). The input and
    the output paths are checked before the models are loaded; on any failure the outputs are removed."""
    from cnncompress import methods
    from cnncompress.models.loading import load_model
    from cnncompress.app.video import open_source
    if alpha is not None and not 0 < alpha <= 1:
        raise input_error("--smooth", f"ALPHA must be in (0, 1], got {alpha}")
    if detect_every < 1:
        raise input_error("--detect-every", f"K must be at least 1, got {detect_every}")
    if max_frames is not None and max_frames < 1:
        raise input_error("--max-frames", f"N must be at least 1, got {max_frames}")
    source = open_source(video, camera=camera, fps=fps)
    sinks = []
    try:
        records = RecordWriter(jsonl) if jsonl else None
        sinks.append(records)
        writer = VideoWriter(out, source.fps) if out else None
        sinks.append(writer)
        loaded = [deploy.to_inference(load_model(m)) if isinstance(m, (str, Path)) else m for m in models]
        try:
            classifiers = [Classifier(model, engine) for model in loaded]
        except ValueError as error:
            raise input_error("--engine", str(error)) from error
        summary = run(classifiers, source, FaceFinder(detect_every), alpha, writer, records, max_frames,
                      stop_on_interrupt=camera is not None)
        summary["out"] = str(writer.close()) if writer else None
        if records:
            records.close()
        summary["jsonl"] = str(jsonl) if records else None
    except BaseException:
        for sink in sinks:
            if sink is not None:
                sink.abort()
        raise
    finally:
        source.close()
    from cnncompress.deploy.self_check import describe, record_of
    summary["models"] = [{"model": str(name) if isinstance(name, (str, Path)) else type(name).__name__, **entry,
                          "probe_check": describe(record_of(model))}  # None: the file carried no probes
                         for name, entry, model in zip(models, summary["models"], loaded)]
    return summary


def run(classifiers: list[Classifier], source: VideoSource, finder: FaceFinder, alpha: float | None = None,
        writer: VideoWriter | None = None, records: RecordWriter | None = None, max_frames: int | None = None,
        stop_on_interrupt: bool = False) -> dict:
    """Decode, find, classify, record and draw every frame of ``source``; the summary. ``stop_on_interrupt``:
    Ctrl-C ends the run normally (a camera)."""
    stages = {"decode": 0.0, "detect": 0.0, "other": 0.0}
    classify = [0.0] * len(classifiers)
    counts = {"frames": 0, "faces": 0, "frames_with_faces": 0, "agree_faces": 0, "agree_frames": 0}
    frames = iter(source)
    start = clock()
    try:
        while max_frames is None or counts["frames"] < max_frames:
            t0 = clock()
            frame = next(frames, None)
            t1 = clock()
            stages["decode"] += t1 - t0
            if frame is None:
                break
            tracks = finder(frame.image)
            t2 = clock()
            stages["detect"] += t2 - t1
            crops = [frame.image[r:r + h, c:c + w] for r, c, h, w in (t.box for t in tracks)]
            probabilities = [None] * len(classifiers)
            for k in _turns(len(classifiers), counts["frames"]):
                t_start = clock()
                probabilities[k] = classifiers[k](crops)
                classify[k] += clock() - t_start
            t3 = clock()
            faces = _faces(tracks, probabilities, classifiers, alpha, counts)
            if records:
                records.write({"frame": frame.index, "time": round(frame.time, 4), "faces": faces})
            if writer:
                writer.write(annotate(frame.image, faces))
            stages["other"] += clock() - t3
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            raise
    total = clock() - start
    if counts["frames"] == 0:
        raise input_error(source.name, "no frames (empty video)")
    return _summary(classifiers, source, finder, stages, classify, counts, total)


def _turns(count: int, index: int) -> list[int]:
    """The classifiers' order on frame ``index``: rotated each frame."""
    shift = index % count
    return list(range(shift, count)) + list(range(shift))


def _faces(tracks, probabilities, classifiers, alpha, counts) -> list[dict]:
    faces = []
    for i, track in enumerate(tracks):
        face = {"track": track.id, "box": [int(v) for v in track.box]}
        results = [_prediction(smooth(track, p[i], alpha, k), c.classes)
                   for k, (p, c) in enumerate(zip(probabilities, classifiers))]
        face.update(results[0])
        if len(results) > 1:
            face["compressed"] = results[1]
            face["agree"] = results[0]["emotion"] == results[1]["emotion"]
        faces.append(face)
    counts["frames"] += 1
    counts["faces"] += len(faces)
    counts["frames_with_faces"] += bool(faces)
    if len(classifiers) > 1:
        counts["agree_faces"] += sum(face["agree"] for face in faces)
        counts["agree_frames"] += bool(faces) and all(face["agree"] for face in faces)
    return faces


def _summary(classifiers, source, finder, stages, classify, counts, total) -> dict:
    frames = counts["frames"]
    shared = total - sum(classify)  # decode, detect and other: the same work for every classifier
    models = []
    for classifier, seconds in zip(classifiers, classify):
        own = shared + seconds
        models.append({"engine": classifier.engine, "classify_s": seconds, "classify_ms_per_frame":
                       1000 * seconds / frames, "fps": frames / own if own > 0 else float("inf"),
                       "classify_share": seconds / own if own > 0 else 0.0})
    times = {"decode": stages["decode"], "detect": stages["detect"], "classify": sum(classify),
             "other": stages["other"]}
    summary = {"source": source.name, "frames": frames, "size": list(source.size or ()), "video_fps": source.fps,
               "faces": counts["faces"], "frames_with_faces": counts["frames_with_faces"], "seconds": total,
               "fps": frames / total if total > 0 else float("inf"),
               "stages_s": times, "shares": {k: v / total if total > 0 else 0.0 for k, v in times.items()},
               "detector": {"name": "scikit-image LBP frontal-face cascade", "detect_every": finder.detect_every,
                            "full_scans": finder.full_scans, "window_searches": finder.window_searches},
               "models": models, "note": source.note}
    if len(classifiers) > 1:
        summary["agreement"] = {"faces": counts["agree_faces"], "of_faces": counts["faces"],
                                "frames": counts["agree_frames"], "of_frames": counts["frames_with_faces"]}
    return summary
