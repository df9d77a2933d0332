"""``cnncompress predict MODEL INPUT...``: faces found -> emotion and probability per face.

INPUT is a photo (one line per face), a video file or a folder of frames (a summary: frames, faces, time per
stage, FPS; ``--out`` annotated video, ``--jsonl`` per-frame records); ``--camera N`` reads a camera;
``--compare ORIGINAL COMPRESSED VIDEO`` runs both models on the same detections.

Your own network (``commands.add_model_arguments``): ``--model FILE.py:FUNCTION --weights W.safetensors INPUT...``
builds and fills it (every positional is then an input); ``MODEL --model FILE.py:FUNCTION INPUT...`` loads a
``.ccz`` / ``.safetensors`` / run folder written for it; with ``--compare`` the compressed file is rebuilt with the
same ``--model``. Without a file or ``--weights``, the first positional is an input when it is not a model file
(the function then returns the network ready to use).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cnncompress.commands import add_model_arguments, load_model_arguments
from cnncompress.errors import InputError
from cnncompress import deploy


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="find faces in photos, videos or a camera and predict the "
                                                   "emotion of each")
    add_model_arguments(parser, "the model")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="photos (png, jpg, ...), videos (mp4, avi, webm, mkv, ...) or folders of frames")
    parser.add_argument("--json", action="store_true", help="one JSON object per photo / per video summary")
    parser.add_argument("--whole-image", action="store_true", help="classify the whole photo when no face is found")
    parser.add_argument("--top", type=int, default=1, help="also list the top-k classes (photos)")
    video = parser.add_argument_group("video")
    video.add_argument("--camera", type=int, metavar="N", help="read camera N (/dev/videoN, v4l2; Ctrl-C stops)")
    video.add_argument("--compare", action="store_true",
                       help="MODEL is the original, the first INPUT the compressed model: run both on the same "
                            "detections; FPS of each, top-1 agreement, the classifier's share of the frame time")
    video.add_argument("--out", metavar="VIDEO", help="write the annotated video (mp4, mkv, mov, avi, webm)")
    video.add_argument("--jsonl", metavar="FILE", help="one JSON record per frame ('-': stdout)")
    video.add_argument("--detect-every", type=int, default=10, metavar="K",
                       help="full face scan every K frames, tracked faces searched near their box in between "
                            "(default 10; 1 = scan every frame)")
    video.add_argument("--smooth", type=float, metavar="ALPHA",
                       help="exponential moving average of each tracked face's probabilities, weight ALPHA on "
                            "the current frame (off by default)")
    video.add_argument("--engine", default="auto",
                       help="classifier engine for video: auto (the fastest engine of the model's precision, raced "
                            "at start-up) or one of cnncompress.deploy (torch, onnxruntime, openvino-fp32, "
                            "onnxruntime-int8, openvino-int8, ...)")
    video.add_argument("--fps", type=float, default=30.0, help="frame rate of a folder of frames (default 30)")
    video.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.set_defaults(func=run)


def _split_positionals(args) -> list[str]:
    """The inputs, after ``args.model`` is settled: with ``--model`` and ``--weights`` (or no model file first)
    the network is named by its flags and every positional is an input."""
    from cnncompress.models.loading import RUN_FOLDER_FILES
    inputs = list(args.inputs)
    if args.entry and args.model is not None:
        first = Path(args.model)
        is_file = first.suffix.lower() in (".ccz", ".safetensors") or (
            first.is_dir() and any((first / name).is_file() for name in RUN_FOLDER_FILES))
        if args.weights or not is_file:
            inputs.insert(0, args.model)
            args.model = None
    if args.model is None and not args.entry:
        raise InputError("predict: name the model (fer-minixception, a .ccz, a model.safetensors, a run folder, or "
                         "--model FILE.py:FUNCTION)")
    return inputs


def _user_model(args, path: str | None):
    """A user network (``--model``; from ``path`` when given, else as ``add_model_arguments`` names it), checked
    to take the face crops predict feeds it (``loading.input_format``: its card's shape, else 64x64 grey)."""
    import torch
    from cnncompress.models.entry_point import check_outputs
    from cnncompress.models.loading import input_format, load_model
    model = load_model(path, args.entry) if path else load_model_arguments(args)
    fmt = input_format(model)
    crop = torch.zeros(1, fmt["channels"], fmt["input_size"], fmt["input_size"])
    check_outputs(model, crop, len(fmt["classes"]) or None, "face crops")
    return model


def run(args) -> int:
    from cnncompress.app.video import is_video
    inputs = _split_positionals(args)
    models = [_user_model(args, None) if args.entry else args.model]
    if args.compare:
        if not inputs:
            raise InputError("--compare: give ORIGINAL COMPRESSED and a video, a folder of frames or --camera N")
        compressed = inputs.pop(0)
        models.append(_user_model(args, compressed) if args.entry else compressed)
    if args.camera is not None and inputs:
        raise InputError(f"--camera {args.camera}: takes no input files (got {inputs[0]})")
    if args.camera is None and not inputs:
        raise InputError("predict: give a photo, a video, a folder of frames or --camera N")
    videos = [item for item in inputs if is_video(item)] + ([None] if args.camera is not None else [])
    if args.compare and len(videos) != len(inputs) + (args.camera is not None):
        raise InputError(f"--compare: {next(i for i in inputs if not is_video(i))}: takes a video, a folder of "
                         "frames or --camera N, not a photo")
    for flag in ("out", "jsonl"):
        if getattr(args, flag) and len(videos) != 1:
            raise InputError(f"--{flag.replace('_', '-')}: takes exactly one video, folder of frames or camera")
    photo_model = None
    for item in inputs or [None]:
        if item is None or is_video(item):
            _video(args, models, item)
            continue
        if photo_model is None:
            from cnncompress.models.loading import load_model
            first = models[0]
            photo_model = deploy.to_inference(first if not isinstance(first, str) else load_model(first))
            _say_probe_check(photo_model)
        _photo(args, photo_model, item)
    return 0


def _say_probe_check(model) -> None:
    from cnncompress.app.predict import probe_check_line
    line = probe_check_line(model)
    if line:
        print(line, file=sys.stderr)


def _photo(args, model, image) -> None:
    from cnncompress.app.predict import predict_image
    faces = predict_image(model, image, whole_image=args.whole_image, top=args.top)
    if args.json:
        print(json.dumps({"image": image, "faces": faces}))
        return
    print(f"{image}: {len(faces)} face(s)")
    for face in faces:
        r, c, h, w = face["box"]
        extra = ", ".join(f"{name} {p:.2f}" for name, p in face["top"][1:])
        print(f"  box row={r} col={c} h={h} w={w}: {face['emotion']} {face['probability']:.2f}"
              + (f" (then {extra})" if extra else ""))


def _video(args, models, item) -> None:
    from cnncompress.app.stream import predict_video
    summary = predict_video(models, item, camera=args.camera, engine=args.engine, fps=args.fps,
                            detect_every=args.detect_every, alpha=args.smooth, out=args.out, jsonl=args.jsonl,
                            max_frames=args.max_frames)
    if summary["note"]:
        print(f"cnncompress: warning: {summary['source']}: {summary['note']}", file=sys.stderr)
    stream = sys.stderr if args.jsonl == "-" else sys.stdout
    if args.json:
        print(json.dumps(summary), file=stream)
        return
    for line in summary_lines(summary):
        print(line, file=stream)


def summary_lines(summary: dict) -> list[str]:
    """The video summary as text lines."""
    frames, total = summary["frames"], summary["seconds"]
    size = "x".join(str(v) for v in summary["size"])
    lines = [f"{summary['source']}: {frames} frames ({size}, {summary['video_fps']:.1f} fps), {summary['faces']} "
             f"face(s) in {summary['frames_with_faces']} frames; {summary['fps']:.1f} FPS ({total:.2f} s)"]
    stages = ", ".join(f"{name} {1000 * seconds / frames:.1f} ms ({100 * summary['shares'][name]:.0f}%)"
                       for name, seconds in summary["stages_s"].items())
    lines.append(f"  per frame: {stages}")
    detector = summary["detector"]
    lines.append(f"  detector: {detector['name']}, full scan every {detector['detect_every']} frame(s) "
                 f"({detector['full_scans']} scans, {detector['window_searches']} window searches)")
    roles = ["original", "compressed"] if len(summary["models"]) > 1 else ["model"]
    for role, model in zip(roles, summary["models"]):
        lines.append(f"  {role} {model['model']} on {model['engine']}: {model['fps']:.1f} FPS, classify "
                     f"{model['classify_ms_per_frame']:.2f} ms/frame = {100 * model['classify_share']:.1f}% "
                     "of its frame time")
        if model.get("probe_check"):  # the file's check of its engine here, passed or refused
            lines.append(f"    {model['probe_check']}")
    if "agreement" in summary:
        a = summary["agreement"]
        lines.append(f"  top-1 agreement: {a['faces']}/{a['of_faces']} faces "
                     f"({100 * a['faces'] / max(1, a['of_faces']):.1f}%), {a['frames']}/{a['of_frames']} frames "
                     f"with faces ({100 * a['frames'] / max(1, a['of_frames']):.1f}%)")
    written = [path for path in (summary["out"], summary["jsonl"]) if path and path != "-"]
    if written:
        lines.append(f"  wrote {', '.join(written)}")
    return lines
