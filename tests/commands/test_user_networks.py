"""A user's own network, named by its entry point (``FILE.py:FUNCTION``), through ``train``, ``sensitivity``,
``optimize``, ``predict`` and ``distill`` (``commands.add_model_arguments`` / ``models.build``); every bad input
(missing function, a builder that raises or returns no module, a network that does not fit the data, weights that
do not fit the network) is one line on stderr, exit 2, and nothing written."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnncompress import storage
from cnncompress.models.loading import load_model

NETS = '''
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))

def colour():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))

def sized(num_classes, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))

def seven():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 7))

def rgb():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 7))

def boom():
    raise RuntimeError("no GPU here")

def wrong():
    return "not a network"
'''

BAD = [("nope", "has no function nope"), ("boom", "boom() raised RuntimeError: no GPU here"),
       ("wrong", "returned str, not a torch.nn.Module")]
"""Entry points every command refuses in one line, and the words that say why."""


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """A folder with ``nets.py``, random weights of ``small`` (``small.safetensors``) and of ``colour``, and
    ``shapes/``: 3 classes of 10 images each (an ImageFolder dataset: colour, 224x224 unless told otherwise)."""
    from safetensors.torch import save_file
    from cnncompress.models.entry_point import build_user
    root = tmp_path_factory.mktemp("own")
    (root / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    for index, name in enumerate(("dark", "mid", "light")):
        (root / "shapes" / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 60, (28, 28)) + 60 * index
            Image.fromarray(pixels.astype(np.uint8)).save(root / "shapes" / name / f"{i}.png")
    torch.manual_seed(0)
    for name in ("small", "colour"):
        save_file(build_user(f"{root}/nets.py:{name}").state_dict(), str(root / f"{name}.safetensors"))
    return root


def _builder(nets, function):
    from cnncompress.models.entry_point import resolve
    return resolve(f"{nets}:{function}")


def _refused(result, *words):
    code, _, err = result
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err


def test_train_takes_a_built_in_name_or_an_entry_point(run_cli, here, tmp_path):
    nets, data = here / "nets.py", f"folder:{here / 'shapes'}"
    train = ("train", "--data", data, "--input-size", "28", "--epochs", "1")
    code, out, err = run_cli(*train, "--model", f"{nets}:sized", "--out", tmp_path / "run")
    assert code == 0, err
    assert f"{nets}:sized on {data}: test accuracy" in out
    trained = load_model(tmp_path / "run" / "model.safetensors", f"{nets}:sized")
    assert trained.spec["kwargs"] == {"num_classes": 3, "in_channels": 3}  # what sized() takes, from the data
    code, out, err = run_cli("predict", "--model", f"{nets}:sized", tmp_path / "run", here / "shapes" / "mid" / "0.png",
                             "--whole-image", "--json")  # the run folder of a user network, rebuilt by --model
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["faces"][0]["emotion"] in ("dark", "mid", "light")
    _refused(run_cli(*train, "--model", f"{nets}:sized", "--weights", here / "colour.safetensors", "--out",
                     tmp_path / "w"), "colour.safetensors: weights do not fit")
    for name, words in [*BAD, ("small", "cannot take the images"), ("rgb", "gives 7 outputs per image")]:
        _refused(run_cli(*train, "--model", f"{nets}:{name}", "--out", tmp_path / name), f"{nets}:{name}", words)
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["sensitivity", "optimize"])
def test_sensitivity_and_optimize_take_an_entry_point_and_weights(run_cli, here, tmp_path, command):
    nets, data = here / "nets.py", f"folder:{here / 'shapes'}"
    extra = ("--max-bytes", "4/5", "--finetune", "0") if command == "optimize" else ()
    run = (command, "--model", f"{nets}:colour", "--weights", here / "colour.safetensors", "--data", data, "--kinds",
           "fp16", *extra, "--out", tmp_path / "o")
    code, out, err = run_cli(*run)
    assert code == 0, err
    if command == "optimize":
        model = storage.load(tmp_path / "o" / "model.ccz", model=_builder(nets, "colour"))
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 3) and "test accuracy" in out
        code, again, err = run_cli(*run)  # resumed: the finished candidate's file is loaded into the network
        assert code == 0 and again.strip().splitlines()[-1] == out.strip().splitlines()[-1], err
    else:
        assert (tmp_path / "o" / "sensitivity.json").exists()
    for name, words in [*BAD, ("rgb", "gives 7 outputs per image"), ("small", "cannot take the images")]:
        _refused(run_cli(command, "--model", f"{nets}:{name}", "--data", data, *extra, "--out", tmp_path / name),
                 words)
        assert not (tmp_path / name).exists()
    _refused(run_cli(command, "--model", f"{nets}:rgb", "--weights", here / "colour.safetensors", "--data", data,
                     *extra, "--out", tmp_path / "w"), "weights do not fit")
    assert not (tmp_path / "w").exists()


def test_predict_takes_an_entry_point_and_weights(run_cli, here):
    nets, photo = here / "nets.py", here / "shapes" / "mid" / "0.png"
    code, out, err = run_cli("predict", "--model", f"{nets}:small", "--weights", here / "small.safetensors", photo,
                             "--whole-image", "--json")
    assert code == 0, err
    faces = json.loads(out.strip().splitlines()[-1])["faces"]
    assert len(faces) == 1 and faces[0]["emotion"] in ("0", "1", "2")  # no card: the classes are counted
    for name, words in [*BAD, ("rgb", "cannot take the images")]:
        _refused(run_cli("predict", "--model", f"{nets}:{name}", photo), words)
    _refused(run_cli("predict", "--model", f"{nets}:seven", "--weights", here / "small.safetensors", photo),
             "weights do not fit")


def test_distill_takes_entry_points_for_teacher_and_student(run_cli, here, tmp_path):
    nets, cache = here / "nets.py", tmp_path / "cache"
    common = ("--unlabeled", "lfw-faces", "--copies", "1", "--epochs", "1", "--cache", cache)
    code, out, err = run_cli("distill", "--teacher", f"{nets}:seven", "--student", f"{nets}:sized", *common,
                             "--out", tmp_path / "d")
    assert code == 0, err
    student = storage.load(tmp_path / "d" / "model.ccz", model=_builder(nets, "sized"))
    assert student(torch.zeros(1, 1, 64, 64)).shape == (1, 7)  # sized() was given the teacher's 7 classes
    _refused(run_cli("distill", "--teacher", f"{nets}:seven", "--student", f"{nets}:small", *common, "--out",
                     tmp_path / "s"), f"student {nets}:small has 3 outputs but the teacher has 7 classes")
    for name, words in BAD:
        _refused(run_cli("distill", "--teacher", f"{nets}:{name}", *common, "--out", tmp_path / name), words)
        _refused(run_cli("distill", "--teacher", f"{nets}:seven", "--student", f"{nets}:{name}", *common,
                         "--out", tmp_path / name), words)
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "s").exists()


def test_compress_refuses_data_with_another_class_count_than_the_network_scores(run_cli, here, tmp_path):
    """A user's network whose card names no classes is run once on an image of ``--data``: 7 scores against 3
    classes is one line, exit 2, nothing written (before: a silently wrong accuracy)."""
    nets, data = here / "nets.py", f"folder:{here / 'shapes'}"
    _refused(run_cli("compress", "--model", f"{nets}:rgb", "--method", "fp16", "--data", data, "--out",
                     tmp_path / "c"), f"{nets}:rgb", "gives 7 outputs per image", "has 3 classes")
    assert not (tmp_path / "c").exists()
    code, out, err = run_cli("compress", "--model", f"{nets}:colour", "--weights", here / "colour.safetensors",
                             "--method", "fp16", "--data", data, "--out", tmp_path / "ok")
    assert code == 0 and (tmp_path / "ok" / "model.ccz").is_file(), err
