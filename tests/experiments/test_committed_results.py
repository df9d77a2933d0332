"""The committed reproduction report recomputes, number for number, from the raw files committed beside it."""
from pathlib import Path

from cnncompress.experiments.reproduce_render import verify

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "reproduce"


def test_the_committed_report_verifies_from_its_raw_files():
    assert (RESULTS / "report.md").is_file(), "docs/results/reproduce/report.md is missing"
    assert verify(RESULTS) is None


def test_every_committed_row_read_its_test_split_once():
    import json
    rows = json.loads((RESULTS / "table2" / "results.json").read_text())["rows"]
    cascade = json.loads((RESULTS / "cascade" / "results.json").read_text())
    counts = [r["test_evaluations"] for r in rows if "error" not in r] + [
        r["test_evaluations"] for r in cascade["runs"] + cascade["base"]]
    assert counts and set(counts) == {1}
    for rows in json.loads((RESULTS / "table3" / "results.json").read_text()).values():
        assert {r["test_evaluations"] for r in rows} == {1}
