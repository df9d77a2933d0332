import pytest
import torch
from torch import nn

from cnncompress.data import ImageDataset
from cnncompress.training.distill import distill
from cnncompress.errors import InputError
from cnncompress.training.hints import capture_outputs, check_hints, hint_loss


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_capture_outputs_records_each_point_and_removes_its_hooks():
    model, x = _mlp(0), _images(5, 0)
    with capture_outputs(model, ["1", "2"]) as points:
        model(x)
    assert torch.equal(points["1"], model[1](model[0](x)))
    assert torch.equal(points["2"], torch.relu(points["1"]))
    assert all(not module._forward_hooks for module in model.modules())


def test_hint_loss_follows_its_formula_and_is_zero_for_the_teacher_itself():
    teacher, student, x = _mlp(0), _mlp(1), _images(32, 0)
    with capture_outputs(teacher, ["1", "2"]) as t, capture_outputs(student, ["1", "2"]) as s:
        teacher(x)
        student(x)
    expected = sum(((s[p] - t[p]) ** 2).mean() / t[p].var() for p in ("1", "2")) / 2
    assert torch.allclose(hint_loss(s, t), expected, rtol=1e-5)
    assert float(hint_loss(t, t).detach()) == 0.0
    hint_loss(s, t).backward()
    assert student[1].weight.grad is not None and teacher[1].weight.grad is None  # the teacher's are targets


def test_check_hints_refuses_unknown_points_and_other_shapes():
    teacher, x = _mlp(0), _images(2, 0)
    assert check_hints(teacher, _mlp(1), ["2"], x) == ("2",)
    with pytest.raises(InputError, match="no module 'block9'"):
        check_hints(teacher, _mlp(1), ["block9"], x)
    wider = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 4))
    with pytest.raises(InputError, match="'2' gives .*8.* in the teacher and .*6.* in the student"):
        check_hints(teacher, wider, ["2"], x)
    with pytest.raises(InputError, match="hint_weight"):
        distill(teacher, _mlp(1), ImageDataset(x, torch.full((2,), -1), [], "x"), hints=["2"], hint_weight=-1.0)


def test_hints_pull_the_students_hidden_layer_to_the_teachers():
    """Softmax targets alone leave the hidden units free (any permutation fits); with a hint on the hidden layer
    the student's hidden outputs end far closer to the teacher's."""
    teacher, held = _mlp(0), _images(128, 1)
    data = ImageDataset(_images(256, 0), torch.full((256,), -1), [], "synthetic")
    gaps = {}
    for hints in ((), ("2",)):
        student = _mlp(1)
        distill(teacher, student, data, targets="softmax", epochs=12, lr=0.05, batch_size=16, optimizer="adamw",
                hints=hints)
        with torch.no_grad():
            gaps[hints] = float(((student[:3](held) - teacher[:3](held)) ** 2).mean())
    assert gaps[("2",)] < 0.05 * gaps[()]  # measured: about 1/250
