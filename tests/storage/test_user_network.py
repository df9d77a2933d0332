"""``.ccz`` files of a user's own network: no registration, the file rebuilt by the builder the caller names,
never by the entry point the file records."""
import pytest
import torch

from cnncompress import deploy, methods, storage
from cnncompress.errors import InputError
from cnncompress.models.loading import load_model
from tests.zoo import ZOO

NETS = '''
import pathlib
pathlib.Path(__file__).with_suffix(".imported").write_text("imported")
from tests.zoo.resnet_basic import build as _build

def build():
    return _build(num_classes=10, in_channels=1)
'''


def test_a_plain_module_and_its_compressed_copy_round_trip(tmp_path):
    build = ZOO["resnet_bottleneck"]
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(2, 1, 48, 48)
    storage.save(net, tmp_path / "float.ccz")
    assert torch.equal(storage.load(tmp_path / "float.ccz", model=build)(x), net(x))
    small = methods.apply(net, "kmeans")
    storage.save(small, tmp_path / "small.ccz")
    again = storage.load(tmp_path / "small.ccz", model=build)
    assert torch.allclose(again(x), small(x), atol=1e-6)
    assert (tmp_path / "small.ccz").stat().st_size < (tmp_path / "float.ccz").stat().st_size
    assert not hasattr(net, "spec")  # the user's network is untouched


def test_the_file_never_imports_the_entry_point_it_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    from cnncompress.models.entry_point import build_user
    net = build_user("nets.py:build")
    storage.save(methods.apply(net, "fp16"), tmp_path / "m.ccz")
    (tmp_path / "nets.imported").unlink()
    with pytest.raises(InputError) as error:
        storage.load(tmp_path / "m.ccz")
    assert "--model nets.py:build" in str(error.value) and len(str(error.value).splitlines()) == 1
    with pytest.raises(InputError):
        load_model(tmp_path / "m.ccz")
    assert not (tmp_path / "nets.imported").exists()
    loaded = load_model(tmp_path / "m.ccz", entry="nets.py:build")
    assert deploy.to_inference(loaded)(torch.randn(1, 1, 48, 48)).shape == (1, 10)


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    from safetensors.torch import save_file

    from cnncompress.models.loading import fill_weights
    save_file({"conv.weight": torch.zeros(3, 3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError) as error:
        fill_weights(ZOO["resnet_basic"](), tmp_path / "w.safetensors")
    assert "weights do not fit ResNetBasic" in str(error.value)
