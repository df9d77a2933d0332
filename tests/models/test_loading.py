"""One model loader: .ccz, model.safetensors, run folders, pretrained names; bad specs are one-line InputErrors."""
import json

import pytest
import torch

from cnncompress import models, storage
from cnncompress.errors import InputError
from cnncompress.models.loading import input_format, load_model, model_file
from cnncompress.training.trainer import save_weights


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return models.build("cascade_cnn", 10, 1, 28, 0.25).eval()


def test_files_and_run_folders(tmp_path, tiny):
    save_weights(tiny, tmp_path / "run" / "model.safetensors",
                 {"cnncompress.metadata": json.dumps({"dataset": "mnist5k", "classes": list("0123456789")})})
    assert model_file(tmp_path / "run") == tmp_path / "run" / "model.safetensors"
    loaded = load_model(str(tmp_path / "run"))
    x = torch.randn(2, 1, 28, 28)
    assert not loaded.training and torch.equal(loaded(x), tiny(x))
    assert loaded.metadata["dataset"] == "mnist5k" and input_format(loaded)["classes"][3] == "3"
    storage.save(tiny, tmp_path / "run" / "model.ccz")
    assert model_file(tmp_path / "run") == tmp_path / "run" / "model.ccz"  # the .ccz wins
    assert torch.allclose(load_model(tmp_path / "run")(x), tiny(x), atol=1e-6)


def test_bad_specs_are_clean_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.pkl").write_bytes(b"x")
    for spec, problem in ((tmp_path / "none.ccz", "no such model file or folder"),
                          (tmp_path / "empty", "neither model.ccz nor model.safetensors"),
                          (tmp_path / "m.pkl", "expected a .ccz"), ("not-a-teacher", "fer-minixception")):
        with pytest.raises(InputError, match=problem) as error:
            load_model(spec)
        assert str(spec) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="unknown pretrained"):
        models.load_pretrained("not-a-teacher")


def test_an_entry_point_as_the_source_builds_the_network_and_its_classes_are_counted(tmp_path):
    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef five():\n    return nn.Sequential(nn.Conv2d(1, 2, 3), "
                                      "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 5))\n")
    model = load_model(f"{tmp_path}/nets.py:five")  # as distill --teacher nets.py:five names it
    assert model.spec["entry_point"] == f"{tmp_path}/nets.py:five" and not model.training
    fmt = input_format(model)  # no card: 64x64 grey, its classes counted by one forward
    assert (fmt["input_size"], fmt["channels"], fmt["classes"]) == (64, 1, ["0", "1", "2", "3", "4"])
    with pytest.raises(InputError, match="has no function six"):
        load_model(f"{tmp_path}/nets.py:six")
