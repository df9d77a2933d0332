"""A transfer set for distillation: unlabelled images that are not faces, shipped with scikit-image.

Distillation needs only the teacher's answers, not labels, so any image can teach a student how its teacher
responds; a copy recovering on 67 faces alone saw too little of that function (``table-emotion``: k-means 4-bit
recovered to 88 % agreement on faces alone, 94 % with this set added). ``transfer_images(size, count)`` returns
the 100 non-face crops of ``skimage/data/lfw_subset.npy`` (the images after its 100 faces) and ``count`` random
square crops (side 24 px to half the image, seeded) of scikit-image's bundled photographs, greyed and resized to
``size``: uint8 (N, size, size). Nothing is fetched; the images ship inside the scikit-image wheel.
"""
from __future__ import annotations

import numpy as np

from cnncompress.data.lfw import LFW_FACES

PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "horse", "page", "text", "moon", "grass", "brick",
          "gravel", "coins", "clock", "hubble_deep_field", "retina", "cell", "immunohistochemistry", "microaneurysms")


def _grey(image: np.ndarray) -> np.ndarray:
    """A photograph as float grey in [0, 1]."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float
    image = img_as_float(np.asarray(image))
    return rgb2gray(image[..., :3]) if image.ndim == 3 else image


def photos() -> list[np.ndarray]:
    """The bundled photographs of ``PHOTOS`` that this scikit-image has, grey float."""
    from skimage import data
    found = []
    for name in PHOTOS:
        loader = getattr(data, name, None)
        if loader is not None:
            found.append(_grey(loader()))
    return found


def nonface_crops(size: int) -> np.ndarray:
    """The 100 non-face crops of scikit-image's LFW subset, uint8 (100, size, size)."""
    from skimage import data
    from skimage.transform import resize
    crops = np.asarray(data.lfw_subset())[LFW_FACES:]
    return np.stack([_to_uint8(resize(c, (size, size), anti_aliasing=True)) for c in crops])


def natural_crops(size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` seeded random square crops of the bundled photographs, uint8 (count, size, size)."""
    from skimage.transform import resize
    images, rng = photos(), np.random.default_rng(seed)
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        image = images[i % len(images)]
        height, width = image.shape
        side = int(rng.integers(24, max(25, min(height, width) // 2)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        out[i] = _to_uint8(resize(image[top:top + side, left:left + side], (size, size), anti_aliasing=True))
    return out


def transfer_images(size: int, count: int, seed: int = 0) -> np.ndarray:
    """Non-face LFW crops then ``count`` natural crops, uint8 (100 + count, size, size)."""
    return np.concatenate([nonface_crops(size), natural_crops(size, count, seed)])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
