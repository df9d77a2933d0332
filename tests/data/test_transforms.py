"""prepare: uint8 images of any size / channel count -> (N, C, size, size) float32 = (x/255 - mean)/std."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnncompress.data.transforms import prepare, resize, to_channels


@pytest.mark.parametrize("channels,mean,std", [(1, 0.5, 0.5), (3, 0.485, 0.229)])
def test_prepare_equals_the_formula_bit_for_bit(channels, mean, std):
    images = [np.random.default_rng(i).integers(0, 256, (40 + i, 52, 3), dtype=np.uint8) for i in range(4)]
    out = prepare(images, 48, channels, mean, std)
    assert out.shape == (4, channels, 48, 48) and out.dtype == torch.float32 and out.is_contiguous()
    resized = torch.from_numpy(np.stack([resize(to_channels(img, channels), 48) for img in images]))
    expected = resized.permute(0, 3, 1, 2).float().div(255.0).sub(mean).div(std)  # float32 throughout
    assert torch.equal(out, expected)
    assert out.stride() == expected.contiguous().stride()  # the layout training numerics were measured with
