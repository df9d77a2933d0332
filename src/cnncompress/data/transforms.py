"""Image transforms written with numpy/Pillow/torch (no torchvision).

Images inside datasets are uint8 arrays of shape (H, W) or (H, W, C). ``prepare`` turns them into float
tensors (C, H, W) normalised as ``(x/255 - mean) / std``; ``augment`` adds light, seeded augmentation.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey (H, W) or colour (H, W, 3/4) uint8 -> (H, W, channels); colour to grey uses ITU-R 601 luma."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == channels:
        return image
    if channels == 1:
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"cannot convert {image.shape[2]} channels to {channels}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to (size, size, C) with Pillow."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def prepare(images: np.ndarray | list, size: int, channels: int, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """A batch of uint8 images -> float tensor (N, C, size, size) = (x/255 - mean)/std."""
    batch = np.stack([resize(to_channels(np.asarray(img), channels), size) for img in images])
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return tensor.sub_(mean).div_(std).contiguous()  # one channel: strides stay (HW, 1, W, 1), which every
    # figure in the README was trained with (numerics of oneDNN's convs depend on them; row_major for the models
    # that need NCHW strides)


def augment(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 2, flip: bool = True) -> torch.Tensor:
    """Light augmentation of a prepared batch: random horizontal flip and a shift of up to ``max_shift`` pixels."""
    out = batch.clone()
    n = batch.shape[0]
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
        out[flips] = out[flips].flip(-1)
    if max_shift:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        for i in range(n):
            out[i] = torch.roll(out[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return out


def add_noise(images: np.ndarray, seed: int, sigma: float = 0.3, salt_pepper: float = 0.1) -> np.ndarray:
    """Noisy MNIST (Pimpley & Indulkar §4): Gaussian noise N(0, sigma) on [0,1] pixels, then a fraction
    ``salt_pepper`` of pixels set to 0 or 1 at random. Seeded, returns uint8."""
    rng = np.random.default_rng(seed)
    x = images.astype(np.float32) / 255.0
    x = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    mask = rng.random(x.shape) < salt_pepper
    x[mask] = rng.integers(0, 2, size=int(mask.sum())).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
