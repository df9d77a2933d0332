import json

import pytest
import torch

from cnncompress import models
from cnncompress.data import build_dataset
from cnncompress.errors import InputError
from cnncompress.train import Trainer, TrainConfig, load_weights, save_weights


@pytest.fixture(scope="module")
def tiny_data():
    train = build_dataset("mnist5k", "train")
    test = build_dataset("mnist5k", "test")
    for ds, n in ((train, 256), (test, 128)):
        ds.images, ds.labels = ds.images[:n], ds.labels[:n]
    return train, test


def _model():
    torch.manual_seed(0)
    return models.build("cascade_cnn", 10, 1, 28, width=0.25)


def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_data):
    train, test = tiny_data
    config = TrainConfig(epochs=3, lr=0.01, batch_size=32, seed=3)
    full = _model()
    Trainer(full, train, test, config, out_dir=tmp_path / "full", progress=False).fit()

    interrupted = _model()
    first = TrainConfig(**{**config.__dict__})
    trainer = Trainer(interrupted, train, test, first, out_dir=tmp_path / "cut", progress=False)
    original_epoch = trainer._epoch
    calls = {"n": 0}

    def killed_in_epoch_3(epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original_epoch(epoch)
    trainer._epoch = killed_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert calls["n"] == 2 and json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["epoch"] == 2

    resumed = _model()
    history = Trainer(resumed, train, test, config, out_dir=tmp_path / "cut", progress=False).fit(resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_reduces_error_and_saves(tmp_path, tiny_data):
    train, test = tiny_data
    model = _model()
    history = Trainer(model, train, test, TrainConfig(epochs=2, lr=0.05, batch_size=32), progress=False).fit()
    assert history[-1]["train_loss"] < 2.0 and history[-1]["test_error"] < 0.6
    path = save_weights(model, tmp_path / "m.safetensors")
    again = load_weights(path)
    x = test.images[:4]
    assert torch.allclose(model.eval()(x), again(x))


def test_resume_with_other_config_refused(tmp_path, tiny_data):
    train, test = tiny_data
    Trainer(_model(), train, test, TrainConfig(epochs=1, batch_size=64), out_dir=tmp_path, progress=False).fit()
    with pytest.raises(InputError, match="different config"):
        Trainer(_model(), train, test, TrainConfig(epochs=1, lr=0.5, batch_size=64), out_dir=tmp_path,
                progress=False).fit(resume=True)


@pytest.mark.parametrize("bad", [{"lr": -1}, {"batch_size": 0}, {"momentum": 1.5}, {"device": "tpu"}])
def test_bad_config(bad):
    with pytest.raises(InputError, match="bad training config"):
        TrainConfig(**bad).validate()


def test_load_weights_rejects_garbage(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_weights(path)


def test_resume_accepts_checkpoint_without_later_fields(tmp_path, tiny_data):
    train, test = tiny_data
    Trainer(_model(), train, test, TrainConfig(epochs=1, batch_size=64), out_dir=tmp_path, progress=False).fit()
    meta = tmp_path / "checkpoint.json"
    info = json.loads(meta.read_text())
    del info["config"]["grad_clip"]  # a checkpoint written before grad_clip existed
    meta.write_text(json.dumps(info))
    history = Trainer(_model(), train, test, TrainConfig(epochs=2, batch_size=64), out_dir=tmp_path,
                      progress=False).fit(resume=True)
    assert [h["epoch"] for h in history] == [1, 2]
