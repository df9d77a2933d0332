import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_astronaut_is_one_happy_face(run_cli, astronaut):
    code, out, err = run_cli("predict", "fer-minixception", astronaut, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["faces"]) == 1
    face = result["faces"][0]
    assert face["emotion"] == "happy" and face["probability"] > 0.9
    r, c, h, w = face["box"]
    assert 40 < r < 120 and 140 < c < 220 and h > 50


def test_flags_may_sit_between_the_model_and_the_photos(run_cli, astronaut):
    """``predict MODEL --json PHOTO`` (flags between positionals) parses as ``predict --json MODEL PHOTO``; an
    unknown flag is still the usual one-line error, exit 2."""
    code, out, err = run_cli("predict", "fer-minixception", "--json", astronaut, "--top", "2")
    assert code == 0, err
    face = json.loads(out.strip().splitlines()[-1])["faces"][0]
    assert face["emotion"] == "happy" and len(face.get("top", [])) == 2, face
    code, _, err = run_cli("predict", "fer-minixception", "--bogus", astronaut)
    assert code == 2 and "unrecognized arguments: --bogus" in err


def test_no_face_reports_zero_or_whole_image(run_cli, tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((120, 120), 128, dtype=np.uint8)).save(path)
    code, out, _ = run_cli("predict", "fer-minixception", path)
    assert code == 0 and "0 face(s)" in out
    code, out, _ = run_cli("predict", "fer-minixception", path, "--whole-image", "--json")
    assert code == 0 and len(json.loads(out)["faces"]) == 1


@pytest.mark.parametrize("content, problem", [(b"", "empty file"), (b"GIF89a junk", "not a readable image")])
def test_bad_images_exit_2(run_cli, tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    code, _, err = run_cli("predict", "fer-minixception", path)
    assert code == 2 and problem in err and "bad.jpg" in err


def test_huge_image_exit_2(run_cli, tmp_path, monkeypatch):
    from cnncompress.data import formats
    monkeypatch.setattr(formats, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), dtype=np.uint8)).save(path)
    code, _, err = run_cli("predict", "fer-minixception", path)
    assert code == 2 and "too large" in err


def test_missing_model_exit_2(run_cli, astronaut, tmp_path):
    code, _, err = run_cli("predict", tmp_path / "none.ccz", astronaut)
    assert code == 2 and "none.ccz" in err


def test_detector_scales_to_the_image(run_cli, tmp_path):
    """A face larger than a fixed 400 px window (the astronaut's head at 6x: a ~560 px face) and a small face crop
    are both found: the detector's window range follows the image size."""
    from skimage import data
    big = tmp_path / "big.png"
    Image.fromarray(data.astronaut()[0:250, 100:350]).resize((1500, 1500)).save(big)
    code, out, err = run_cli("predict", "fer-minixception", big, "--json")
    assert code == 0, err
    faces = json.loads(out.strip().splitlines()[-1])["faces"]
    assert faces and faces[0]["box"][2] > 400 and faces[0]["emotion"] == "happy"
    small = tmp_path / "small.png"
    Image.fromarray(data.astronaut()[30:230, 120:300]).resize((90, 100)).save(small)
    code, out, err = run_cli("predict", "fer-minixception", small, "--json")
    assert code == 0 and len(json.loads(out.strip().splitlines()[-1])["faces"]) == 1, (out, err)


def test_classifier_races_the_engines_of_the_models_precision():
    """auto: a float model runs on an fp32 engine, its int8 copy on an int8 engine; both give probabilities."""
    import torch

    from cnncompress import deploy, methods, models
    from cnncompress.errors import InputError
    from cnncompress.deploy import model_precision
    from cnncompress.app.predict import Classifier
    torch.manual_seed(0)
    net = models.build("squeezenet1_1", 7, 1, 48, width=0.25).eval()
    net.metadata = {"classes": [str(i) for i in range(7)], "mean": 0.5, "std": 0.5}
    crops = [np.full((60, 60), 90, np.uint8), np.full((50, 50), 200, np.uint8)]
    int8 = deploy.to_inference(methods.apply(net, "int8", calibration=torch.randn(16, 1, 48, 48)))
    int8.metadata = net.metadata
    for model, precision in ((net, "fp32"), (int8, "int8")):
        classifier = Classifier(model)
        assert model_precision(model) == precision and classifier.engine in deploy.names(precision)
        probabilities = classifier(crops)
        assert probabilities.shape == (2, 7) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    torch_probabilities = Classifier(net, "torch")(crops)
    assert np.allclose(Classifier(net, "onnxruntime")(crops), torch_probabilities, atol=1e-4)
    with pytest.raises(InputError, match="unknown engine 'tpu'"):
        Classifier(net, "tpu")


def test_classifier_softmax_equals_torch_and_survives_large_logits():
    import numpy as np
    import torch

    from cnncompress.app.predict import softmax
    logits = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) * 30
    logits[0, 3] = 1e4  # a shifted exponent: no overflow
    out = softmax(logits)
    assert out.dtype == np.float32 and np.allclose(out.sum(1), 1.0)
    np.testing.assert_allclose(out, torch.softmax(torch.from_numpy(logits).double(), 1).float().numpy(), atol=1e-7)


def test_predict_reports_the_probe_check_of_a_file_that_checks_itself(run_cli, tmp_path, astronaut):
    """A .ccz with probes: ``predict`` says on stderr that its engine agreed with them here (one line)."""
    import torch
    from cnncompress import methods, models
    from cnncompress.data import build_dataset
    from cnncompress.deploy import probes
    torch.manual_seed(0)
    net = models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()
    val = build_dataset("mnist5k", "val", input_size=48)
    path, _ = probes.save(methods.apply(net, "int8", calibration=val.images[:32]), tmp_path / "q.ccz",
                          val.images, "mnist5k val split")
    code, out, err = run_cli("predict", path, astronaut, "--whole-image")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe check: int8 on onnxruntime-int8-qdq: 32/32 probe images"), \
        lines
    assert lines[0].endswith("engine used")
