"""Knowledge distillation: losses, cached teacher outputs, training, resume, CLI and recipe (Table 3)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import cli, storage
from cnncompress.data import ImageDataset
from cnncompress.training.distill import (LOSSES, agreement, augment_copies, distill, hinton_loss, label_loss, softmax_loss,
                                 teacher_logits)
from cnncompress.errors import InputError
from cnncompress.models.loading import load_model as load_teacher


def _data(n=160, classes=4, labelled=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 4, 4, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g) if labelled else torch.full((n,), -1)
    return ImageDataset(images, labels, [str(c) for c in range(classes)] if labelled else [], "synthetic")


def _linear(classes=4, seed=0, scale=1.0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        net[1].weight.mul_(scale)
    return net


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_losses_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    y = torch.tensor([0, -1, 2, -1, 4, 1])
    assert torch.allclose(label_loss(s, t, y), F.cross_entropy(s, t.argmax(1)))
    for temp in (1.0, 3.0):
        pt, ps = (t / temp).softmax(1), (s / temp).softmax(1)
        kl = (pt * (pt.log() - ps.log())).sum(1).mean()
        assert torch.allclose(softmax_loss(s, t, y, temp), kl, atol=1e-6)
        known = y >= 0
        ref = 0.7 * temp ** 2 * kl + 0.3 * F.cross_entropy(s[known], y[known])
        assert torch.allclose(hinton_loss(s, t, y, temp, 0.7), ref, atol=1e-5)
    assert float(softmax_loss(t, t, y)) == pytest.approx(0.0, abs=1e-6)
    assert set(LOSSES) == {"labels", "softmax", "hinton"}


def test_augment_copies_are_seeded_and_keep_the_original():
    x = torch.randn(5, 1, 16, 16)
    a, b = augment_copies(x, 4, seed=3), augment_copies(x, 4, seed=3)
    assert a.shape == (20, 1, 16, 16) and torch.equal(a, b) and torch.equal(a[:5], x)
    assert not torch.allclose(a[5:10], x) and not torch.equal(a, augment_copies(x, 4, seed=4))


def test_teacher_outputs_are_computed_once(tmp_path):
    teacher, data = Counting(_linear()), _data()
    first, cached = teacher_logits(teacher, data.images, tmp_path)
    calls = teacher.calls
    assert not cached and calls > 0
    second, cached = teacher_logits(teacher, data.images, tmp_path)
    assert cached and teacher.calls == calls and torch.equal(first, second)
    _, cached = teacher_logits(teacher, data.images + 1, tmp_path)  # other data -> other key
    assert not cached


def test_distill_learns_the_teacher_and_caches(tmp_path):
    teacher, data, held = Counting(_linear(scale=3.0)), _data(), _data(64, seed=1)
    results = {}
    for targets in ("labels", "softmax"):
        student = _linear(seed=5)
        before = agreement(student, held.images, teacher.inner(held.images))
        r = distill(teacher, student, data, targets=targets, epochs=15, lr=0.1, batch_size=16, heldout=held,
                    heldout_copies=1, cache_dir=tmp_path)
        results[targets] = r
        assert r.agreement_heldout > max(0.8, before + 0.2)
        assert r.agreement_train > 0.8
    assert not results["labels"].teacher_cached and results["softmax"].teacher_cached
    calls = teacher.calls
    distill(teacher, _linear(seed=5), data, targets="softmax", epochs=1, heldout=held, heldout_copies=1,
            cache_dir=tmp_path)
    assert teacher.calls == calls  # second run: no teacher forward pass at all


def test_validation_images_choose_the_epoch_and_held_out_ones_do_not(tmp_path):
    teacher, data = _linear(scale=3.0), _data()
    val, held = _data(40, seed=3), _data(64, seed=1)
    runs = {}
    for name, heldout in (("a", held), ("b", _data(64, seed=7))):
        student = _linear(seed=5)
        runs[name] = (distill(teacher, student, data, targets="softmax", epochs=4, lr=0.2, batch_size=16, val=val,
                              heldout=heldout, heldout_copies=2, cache_dir=tmp_path), student)
    result, student = runs["a"]
    assert result.best_epoch is not None and 1 <= result.best_epoch <= 4
    best = min(result.history, key=lambda h: (h["val_error"], -h["epoch"]))
    assert result.best_epoch == best["epoch"] and result.agreement_val == pytest.approx(1 - best["val_error"])
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), runs["b"][1].parameters()))  # held-out unused
    assert result.config["lr"] == 0.2 and result.config["epochs"] == 4
    plain = distill(teacher, _linear(seed=5), data, epochs=2, lr=0.2, batch_size=16, cache_dir=tmp_path)
    assert plain.best_epoch is None and "val_error" not in plain.history[-1]


def test_hinton_mixes_true_labels(tmp_path):
    teacher, data, labelled = _linear(scale=3.0), _data(), _data(80, labelled=True, seed=2)
    r = distill(teacher, _linear(seed=5), data, targets="hinton", alpha=0.5, labeled=labelled, test=labelled,
                epochs=2, lr=0.05, cache_dir=tmp_path)
    assert r.temperature == 4.0 and r.accuracy is not None and 0 <= r.accuracy <= 1


def test_resume_is_bit_exact_and_checks_settings(tmp_path, monkeypatch):
    from cnncompress.training.trainer import Trainer
    teacher, data = _linear(scale=3.0), _data()
    full = _linear(seed=5)
    distill(teacher, full, data, epochs=3, lr=0.05, cache_dir=tmp_path / "c", out_dir=tmp_path / "full")
    save = Trainer._save_checkpoint

    def interrupted(self, epoch):
        save(self, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, _linear(seed=5), data, epochs=3, lr=0.05, cache_dir=tmp_path / "c",
                out_dir=tmp_path / "part")
    monkeypatch.undo()
    resumed = _linear(seed=9)  # different init: everything must come from the checkpoint
    r = distill(teacher, resumed, data, epochs=3, lr=0.05, cache_dir=tmp_path / "c", out_dir=tmp_path / "part",
                resume=True)
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="different distillation settings"):
        distill(teacher, _linear(), data, targets="labels", epochs=3, lr=0.05, cache_dir=tmp_path / "c",
                out_dir=tmp_path / "part", resume=True)


def test_bad_inputs_are_clean_errors(tmp_path):
    teacher, data = _linear(), _data()
    with pytest.raises(InputError, match="outputs but the teacher has"):
        distill(teacher, _linear(classes=3), data, epochs=1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="classes but the teacher"):
        distill(teacher, _linear(), data, labeled=_data(20, classes=5, labelled=True), epochs=1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="empty"):
        distill(teacher, _linear(), _data(0), epochs=1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="targets"):
        distill(teacher, _linear(), data, targets="logits", epochs=1, cache_dir=tmp_path)
    for name, content in (("t.safetensors", b"garbage"), ("t.hdf5", b"garbage"), ("t.pkl", b"x")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError):
            load_teacher(str(tmp_path / name))
    with pytest.raises(InputError):
        load_teacher(str(tmp_path / "missing.ccz"))


def test_cli_single_run_writes_a_ccz_and_reports_agreement(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["distill", "--teacher", "fer-minixception", "--student", "squeezenet1_1", "--width", "0.25",
                     "--unlabeled", "lfw-faces", "--targets", "softmax", "--copies", "1", "--epochs", "1",
                     "--cache", str(tmp_path / "cache"), "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "agreement with fer-minixception on 25 held-out images" in text
    student = storage.load(out / "model.ccz")
    assert student.metadata["classes"][3] == "happy" and student(torch.zeros(1, 1, 64, 64)).shape == (1, 7)
    row = json.loads((out / "distill.json").read_text())
    # the 75 training faces are now 67 to distil on + 8 validation faces that choose the epoch (split sizes changed)
    assert (row["n_unlabeled"], row["n_val"], row["n_heldout"]) == (67, 8, 25)
    assert row["best_epoch"] == 1 and row["config"]["optimizer"] == "adamw"  # the student's preset


def test_cli_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli.main(["distill", "--teacher", "fer-minixception", "--unlabeled", f"faces:{empty}",
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert cli.main(["distill", "--teacher", str(tmp_path / "nope.safetensors"), "--unlabeled", "lfw-faces",
                     "--out", str(tmp_path / "o")]) == 2
    assert cli.main(["distill", "--teacher", "fer-minixception"]) == 2
    capsys.readouterr()


def test_recipe_prints_a_table3_style_table_and_reuses_runs(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("experiments:\n- name: faces\n  teacher: fer-minixception\n  unlabeled: lfw-faces\n"
                      "  student: {model: squeezenet1_1, width: 0.25}\n  copies: 1\n  epochs: 1\n  lr: 0.01\n"
                      f"  cache: {tmp_path / 'cache'}\n  targets: [labels, softmax]\n  seeds: [0]\n"
                      "- name: other\n  teacher: nope.safetensors\n  unlabeled: lfw-faces\n")
    args = ["distill", "--recipe", str(recipe), "--only", "faces", "--out", str(tmp_path / "t3")]
    code = cli.main(args)
    text = capsys.readouterr().out
    assert code == 0, text
    assert "### faces" in text and "| labels | softmax |" in text and "agreement, held-out images" in text
    ccz = tmp_path / "t3" / "faces" / "softmax-seed0" / "model.ccz"
    assert (tmp_path / "t3" / "table.md").exists() and ccz.exists()
    stamp = ccz.stat().st_mtime_ns
    assert cli.main(args) == 0  # finished runs are reused, not redone
    assert ccz.stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.count("teacher outputs") == 2
    assert cli.main(["distill", "--recipe", str(recipe), "--only", "missing"]) == 2


def test_faces_detect_dataset_crops_faces(tmp_path):
    import numpy as np
    from PIL import Image
    from skimage import data

    from cnncompress.data import build_dataset
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((200, 200), 128, dtype=np.uint8)).save(tmp_path / "blank.png")  # no face
    faces = build_dataset(f"faces-detect:{tmp_path}", "train")
    assert faces.images.shape == (1, 1, 64, 64) and int(faces.labels[0]) == -1
    (tmp_path / "astronaut.png").unlink()
    with pytest.raises(InputError, match="no face found"):
        build_dataset(f"faces-detect:{tmp_path}", "train")


def test_recalibrate_batch_norm_matches_the_data_statistics():
    from cnncompress.training.distill import recalibrate_batch_norm
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01))
    images = torch.randn(96, 1, 8, 8) * 2 + 3
    recalibrate_batch_norm(net, images, batch_size=32)
    with torch.no_grad():
        features = net[0](images)
    torch.testing.assert_close(net[1].running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not net.training and net[1].momentum == 0.01
