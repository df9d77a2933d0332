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
