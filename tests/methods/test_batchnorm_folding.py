"""BatchNorm folding: the same function with fewer tensors; only conv -> BatchNorm pairs proven by a forward pass."""
from __future__ import annotations

import torch
from torch import nn

from cnncompress import models, storage
from cnncompress import methods
from cnncompress.methods.batchnorm_folding import ChannelAffine, fold_batch_norms, folded_conv, norms_to_affine, pairs


def _spread(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def test_folded_conv_equals_conv_then_norm():
    conv, norm = nn.Conv2d(3, 5, 3, padding=1, bias=False), _spread(nn.Sequential(nn.BatchNorm2d(5)))[0]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded_conv(conv, norm)(x), norm(conv(x)), rtol=1e-5, atol=1e-5)


def test_mini_xception_folds_every_norm_keeps_its_answers_and_shrinks_the_file(tmp_path):
    torch.manual_seed(0)
    model = _spread(models.build("mini_xception", 7, 1, 64))
    x = torch.randn(4, 1, 64, 64)
    folded, done = fold_batch_norms(model, x)
    norms = [p for p, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(n for _, n in done) == sorted(norms)  # every one follows a conv (stem, pointwise, shortcut)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    before = storage.save(model, tmp_path / "a.ccz").stat().st_size
    after = storage.load(storage.save(folded, tmp_path / "b.ccz"))
    assert (tmp_path / "b.ccz").stat().st_size < before
    with torch.no_grad():
        torch.testing.assert_close(after(x), model(x), rtol=1e-4, atol=1e-4)


class _TwoReaders(nn.Module):
    """conv1's output feeds its BatchNorm and the sum: folding would change the sum, so it must not happen."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool, self.bn2 = nn.AvgPool2d(1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv1(x)
        return self.bn1(y) + y + self.bn2(self.pool(y))


def test_a_conv_output_read_twice_or_a_norm_after_a_pool_is_left_alone():
    model = _spread(_TwoReaders())
    x = torch.randn(2, 2, 6, 6)
    assert pairs(model, x) == [("conv1", "bn1")]  # bn2 reads a pool, not a conv
    folded, done = fold_batch_norms(model, x)
    assert done == [] and isinstance(folded.bn1, nn.BatchNorm2d)  # the probe showed the fold changes the output
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_norms_as_affine_keep_the_function_and_the_conv_weights_and_halve_the_norm_bytes(tmp_path):
    """Every BatchNorm2d becomes the ChannelAffine it computes in eval mode; k-means indices of the convs are
    untouched (unlike folding, which scales each filter); the file loses the norms' statistics and reloads."""
    torch.manual_seed(0)
    model = methods.apply(_spread(models.build("mini_xception", 7, 1, 64)), "kmeans", conv_bits=4)
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x)
    indices = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("indices")}
    before = storage.save(model, tmp_path / "a.ccz").stat().st_size
    norms = [p for p, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    model, done = norms_to_affine(model)
    assert done == norms and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(isinstance(model.get_submodule(p), ChannelAffine) for p in done)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in indices.items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    loaded = storage.load(storage.save(model, tmp_path / "b.ccz"))
    channels = sum(model.get_submodule(p).weight.numel() for p in done)
    assert before - (tmp_path / "b.ccz").stat().st_size >= 2 * 4 * channels  # two fp32 tensors per channel fewer
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), expected, rtol=1e-5, atol=1e-5)
