import pytest
import torch
from torch import nn

from cnncompress import measure, models


def test_latency_reports_runs_threads_and_layout():
    torch.set_num_threads(2)
    stats = measure.latency(nn.Conv2d(1, 4, 3), (1, 1, 16, 16), runs=30, num_threads=1)
    assert stats["runs"] == 30 and stats["threads"] == 1 and stats["layout"] in ("nchw", "channels_last")
    assert 0 < stats["median_ms"] <= stats["nchw_median_ms"] + 1e-9
    assert torch.get_num_threads() == 2  # restored afterwards


def test_onnx_latency_runs_exported_model(tmp_path):
    model = models.build("squeezenet1_1", 10, 1, 28, width=0.25).eval()
    path = measure.export_onnx(model, (1, 1, 28, 28), tmp_path / "m.onnx")
    session = measure.onnx_session(path)
    x = torch.randn(3, 1, 28, 28)
    out = session.run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-4)
    assert measure.onnx_latency(path, (1, 1, 28, 28), runs=10)["median_ms"] > 0


def test_param_count_and_train_step():
    model = models.build("cascade_cnn", 10, 1, 28, width=0.25)
    assert measure.param_count(model) == sum(p.numel() for p in model.parameters())
    before = [p.clone() for p in model.parameters()]

    class Data:
        images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert measure.train_step_time(model, Data, batch_size=8, steps=3) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # measured on a copy


def test_latency_times_the_given_real_images():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x
    image = torch.full((1, 1, 8, 8), 7.0)
    measure.latency(Spy(), (1, 1, 8, 8), runs=3, warmup=1, try_channels_last=False, example=image)
    assert len(seen) == 4 and all(torch.equal(x, image) for x in seen)
    measure.latency(Spy(), (3, 1, 8, 8), runs=1, warmup=0, try_channels_last=False, example=image)
    assert seen[-1].shape == (3, 1, 8, 8) and bool((seen[-1] == 7).all())


def test_alternating_takes_turns_in_blocks_and_drops_the_first_of_each():
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    fastest = {}
    times = measure.alternating(calls, runs=4, block=3, warmup=1, minimum=fastest)
    assert set(times) == set(fastest) == {"a", "b", "c"}
    assert all(fastest[name] <= times[name] for name in times)
    timed = log[3:]  # after one warm-up call each
    assert len(timed) == 4 * 3 * 3
    turns = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(len(set(turn)) == 1 for turn in turns)  # a turn is one call repeated
    firsts = [turns[i][0] for i in range(0, len(turns), 3)]
    assert firsts == ["a", "b", "c", "a"]  # the order rotates each round
    with pytest.raises(ValueError):
        measure.alternating(calls, runs=0)
