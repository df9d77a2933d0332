"""A user's network named by its entry point: built when the caller names it, refused in one line otherwise."""
import pytest
import torch
from torch import nn

from cnncompress import models
from cnncompress.errors import InputError
from cnncompress.models.entry_point import build_user, is_entry_point, resolve

NETS = '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

def sized(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

def broken():
    raise RuntimeError("no such layer")

def not_a_module():
    return 42
'''


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def test_an_entry_point_builds_the_network_with_its_card(nets):
    model = build_user(f"{nets}:build")
    assert isinstance(model, nn.Sequential)
    assert model.spec == {"name": "user", "entry_point": f"{nets}:build", "kwargs": {}, "class": "Sequential"}
    assert is_entry_point("pkg.mod:fn") and is_entry_point("a/b.py:build") and not is_entry_point("vgg_s")


def test_models_build_passes_the_sizes_the_function_takes(nets):
    model = models.build(f"{nets}:sized", num_classes=7, in_channels=1, input_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert model.spec["in_channels"] == 1 and model.spec["input_size"] == 32 and model.spec["kwargs"] == {
        "num_classes": 7, "in_channels": 1}


@pytest.mark.parametrize("entry, words", [("missing.py:build", "no such file"), ("{nets}:nope", "has no function nope"),
                                          ("{nets}:broken", "raised RuntimeError: no such layer"),
                                          ("{nets}:not_a_module", "returned int, not a torch.nn.Module"),
                                          ("no_such_package_xyz:build", "cannot import"), ("vgg", "expected FILE.py")])
def test_a_bad_entry_point_is_one_line(nets, entry, words):
    with pytest.raises(InputError) as error:
        build_user(entry.format(nets=nets))
    assert words in str(error.value) and len(str(error.value).splitlines()) == 1


def test_resolving_twice_imports_the_file_once(nets):
    assert resolve(f"{nets}:build") is resolve(f"{nets}:build")


def test_check_outputs_names_the_entry_point_and_the_mismatch(nets):
    from cnncompress.models.entry_point import check_outputs
    model = build_user(f"{nets}:build")
    assert check_outputs(model, torch.zeros(2, 1, 16, 16), 3, "digits") == 3
    assert check_outputs(model, torch.zeros(2, 1, 16, 16), None, "faces") == 3  # unlabelled: any class count
    for images, classes, words in ((torch.zeros(2, 1, 16, 16), 10, "gives 3 outputs per image; digits has 10 classes"),
                                   (torch.zeros(2, 3, 16, 16), 3, "cannot take the images of digits [3, 16, 16]")):
        with pytest.raises(InputError) as error:
            check_outputs(model, images, classes, "digits")
        assert str(error.value).startswith(f"--model {nets}:build: ") and words in str(error.value)
        assert len(str(error.value).splitlines()) == 1
    assert model.training  # left in the mode it came in
