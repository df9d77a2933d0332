import json
from pathlib import Path

import numpy as np
import pytest

from cnncompress.errors import InputError
from cnncompress.experiments import findings, stats
from cnncompress.experiments.verdict import FAILS, HOLDS, INCONCLUSIVE

REPO = Path(__file__).resolve().parents[2]


def test_the_registered_findings_load_and_cover_the_three_papers():
    written, registered = findings.load(REPO / "experiments" / "findings.yaml")
    assert written and len(registered) >= 30
    papers = {f.paper for f in registered}
    assert papers == set(findings.PAPERS)
    assert sum(f.paper == "berthelier2018" for f in registered) >= 5
    assert not any("threshold rises" in f.claim for f in registered)  # a tautology is not a finding


def test_a_bad_findings_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text("findings:\n- {id: x, paper: nobody, section: t, claim: c, paper_figure: p, "
                   "measure: {kind: size_ratio}, direction: above, margin: 1}\n")
    with pytest.raises(InputError) as error:
        findings.load(bad)
    assert str(error.value).startswith(str(bad)) and "\n" not in str(error.value)


def _bits(n, right, seed=0):
    rng = np.random.default_rng(seed)
    bits = np.zeros(n, bool)
    bits[rng.choice(n, right, replace=False)] = True
    return bits


def _row(label, bits, control_bits=None, size=1000, seed=0):
    row = {"label": label, "seed": seed, "correct": stats.pack(bits), "images": len(bits), "file_bytes": size,
           "train_ms_step": 10.0}
    if control_bits is not None:
        row["control"] = {"correct": stats.pack(control_bits), "images": len(control_bits)}
    return row


def test_measures_recompute_from_per_image_bits_and_decide():
    n = 2000
    control = _bits(n, 1960)
    loss = control.copy()
    loss[np.flatnonzero(control)[:200]] = False  # 10 points below its control
    raw = {"table2": {"rows": [_row("A", loss, control, size=100), _row("base", control, size=3000)]}}
    registered = [findings.Finding("a", "rassadin2017", "table2", "A loses", "", {"kind": "accuracy_vs_control",
                                   "row": "A"}, "below", -5),
                  findings.Finding("b", "rassadin2017", "table2", "A keeps", "", {"kind": "accuracy_vs_control",
                                   "row": "A"}, "above", -2),
                  findings.Finding("c", "rassadin2017", "table2", "smaller", "", {"kind": "size_ratio", "row": "A",
                                   "other": "base"}, "above", 20),
                  findings.Finding("d", "rassadin2017", "table2", "missing", "", {"kind": "size_ratio", "row": "Z",
                                   "other": "base"}, "above", 2)]
    results = [(f.id, findings.decided(f, findings.measure(f, raw))) for f in registered]
    assert results == [("a", HOLDS), ("b", FAILS), ("c", HOLDS), ("d", findings.NOT_MEASURED)]
    evidence = findings.measure(registered[0], raw)
    assert abs(evidence.estimate + 10.0) < 1e-9 and evidence.low < -10 < evidence.high


def test_latency_ratio_comes_from_one_race_with_an_interval_over_rounds():
    rng = np.random.default_rng(1)
    slow = list(10 + rng.normal(0, 0.2, 40))
    fast = list(5 + rng.normal(0, 0.2, 40))
    raw = {"race": {"rounds": {"A": {"torch": slow, "onnxruntime": [x + 3 for x in slow]}, "B": {"torch": fast}}}}
    f = findings.Finding("x", "rassadin2017", "table2", "A slower", "", {"kind": "latency_ratio", "row": "A",
                         "other": "B"}, "above", 1.05)
    evidence = findings.measure(f, raw)
    assert 1.9 < evidence.low < evidence.estimate < evidence.high < 2.1 and "torch vs torch" in evidence.detail
    assert findings.decided(f, evidence) == HOLDS


def test_one_seed_gives_no_interval_over_seeds_so_the_finding_is_inconclusive():
    raw = {"table3": {"t": [{"targets": "softmax", "seed": 0, "accuracy": 0.9},
                            {"targets": "labels", "seed": 0, "accuracy": 0.5}]}}
    f = findings.Finding("t3", "rassadin2017", "table3", "softmax wins", "", {"kind": "distill_between",
                         "experiment": "t", "metric": "accuracy", "a": "softmax", "b": "labels"}, "above", 1)
    evidence = findings.measure(f, raw)
    assert evidence.estimate == pytest.approx(40.0) and evidence.low is None
    assert findings.decided(f, evidence) == INCONCLUSIVE


def test_cascade_findings_pair_runs_on_the_same_test_images():
    n = 1000
    base, firm = _bits(n, 990), _bits(n, 900)
    early = _bits(n, 600)
    raw = {"cascade": {"config": {"penalty": 0.6},
                       "base": [{"data": "d", "seed": 0, "correct_bits": stats.pack(base), "images": n}],
                       "runs": [{"data": "d", "seed": 0, "loss": "firm", "position": "p2", "penalty": 0.6,
                                 "correct_bits": stats.pack(firm), "exit_bits": stats.pack(early), "images": n}]}}
    f = findings.Finding("p", "pimpley", "cascade", "base wins", "", {
        "kind": "cascade_between", "metric": "accuracy", "a": {"run": "base", "data": "d"},
        "b": {"data": "d", "loss": "firm", "position": "p2"}}, "above", 0)
    evidence = findings.measure(f, raw)
    assert evidence.estimate == pytest.approx(9.0) and findings.decided(f, evidence) == HOLDS
    json.dumps(raw)  # the raw data is plain JSON, as the report folder stores it
