import json
from pathlib import Path

import numpy as np

from cnncompress.experiments import findings, stats
from cnncompress.experiments.reproduce_render import PAPER_TABLE2, first_mismatch, render, verify

REPO = Path(__file__).resolve().parents[2]
FINDING = """findings:
  - {id: P-base, paper: pimpley, section: cascade, claim: "base beats firm", paper_figure: "Base > Firm",
     measure: {kind: cascade_between, metric: accuracy, a: {run: base, data: d}, b: {data: d, loss: firm,
     position: p2}}, direction: above, margin: 0}
"""


def _report_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 500
    base, firm = rng.random(n) < 0.99, rng.random(n) < 0.80
    folder = tmp_path / "rep"
    (folder / "cascade").mkdir(parents=True)
    (folder / "findings.yaml").write_text("# registered_from: findings.yaml (last changed 2026-12-07)\n" + FINDING)
    (folder / "meta.json").write_text(json.dumps({"sections": ["cascade"], "quick": True, "seconds": 12.0,
                                                  "date": "2026-12-07", "environment": {"cpu": "test CPU"}}))
    run = {"data": "d", "seed": 0, "loss": "firm", "position": "p2", "penalty": 0.6, "accuracy": float(firm.mean()),
           "exit_rate": 0.5, "base_accuracy": float(base.mean()), "chosen_threshold": 0.6,
           "chosen_accuracy": float(firm.mean()), "chosen_exit_rate": 0.5, "correct_bits": stats.pack(firm),
           "exit_bits": stats.pack(rng.random(n) < 0.5), "images": n, "test_evaluations": 1}
    (folder / "cascade" / "results.json").write_text(json.dumps({
        "config": {"penalty": 0.6, "threshold": 0.6, "thresholds": [0.6]},
        "base": [{"data": "d", "seed": 0, "accuracy": float(base.mean()), "correct_bits": stats.pack(base),
                  "images": n, "test_evaluations": 1}], "runs": [run]}))
    (folder / "report.md").write_text(render(folder))
    return folder


def test_the_report_recomputes_from_its_raw_files_and_a_changed_number_is_named(tmp_path, run_cli):
    folder = _report_folder(tmp_path)
    text = (folder / "report.md").read_text()
    assert "**holds**" in text and "`P-base`" in text and "test CPU" in text
    assert verify(folder) is None
    code, out, _ = run_cli("reproduce", "verify", folder)
    assert code == 0 and "recomputes" in out
    low = text.split("pts [", 1)[1].split(",", 1)[0]  # the interval's lower end of the finding
    changed = text.replace(f"pts [{low},", f"pts [{float(low) + 0.5:.1f},", 1)
    assert changed != text
    (folder / "report.md").write_text(changed)
    code, _, err = run_cli("reproduce", "verify", folder)
    assert code == 1 and f"'{float(low) + 0.5:.1f}' where the raw files give '{low}'" in err and "line" in err
    code, _, err = run_cli("reproduce", "verify", tmp_path / "nothing")
    assert code == 2


def test_first_mismatch_names_the_number():
    assert first_mismatch("a 1.5 b\nc", "a 1.5 b\nc") is None
    assert "'1.6'" in first_mismatch("x\na 1.5 b", "x\na 1.6 b") and "line 2" in first_mismatch("x\na", "x\nb")


def test_reproduce_cli_rejects_missing_recipe(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "--out", tmp_path, "--table2-recipe", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml" in err
    code, _, err = run_cli("reproduce", "table9")
    assert code == 2


def test_quick_and_full_together_are_refused(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "--quick", "--full", "--out", tmp_path / "r")
    assert code == 2 and "--quick and --full" in err and not (tmp_path / "r").exists()


def test_quick_recipe_holds_the_paper_rows_and_every_row_a_table2_finding_names():
    from cnncompress.commands.reproduce import RECIPES
    from cnncompress.experiments.recipe import load_recipe
    quick = load_recipe(RECIPES / "quick" / "table2.yaml")
    labels = {r.label for r in quick.rows}
    assert quick.seeds == [0] and {label for label, *_ in PAPER_TABLE2} <= labels
    _, registered = findings.load(REPO / "experiments" / "findings.yaml")
    named = {f.measure[k] for f in registered if f.section == "table2" for k in ("row", "other") if k in f.measure}
    assert named <= labels, named - labels




def test_meta_gives_the_load_and_commit_from_before_the_runs_and_names_a_checkout_that_changed(monkeypatch):
    from cnncompress.experiments import environment, reproduce
    monkeypatch.setattr(environment, "git_commit", lambda: "aaaaaaa")
    start = reproduce._at_start()
    assert start["git_commit"] == "aaaaaaa" and len(start["load"].split()) == 3
    monkeypatch.setattr(environment, "git_commit", lambda: "bbbbbbb")  # checked out while the runs went on
    meta = reproduce._meta(Path("."), ["cascade"], True, {}, 1.0, {}, {**start, "load": "9.00 9.00 9.00"})
    assert meta["environment"]["git_commit"] == "aaaaaaa" and meta["environment"]["load"] == "9.00 9.00 9.00"
    assert meta["environment"]["git_commit_at_end"] == "bbbbbbb"
    same = reproduce._meta(Path("."), ["cascade"], True, {}, 1.0, {}, {**start, "git_commit": "bbbbbbb"})
    assert "git_commit_at_end" not in same["environment"]
