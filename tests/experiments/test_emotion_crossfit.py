"""emotion-crossfit: folds that hold every face out once, a pick blind to the held-out faces, face-level intervals,
resumable. ``run_row`` is replaced by a stand-in here (no training)."""
import json

import numpy as np
import pytest
import torch

from cnncompress.data.datasets import SealedSplitError
from cnncompress.errors import InputError
from cnncompress.experiments import emotion_crossfit as cf
from cnncompress.experiments import emotion_faces, emotion_table


@pytest.fixture(scope="module")
def teacher():
    from cnncompress.models.loading import load_model
    return load_model("fer-minixception").eval()


def test_folds_partition_the_hundred_faces(teacher):
    held = []
    for k in range(cf.FOLDS):
        data = cf.fold_faces("lfw-faces", teacher, k, cf.FOLDS)
        train, val, out = (set(data[key]) for key in ("train_index", "val_index", "heldout_index"))
        assert len(out) == len(data["heldout"]) == 25 and len(train) == len(data["train"]) == 67 and len(val) == 8
        assert not (train & val or train & out or val & out) and len(train | val | out) == data["pool_size"] == 100
        with pytest.raises(SealedSplitError):  # the fold's held-out faces stay sealed
            data["heldout"].images
        held += data["heldout_index"]
    assert sorted(held) == list(range(100))  # every face held out exactly once
    again = cf.fold_faces("lfw-faces", teacher, 2)
    pool = cf.fold_faces("lfw-faces", teacher, 0)
    assert again["heldout_index"] == cf.fold_faces("lfw-faces", teacher, 2)["heldout_index"]  # fixed seed
    by_index = {}  # the recorded indices name the images: a face's pixels are the same wherever it appears
    for data in (again, pool):
        for i, image in zip(data["train_index"], data["train"].images):
            by_index.setdefault(i, []).append(image)
    assert all(torch.equal(images[0], images[-1]) for images in by_index.values())
    plain = emotion_faces.faces("lfw-faces", teacher)  # without fold: unchanged 67 / 8 / 25 and no indices
    assert (len(plain["train"]), len(plain["val"]), len(plain["heldout"])) == (67, 8, 25) and "fold" not in plain
    with pytest.raises(InputError):
        cf.fold_faces("lfw-faces", teacher, 4, 4)


def _row(label, selection, ratio, heldout=90.0):
    return {"label": label, "selection_agreement": selection, "bytes": int(60_000 / ratio), "size_ratio": ratio,
            "agreement_heldout": {"agreement": heldout}, "agree_vector": [1] * 100}


def test_the_pick_reads_the_selection_set_only():
    a, b = cf.CANDIDATES
    rows = [_row(a, 93.0, 8.4, heldout=80.0), _row(b, 91.0, 8.1, heldout=99.0)]
    assert cf.pick(rows)["label"] == a
    flipped = [{**r, "agreement_heldout": {"agreement": 100 - r["agreement_heldout"]["agreement"]},
                "agree_vector": [0] * 100, "agreement_heldout_aug": {"agreement": 0.0}} for r in rows]
    assert cf.pick(flipped) == cf.pick(rows)  # held-out figures change, the pick does not
    assert cf.pick([_row(a, 95.0, 7.9), _row(b, 91.0, 8.1)])["label"] == b  # only >= 8x compete
    assert cf.pick([_row(a, 91.0, 8.5), _row(b, 91.0, 8.1)])["label"] == a  # tie: the smaller file
    assert "largest ratio" in cf.pick([_row(a, 99.0, 7.0), _row(b, 91.0, 7.5)])["reason"]
    assert cf.pick([_row(a, 99.0, 7.0), _row(b, 91.0, 7.5)])["label"] == b


def test_two_level_bootstrap_widens_with_seed_disagreement_and_covers_the_mean():
    rng = np.random.default_rng(0)
    base = (rng.random((100, 4)) < 0.9).astype(float)
    same = cf.cluster_interval([base, base])
    other = base.copy()
    other[:30] = 1 - other[:30]  # the second seed disagrees on 30 faces
    differ = cf.cluster_interval([base, other])
    assert differ["high"] - differ["low"] > same["high"] - same["low"]
    for result, seeds in ((same, [base, base]), (differ, [base, other])):
        mean = np.mean([s.mean() for s in seeds]) * 100
        assert result["low"] <= mean <= result["high"] and result["agreement"] == pytest.approx(mean)
    one_face = cf.clusters([1, 0, 1, 1, 0, 0], 2)  # copy-major: face 0 = images 0, 2, 4
    assert one_face.tolist() == [[1, 1, 0], [0, 1, 0]]


def test_wilson_at_one_hundred_percent_is_not_zero_width():
    w = cf.wilson_percent(100, 100)
    assert w["agreement"] == 100 and w["high"] == 100 and 95 < w["low"] < 99


def _fake_run_row(calls):
    def run_row(label, pipeline, recover, teacher, data, settings, seed, folder, reference):
        calls.append((data["fold"], label, seed))
        n = len(reference["heldout_images"])
        agree = (np.random.default_rng(seed + 10 * data["fold"]).random(n) < 0.95).astype(int)
        ratio = 8.3 if label == cf.CANDIDATES[0] else 8.6
        selection = 92.0 if label == cf.CANDIDATES[0] else 91.0 + data["fold"]
        interval = {"agreement": float(agree.mean() * 100), "low": 0.0, "high": 100.0, "images": n}
        (folder / "model.ccz").write_bytes(b"x")
        return {"label": label, "pipeline": pipeline, "recovered": "distilled", "seed": seed,
                "agreement_heldout": interval, "agreement_heldout_aug": interval, "agree_vector": agree.tolist(),
                "selection_agreement": selection, "bytes": int(reference["bytes"] / ratio), "size_ratio": ratio,
                "latency": {"ms": None, "engine": None}, "seconds": 0.0}
    return run_row


def test_a_run_pools_the_folds_and_a_resumed_run_reuses_its_rows(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(emotion_table, "run_row", _fake_run_row(calls))
    result = cf.run(tmp_path / "cf", quick=True)
    assert len(calls) == 12 and len(capsys.readouterr().out.strip().splitlines()) == 12  # one line per row
    picks = [f["pick"]["label"] for f in result["folds"]]
    assert picks == [cf.CANDIDATES[0], cf.CANDIDATES[1], cf.CANDIDATES[1], cf.CANDIDATES[1]]  # 92 vs 91 + fold
    assert sorted(map(int, result["fold_of_face"])) == list(range(100))
    assert result["test_evaluations"]["per_seed"] == {"0": [1], "1": [1]}
    assert result["test_evaluations"]["faces"] == {"0": 100, "1": 100}
    assert all(f["heldout_opened"] == 1 for f in result["folds"])
    h = result["headline"]
    assert h["faces_total"] == 100 and h["faces"]["pooled"]["low"] < h["faces"]["pooled"]["agreement"]
    assert h["verdict"]["overall"] in ("holds", "does not hold", "inconclusive")
    assert "Headline" in (tmp_path / "cf" / "report.md").read_text()
    assert json.loads((tmp_path / "cf" / "results.json").read_text())["headline"] == json.loads(json.dumps(h))
    monkeypatch.setattr(emotion_table, "run_row", lambda *a, **k: pytest.fail("a finished row was recomputed"))
    again = cf.run(tmp_path / "cf", quick=True, progress=False)
    assert again["headline"] == result["headline"]
    with pytest.raises(InputError, match="other settings"):  # full settings into a --quick folder
        cf.run(tmp_path / "cf", quick=False, progress=False)


def test_bad_out_is_refused_in_one_line(tmp_path, run_cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run_cli("reproduce", "emotion-crossfit", "--out", afile)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "afile" in err, err
    code, _, err = run_cli("reproduce", "emotion-crossfit", "table2", "--out", tmp_path / "x")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    fold = tmp_path / "other" / "fold0" / "some-row-s0"
    fold.mkdir(parents=True)
    (fold / "row.json").write_text(json.dumps({"settings": {"epochs": 1}}))
    code, _, err = run_cli("reproduce", "emotion-crossfit", "--quick", "--out", tmp_path / "other")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "other settings" in err, err
