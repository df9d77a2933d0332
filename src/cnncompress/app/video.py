"""Video in and out with PyAV (FFmpeg inside its wheel; no system ffmpeg): frame sources and the annotated writer.

Sources (``open_source``) yield ``Frame(index, time, image)`` with ``image`` an RGB uint8 (H, W, 3) array:

* a video file (mp4, avi, webm, mkv, mov, ...), decoded frame by frame. A corrupt packet is skipped; a file that
  ends early (truncated) is decoded as far as it goes and ``source.note`` says where it stopped. Not a video, no
  video stream, no decoder for its codec, or no frame at all -> ``InputError`` naming the file;
* a folder of images (sorted by path; ``fps`` gives their time stamps);
* a camera (``camera=N``: ``/dev/videoN`` through FFmpeg's v4l2 input, Linux only); it runs until the caller stops.

``VideoWriter`` encodes frames (H.264 in mp4/mkv/mov, MPEG-4 part 2 in avi, VP8 in webm) to a hidden temporary
name beside the target and renames it only when ``close()`` finishes: an interrupted or failed run leaves no
half-written file under the name asked for. ``annotate`` draws boxes and labels with Pillow.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cnncompress.errors import input_error

VIDEO_SUFFIXES = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".ogv"}
OUTPUT_CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4",
                 ".webm": "libvpx"}
ENCODER_OPTIONS = {"libx264": {"preset": "veryfast", "crf": "23"}, "mpeg4": {"qscale": "4"},
                   "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"}}
MAX_CORRUPT_PACKETS = 50  # give up on a file after this many undecodable packets in a row


@dataclass
class Frame:
    index: int
    time: float  # seconds from the first frame
    image: np.ndarray  # RGB uint8 (H, W, 3)


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by suffix) or a folder of frames."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


class VideoSource:
    """Frames of one video file, camera or folder; iterate once. ``name``, ``fps``, ``size`` (w, h) once the
    first frame is read, ``declared_frames`` (from the container, or None), ``note`` (why it stopped early)."""

    def __init__(self, name: str, frames: Iterator[Frame], fps: float, declared_frames: int | None = None,
                 container=None):
        self.name, self.fps, self.declared_frames = name, fps, declared_frames
        self.note: str | None = None
        self.size: tuple[int, int] | None = None
        self.count = 0
        self._frames, self._container = frames, container

    def __iter__(self) -> Iterator[Frame]:
        for frame in self._frames:
            if self.size is None:
                self.size = (frame.image.shape[1], frame.image.shape[0])
            self.count += 1
            yield frame

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def open_source(source: str | Path | None = None, camera: int | None = None, fps: float = 30.0) -> VideoSource:
    """The frame source for a video file, a folder of images, or ``camera`` N (see the module docstring)."""
    if camera is not None:
        return _open_camera(camera)
    path = Path(source)
    if path.is_dir():
        return _open_folder(path, fps)
    return _open_file(path)


def _av():
    import av
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own log lines would break the one-line error contract
    return av


def _open_file(path: Path) -> VideoSource:
    av = _av()
    if not path.is_file():
        raise input_error(path, "no such video file")
    if path.stat().st_size == 0:
        raise input_error(path, "empty file, not a video")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.EOFError as error:
        raise input_error(path, "not a video, or one that ends before its first frame (empty or cut short)") \
            from error
    except av.FFmpegError as error:
        raise input_error(path, f"not a video ({_reason(error)})") from error
    if not container.streams.video:
        container.close()
        raise input_error(path, "no video stream (not a video, or an mp4 cut off before its index)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise input_error(path, "unsupported codec: this FFmpeg build has no decoder for the video stream")
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    declared = int(stream.frames) if stream.frames else None
    source = VideoSource(str(path), iter(()), rate, declared, container)
    source._frames = _decode(container, stream, source)
    return source


def _decode(container, stream, source: VideoSource) -> Iterator[Frame]:
    av = _av()
    index, corrupt, first = 0, 0, None
    last_time = 0.0
    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
                corrupt = 0
            except av.FFmpegError as error:
                corrupt += 1
                source.note = f"corrupt data after frame {index} ({last_time:.2f} s): {_reason(error)}"
                if corrupt >= MAX_CORRUPT_PACKETS:
                    break
                continue
            for frame in decoded:
                stamp = float(frame.time) if frame.time is not None else index / source.fps
                first = stamp if first is None else first
                last_time = stamp - first
                yield Frame(index, last_time, frame.to_ndarray(format="rgb24"))
                index += 1
    except av.FFmpegError as error:
        source.note = f"stopped at frame {index} ({last_time:.2f} s): {_reason(error)}"
    finally:
        source.close()
    if index == 0:
        raise input_error(source.name, f"no frame could be decoded ({source.note})" if source.note else
                          "the video has zero frames")
    if source.declared_frames and index < source.declared_frames:
        source.note = (f"truncated or corrupt: decoded {index} of {source.declared_frames} frames, stopped at "
                       f"{last_time:.2f} s" + (f"; {source.note}" if source.note else ""))


def _open_camera(number: int) -> VideoSource:
    name = f"/dev/video{number}"
    if not sys.platform.startswith("linux"):
        raise input_error(f"--camera {number}", "cameras are read through v4l2, which exists on Linux only")
    av = _av()
    if not os.path.exists(name):
        raise input_error(f"--camera {number}", f"no such camera ({name} does not exist)")
    try:
        container = av.open(name, format="v4l2")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise input_error(f"--camera {number}", f"cannot open {name}: {_reason(error)}") from error
    if not container.streams.video:
        container.close()
        raise input_error(f"--camera {number}", f"{name} has no video stream")
    stream = container.streams.video[0]
    source = VideoSource(f"camera {number} ({name})", iter(()), float(stream.average_rate or 30), None, container)
    source._frames = _decode(container, stream, source)
    return source


def _open_folder(path: Path, fps: float) -> VideoSource:
    from cnncompress.data.formats import list_images, read_image
    files = list_images(path)

    def frames() -> Iterator[Frame]:
        for index, file in enumerate(files):
            image = read_image(file)
            image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
            yield Frame(index, index / fps, image)
    return VideoSource(str(path), frames(), fps, len(files))


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__


def partial_name(path: Path) -> Path:
    """Where a file is written until it is complete: hidden, marked partial, same suffix (the muxer needs it)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


class VideoWriter:
    """Encode RGB frames to ``path`` (format from the suffix), via a temporary name renamed on ``close()``.

    The temporary file is created at once, so a path that cannot be written fails before any work is done."""

    def __init__(self, path: str | Path, fps: float):
        av = _av()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in OUTPUT_CODECS:
            raise input_error(self.path, f"--out: unsupported video format {suffix or '(no suffix)'} "
                                         f"(use one of {', '.join(sorted(OUTPUT_CODECS))})")
        if self.path.is_dir():
            raise input_error(self.path, "--out: is a directory")
        self.temporary = partial_name(self.path)
        self.codec = OUTPUT_CODECS[suffix]
        self.fps = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
        options = {"movflags": "faststart"} if suffix in (".mp4", ".m4v", ".mov") else {}
        try:  # FFmpeg creates the file only at the first frame: try now, before any work is done
            with open(self.temporary, "wb"):
                pass
            self.container = av.open(str(self.temporary), "w", options=options)
        except (av.FFmpegError, OSError) as error:
            self.temporary.unlink(missing_ok=True)
            raise input_error(self.path, f"--out: cannot write ({_reason(error)})") from error
        self.stream = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        av = _av()
        if self.stream is None:
            height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2  # yuv420p needs even sides
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
            self.stream.options = dict(ENCODER_OPTIONS.get(self.codec, {}))
        width, height = self.stream.width, self.stream.height
        if image.shape[:2] != (height, width):  # an odd side is cropped; another size (a folder) is resized
            if image.shape[0] - height in (0, 1) and image.shape[1] - width in (0, 1):
                image = image[:height, :width]
            else:
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder, close the file and give it its real name; the finished path."""
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        if self.frames == 0:
            self.temporary.unlink(missing_ok=True)
            raise input_error(self.path, "--out: no frame to write")
        try:
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.temporary.unlink(missing_ok=True)
            raise input_error(self.path, f"--out: cannot write ({error.strerror or error})") from error
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (nothing is left under the target's name)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        self.temporary.unlink(missing_ok=True)


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """``image`` with a box and ``emotion probability`` label drawn for every face (``box`` = [r, c, h, w])."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(2, image.shape[1] // 320)
    for face in faces:
        r, c, h, w = face["box"]
        draw.rectangle([c, r, c + w - 1, r + h - 1], outline=(255, 220, 0), width=width)
        label = f"{face['emotion']} {face['probability']:.2f}"
        left, top, right, bottom = draw.textbbox((c, 0), label, font=font)
        y = r - (bottom - top) - 4 if r >= (bottom - top) + 4 else r + h + 2
        draw.rectangle([c, y, c + (right - left) + 4, y + (bottom - top) + 4], fill=(255, 220, 0))
        draw.text((c + 2, y + 2 - top), label, fill=(0, 0, 0), font=font)
    return np.asarray(picture)
