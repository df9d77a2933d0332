"""``report.md`` of a ``reproduce`` folder, rendered from its raw files only, and ``verify`` that re-renders it.

The raw files (written by ``reproduce.write_report``): ``meta.json`` (machine, commit, load, sections, times),
``findings.yaml`` (the pre-registered findings as they were when the run started, with the date they last
changed), ``table2/results.json`` (every row and seed with its per-image correctness bits and matched control),
``table2/race.json`` (the per-round times of one interleaved race of the Table-2 models), ``table3/results.json``
(every distillation row and seed), ``cascade/results.json`` (every run with per-image correct / early-exit bits).
Every number in the report is computed here from those files, and every verdict by ``findings`` (the interval
against the registered margin), so ``verify`` can recompute the whole report and name the first number that
differs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from cnncompress.errors import input_error
from cnncompress.experiments import findings as findings_mod

PAPER_TABLE2 = [  # method label, training ms per batch, inference ms, size MB, accuracy %
    ("VGG-S (baseline)", 43.7, 33.4, 372.2, 97.13),
    ("SqueezeNet-1.1 (baseline)", 22.94, 4.94, 2.8, 89.14),
    ("SqueezeNet-1.1, CP-Decomposition", 22.94, 7.74, 2.1, 87.5),
    ("HashedNets", 294.8, 158.2, 68.3, 96.31),
    ("Binary-Weight-Network (BWN)", 83.8, 33.5, 11.6, 98.57),
    ("XNOR-Net", 84.3, 34.2, 11.6, 58.81),
    ("XNOR-Net w/o weights binarization", 43.4, 34.1, 11.6, 88.32),
]
PAPER_TABLE3 = {"VGG on EmotiW": {"labels": (66.5, 12.3), "softmax": (73.0, 23.8)},
                "VGG on RaFD": {"labels": (75.5, 40.9), "softmax": (77.0, 46.9)}}
SECTIONS = {"table2": "Table 2 and the survey's methods", "table3": "Table 3 — distillation on unlabelled images",
            "cascade": "Early exits — cascade losses (Pimpley & Indulkar)",
            "table-emotion": "Table emotion: the real emotion CNN compressed without labels"}


def _table2(raw: dict, meta: dict) -> list[str]:
    from cnncompress.experiments.report import add_ratios, group_seeds, table_lines
    rows = raw["table2"]["rows"]
    race = raw.get("race") or {}
    lines = [f"Recipe `{meta.get('recipes', {}).get('table2', '?')}`: accuracy of the deployed model on the test "
             "split (read once per row, `test_evaluations` below), Δ against the matched control with a 95 % "
             "paired bootstrap interval over test images and seeds. Latency ratios in the findings come from one "
             f"interleaved race of the models ({race.get('rounds_count', 0)} rounds, batch 1, "
             f"{race.get('threads', '?')} thread(s), input {race.get('input_shape')}); the `speed-up` column of the "
             "table is each row's own race against the baseline.", ""]
    lines += table_lines([dict(r) for r in rows]) + [""]
    counts = sorted({r.get("test_evaluations") for r in rows if "error" not in r}, key=str)
    lines += [f"Test-split evaluations per row: {', '.join(map(str, counts))}.", ""]
    paper = ["| paper row | paper train ms | paper infer ms | paper MB | paper acc % | ours acc % | ours MB |",
             "|---|---|---|---|---|---|---|"]
    grouped = {r["label"]: r for r in group_seeds(add_ratios([dict(r) for r in rows])) if "error" not in r}
    for label, train, infer, size, acc in PAPER_TABLE2:
        row = grouped.get(label)
        ours = (f"{row['accuracy']:.2f} | {row['file_bytes'] / 1e6:.3f}" if row else "n/a | n/a")
        paper.append(f"| {label} | {train} | {infer} | {size} | {acc} | {ours} |")
    return lines + paper + [""]


def _table3(raw: dict, meta: dict) -> list[str]:
    from cnncompress.experiments.distill_table import table
    lines = ["Paper (student SqueezeNet-1.1 distilled on 13,813 PubFig83 faces, tested on RaFD):", "",
             "| teacher | targets | train (PubFig83) acc % | test (RaFD) acc % |", "|---|---|---|---|"]
    for teacher, columns in PAPER_TABLE3.items():
        for targets, (train, test) in columns.items():
            lines.append(f"| {teacher} | {targets} | {train} | {test} |")
    lines += ["", f"Ours (`{meta.get('recipes', {}).get('table3', '?')}`):", ""]
    for name, rows in raw["table3"].items():
        lines += [f"### {name}", "", table(rows), ""]
    return lines


def _cascade(raw: dict, meta: dict) -> list[str]:
    from cnncompress.experiments.cascade_grid import table_lines
    results = raw["cascade"]
    config = {k: v for k, v in results["config"].items() if k != "thresholds"}
    return [f"Grid: `{json.dumps(config, sort_keys=True)}`.", ""] + table_lines(results) + [""] + \
        [f"![{name}](cascade/{name})" for name in meta.get("figures", {}).get("cascade", [])] + [""]


def _emotion(raw: dict, meta: dict) -> list[str]:
    from cnncompress.experiments import emotion_report
    rows = raw["table-emotion"]
    counts = sorted({r.get("test_evaluations") for r in rows[1:] if "not_applicable" not in r}, key=str)
    return ["Each method is applied to the pretrained `fer-minixception` and recovered without labels (batch-norm "
            "statistics re-estimated, distilled from the original on unlabelled faces). Agreement: top-1 agreement "
            "with the original on held-out faces, 95 % bootstrap interval over the images.", "",
            emotion_report.table(rows), "",
            f"Openings of the sealed held-out faces per row: {', '.join(map(str, counts))} (`test_evaluations`). "
            "The confirmation seeds go to the row that the frozen selection rule (`emotion_crossfit.pick`: >= 8x "
            "smaller, the highest agreement on the selection set) takes; the held-out faces chose nothing.", "",
            "**No verdict on the 8x / 90 % aim here**: these are 25 held-out faces of one split. The verdict is "
            "`cnncompress reproduce emotion-crossfit`'s, where every one of the 100 faces is held out once.", ""]


RENDER = {"table2": _table2, "table3": _table3, "cascade": _cascade, "table-emotion": _emotion}


def render(folder: str | Path) -> str:
    """The whole report of ``folder`` from its raw files."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise input_error(folder, "no meta.json: not a folder written by `cnncompress reproduce`")
    meta = json.loads(meta_path.read_text())
    _, registered = findings_mod.load(folder / "findings.yaml")
    first = (folder / "findings.yaml").read_text().split("\n", 1)[0]
    written = first.partition("(last changed ")[2].rstrip(")") or "unknown"
    raw = findings_mod.raw_files(folder)
    env = meta.get("environment", {})
    lines = ["# Reproduction report: the papers' findings, decided by their intervals", "",
             f"Machine: {env.get('cpu')} ({env.get('cores')} cores; ISA {env.get('isa')}); load before the run "
             f"{env.get('load')}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, OpenVINO "
             f"{env.get('openvino')}; commit {env.get('git_commit')}"
             f"{'; checked out at the end: ' + env['git_commit_at_end'] if env.get('git_commit_at_end') else ''}; "
             f"{'--quick' if meta.get('quick') else 'full'} "
             f"run of {', '.join(meta.get('sections', []))} on {meta.get('date')}.", "",
             f"Findings: {len(registered)} pre-registered in `findings.yaml` (last changed {written}, before this "
             "run started). Each is decided only by its 95 % interval against its margin: **holds** when the whole "
             "interval is inside the claim's region, **does not hold** when it is wholly outside, **inconclusive** "
             "when it straddles the edge or there is no interval (one seed where the interval is over seeds). Point "
             "estimates decide nothing. `cnncompress reproduce verify DIR` recomputes every number here from the "
             "raw files.", ""]
    for section, title in SECTIONS.items():
        if section not in meta.get("sections", []) or not raw.get(section):
            continue
        lines += [f"## {title}", ""] + RENDER[section](raw, meta)
        lines += findings_mod.table(registered, raw, section) + [""]
    counts: dict[str, int] = {}
    for finding in registered:
        if finding.section in meta.get("sections", []):
            verdict = findings_mod.decided(finding, findings_mod.measure(finding, raw))
            counts[verdict] = counts.get(verdict, 0) + 1
    lines += ["## Summary", "", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "",
              f"_Total time {meta.get('seconds', 0):.0f}s._"]
    return "\n".join(lines) + "\n"


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def first_mismatch(expected: str, actual: str) -> str | None:
    """None when the texts agree, else one line naming the first line and number (or word) that differs."""
    want, have = expected.splitlines(), actual.splitlines()
    for index in range(max(len(want), len(have))):
        a = want[index] if index < len(want) else "<missing>"
        b = have[index] if index < len(have) else "<missing>"
        if a == b:
            continue
        tokens_a, tokens_b = NUMBER.findall(a), NUMBER.findall(b)
        for x, y in zip(tokens_a, tokens_b):
            if x != y:
                return f"report.md line {index + 1}: {y!r} where the raw files give {x!r} ({b.strip()[:100]})"
        return f"report.md line {index + 1} differs: {b.strip()[:100]!r}, the raw files give {a.strip()[:100]!r}"
    return None


def verify(folder: str | Path) -> str | None:
    """None when ``folder/report.md`` is exactly what its raw files give, else the first mismatch."""
    report = Path(folder) / "report.md"
    if not report.is_file():
        raise input_error(report, "not found")
    return first_mismatch(render(folder), report.read_text())
