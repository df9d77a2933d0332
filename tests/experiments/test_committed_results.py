"""The committed reproduction report recomputes, number for number, from the raw files committed beside it."""
from pathlib import Path

import pytest

from cnncompress.experiments.reproduce_render import verify

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "reproduce"


VERIFIED = ("reproduce", "cascade-20epochs", "table-emotion")  # folders written by `cnncompress reproduce`, kept whole


@pytest.mark.parametrize("folder", VERIFIED)
def test_the_committed_report_verifies_from_its_raw_files(folder):
    assert (RESULTS.parent / folder / "report.md").is_file(), f"docs/results/{folder}/report.md is missing"
    assert verify(RESULTS.parent / folder) is None


def test_every_table_emotion_row_opened_the_held_out_faces_once_and_its_confirmation_row_was_picked_blind():
    import json

    from cnncompress.experiments import emotion_table
    rows = json.loads((RESULTS.parent / "table-emotion" / "table-emotion" / "rows.json").read_text())
    measured = [r for r in rows[1:] if "not_applicable" not in r]
    assert measured and {r["test_evaluations"] for r in measured} == {1}
    confirmed = {r["label"] for r in measured if r["seed"] != 0}
    picked = emotion_table.confirmation_row(measured, seed=0)  # reads selection-set figures only
    assert confirmed == ({picked["label"]} if picked else set())


def test_the_20_epoch_cascade_grid_read_its_test_split_once_per_row_with_three_seeds():
    import json
    cascade = json.loads((RESULTS.parent / "cascade-20epochs" / "cascade" / "results.json").read_text())
    assert {r["test_evaluations"] for r in cascade["runs"] + cascade["base"]} == {1}
    assert cascade["config"]["epochs"] == 20 and len(cascade["config"]["seeds"]) >= 3
    groups: dict = {}
    for run in cascade["runs"]:  # every loss, exit and penalty of the grid at every seed (the sweep too)
        groups.setdefault((run["data"], run["loss"], run["position"], run["penalty"]), set()).add(run["seed"])
    assert {("mnist5k", "firm", "p1", 0.0), ("noisy-mnist5k", "firm", "p2", 1.0)} <= set(groups)
    assert all(seeds == set(cascade["config"]["seeds"]) for seeds in groups.values())


def test_every_committed_row_read_its_test_split_once():
    import json
    rows = json.loads((RESULTS / "table2" / "results.json").read_text())["rows"]
    cascade = json.loads((RESULTS / "cascade" / "results.json").read_text())
    counts = [r["test_evaluations"] for r in rows if "error" not in r] + [
        r["test_evaluations"] for r in cascade["runs"] + cascade["base"]]
    assert counts and set(counts) == {1}
    for rows in json.loads((RESULTS / "table3" / "results.json").read_text()).values():
        assert {r["test_evaluations"] for r in rows} == {1}


DOCS = RESULTS.parent


def test_the_committed_emotion_crossfit_headline_and_report_recompute():
    """docs/results/emotion-crossfit: the pooled headline (intervals, verdict) recomputes from the per-fold raw
    records, the report renders to the committed text, and every face was held out once per seed."""
    import json
    from cnncompress.experiments import emotion_crossfit
    folder = DOCS / "emotion-crossfit"
    result = json.loads((folder / "results.json").read_text())
    assert json.dumps(emotion_crossfit.headline(result["folds"]), sort_keys=True) == \
        json.dumps(result["headline"], sort_keys=True)
    assert emotion_crossfit.report(result) == (folder / "report.md").read_text()
    counts = result["test_evaluations"]
    assert set(counts["faces"].values()) == {result["pool_size"]} == {100}
    assert all(set(per_face.values()) == {1} and len(per_face) == 100 for per_face in counts["per_face"].values())


def test_the_committed_table2_paper_rows_read_their_test_split_once():
    import json
    rows = json.loads((DOCS / "table2-paper-rows" / "results.json").read_text())["rows"]
    assert len(rows) == 24 and {r["test_evaluations"] for r in rows} == {1} and all(r["correct"] for r in rows)
