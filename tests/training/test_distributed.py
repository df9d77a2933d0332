"""DDP on CPU (gloo, 2 processes on loopback) takes the same steps as one process at the same global batch."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cnncompress import models

from cnncompress.training import distributed
from cnncompress.errors import InputError
from cnncompress.training.trainer import Trainer, TrainConfig


class TinySet:
    """99 seeded random 28x28 grey images, 10 classes (99 = 3 global batches of 32 + a last batch of 3)."""

    def __init__(self, n: int = 99):
        generator = torch.Generator().manual_seed(5)
        self.images = torch.randn(n, 1, 28, 28, generator=generator)
        self.labels = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self):
        return len(self.labels)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 10, 1, 28, width=0.25)
    for module in model.modules():  # dropout masks are drawn per rank: not comparable bit by bit
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


CONFIG = TrainConfig(epochs=2, lr=0.05, momentum=0.9, batch_size=32, seed=3)


def _resume_rank(out_dir, data) -> None:
    """Run in each DDP process: continue the checkpoint in ``out_dir`` to the end (rank 0 writes)."""
    torch.set_num_threads(1)
    Trainer(_model(), data, None, CONFIG, out_dir=out_dir, progress=False).fit(resume=True)


def test_ddp_two_processes_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    data = TinySet()
    full = _model()
    history = Trainer(full, data, None, CONFIG, out_dir=tmp_path / "one", progress=False).fit()

    # one process stops after epoch 1; two DDP processes resume it and train epoch 2
    cut = Trainer(_model(), data, None, CONFIG, out_dir=tmp_path / "ddp", progress=False)
    epoch = cut._epoch
    cut._epoch = lambda e: (_ for _ in ()).throw(KeyboardInterrupt) if e == 2 else epoch(e)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    distributed.spawn(_resume_rank, 2, (tmp_path / "ddp", data))

    meta = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    assert meta["epoch"] == 2
    assert meta["history"][1]["train_loss"] == pytest.approx(history[1]["train_loss"], rel=1e-5)
    tensors = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))
    changed = 0
    for name, value in full.state_dict().items():
        other = tensors[f"model.{name}"]
        assert torch.allclose(value, other, rtol=1e-4, atol=1e-6), name
        changed += not torch.equal(value, _model().state_dict()[name])
    assert changed > 0  # training moved the weights
    assert not list((tmp_path / "ddp").glob("*.tmp"))


def test_shard_covers_the_batch_once():
    index = torch.arange(7)
    parts = [distributed.shard(index, rank, 3) for rank in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    assert distributed.world() == (0, 1) and distributed.backend("cuda") == "nccl"


def test_spawn_checks_process_count():
    with pytest.raises(InputError, match="at least 1"):
        distributed.spawn(print, 0)


def test_ddp_cli_errors_are_one_line_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "--model", "cascade_cnn", "--out", tmp_path, "--ddp", "-1")
    assert code == 2 and "--ddp -1" in err
    # an input error inside the ranks (unknown data set) comes back as the same one-line error
    code, _, err = run_cli("train", "--model", "cascade_cnn", "--data", "nosuch", "--out", tmp_path, "--ddp", "2")
    assert code == 2 and "nosuch" in err and "Traceback" not in err
