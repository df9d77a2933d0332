import json

import pytest


def test_unknown_dataset_exit_2(run_cli, tmp_path):
    code, out, err = run_cli("train", "--model", "cascade_cnn", "--data", "nosuch", "--out", tmp_path)
    assert code == 2 and "unknown dataset 'nosuch'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_model_and_method_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "--model", "alexnet", "--out", tmp_path, "--epochs", "0")
    assert code == 2 and "unknown model" in err


def test_bad_argument_exit_2(run_cli):
    code, _, _ = run_cli("train", "--epochs", "many")
    assert code == 2


def test_corrupt_model_file_exit_2(run_cli, tmp_path):
    bad = tmp_path / "m.ccz"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli("compress", bad, "--method", "x", "--out", tmp_path / "o")
    assert code == 2 and "m.ccz" in err


def test_train_then_compress_cli(run_cli, tmp_path):
    from cnncompress import methods
    from cnncompress.methods import MethodInfo
    from cnncompress.methods.registry import METHODS
    code, out, err = run_cli("train", "--model", "cascade_cnn", "--data", "mnist5k", "--epochs", "1", "--width",
                             "0.25", "--batch-size", "128", "--lr", "0.05", "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "error_curve.png").stat().st_size > 1000
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 50
    methods.register(MethodInfo("test-identity", "none"), lambda model, factor=1.0: model)
    try:
        code, out, err = run_cli("compress", tmp_path / "run" / "model.safetensors", "--method", "test-identity",
                                 "--config", "factor=2", "--out", tmp_path / "c")
        assert code == 0, err
        row = json.loads(out.strip().splitlines()[-1])
        assert row["config"] == {"factor": 2} and row["accuracy"] == pytest.approx(accuracy, abs=0.01)
        code, _, err = run_cli("compress", tmp_path / "run", "--method", "test-identity", "--config", "nope=1",
                               "--out", tmp_path / "c2")
        assert code == 2 and "no option(s) nope" in err
    finally:
        METHODS.pop("test-identity")
    # int8 calibrates on the run's data (the model's own dataset here), and says so in its row
    code, out, err = run_cli("compress", tmp_path / "run", "--method", "int8", "--out", tmp_path / "q")
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["data_given"] == {"int8.calibration": "the run's mnist5k train split (3600 images)"}
    assert row["accuracy_split"] == "test" and row["accuracy"] > 40
    # int8 where it pays: the float prefix timed on this CPU, every candidate in the row
    code, out, err = run_cli("compress", tmp_path / "run", "--method", "int8", "--config", "layers=fastest",
                             "num_calibration=32", "--out", tmp_path / "qf")
    assert code == 0, err
    split = json.loads(out.strip().splitlines()[-1])["int8_split"]
    assert split["layers"] and "int8 layers=fastest: " in err and split["engine"] == "onnxruntime-int8"
    assert min(split["ms"], key=split["ms"].get) == str(len(split["float_layers"]))
    # data that does not fit the model: one line, exit 2
    folder = tmp_path / "three"
    for cls in ("a", "b", "c"):
        (folder / cls).mkdir(parents=True)
        for i in range(5):
            _png(folder / cls / f"{i}.png")
    code, _, err = run_cli("compress", tmp_path / "run", "--method", "int8", "--data", f"folder:{folder}",
                           "--out", tmp_path / "q2")
    assert code == 2 and "has 3 classes; the model has 10" in err and len(err.strip().splitlines()) == 1


def _png(path):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(path)


def test_bench_only_unknown_name_exit_2_keeps_the_table(run_cli, tmp_path):
    (tmp_path / "table.md").write_text("published")
    code, _, err = run_cli("bench", "--out", tmp_path, "--only", "xnor", "no-such")
    assert code == 2 and "'no-such'" in err and "methods: " in err and "xnor" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "table.md").read_text() == "published" and not (tmp_path / "baselines").exists()


def test_data_list(run_cli):
    code, out, _ = run_cli("data", "list")
    assert code == 0 and "mnist5k" in out and "fer2013" in out


USER_NETS = '''
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10))

def wrong():
    return "not a network"
'''


def test_a_user_network_from_the_command_line(run_cli, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(USER_NETS)
    torch.manual_seed(0)
    from cnncompress.models.entry_point import build_user
    save_file(build_user("nets.py:build").state_dict(), str(tmp_path / "w.safetensors"))
    code, out, err = run_cli("compress", "--model", "nets.py:build", "--weights", "w.safetensors", "--method", "bwn",
                             "--data", "mnist5k", "--out", "D")
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["bn_recalibrated"] == 1024 and row["file"].endswith("model.ccz") and isinstance(row["collapsed"], bool)
    code, out, err = run_cli("export", "D/model.ccz", "--model", "nets.py:build", "--format", "onnx")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["top1_agreement"] >= 99
    code, _, err = run_cli("export", "D/model.ccz", "--format", "onnx")  # the file never imports nets.py
    assert code == 2 and "--model nets.py:build" in err and len(err.strip().splitlines()) == 1
    for args, words in ((("--model", "nets.py:nope"), "has no function nope"),
                        (("--model", "nets.py:wrong"), "not a torch.nn.Module"),
                        (("--model", "nets.py:build", "--weights", "D/model.ccz"), "not a valid safetensors")):
        code, _, err = run_cli("compress", *args, "--method", "bwn", "--out", "E")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "F").write_text("keep me")
    code, _, err = run_cli("compress", "--model", "nets.py:build", "--method", "fp16", "--out", "F")
    assert code == 2 and "exists and is not a folder" in err and (tmp_path / "F").read_text() == "keep me"
    assert not (tmp_path / "E").exists()


def test_methods_lists_every_method_with_what_it_handles(run_cli):
    from cnncompress import methods
    code, out, _ = run_cli("methods", "--json")
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and sorted(r["method"] for r in records) == methods.available()
    assert all(r["handles"] and r["size"] in ("real", "simulated", "none") for r in records)
    tt = next(r for r in records if r["method"] == "tt")
    assert {"option": "cores", "type": "int", "default": 2, "range": "[2, 16]"} in tt["options"]
