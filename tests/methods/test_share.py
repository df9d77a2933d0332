"""k-means weight sharing and Deep Compression: codebook sizes, summed centroid gradients, pruned zeros pinned,
per-stage bytes that shrink, exact .ccz round trips, inference path equal to training path."""
import pytest
import torch

from cnncompress import deploy, methods, storage
from cnncompress.errors import InputError
from cnncompress.methods.share import (SharedConv2d, SharedLinear, kmeans_1d, moving_indices, nearest, nearest_index,
                                       nearest_index_reference)
from cnncompress.training.trainer import TrainConfig, Trainer


def test_kmeans_1d_linear_init_and_nearest():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.2), torch.full((20,), 3.0)]).numpy()
    centroids = kmeans_1d(values, 3)
    assert centroids.tolist() == pytest.approx([-1.0, 0.2, 3.0])
    assert nearest(values, centroids).tolist() == [0] * 50 + [1] * 30 + [2] * 20


def test_kmeans_shares_weights_per_layer(vgg, tmp_path):
    shared = methods.apply(vgg, "kmeans", conv_bits=4, fc_bits=3)
    assert isinstance(shared.features.conv3, SharedConv2d) and isinstance(shared.classifier.fc7, SharedLinear)
    x = torch.randn(2, 1, 48, 48)
    for layer, bits, original in ((shared.features.conv3, 4, vgg.features.conv3),
                                  (shared.classifier.fc7, 3, vgg.classifier.fc7)):
        weight = layer.shared_weight()
        assert weight.unique().numel() <= 2 ** bits
        assert (weight - original.weight).abs().mean() < 0.25 * original.weight.abs().mean()
    dense = storage.save(vgg, tmp_path / "dense.ccz").stat().st_size
    small = storage.save(shared, tmp_path / "shared.ccz").stat().st_size
    assert small < dense / 6
    loaded = storage.load(tmp_path / "shared.ccz")
    assert torch.equal(loaded(x), shared.eval()(x))


def test_centroid_gradient_is_the_sum_of_member_gradients(vgg):
    shared = methods.apply(vgg, "kmeans", layers=["classifier.fc7"], fc_bits=2).train()
    layer = shared.classifier.fc7
    weight = layer.shared_weight()
    weight.retain_grad()
    x = torch.randn(3, layer.in_features)
    (torch.nn.functional.linear(x, weight, layer.bias) ** 2).sum().backward()
    for k in range(4):
        expected = weight.grad[layer.indices.long() == k].sum()
        assert torch.allclose(layer.centroids.grad[k], expected, rtol=1e-4, atol=1e-6)


def test_pruned_zeros_stay_zero_through_centroid_fine_tuning(vgg, random_images):
    pruned = methods.apply(vgg, "prune-magnitude", sparsity=0.8)
    shared = methods.apply(pruned, "kmeans", conv_bits=3, fc_bits=2)
    fc7 = shared.classifier.fc7
    zeros = pruned.classifier.fc7.weight == 0
    assert fc7.sparse and (fc7.indices[zeros] == 0).all() and (fc7.indices[~zeros] > 0).all()
    before = fc7.centroids.detach().clone()
    Trainer(shared, random_images(), None, TrainConfig(epochs=1, lr=0.05, batch_size=10), progress=False).fit()
    assert fc7.centroids[0] == 0 and not torch.equal(fc7.centroids.detach(), before)
    assert (fc7.shared_weight()[zeros] == 0).all()


def test_nearest_index_equals_the_argmin_for_unsorted_centroids():
    g = torch.Generator().manual_seed(3)
    values, centroids = torch.randn(5000, generator=g) * 2, torch.randn(16, generator=g)  # centroids not sorted
    assert torch.equal(nearest_index(values, centroids), nearest_index_reference(values, centroids))


def test_moving_indices_reassign_during_training_and_leave_a_plain_layer(vgg, random_images, tmp_path):
    """Inside the context a training step moves some indices (fixed without it); the layer's forward is always
    C[I] of its current indices; on exit the shadow is gone, the keys are the usual ones and the file round-trips."""
    shared = methods.apply(vgg, "kmeans", conv_bits=3, fc_bits=2)
    keys = set(shared.state_dict())
    fixed = {k: v.clone() for k, v in shared.state_dict().items() if k.endswith("indices")}
    with moving_indices(shared, start=vgg) as moved:
        assert "classifier.fc7" in moved and shared.classifier.fc7.shadow.shape == vgg.classifier.fc7.weight.shape
        assert torch.equal(shared.classifier.fc7.shadow, vgg.classifier.fc7.weight)  # starts from the float weights
        Trainer(shared, random_images(), None, TrainConfig(epochs=1, lr=0.05, batch_size=10), progress=False).fit()
        layer = shared.classifier.fc7.train()
        torch.testing.assert_close(layer.shared_weight(), layer.table()[layer.indices.long()])
    changed = sum(int((shared.state_dict()[k] != v).sum()) for k, v in fixed.items())
    assert changed > 0 and set(shared.state_dict()) == keys
    assert not any(name.endswith("shadow") for name, _ in shared.named_parameters())
    x = torch.randn(2, 1, 48, 48)
    loaded = storage.load(storage.save(shared, tmp_path / "moved.ccz"))
    assert torch.equal(loaded(x), shared.eval()(x))
    still = methods.apply(vgg, "kmeans", conv_bits=3, fc_bits=2)  # without the context the indices stay
    before = {k: v.clone() for k, v in still.state_dict().items() if k.endswith("indices")}
    Trainer(still, random_images(), None, TrainConfig(epochs=1, lr=0.05, batch_size=10), progress=False).fit()
    assert all(torch.equal(still.state_dict()[k], v) for k, v in before.items())


def test_deep_compression_stages_and_round_trip(vgg, tmp_path):
    compressed = methods.apply(vgg, "deep-compression")
    stages = compressed.compression_stages
    sizes = [s["bytes"] for s in stages]
    assert [s["stage"].split()[0] for s in stages] == ["fp32", "pruned", "+", "+"]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] / sizes[-1] > 10
    fc7 = compressed.classifier.fc7
    assert abs(float((fc7.indices == 0).float().mean()) - 0.96) < 0.01 and fc7.bits == 5
    assert compressed.features.conv2.bits == 8
    path = storage.save(compressed, tmp_path / "dc.ccz")
    assert abs(path.stat().st_size - sizes[-1]) < 200  # the history entry is the only difference
    codecs = {e["codec"] for e in storage.read_manifest(path)[0]["tensors"] if e["name"].endswith("indices")}
    assert codecs == {"huffman"}
    x = torch.randn(2, 1, 48, 48)
    expected = compressed.eval()(x)
    assert torch.equal(storage.load(path)(x), expected)
    fast = deploy.to_inference(compressed)
    fast.classifier.fc7.path, fast.classifier.fc7._csr = "csr", fast.classifier.fc7._weight.to_sparse_csr()
    assert torch.allclose(fast(x), expected, atol=1e-5)
    assert set(fast.metadata["sparse_paths"]) == {"classifier.fc6", "classifier.fc7", "classifier.fc8"}


@pytest.mark.parametrize("name,config", [
    ("kmeans", {"conv_bits": 0}), ("kmeans", {"fc_bits": 9}), ("kmeans", {"coding": "zip"}),
    ("kmeans", {"layers": "none"}), ("deep-compression", {"fc_sparsity": 1.2}),
    ("deep-compression", {"per_layer": {"features.conv1": -0.1}}), ("deep-compression", {"conv_bits": 12}),
])
def test_bad_config_is_a_clean_error(vgg, name, config):
    with pytest.raises(InputError):
        methods.apply(vgg, name, **config)
