"""Video prediction: a 640x480 clip made here from scikit-image's astronaut and LFW faces, written with PyAV.

The clip (48 frames at 15 fps): frames 0-19 the astronaut moving and growing (1 face), 20-29 the astronaut and an
LFW face (2), 30-39 no face, 40-47 the LFW face moving (1). Scene changes fall on multiples of 10, the default
full-scan interval, so tracking between scans sees every face that was drawn. No timed assertions.
"""
import json
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

W, H, FPS = 640, 480, 15
DRAWN = [1] * 20 + [2] * 10 + [0] * 10 + [1] * 8
LFW_INDEX = 3  # an LFW face the LBP cascade finds at 100-160 px


def _frames() -> list[np.ndarray]:
    from skimage import data

    from cnncompress.data.lfw import lfw_faces
    yy, xx = np.mgrid[0:H, 0:W]
    grey = (70 + 90 * xx / W + 30 * yy / H).astype(np.uint8)
    background = np.stack([grey, (grey * 0.9).astype(np.uint8), grey], axis=-1)
    head = Image.fromarray(data.astronaut()[0:250, 100:350])
    lfw = Image.fromarray(lfw_faces()[LFW_INDEX]).convert("RGB")

    def paste(frame, picture, side, r, c):
        frame[r:r + side, c:c + side] = np.asarray(picture.resize((side, side), Image.BILINEAR))

    frames = []
    for i in range(len(DRAWN)):
        frame = background.copy()
        if i < 20:
            paste(frame, head, 180 + 2 * i, 60 + i, 30 + 12 * i)
        elif i < 30:
            paste(frame, head, 240, 200 - 3 * (i - 20), 20 + 5 * (i - 20))
            paste(frame, lfw, 120 + 4 * (i - 20), 80, 420)
        elif i >= 40:
            paste(frame, lfw, 150, 150 + 4 * (i - 40), 250 + 6 * (i - 40))
        frames.append(frame)
    return frames


def write_video(path, frames, codec="libx264", options=None):
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        container.start_encoding()  # writes the header even when there is no frame
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def frames():
    return _frames()


@pytest.fixture(scope="module")
def clip(tmp_path_factory, frames):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, options={"movflags": "faststart"})


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory):
    from cnncompress import methods, storage
    from cnncompress.models.loading import load_model
    path = tmp_path_factory.mktemp("model") / "fp16.ccz"
    storage.save(methods.apply(load_model("fer-minixception"), "fp16"), path)
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one_line(err):
    return err.strip() and "\n" not in err.strip()


def test_clip_records_annotated_video_and_summary(run_cli, clip, tmp_path):
    out, records = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    code, text, err = run_cli("predict", "fer-minixception", clip, "--out", out, "--jsonl", records)
    assert code == 0, err
    rows = _records(records)
    assert [row["frame"] for row in rows] == list(range(len(DRAWN)))
    found = [len(row["faces"]) for row in rows]
    assert sum(f == d for f, d in zip(found, DRAWN)) >= 0.9 * len(DRAWN), found
    assert abs(sum(found) - sum(DRAWN)) <= 0.1 * sum(DRAWN)
    first = rows[0]["faces"][0]
    assert first["emotion"] == "happy" and first["probability"] > 0.8  # the astronaut smiles
    assert set(first) >= {"track", "box", "emotion", "probability", "probabilities"}
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-3 and rows[5]["time"] == pytest.approx(5 / FPS, abs=0.01)
    assert len({row["faces"][0]["track"] for row in rows[:20] if row["faces"]}) == 1  # one track while it moves
    with av.open(str(out)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == len(DRAWN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "frames.jsonl"]  # no partial files
    assert f"{len(DRAWN)} frames (640x480" in text and "FPS" in text
    assert "decode" in text and "detect" in text and "classify" in text


def test_summary_json_and_every_frame_scan(run_cli, clip):
    code, text, err = run_cli("predict", "fer-minixception", clip, "--json", "--detect-every", "1",
                              "--max-frames", "12", "--engine", "torch")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["frames"] == 12 and summary["faces"] == 12 and summary["fps"] > 0
    assert summary["detector"]["full_scans"] == 12 and summary["detector"]["window_searches"] == 0
    assert set(summary["stages_s"]) == {"decode", "detect", "classify", "other"}
    assert abs(sum(summary["shares"].values()) - 1) < 0.05 and summary["models"][0]["engine"] == "torch"


def test_compare_prints_agreement_and_both_fps(run_cli, clip, fp16_model):
    code, text, err = run_cli("predict", "--compare", "fer-minixception", fp16_model, clip, "--max-frames", "30")
    assert code == 0, err
    assert "top-1 agreement:" in text
    assert "original fer-minixception" in text and "compressed" in text and text.count(" FPS, classify") == 2
    assert "% of its frame time" in text
    code, text, err = run_cli("predict", "--compare", "fer-minixception", fp16_model, clip, "--max-frames", "30",
                              "--json")
    summary = json.loads(text)
    agreement = summary["agreement"]
    assert agreement["of_faces"] == summary["faces"] > 0 and agreement["faces"] >= 0.9 * agreement["of_faces"]
    assert len(summary["models"]) == 2 and all(m["fps"] > 0 and 0 < m["classify_share"] < 1
                                               for m in summary["models"])


def test_folder_of_frames(run_cli, frames, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 5, 10, 20, 25, 35):
        Image.fromarray(frames[i]).save(folder / f"frame_{i:03d}.png")
    records = tmp_path / "r.jsonl"
    code, text, err = run_cli("predict", "fer-minixception", folder, "--detect-every", "1", "--jsonl", records,
                              "--fps", "5")
    assert code == 0, err
    rows = _records(records)
    assert [len(row["faces"]) for row in rows] == [1, 1, 1, 2, 2, 0]
    assert rows[1]["time"] == pytest.approx(0.2)


def test_smoothing_averages_a_track(run_cli, clip, tmp_path):
    raw, smooth = tmp_path / "raw.jsonl", tmp_path / "smooth.jsonl"
    for path, extra in ((raw, []), (smooth, ["--smooth", "0.5"])):
        code, _, err = run_cli("predict", "fer-minixception", clip, "--max-frames", "3", "--jsonl", path, *extra)
        assert code == 0, err
    p = [np.array(list(row["faces"][0]["probabilities"].values())) for row in _records(raw)]
    s = [np.array(list(row["faces"][0]["probabilities"].values())) for row in _records(smooth)]
    np.testing.assert_allclose(s[0], p[0], atol=1e-5)
    np.testing.assert_allclose(s[1], 0.5 * p[1] + 0.5 * s[0], atol=1e-5)
    np.testing.assert_allclose(s[2], 0.5 * p[2] + 0.5 * s[1], atol=1e-5)


def test_tracker_keeps_ids_and_associates_by_iou():
    from cnncompress.app.tracking import Tracker, iou
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1 and iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0
    tracker = Tracker(max_missed=1)
    a, b = tracker.update([(10, 10, 50, 50), (200, 200, 60, 60)])
    moved = tracker.update([(205, 210, 60, 60), (14, 12, 50, 50)])  # other order, both moved
    assert [t.id for t in moved] == [b.id, a.id]
    fast = tracker.update([(14, 55, 50, 50)])  # IoU 0.08, but the centre moved less than a box: the same face
    assert fast[0].id == a.id
    tracker.update([])
    assert [t.id for t in tracker.tracks] == [a.id]  # b missed twice > max_missed: dropped
    assert tracker.update([(500, 500, 40, 40)])[0].id not in (a.id, b.id)


def test_photos_still_work_beside_videos(run_cli, clip, tmp_path):
    from skimage import data
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    code, text, err = run_cli("predict", "fer-minixception", photo, clip, "--max-frames", "2")
    assert code == 0, err
    assert "astronaut.png: 1 face(s)" in text and "clip.mp4: 2 frames" in text


# --- bad input: one line on stderr naming the file or flag, exit 2, nothing half-written left behind ---

def test_not_a_video(run_cli, tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli("predict", "fer-minixception", path, "--out", out)
    assert code == 2 and _one_line(err) and "notes.mp4" in err and "not a video" in err
    assert list(tmp_path.iterdir()) == [path]


def test_truncated_video_decodes_what_is_there(run_cli, clip, tmp_path):
    data = clip.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:len(data) * 6 // 10])
    out, records = tmp_path / "cut-annotated.mp4", tmp_path / "cut.jsonl"
    code, text, err = run_cli("predict", "fer-minixception", path, "--out", out, "--jsonl", records)
    assert code == 0, err
    assert _one_line(err) and "cut.mp4" in err and "truncated" in err and f"of {len(DRAWN)} frames" in err
    decoded = len(_records(records))
    assert 0 < decoded < len(DRAWN) and f"{decoded} frames" in text
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == decoded


def test_video_with_zero_frames(run_cli, tmp_path):
    path = write_video(tmp_path / "empty.avi", [], codec="mpeg4")  # a video stream, no frame
    out = tmp_path / "out.mp4"
    code, _, err = run_cli("predict", "fer-minixception", path, "--out", out)
    assert code == 2 and _one_line(err) and "empty.avi" in err and "zero frames" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.avi"]


def test_unsupported_codec(run_cli, frames, tmp_path):
    path = write_video(tmp_path / "odd.avi", frames[:3], codec="mpeg4")
    path.write_bytes(path.read_bytes().replace(b"FMP4", b"ZQZQ"))  # a FourCC no decoder knows
    code, _, err = run_cli("predict", "fer-minixception", path)
    assert code == 2 and _one_line(err) and "odd.avi" in err and "unsupported codec" in err


def test_missing_camera(run_cli):
    code, _, err = run_cli("predict", "fer-minixception", "--camera", "97")
    assert code == 2 and _one_line(err) and "--camera 97" in err


@pytest.mark.parametrize("name, problem", [("missing-dir/out.mp4", "cannot write"),
                                           ("out.txt", "unsupported video format")])
def test_unwritable_out(run_cli, clip, tmp_path, name, problem):
    out = tmp_path / name
    code, _, err = run_cli("predict", "fer-minixception", clip, "--out", out)
    assert code == 2 and _one_line(err) and "--out" in err and problem in err and str(out) in err
    assert not out.exists()


def test_failure_midway_leaves_no_output(run_cli, frames, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(frames[0]).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    out, records = tmp_path / "out.mp4", tmp_path / "r.jsonl"
    code, _, err = run_cli("predict", "fer-minixception", folder, "--out", out, "--jsonl", records)
    assert code == 2 and _one_line(err) and "b.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


@pytest.mark.parametrize("argv, problem", [(["--smooth", "1.5"], "--smooth"), (["--detect-every", "0"],
                                                                                "--detect-every")])
def test_bad_video_flags(run_cli, clip, argv, problem):
    code, _, err = run_cli("predict", "fer-minixception", clip, *argv)
    assert code == 2 and _one_line(err) and problem in err


def test_video_reports_the_probe_check_of_a_file_that_checks_itself(run_cli, clip, tmp_path):
    """A ``.ccz`` with probes: the video summary says what its check found here (passed or refused), in text and
    in JSON; a model without probes has none."""
    from cnncompress import methods
    from cnncompress.data import build_dataset
    from cnncompress.deploy import probes
    from cnncompress.models.loading import load_model
    faces = build_dataset("lfw-faces", "train", input_size=64, channels=1)
    path, _ = probes.save(methods.apply(load_model("fer-minixception"), "int8", calibration=faces.images[:32]),
                          tmp_path / "q.ccz", faces.images, "LFW faces")
    code, text, err = run_cli("predict", path, clip, "--max-frames", "4")
    assert code == 0, err
    checks = [line.strip() for line in text.splitlines() if "probe check:" in line]
    assert len(checks) == 1 and checks[0].startswith("probe check: int8 on ") and "32 probe images" in checks[0], text
    code, text, err = run_cli("predict", path, clip, "--max-frames", "4", "--json")
    assert json.loads(text)["models"][0]["probe_check"] == checks[0]
    code, text, err = run_cli("predict", "fer-minixception", clip, "--max-frames", "4", "--json")
    assert code == 0 and json.loads(text)["models"][0]["probe_check"] is None
