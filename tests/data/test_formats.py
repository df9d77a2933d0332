import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from cnncompress.data import build_dataset, final_evaluation
from cnncompress.data.formats import read_idx, read_image
from cnncompress.errors import InputError


def _fer_csv(path, rows):
    lines = ["emotion,pixels,Usage"] + [f"{e},{p},{u}" for e, p, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _pixels(value):
    return " ".join([str(value)] * 2304)


def test_fer2013_splits_and_labels(tmp_path):
    csv = _fer_csv(tmp_path / "fer.csv", [(3, _pixels(10), "Training"), (0, _pixels(200), "Training"),
                                          (6, _pixels(5), "PublicTest"), (1, _pixels(7), "PrivateTest")])
    train = build_dataset(f"fer2013:{csv}", "train")
    test = build_dataset(f"fer2013:{csv}", "test")
    assert len(train) == 2 and len(test) == 2
    with final_evaluation(test):
        assert train.labels.tolist() == [3, 0] and test.labels.tolist() == [6, 1]
    assert train.images.shape == (2, 1, 48, 48) and train.num_classes == 7
    assert train.images[1].mean() > train.images[0].mean()


@pytest.mark.parametrize("row, problem", [
    ((9, _pixels(1), "Training"), "emotion 9"),
    ((1, "1 2 3", "Training"), "2304 pixel"),
    (("x", _pixels(1), "Training"), "bad value"),
])
def test_fer2013_bad_rows(tmp_path, row, problem):
    csv = _fer_csv(tmp_path / "bad.csv", [row])
    with pytest.raises(InputError, match=problem) as info:
        build_dataset(f"fer2013:{csv}", "train")
    assert "bad.csv" in str(info.value) and "line 2" in str(info.value)


def test_fer2013_missing_column(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("emotion,pixels\n1,2\n")
    with pytest.raises(InputError, match="missing column"):
        build_dataset(f"fer2013:{path}", "train")


def test_fer2013_with_a_byte_order_mark_reads(tmp_path):
    csv = _fer_csv(tmp_path / "bom.csv", [(3, _pixels(10), "Training")])
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # what Excel writes for "CSV UTF-8"
    assert build_dataset(f"fer2013:{csv}", "train").labels.tolist() == [3]


@pytest.mark.parametrize("text, problem", [
    ("emotion,pixels,Usage\n3,{p},Training\n4,{p}\n", "line 3: a short row"),
    ("emotion,pixels,Usage\n3,{p},Training,extra\n", "line 2: expected 3 fields"),
    ("emotion,pixels,Usage\n3,{p},Training\n99999999999999999999999,{p},Training\n", "line 3: emotion"),
])
def test_fer2013_short_long_and_huge_rows_name_the_line(tmp_path, text, problem):
    path = tmp_path / "rows.csv"
    path.write_text(text.format(p=_pixels(1)))
    with pytest.raises(InputError, match=problem) as info:
        build_dataset(f"fer2013:{path}", "train")
    assert str(info.value).startswith(str(path))


def test_fer2013_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("emotion,pixels,Usage\n3,caf\xe9,Training\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.csv: not UTF-8 text"):
        build_dataset(f"fer2013:{path}", "train")


def test_16_bit_and_float_images_keep_their_range(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray((ramp * 1000 - 500).astype(np.float32)).save(tmp_path / "wide.tif")
    for name in ("deep.png", "unit.tif", "wide.tif"):
        pixels = read_image(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255, name
        assert abs(float(pixels.mean()) - 127.5) < 1.0, name  # the ramp stays a ramp, not all 255 or all 0
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="nan.tif: .*NaN"):
        read_image(tmp_path / "nan.tif")


def _save(path, value=128, size=(30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, value, value) if mode == "RGB" else value).save(path)


def test_rafd_classes_and_angles(tmp_path):
    for i, (angle, emotion) in enumerate([("090", "angry"), ("045", "happy"), ("135", "sad"), ("000", "happy"),
                                          ("090", "contemptuous"), ("090", "neutral")] * 5):
        _save(tmp_path / f"Rafd{angle}_{i:02d}_Caucasian_female_{emotion}_frontal.jpg", value=20 * i)
    train = build_dataset(f"rafd:{tmp_path}", "train+val", input_size=32)
    test = build_dataset(f"rafd:{tmp_path}", "test", input_size=32)
    assert len(train) + len(test) == 25  # the five 000-angle images are skipped
    assert train.num_classes == 8 and train.images.shape[1:] == (3, 32, 32)
    with final_evaluation(test):
        labels = set(train.labels.tolist()) | set(test.labels.tolist())
    assert labels == {0, 1, 4, 5, 6}


def test_rafd_bad_name(tmp_path):
    _save(tmp_path / "holiday.jpg")
    with pytest.raises(InputError, match="not a RaFD file name"):
        build_dataset(f"rafd:{tmp_path}", "train")


def test_folder_and_faces(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(5):
            _save(tmp_path / "imgs" / cls / f"{i}.png", value=50 if cls == "cat" else 200)
    train = build_dataset(f"folder:{tmp_path / 'imgs'}", "train+val", input_size=16)
    assert train.classes == ["cat", "dog"] and len(train) == 8
    # the validation split keeps at least one image of every class: 8 -> 6 train + 2 val
    assert len(build_dataset(f"folder:{tmp_path / 'imgs'}", "train", input_size=16)) == 6
    assert sorted(build_dataset(f"folder:{tmp_path / 'imgs'}", "val", input_size=16).labels.tolist()) == [0, 1]
    faces = build_dataset(f"faces:{tmp_path / 'imgs'}", "train+val", input_size=16)
    assert len(faces) == 10 and (faces.labels == -1).all() and faces.channels == 1
    assert len(build_dataset(f"faces:{tmp_path / 'imgs'}", "train", input_size=16)) == 9


@pytest.mark.parametrize("content, problem", [(b"", "empty file"), (b"not an image at all", "not a readable image")])
def test_bad_image_files(tmp_path, content, problem):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as info:
        read_image(path)
    assert "x.png" in str(info.value)


def test_truncated_image(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.png"):
        read_image(bad)


def test_huge_image_rejected(tmp_path, monkeypatch):
    from cnncompress.data import formats
    monkeypatch.setattr(formats, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big.png"
    _save(path, size=(20, 20))
    with pytest.raises(InputError, match="too large"):
        read_image(path)


def _idx(path, magic_type, dims, payload):
    header = bytes([0, 0, magic_type, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    path.write_bytes(gzip.compress(header + payload) if path.suffix == ".gz" else header + payload)


def test_idx_round_trip_and_mnist_dir(tmp_path):
    images = np.arange(3 * 4 * 4, dtype=np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", 8, (3, 4, 4), images.tobytes())
    _idx(tmp_path / "train-labels-idx1-ubyte", 8, (3,), bytes([1, 0, 2]))
    assert (read_idx(tmp_path / "train-images-idx3-ubyte.gz").ravel() == images).all()
    ds = build_dataset(f"mnist:{tmp_path}", "train", input_size=8)
    assert ds.labels.tolist() == [1, 0, 2] and ds.images.shape == (3, 1, 8, 8)


def test_idx_wrong_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad-idx"
    _idx(bad, 0x0D, (2,), b"\x00" * 8)
    with pytest.raises(InputError, match="wrong IDX magic"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    _idx(short, 8, (10,), b"\x00" * 3)
    with pytest.raises(InputError, match="header promises 10"):
        read_idx(short)


@pytest.mark.parametrize("spec, problem", [("nosuch", "unknown dataset"), ("fer2013", "needs a path"),
                                           ("fer2013:/no/such.csv", "cannot open"),
                                           ("folder:/no/such/dir", "no such directory")])
def test_bad_specs(spec, problem):
    with pytest.raises(InputError, match=problem):
        build_dataset(spec, "train")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="empty folder"):
        build_dataset(f"faces:{tmp_path}", "train")
