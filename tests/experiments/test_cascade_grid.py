"""The cascade grid (Pimpley & Indulkar): a killed run resumes from its finished runs, a widened grid trains only
what it adds, and a file of other training settings is refused."""
import json

import pytest

from cnncompress.errors import InputError
from cnncompress.experiments import cascade_grid

SMALL = {"datasets": ["mnist5k"], "losses": ["sum", "firm"], "positions": ["p2"], "seeds": [0, 1], "epochs": 1,
         "width": 0.25, "limit": 256, "penalties": [1.0]}


def _counting(monkeypatch) -> list:
    trained = []
    real_train = cascade_grid._train
    monkeypatch.setattr(cascade_grid, "_train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    return trained


def test_the_penalty_sweep_runs_at_the_first_penalty_seed_count_seeds():
    config = cascade_grid.load_config(overrides={**SMALL, "penalties": [0.0, 1.0], "seeds": [3, 1, 2]})
    assert cascade_grid.grid_jobs(config, 3) == [("sum", "p2", 0.6), ("firm", "p2", 0.6), ("firm", "p2", 0.0),
                                                 ("firm", "p2", 1.0)]
    assert cascade_grid.grid_jobs(config, 1) == [("sum", "p2", 0.6), ("firm", "p2", 0.6)]
    widened = {**config, "penalty_seed_count": 2}
    assert ("firm", "p2", 0.0) in cascade_grid.grid_jobs(widened, 1)
    assert ("firm", "p2", 0.0) not in cascade_grid.grid_jobs(widened, 2)


def test_a_killed_grid_resumes_from_its_finished_runs_with_the_same_results(tmp_path, monkeypatch):
    config = cascade_grid.load_config(overrides=SMALL)
    first = cascade_grid.run_grid(config, tmp_path, log=lambda line: None)
    assert [(r["seed"], r["loss"], r["penalty"]) for r in first["runs"]] == [
        (0, "sum", 0.6), (0, "firm", 0.6), (0, "firm", 1.0), (1, "sum", 0.6), (1, "firm", 0.6)]
    seed1 = tmp_path / "seeds" / "mnist5k-s1.json"
    held = json.loads(seed1.read_text())
    held["runs"] = held["runs"][:1]  # killed while seed 1's firm run trained: its base and sum run are on disk
    seed1.write_text(json.dumps(held))
    trained, lines = _counting(monkeypatch), []
    again = cascade_grid.run_grid(config, tmp_path, log=lines.append)
    assert len(trained) == 2  # seed 1's firm run only: its sum pre-training, then the firm fine-tuning
    assert any("seed 0 firm p2 λ=1.0: reused" in line for line in lines)
    assert again["base"][0] == json.loads(json.dumps(first["base"][0], default=str))
    assert [r["correct_bits"] for r in again["runs"]] == [r["correct_bits"] for r in first["runs"]]  # seeded
    assert all(r["test_evaluations"] == 1 for r in again["runs"] + again["base"])
    from cnncompress.pipeline import CHANCE_MARGIN
    for run in again["runs"]:  # at chance on validation at the main threshold: flagged, from the measured figure
        assert run["collapsed"] == (run["val_accuracy"] <= 10.0 + CHANCE_MARGIN)


def test_a_widened_grid_trains_only_the_runs_it_adds(tmp_path, monkeypatch):
    config = cascade_grid.load_config(overrides=SMALL)
    first = cascade_grid.run_grid(config, tmp_path, log=lambda line: None)
    trained = _counting(monkeypatch)
    wider = cascade_grid.load_config(overrides={**SMALL, "penalty_seed_count": 2})
    again = cascade_grid.run_grid(wider, tmp_path, log=lambda line: None)
    assert len(trained) == 2  # seed 1's λ=1.0 run: the sum pre-training and the firm fine-tuning
    assert [(r["seed"], r["penalty"]) for r in again["runs"] if r["loss"] == "firm"] == [
        (0, 0.6), (0, 1.0), (1, 0.6), (1, 1.0)]
    kept = [r for r in again["runs"] if (r["seed"], r["penalty"]) != (1, 1.0)]
    assert [r["correct_bits"] for r in kept] == [r["correct_bits"] for r in first["runs"]]
    narrower = cascade_grid.run_grid(config, tmp_path, log=lambda line: None)  # the file keeps the wider grid's run
    assert len(trained) == 2 and len(narrower["runs"]) == 5
    assert len(json.loads((tmp_path / "seeds" / "mnist5k-s1.json").read_text())["runs"]) == 3


def test_a_seed_file_of_other_training_settings_is_refused_and_kept(tmp_path):
    config = cascade_grid.load_config(overrides={**SMALL, "seeds": [0], "losses": ["sum"], "penalties": []})
    cascade_grid.run_grid(config, tmp_path, log=lambda line: None)
    before = (tmp_path / "seeds" / "mnist5k-s0.json").read_bytes()
    other = cascade_grid.load_config(overrides={**SMALL, "seeds": [0], "losses": ["sum"], "epochs": 2})
    with pytest.raises(InputError, match=r"mnist5k-s0.json: made with another cascade config \(epochs differ\)"):
        cascade_grid.run_grid(other, tmp_path, log=print)
    assert (tmp_path / "seeds" / "mnist5k-s0.json").read_bytes() == before


def test_the_cli_sets_the_penalty_seed_count_and_refuses_a_bad_one_in_one_line(run_cli, tmp_path):
    from cnncompress.commands import cascade
    from cnncompress.cli import build_parser
    args = build_parser().parse_args(["cascade", "--penalty-seed-count", "3", "--out", str(tmp_path)])
    assert cascade_grid.load_config(None, cascade.overrides(args))["penalty_seed_count"] == 3
    code, out, err = run_cli("cascade", "--penalty-seed-count", "0", "--out", tmp_path / "run")
    assert code == 2 and "penalty_seed_count" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
