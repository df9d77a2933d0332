"""table-emotion: the real emotion CNN compressed, recovered by distillation from itself, measured; resumable."""
import pytest

from cnncompress.errors import InputError
from cnncompress.experiments import emotion_faces, emotion_report, emotion_table
from cnncompress import deploy

ROWS = (("fp16", [("fp16", {})], False),
        ("HashedNets 1/8", [("hashed", {"compression": 0.125})], True),
        ("Tucker on every conv", [("tucker", {"layers": "conv", "rank": 0.5})], True))
FAST = {"copies": 1, "epochs": 1, "heldout_copies": 2, "transfer": 20, "sparsities": [0.0], "bits": [None, 2]}


def test_rows_are_measured_and_reused(tmp_path, monkeypatch):
    rows = emotion_table.run(tmp_path, rows=ROWS, progress=False, **FAST)
    original, fp16, hashed, tucker = rows
    assert original["n_heldout"] > 0 and original["latency"]["engine"]
    for row in (fp16, hashed):
        for key in ("agreement_heldout", "agreement_heldout_aug"):
            a = row[key]
            assert 0 <= a["low"] <= a["agreement"] <= a["high"] <= 100
        assert row["bytes"] == (tmp_path / f"{emotion_table.slug(row['label'])}-s0" / "model.ccz").stat().st_size
        assert row["size_ratio"] == pytest.approx(original["bytes"] / row["bytes"])
        assert row["latency"]["ms"] > 0 and row["latency"]["raced_with_all_rows"]  # one race with the original
    assert fp16["size_ratio"] > 1.5 and hashed["size_ratio"] > 2  # real files, really smaller
    assert fp16["agreement_heldout_aug"]["agreement"] >= 95  # fp16 barely changes the outputs
    assert hashed["recovered"].startswith("distilled") and hashed["history"]  # distilled from the original
    assert "grouped/depthwise" in tucker["not_applicable"]  # said, not silently dropped
    table = emotion_report.table(rows)
    assert "does not fit" in table and "HashedNets 1/8" in table
    margins = original["heldout_margins"]  # the original's top-2 softmax margin per held-out image
    assert len(margins) == original["n_heldout_aug"] == len(hashed["agree_vector"])
    assert all(0 <= m <= 1 for m in margins)
    on_ties, total = emotion_report.near_tie_disagreements(hashed["agree_vector"], margins)
    assert f"| {on_ties} of {total} |" in table.splitlines()[[l.startswith("| HashedNets") for l in
                                                               table.splitlines()].index(True)]
    monkeypatch.setattr(emotion_table, "run_row", lambda *a, **k: pytest.fail("a finished row was recomputed"))
    again = emotion_table.run(tmp_path, rows=ROWS, progress=False, **FAST)
    assert [r.get("bytes") for r in again] == [r.get("bytes") for r in rows]
    assert all(r["latency"].get("raced_with_all_rows") for r in again if "bytes" in r)  # reused rows timed again
    import json
    raced = json.loads((tmp_path / "latency-race.json").read_text())
    assert set(raced) == {r["label"] for r in again if "latency" in r}  # Tucker does not fit: no latency


def test_faces_folder_without_a_decodable_image_is_one_line(tmp_path):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError) as error:
        emotion_table.run(tmp_path / "out", faces_spec=f"faces:{tmp_path / 'faces'}", rows=ROWS[:1],
                          progress=False, **FAST)
    assert "\n" not in str(error.value) and "faces" in str(error.value)
    assert not (tmp_path / "out" / "fp16-s0").exists()


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown table-emotion settings: epoch"):
        emotion_table.run(tmp_path, rows=ROWS[:1], epoch=3)


def test_out_with_other_settings_is_refused_and_kept(tmp_path, run_cli):
    emotion_table.run(tmp_path, rows=ROWS[:1], progress=False, **FAST)
    row = tmp_path / "fp16-s0" / "row.json"
    before = row.read_bytes()
    with pytest.raises(InputError, match="other settings \\(epochs\\)"):
        emotion_table.run(tmp_path, rows=ROWS[:1], progress=False, **{**FAST, "epochs": 2})
    assert row.read_bytes() == before
    empty = tmp_path / "no-faces"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"\x89PNG broken")
    code, _, err = run_cli("reproduce", "table-emotion", "--faces", f"faces:{empty}", "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-faces" in err, err


def test_optimize_row_meets_its_budget_in_the_real_file(tmp_path):
    """The optimize row chooses per-layer settings for its byte budget (scored by agreement with the original),
    then recovers like every row; its file is within the budget."""
    row = ("optimize 1/4", [("optimize", {"max_bytes": "1/4", "fp16_rest": True})], True)
    rows = emotion_table.run(tmp_path, rows=(row,), progress=False, **FAST)
    original, result = rows
    assert result["bytes"] <= original["bytes"] / 4 and result["size_ratio"] >= 4
    assert result["recovered"].startswith("distilled") and 0 <= result["agreement_heldout_aug"]["agreement"] <= 100
    assert (tmp_path / "optimize-1-4-s0" / "sensitivity.json").is_file()  # the per-layer table, cached for a re-run


def test_norms_as_affine_row_is_measured_on_the_file_it_writes(tmp_path):
    """``norms-as-affine`` runs after recovery: the file holds ChannelAffine layers, no BatchNorm, and the copy
    loaded from it agrees with the original exactly as the row says (fp16 rounding applied before measuring)."""
    import torch
    from torch import nn

    from cnncompress import methods, storage
    from cnncompress.methods.batchnorm_folding import ChannelAffine
    row = ("k-means 4-bit, norms as affine, fp16 rest", [("kmeans", {"conv_bits": 4}), ("fp16", {}),
                                                         ("norms-as-affine", {})], True)
    plain = ("k-means 4-bit, fp16 rest", row[1][:2], True)
    original, affine, kmeans = emotion_table.run(tmp_path, rows=(row, plain), progress=False, **FAST)
    assert affine["bytes"] < kmeans["bytes"]
    loaded = deploy.to_inference(storage.load(tmp_path / f"{emotion_table.slug(row[0])}-s0" / "model.ccz")).eval()
    assert any(isinstance(m, ChannelAffine) for m in loaded.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    from cnncompress.data import final_evaluation
    from cnncompress.training.distill import augment_copies
    from cnncompress.models.loading import load_model
    teacher = load_model("fer-minixception").eval()
    heldout = emotion_faces.faces("lfw-faces", teacher)["heldout"]
    with final_evaluation(heldout):
        images = augment_copies(heldout.images, FAST["heldout_copies"], seed=10_000)
    with torch.inference_mode():
        same = (loaded(images).argmax(1) == teacher(images).argmax(1)).float()
    assert 100 * same.mean().item() == pytest.approx(affine["agreement_heldout_aug"]["agreement"])


def test_the_confirmation_row_is_picked_on_the_selection_set_never_on_the_held_out_faces():
    def row(label, ratio, selection, heldout, seed=0):
        return {"label": label, "seed": seed, "bytes": int(240_000 / ratio), "size_ratio": ratio,
                "selection_agreement": selection, "agreement_heldout": {"agreement": heldout},
                "agreement_heldout_aug": {"agreement": heldout}}
    rows = [row("held-out best", 8.2, 80.0, 99.0), row("selection best", 8.1, 90.0, 60.0),
            row("large", 4.0, 99.0, 99.0), row("other seed", 9.0, 99.0, 99.0, seed=1),
            {"label": "fp16", "seed": 0, "bytes": 1, "size_ratio": 2.0, "selection_agreement": None}]
    chosen = emotion_table.confirmation_row(rows, seed=0)
    assert chosen["label"] == "selection best" and "selection-set agreement" in chosen["reason"]
    flipped = [{**r, "agreement_heldout": {"agreement": 100 - r["agreement_heldout"]["agreement"]}}
               if "agreement_heldout" in r else r for r in rows]
    assert emotion_table.confirmation_row(flipped, seed=0)["label"] == "selection best"  # held-out: no say
    assert emotion_table.confirmation_row(rows[-1:], seed=0) is None  # nothing recovered: no confirmation
    assert emotion_table.confirmation_row(rows[2:3], seed=0) is None  # nothing 8x smaller: none either


def test_the_picked_row_is_run_again_at_the_confirmation_seeds_and_each_row_counts_its_test_reads(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setattr(emotion_table, "confirmation_row", lambda rows, seed: rows[0])
    rows = emotion_table.run(tmp_path, rows=ROWS[:1], progress=False, **{**FAST, "confirm_seeds": [1]})
    assert [(r["label"], r["seed"]) for r in rows[1:]] == [("fp16", 0), ("fp16", 1)]
    assert (tmp_path / "fp16-s1" / "row.json").is_file() and len(rows[2]["agree_vector"]) == rows[0]["n_heldout_aug"]
    assert "fp16 (seed 1)" in emotion_report.table(rows)
    assert [r["test_evaluations"] for r in rows[1:]] == [1, 1]  # the sealed faces were opened once


def test_selection_set_weighs_val_faces_as_much_as_crops_and_holds_every_val_face():
    import torch

    from cnncompress.models.loading import load_model
    data = emotion_faces.faces("lfw-faces", load_model("fer-minixception").eval())
    settings = {**emotion_table.FULL, "select_transfer": 20, "select_faces": 20}
    chosen = emotion_faces.selection_set(data, settings, seed=0)
    val = data["val"].images
    assert len(chosen) == 40 and (chosen.labels == -1).all()
    assert torch.equal(chosen.images[:len(val)], val)  # copy 0 of each val face is the face itself
    held = data["heldout"]._images.flatten(1)  # which faces (identity), not what a model says about them
    assert not any((held == image.flatten()).all(1).any() for image in chosen.images)  # no held-out face in it
    few = emotion_faces.selection_set(data, {**settings, "select_faces": 1}, seed=0)
    assert len(few) == len(val) + 20  # never fewer faces than the val faces


def test_the_named_layer_groups_of_the_mixed_bit_rows_select_what_they_say():
    from torch import nn

    from cnncompress import models, surgery
    model = models.build("mini_xception", 7, 1, 64)
    convs = {path: m for path, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    sensitive = [path for path, _ in surgery.select(model, emotion_table.SENSITIVE_CONVS)]
    assert sorted(sensitive) == sorted(p for p, m in convs.items() if m.groups > 1 or p in ("features.conv1",
                                                                                             "features.conv2"))
    largest = [path for path, _ in surgery.select(model, emotion_table.LARGEST_CONVS)]
    share = sum(convs[p].weight.numel() for p in largest) / sum(m.weight.numel() for m in convs.values())
    assert len(largest) == 3 and 0.55 < share < 0.62  # block 4's three 1x1 convs: 59 % of the conv weights


def test_a_hints_step_recovers_with_the_originals_block_outputs_as_targets(tmp_path, monkeypatch):
    """The ``hints`` step is a recovery option: distillation gets its points and weight (and the row without it
    gets none); rows with it are full-run extras, left out of --quick."""
    from cnncompress.training import distill as distill_module
    seen, real = [], distill_module.distill

    def recording(*args, **kwargs):
        seen.append((kwargs.get("hints", ()), kwargs.get("hint_weight")))
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", recording)
    points = ["features.block3", "features.block4"]
    hinted = ("k-means 4-bit, hints", [("kmeans", {"conv_bits": 4}), ("hints", {"points": points, "weight": 2.0})],
              True)
    plain = ("k-means 4-bit", hinted[1][:1], True)
    _, with_hints, without = emotion_table.run(tmp_path, rows=(hinted, plain), progress=False, **FAST)
    assert seen == [(points, 2.0), ((), 1.0)]
    assert with_hints["recovered"].startswith("distilled") and with_hints["history"]
    assert with_hints["bytes"] == pytest.approx(without["bytes"], rel=0.02)  # hints change training, not the file
    hinted_rows = [label for label, pipeline, _ in emotion_table.ROWS if any(m == "hints" for m, _ in pipeline)]
    assert hinted_rows and set(hinted_rows) <= set(emotion_table.FULL_ONLY)


def test_near_tie_disagreements_count_only_disagreements_where_the_original_hesitates():
    agree = [1, 0, 0, 1, 0]
    margins = [0.05, 0.02, 0.5, 0.01, 0.0999]
    assert emotion_report.near_tie_disagreements(agree, margins) == (2, 3)  # images 1 and 4; image 2 is decided
    assert emotion_report.near_tie_disagreements(agree, margins, cut=0.01) == (0, 3)
    import torch
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]))
    assert emotion_table.top2_margins(logits) == pytest.approx([0.2, 0.85])
