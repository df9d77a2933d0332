import numpy as np

from cnncompress.experiments import stats
from cnncompress.experiments.reproduce import (PAPER_TABLE2, cascade_findings, paper_rows, table2_findings,
                                               table2_report, table3_findings)


def _row(label, acc, mb, ms, train=10.0, model="vgg_s", config=None):
    method = "baseline" if "baseline" in label else label
    return {"label": label, "model": model, "method": method, "config": config or {}, "accuracy": acc,
            "file_bytes": int(mb * 1e6), "torch_ms": ms, "ort_ms": ms * 2, "train_ms_step": train}


PAPER_LIKE = [_row("VGG-S (baseline)", 97, 372, 33), _row("SqueezeNet-1.1 (baseline)", 89, 2.8, 5, model="sq"),
              _row("SqueezeNet-1.1, CP-Decomposition", 87.5, 2.1, 7.7, model="sq", config={"rank": 192}),
              _row("HashedNets", 96, 68, 158, train=295),
              _row("Binary-Weight-Network (BWN)", 98.5, 11.6, 33), _row("XNOR-Net", 58, 11.6, 34),
              _row("XNOR-Net w/o weights binarization", 88, 11.6, 34)]


def test_paper_numbers_satisfy_every_table2_finding():
    findings = table2_findings({r["label"]: r for r in PAPER_LIKE})
    assert len(findings) == 11 and all(f.held for f in findings), [f.claim for f in findings if not f.held]


def test_findings_can_fail_and_missing_rows_are_not_checked():
    rows = {r["label"]: dict(r) for r in PAPER_LIKE}
    rows["XNOR-Net"]["accuracy"] = 98.0
    del rows["HashedNets"]
    verdicts = {f.claim: f.held for f in table2_findings(rows)}
    assert verdicts["XNOR-Net loses much accuracy (>10 points below BWN)"] is False
    assert verdicts["HashedNets infer much slower (paper 4.7x)"] is None
    report = "\n".join(table2_report(list(rows.values()), "r.yaml"))
    assert "does not hold" in report and "not checked" in report
    assert all(label in report for label, *_ in PAPER_TABLE2)


def test_cp_row_at_another_rank_is_not_compared_with_the_paper():
    rows = [dict(r) for r in PAPER_LIKE]
    rows[2]["config"] = {"rank": 48}
    assert "SqueezeNet-1.1, CP-Decomposition" not in paper_rows(rows)
    verdicts = {f.claim: f.held for f in table2_findings(paper_rows(rows))}
    assert verdicts["CP decomposition shrinks SqueezeNet"] is None  # not checked
    report = "\n".join(table2_report(rows, "r.yaml"))
    assert "not the paper's setting: rank=48 (paper: 192)" in report


def test_seeds_are_averaged_and_changes_get_an_interval():
    rng = np.random.default_rng(0)
    control = rng.random(200) < 0.9
    rows = [dict(r) for r in PAPER_LIKE if r["label"] != "Binary-Weight-Network (BWN)"]
    for seed, acc in ((0, 98.0), (1, 99.0)):
        correct = control.copy()
        correct[:seed + 3] = True
        rows.append({**_row("Binary-Weight-Network (BWN)", acc, 11.6, 33), "seed": seed,
                     "correct": stats.pack(correct), "images": 200,
                     "control": {"accuracy": 97.0, "correct": stats.pack(control), "images": 200, "epochs": 1}})
    bwn = paper_rows(rows)["Binary-Weight-Network (BWN)"]
    assert bwn["accuracy"] == 98.5 and bwn["seeds"] == 2 and bwn["ci_low"] <= bwn["delta"] <= bwn["ci_high"]
    report = "\n".join(table2_report(rows, "r.yaml"))
    assert "98.50 ± 0.71" in report and f"{bwn['delta']:+.2f} [" in report


def test_table3_softmax_vs_labels():
    rows = [{"targets": "labels", "accuracy": 0.40, "agreement_heldout": 0.5},
            {"targets": "softmax", "accuracy": 0.47, "agreement_heldout": 0.45}]
    verdicts = [f.held for f in table3_findings({"x": rows})]
    assert verdicts == [True, False]


def _run(loss, position, accuracy, exit_rate, data="mnist5k"):
    sweep = [{"threshold": t, "exit_rate": max(0.0, exit_rate * (1 - t)) if t < 1 else 0.0, "accuracy": accuracy}
             for t in (0.0, 0.5, 1.0)]
    return {"data": data, "loss": loss, "position": position, "penalty": 0.6, "accuracy": accuracy,
            "exit_rate": exit_rate, "base_accuracy": 0.99, "sweep": sweep}


def test_cascade_findings():
    runs = [_run("sum", "p1", 0.90, 0.5), _run("sum", "p2", 0.95, 0.6), _run("soft", "p1", 0.93, 0.3),
            _run("soft", "p2", 0.96, 0.4), _run("firm", "p1", 0.94, 0.7), _run("firm", "p2", 0.97, 0.8)]
    findings = cascade_findings({"runs": runs, "config": {"threshold": 0.6, "penalty": 0.6}})
    assert len(findings) == 5 and all(f.held for f in findings)
    runs[-1]["accuracy"] = 0.995
    findings = cascade_findings({"runs": runs, "config": {"threshold": 0.6, "penalty": 0.6}})
    assert findings[0].held is False


def test_reproduce_cli_rejects_missing_recipe(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "--out", tmp_path, "--table2-recipe", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml" in err
    code, _, err = run_cli("reproduce", "table9")
    assert code == 2


def test_quick_and_full_together_are_refused(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "--quick", "--full", "--out", tmp_path / "r")
    assert code == 2 and "--quick and --full" in err and not (tmp_path / "r").exists()


def test_quick_recipes_are_the_paper_rows_with_one_seed():
    from cnncompress.commands.reproduce import RECIPES
    from cnncompress.experiments.recipe import load_recipe
    quick = load_recipe(RECIPES / "quick" / "table2.yaml")
    assert quick.seeds == [0] and {r.label for r in quick.rows} == {label for label, *_ in PAPER_TABLE2}


def test_a_difference_whose_interval_covers_zero_is_within_noise():
    from cnncompress.experiments.reproduce import NOISE, table3_findings
    from cnncompress.experiments.stats import seed_interval
    assert seed_interval([1.0]) is None  # one seed: no spread, no interval
    wide, clear = seed_interval([2.0, -1.0, 0.5]), seed_interval([2.0, 2.2, 1.9])
    assert wide["within_noise"] and wide["low"] < 0 < wide["high"]
    assert not clear["within_noise"] and 1.9 < clear["delta"] < 2.1 and clear["low"] > 0
    rows = [{"targets": t, "seed": s, "accuracy": a, "agreement_heldout": g}
            for s, (la, sa) in enumerate([(0.90, 0.92), (0.91, 0.90), (0.89, 0.91)])
            for t, a, g in (("labels", la, 0.5), ("softmax", sa, 0.6 + 0.01 * s))]
    verdicts = {f.claim: f for f in table3_findings({"t": rows})}
    accuracy = verdicts["[t] softmax targets beat label-only (test accuracy)"]
    assert accuracy.held == NOISE and "within noise" in accuracy.line() and "over seeds" in accuracy.ours
    assert verdicts["[t] softmax targets beat label-only (held-out agreement with the teacher)"].held is True
