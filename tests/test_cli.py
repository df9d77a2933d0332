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


def test_data_list(run_cli):
    code, out, _ = run_cli("data", "list")
    assert code == 0 and "mnist5k" in out and "fer2013" in out
