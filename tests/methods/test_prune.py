"""Magnitude and filter pruning: sparsity reached, masks hold through fine-tuning, physical removal equals
masking the removed filters, CSR kernel equals its reference twin, .ccz round trips, bad configs rejected."""
import copy

import pytest
import torch

from cnncompress import deploy, methods, models, storage
from cnncompress.errors import InputError
from cnncompress.kernels.sparse import csr_linear, reference_csr_linear, to_csr
from cnncompress.methods.prune import PrunedLinear, sparsity_report
from cnncompress.training.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def squeeze():
    torch.manual_seed(1)
    model = models.build("squeezenet1_1", num_classes=10, in_channels=1, input_size=48, width=0.25).eval()
    for module in model.modules():  # non-zero biases so that a wrongly kept channel would show
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
    return model


def test_global_and_layer_sparsity_reached(vgg):
    pruned = methods.apply(vgg, "prune-magnitude", sparsity=0.8)
    weights = [m.weight for m in pruned.modules() if hasattr(m, "mask")]
    total = sum(w.numel() for w in weights)
    assert abs(sum(int((w == 0).sum()) for w in weights) / total - 0.8) < 0.01
    per_layer = methods.apply(vgg, "prune-magnitude", sparsity=0.5, scope="layer",
                              per_layer={"classifier.fc7": 0.95})
    report = sparsity_report(per_layer)
    assert abs(report["classifier.fc7"] - 0.95) < 0.01 and abs(report["features.conv3"] - 0.5) < 0.01
    assert vgg.classifier.fc7.weight.ne(0).all()  # the input model is untouched


def test_masks_hold_through_fine_tuning_and_iterative_rounds(vgg, random_images):
    pruned = methods.apply(vgg, "prune-magnitude", sparsity=0.9, scope="layer", rounds=3, steps_per_round=2)
    first = sparsity_report(pruned)["classifier.fc7"]
    assert abs(first - (1 - 0.1 ** (1 / 3))) < 0.01
    zero_before = pruned.classifier.fc7.weight == 0
    Trainer(pruned, random_images(n=60), None, TrainConfig(epochs=1, lr=0.05, batch_size=10), progress=False).fit()
    fc7 = pruned.classifier.fc7.weight
    assert (fc7[zero_before] == 0).all()  # once pruned, stays pruned (momentum included)
    assert abs(sparsity_report(pruned)["classifier.fc7"] - 0.9) < 0.01  # all 3 rounds ran within 6 steps


def test_pruned_model_saves_as_csr_and_round_trips(vgg, tmp_path):
    pruned = methods.apply(vgg, "prune-magnitude", sparsity=0.9)
    x = torch.randn(3, 1, 48, 48)
    expected = pruned.eval()(x)
    dense = storage.save(vgg, tmp_path / "dense.ccz").stat().st_size
    small = storage.save(pruned, tmp_path / "pruned.ccz").stat().st_size
    assert small < 0.25 * dense
    codecs = {e["name"]: e["codec"] for e in storage.read_manifest(tmp_path / "pruned.ccz")[0]["tensors"]}
    assert codecs["classifier.fc7.weight"] == "csr"
    loaded = storage.load(tmp_path / "pruned.ccz")
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    assert isinstance(loaded.classifier.fc7, PrunedLinear) and bool(loaded.classifier.fc7.mask.eq(
        loaded.classifier.fc7.weight != 0).all())


def test_csr_kernel_matches_reference_and_inference_path(vgg):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 53, generator=g)
    weight[torch.rand(37, 53, generator=g) < 0.9] = 0
    bias, x = torch.randn(37, generator=g), torch.randn(4, 53, generator=g)
    csr = to_csr(weight)
    fast = csr_linear(x, csr, bias)
    ref = reference_csr_linear(x, csr.crow_indices().numpy(), csr.col_indices().numpy(), csr.values().numpy(), bias)
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(fast, x @ weight.T + bias, atol=1e-5)
    pruned = methods.apply(vgg, "prune-magnitude", sparsity=0.97, layers="fc").eval()
    x = torch.randn(1, 1, 48, 48)
    expected = pruned(x)
    pruned.classifier.fc7.freeze()
    pruned.classifier.fc7.path, pruned.classifier.fc7._csr = "csr", to_csr(pruned.classifier.fc7.weight)
    assert torch.allclose(pruned(x), expected, atol=1e-5)
    inference = deploy.to_inference(pruned)
    assert set(inference.metadata["sparse_paths"].values()) <= {"csr", "dense"}
    assert torch.allclose(inference(x), expected, atol=1e-5)


def masked_copy(model, kept):
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for path, keep in kept.items():
            conv = masked.get_submodule(path)
            drop = torch.ones(conv.out_channels, dtype=torch.bool)
            drop[keep] = False
            conv.weight[drop] = 0
            conv.bias[drop] = 0
    return masked


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_physical_removal_equals_masking_vgg(vgg, criterion, random_images):
    layers = ["features.conv3", "features.conv4", "features.conv5"]  # no LRN after them; conv5 feeds fc6
    data = random_images(16)
    extra = {"data": (data.images, data.labels), "samples": 16, "steps": 2} if criterion == "taylor" else {}
    pruned = methods.apply(vgg, f"prune-{criterion}", flops=0.4, layers=layers, **extra).eval()
    info = pruned.filter_pruning
    assert 0.39 <= info["flops_removed"] <= 0.5
    assert all(pruned.get_submodule(p).out_channels < vgg.get_submodule(p).out_channels for p in layers)
    assert pruned.classifier.fc6.in_features < vgg.classifier.fc6.in_features
    x = torch.randn(2, 1, 48, 48)
    assert torch.allclose(pruned(x), masked_copy(vgg, info["kept"])(x), atol=1e-5)
    if criterion == "l1":  # Li et al.: the kept filters are the largest-L1 ones of each layer
        norms = vgg.features.conv4.weight.abs().sum((1, 2, 3))
        kept = info["kept"]["features.conv4"]
        dropped = sorted(set(range(len(norms))) - set(kept))
        assert norms[kept].min() >= norms[dropped].max()


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_physical_removal_equals_masking_squeezenet(squeeze, criterion, tmp_path, random_images):
    data = random_images(16)
    extra = {"data": (data.images, data.labels), "samples": 16} if criterion == "taylor" else {}
    pruned = methods.apply(squeeze, f"prune-{criterion}", flops=0.5, **extra).eval()
    assert pruned.filter_pruning["flops_removed"] >= 0.5
    assert all(type(m) in (torch.nn.Conv2d,) for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 1, 48, 48)
    assert torch.allclose(pruned(x), masked_copy(squeeze, pruned.filter_pruning["kept"])(x), atol=1e-5)
    loaded = storage.load(storage.save(pruned, tmp_path / "f.ccz"))
    assert torch.allclose(loaded(x), pruned(x), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) < 0.7 * sum(p.numel() for p in squeeze.parameters())


def test_whole_vgg_pruning_reports_lrn_and_saves(vgg, tmp_path):
    pruned = methods.apply(vgg, "prune-l1", flops=0.5)
    assert pruned.filter_pruning["approximate"] == ["features.norm1", "features.norm2"]
    assert pruned.filter_pruning["flops_removed"] >= 0.5
    x = torch.randn(1, 1, 48, 48)
    loaded = storage.load(storage.save(pruned, tmp_path / "l1.ccz"))
    assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-6)


@pytest.mark.parametrize("name,config", [
    ("prune-magnitude", {"sparsity": 1.5}), ("prune-magnitude", {"scope": "row"}),
    ("prune-magnitude", {"layers": ["nope"]}), ("prune-magnitude", {"per_layer": {"x": 0.5}}),
    ("prune-magnitude", {"rounds": 0}), ("prune-l1", {"flops": 0}), ("prune-l1", {"flops": 1.0}),
    ("prune-l1", {"layers": ["classifier.fc8"]}), ("prune-taylor", {"samples": 0}),
    ("prune-taylor", {"data": 3}), ("prune-l1", {"min_keep": 2}),
])
def test_bad_config_is_a_clean_error(vgg, name, config):
    with pytest.raises(InputError):
        methods.apply(vgg, name, **config)


def test_taylor_needs_the_runs_labelled_data(vgg, random_images):
    with pytest.raises(InputError, match="no data given"):  # no hidden default dataset
        methods.apply(vgg, "prune-taylor", flops=0.3)
    with pytest.raises(InputError, match="labelled images are needed"):
        methods.apply(vgg, "prune-taylor", flops=0.3, data=random_images(8).images)
    with pytest.raises(InputError, match="has 3 channel"):
        methods.apply(vgg, "prune-taylor", flops=0.3, data=random_images(8, channels=3).images)
    data = random_images(16)
    pruned = methods.apply(vgg, "prune-taylor", flops=0.3, samples=16, steps=1, data=(data.images, data.labels))
    assert pruned.compression_history[-1]["config"]["data"] == ["tensor [16, 1, 48, 48]", "tensor [16]"]
    assert methods.info("prune-taylor").data_option == "data" and methods.info("int8").data_option == "calibration"


def test_a_network_off_the_chain_is_pruned_by_its_dependency_graph_or_refused_in_one_line():
    model = models.build("cascade_cnn", num_classes=10, in_channels=1, input_size=48)  # BatchNorm after every layer
    pruned = methods.apply(model, "prune-l1", flops=0.3)
    assert pruned.filter_pruning["graph"] == "torch-pruning dependency graph" and pruned.filter_pruning[
        "flops_removed"] >= 0.3

    class TwoInputs(torch.nn.Module):  # its forward cannot run on one example input: nothing to trace
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3)

        def forward(self, x, y):
            return self.conv(x) + y

    odd = TwoInputs()
    odd.spec = {"name": "user", "class": "TwoInputs", "in_channels": 1, "input_size": 8}
    with pytest.raises(InputError) as error:
        methods.apply(odd, "prune-l1")
    assert "could not trace TwoInputs" in str(error.value) and len(str(error.value).splitlines()) == 1
