"""Video emotion recognition speed: the full pipeline (decode -> LBP face scan / tracking -> classify) in frames per
second with ``fer-minixception`` and with a compressed copy, on a 640x480 clip made here (one face per frame).

Bars: the full pipeline with the original model >= 30 FPS on 2 cores (``--detect-every`` K, default 10, as the
command line); the compressed model's classifier time per frame >= 2x lower than the original's on its fastest
engine (onnxruntime fp32 for mini-Xception). The compressed copy is ``int8`` (``methods.apply(model, "int8",
calibration=face crops)``: the clip's faces found by the detector plus the LFW faces), or ``--method`` another.

Measured: one pipeline run with the original alone (its real FPS and per-stage shares), one ``--compare`` run
(both models on the same detections, taking turns first frame by frame), then the classifiers alone on the same
face crops, timed interleaved (``measure.alternating``), PyTorch fp32 beside them for reference. The machine's load
average is printed: on a shared machine every figure here moves with it (ratios less than absolute FPS).

    .venv/bin/python benchmarks/bench_video.py            # 150 frames (5 s at 30 fps)
    .venv/bin/python benchmarks/bench_video.py --quick    # 60 frames, fewer timing rounds (< 1 minute)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnncompress import deploy, measure, methods
from cnncompress.errors import InputError
from cnncompress.models.loading import load_model
from cnncompress.app.predict import Classifier, find_faces
from cnncompress.app.stream import predict_video
from cnncompress.app.video import VideoWriter

W, H, FPS = 640, 480, 30


def clip_frames(count: int) -> list[np.ndarray]:
    """``count`` 640x480 frames, each with the astronaut's head moving on a circle and breathing in size."""
    from skimage import data
    yy, xx = np.mgrid[0:H, 0:W]
    grey = (70 + 90 * xx / W + 30 * yy / H).astype(np.uint8)
    background = np.stack([grey, (grey * 0.9).astype(np.uint8), grey], axis=-1)
    head = Image.fromarray(data.astronaut()[0:250, 100:350])
    frames = []
    for i in range(count):
        angle = 2 * np.pi * i / 90
        side = int(200 + 30 * np.sin(2 * angle))
        r, c = int(140 + 60 * np.sin(angle)), int(220 + 150 * np.cos(angle))
        frame = background.copy()
        frame[r:r + side, c:c + side] = np.asarray(head.resize((side, side), Image.BILINEAR))
        frames.append(frame)
    return frames


def face_crops(frames: list[np.ndarray], every: int = 10) -> list[np.ndarray]:
    """The faces the detector finds in every ``every``-th frame, plus scikit-image's 100 LFW faces."""
    from cnncompress.data.lfw import lfw_faces
    crops = []
    for frame in frames[::every]:
        for box in find_faces(frame):
            crops.append(frame[box["r"]:box["r"] + box["height"], box["c"]:box["c"] + box["width"]])
    return crops + list(lfw_faces())


def compressed_copy(model, method: str, crops: list[np.ndarray]):
    classifier = Classifier(model, "torch")
    config = {"calibration": classifier.prepare(crops)} if method == "int8" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return deploy.to_inference(methods.apply(model, method, **config))


def shares(summary: dict) -> str:
    return ", ".join(f"{name} {100 * share:.0f}%" for name, share in summary["shares"].items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 frames, fewer timing rounds (< 1 minute)")
    parser.add_argument("--frames", type=int, help="frames in the clip (default 150, --quick 60)")
    parser.add_argument("--detect-every", type=int, default=10, help="full face scan every K frames (default 10)")
    parser.add_argument("--method", default="int8", help="the compressed copy's method (default int8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    count = args.frames or (60 if args.quick else 150)
    rounds = 20 if args.quick else 60
    load = os.getloadavg()
    print(f"bench_video: {count} frames {W}x{H} at {FPS} fps, one face each; {args.threads} threads; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (other jobs running "
          "share these cores)")
    frames = clip_frames(count)
    original = deploy.to_inference(load_model("fer-minixception"))
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        video = Path(tmp) / "clip.mp4"
        writer = VideoWriter(video, FPS)
        for frame in frames:
            writer.write(frame)
        writer.close()
        alone = predict_video([original], video, detect_every=args.detect_every)
        print(f"original alone: {alone['fps']:.1f} FPS over {alone['frames']} frames ({alone['faces']} faces; "
              f"{alone['detector']['full_scans']} full scans); shares: {shares(alone)}; classify "
              f"{alone['models'][0]['classify_ms_per_frame']:.2f} ms/frame on {alone['models'][0]['engine']}")
        crops = face_crops(frames)
        try:
            compressed = compressed_copy(original, args.method, crops)
        except InputError as error:
            print(f"{args.method}: cannot be applied to fer-minixception: {error}")
            compressed = None
        if compressed is not None:
            both = predict_video([original, compressed], video, detect_every=args.detect_every)
            a = both["agreement"]
            for role, model in zip(("original", args.method), both["models"]):
                print(f"compare, {role:8s} on {model['engine']}: {model['fps']:.1f} FPS, classify "
                      f"{model['classify_ms_per_frame']:.2f} ms/frame = {100 * model['classify_share']:.1f}% of "
                      "the frame time")
            print(f"compare: top-1 agreement {a['faces']}/{a['of_faces']} faces, {a['frames']}/{a['of_frames']} "
                  f"frames; shares: {shares(both)}")
    frame_faces = [crops[0]]  # one face per frame: batch 1, as in the pipeline
    fast, reference = Classifier(original), Classifier(original, "torch")

    def torch_one_thread():  # PyTorch at 2 threads on 2 busy cores spins (seconds per call): 1 thread is its best
        with measure.threads(1):
            return reference(frame_faces)
    calls = {f"original ({fast.engine})": lambda: fast(frame_faces), "original (pytorch, 1 thread)": torch_one_thread}
    if compressed is not None:
        small = Classifier(compressed)
        calls[f"{args.method} ({small.engine})"] = lambda: small(frame_faces)
    with torch.inference_mode():
        times = measure.alternating(calls, rounds, block=5, warmup=3, pause=0.02)
    print("classifier alone, one face (ms, median, interleaved): "
          + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items()))
    fps_ok = alone["fps"] >= 30
    print(("PASS" if fps_ok else "FAIL") + f": pipeline with fer-minixception {alone['fps']:.1f} FPS (bar >= 30 on "
          f"2 cores, load average {load[0]:.1f})")
    if compressed is None:
        print(f"FAIL: no compressed copy ({args.method} could not be applied), classifier bar not measured")
        return 1
    first = next(iter(times))
    ratio = times[first] / times[list(times)[-1]]
    speed_ok = ratio >= 2
    print(("PASS" if speed_ok else "FAIL") + f": {args.method} classifier {ratio:.2f}x faster than the original on "
          f"its fastest engine ({first}) (bar >= 2x); against PyTorch fp32 "
          f"{times['original (pytorch, 1 thread)'] / times[list(times)[-1]]:.2f}x")
    return 0 if fps_ok and speed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
