"""The transfer set: non-face images that ship with scikit-image, for distillation without labels."""
import numpy as np

from cnncompress.data.transfer import natural_crops, nonface_crops, photos, transfer_images


def test_transfer_images_are_the_nonfaces_then_seeded_natural_crops():
    assert len(photos()) >= 10  # bundled with scikit-image: nothing fetched
    images = transfer_images(32, 12, seed=3)
    assert images.shape == (112, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images[:100], nonface_crops(32))
    assert np.array_equal(images[100:], natural_crops(32, 12, seed=3))  # seeded: the same crops every run
    assert not np.array_equal(natural_crops(32, 12, seed=4), images[100:])
    assert images.std() > 20  # real pictures, not blank crops
