"""The cascade grid (Pimpley & Indulkar): a killed run resumes from its finished seeds, never from another config."""
import json

import pytest

from cnncompress.errors import InputError
from cnncompress.experiments import cascade_grid

SMALL = {"datasets": ["mnist5k"], "losses": ["sum", "firm"], "positions": ["p2"], "seeds": [0, 1], "epochs": 1,
         "width": 0.25, "limit": 256, "penalties": [1.0]}


def test_a_killed_grid_resumes_from_its_finished_seeds_with_the_same_results(tmp_path, monkeypatch):
    config = cascade_grid.load_config(overrides=SMALL)
    first = cascade_grid.run_grid(config, tmp_path, log=lambda line: None)
    assert [(r["seed"], r["loss"], r["penalty"]) for r in first["runs"]] == [
        (0, "sum", 0.6), (0, "firm", 0.6), (0, "firm", 1.0), (1, "sum", 0.6), (1, "firm", 0.6)]
    (tmp_path / "seeds" / "mnist5k-s1.json").unlink()  # killed while seed 1 ran: seed 0 is on disk
    trained = []
    real_train = cascade_grid._train
    monkeypatch.setattr(cascade_grid, "_train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    lines = []
    again = cascade_grid.run_grid(config, tmp_path, log=lines.append)
    assert len(trained) == 3  # seed 1 only: base, sum, firm (pre-training reused from sum)
    assert any("seed 0: reused" in line for line in lines)
    assert again["base"][0] == json.loads(json.dumps(first["base"][0], default=str))
    assert [r["correct_bits"] for r in again["runs"]] == [r["correct_bits"] for r in first["runs"]]  # seeded
    with pytest.raises(InputError, match="mnist5k-s0.json: made with another cascade config"):
        cascade_grid.run_grid(cascade_grid.load_config(overrides={**SMALL, "epochs": 2}), tmp_path, log=print)
