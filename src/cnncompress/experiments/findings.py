"""Pre-registered findings (``experiments/findings.yaml``) measured on a report folder's raw files and decided by
their 95 % interval against the claim's margin (``verdict.decide``).

Each finding names a ``measure`` (what is computed, from which raw file) and a claim ``direction`` + ``margin``
on it. The measures, with the interval each one draws:

- ``accuracy_vs_control`` {row}: Δ accuracy points, Table-2 row − its matched control (the baseline trained as
  many epochs); paired bootstrap over test images and seeds (``stats.delta_interval``).
- ``accuracy_between`` {row, other}: Δ points, row − other row of the same seed, same paired bootstrap.
- ``size_ratio`` {row, other}: bytes(other) / bytes(row) of the real ``.ccz`` files, mean over seeds; a
  deterministic quantity, its interval is the range over seeds.
- ``latency_ratio`` {row, other}: median latency(row) / median latency(other), each on its fastest engine, from
  ONE interleaved race (``table2/race.json``); bootstrap over the race's rounds, paired (round i of both ran
  under the same load).
- ``train_step_ratio`` {row, other}: training ms per step, row / other, per seed; Student-t interval of the
  per-seed ratios (none with one seed).
- ``distill_between`` {experiment, metric, a, b}: Table 3, Δ points of ``metric`` between two target kinds,
  paired by seed; Student-t interval over seeds (``stats.seed_interval``; none with one seed).
- ``distill_over_floor`` {experiment, targets}: Table 3, agreement with the teacher on the student's own training
  images − the teacher's majority-class rate (answering one class always), per seed; t interval over seeds.
- ``cascade_between`` {data, metric: accuracy | exit_rate, a, b}: Pimpley & Indulkar, Δ points between two
  runs (``a``/``b``: ``base`` or {loss, position, penalty, data}) on the same test images at the main
  threshold; paired bootstrap over images and seeds from the per-image bits each run stores.

A finding whose rows are missing is "not measured" (said, never dropped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncompress.errors import InputError, input_error
from cnncompress.experiments import stats
from cnncompress.experiments.verdict import INCONCLUSIVE, Claim, decide

PAPERS = {"rassadin2017": "Rassadin & Savchenko 2017", "berthelier2018": "Berthelier et al. 2018 (survey)",
          "pimpley": "Pimpley & Indulkar"}
FIELDS = ("id", "paper", "section", "claim", "paper_figure", "measure", "direction", "margin")
NOT_MEASURED = "not measured"
REPS = 2000


@dataclass(frozen=True)
class Finding:
    id: str
    paper: str
    section: str
    claim: str
    paper_figure: str
    measure: dict
    direction: str
    margin: float

    @property
    def rule(self) -> Claim:
        return Claim(self.direction, self.margin)


@dataclass
class Evidence:
    estimate: float | None
    low: float | None
    high: float | None
    unit: str
    detail: str

    def text(self) -> str:
        if self.estimate is None:
            return self.detail
        digits = 2 if self.unit == "x" else 1
        number = f"{self.estimate:.{digits}f}{self.unit}"
        spread = "" if self.low is None else f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return f"{number}{spread}" + (f"; {self.detail}" if self.detail else "")


def load(path: str | Path) -> tuple[str, list[Finding]]:
    """``(written, findings)`` of a findings file; one InputError line naming the file and the bad entry."""
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise input_error(path, f"cannot read findings ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise input_error(path, "expected a mapping with a `findings:` list")
    findings, seen = [], set()
    for index, entry in enumerate(data["findings"]):
        if not isinstance(entry, dict) or set(entry) != set(FIELDS):
            missing = sorted(set(FIELDS) - set(entry or {})) if isinstance(entry, dict) else FIELDS
            raise input_error(path, f"finding {index}: needs exactly the fields {', '.join(FIELDS)} "
                                    f"(missing {', '.join(missing) or 'none'})")
        if entry["id"] in seen or entry["paper"] not in PAPERS or entry["measure"].get("kind") not in MEASURES:
            raise input_error(path, f"finding {entry['id']!r}: duplicate id, unknown paper or unknown measure kind")
        seen.add(entry["id"])
        try:
            finding = Finding(**{**entry, "margin": float(entry["margin"])})
            finding.rule  # noqa: B018 - validates direction and margin
        except (TypeError, ValueError) as error:
            raise input_error(path, f"finding {entry['id']!r}: {error}") from error
        findings.append(finding)
    return str(data.get("written", "")), findings


# ------------------------------------------------------------------ raw files of a report folder
def raw_files(folder: str | Path) -> dict:
    """What the measures read, from ``folder`` (missing files are empty)."""
    folder = Path(folder)

    def read(name):
        path = folder / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise input_error(path, f"cannot read ({error})") from error
    return {"table2": read("table2/results.json"), "race": read("table2/race.json"),
            "table3": read("table3/results.json"), "cascade": read("cascade/results.json"),
            "table-emotion": read("table-emotion/rows.json")}


def _rows(raw: dict, label: str) -> dict[int, dict]:
    rows = (raw.get("table2") or {}).get("rows", [])
    return {r.get("seed", 0): r for r in rows if r.get("label") == label and "error" not in r}


def _bits(row: dict) -> np.ndarray:
    return stats.unpack(row["correct"], row["images"])


def _missing(*what) -> Evidence:
    return Evidence(None, None, None, "", f"{NOT_MEASURED}: no {' / '.join(map(str, what))} in the raw files")


def accuracy_vs_control(raw, row) -> Evidence:
    rows = _rows(raw, row)
    pairs = [(_bits(r), stats.unpack(r["control"]["correct"], r["control"]["images"])) for r in rows.values()
             if "control" in r and "correct" in r]
    if not pairs:
        return _missing(row)
    ci = stats.delta_interval(pairs, reps=REPS)
    dead = "; the row COLLAPSED to chance" if any(r.get("collapsed") for r in rows.values()) else ""
    return Evidence(ci["delta"], ci["low"], ci["high"], " pts",
                    f"{ci['seeds']} seed(s) x {ci['images']} images{dead}")


def accuracy_between(raw, row, other) -> Evidence:
    a, b = _rows(raw, row), _rows(raw, other)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return _missing(row, other)
    ci = stats.delta_interval([(_bits(a[s]), _bits(b[s])) for s in seeds], reps=REPS)
    return Evidence(ci["delta"], ci["low"], ci["high"], " pts", f"{ci['seeds']} seed(s) x {ci['images']} images")


def size_ratio(raw, row, other) -> Evidence:
    a, b = _rows(raw, row), _rows(raw, other)
    ratios = [b[s]["file_bytes"] / a[s]["file_bytes"] for s in sorted(set(a) & set(b))]
    if not ratios:
        return _missing(row, other)
    return Evidence(float(np.mean(ratios)), min(ratios), max(ratios), "x", "real files; range over seeds")


def latency_ratio(raw, row, other) -> Evidence:
    race = raw.get("race") or {}
    rounds = race.get("rounds", {})
    if row not in rounds or other not in rounds:
        return _missing(f"race of {row}", other)

    def fastest(label):
        engines = rounds[label]
        name = min(engines, key=lambda e: float(np.median(engines[e])))
        return name, np.asarray(engines[name], dtype=np.float64)
    (ea, ta), (eb, tb) = fastest(row), fastest(other)
    n = min(len(ta), len(tb))
    ta, tb = ta[:n], tb[:n]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, n, size=(REPS, n))
    samples = np.median(ta[picks], axis=1) / np.median(tb[picks], axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Evidence(float(np.median(ta) / np.median(tb)), float(low), float(high), "x",
                    f"{ea} vs {eb}, {n} rounds of one race")


def _seed_t(values: list[float], unit: str, detail: str) -> Evidence:
    if not values:
        return _missing(detail)
    ci = stats.seed_interval(values)
    if ci is None:
        return Evidence(float(values[0]), None, None, unit, f"{detail}; one seed: no interval")
    return Evidence(ci["delta"], ci["low"], ci["high"], unit, f"{detail}; t interval over {ci['seeds']} seeds")


def train_step_ratio(raw, row, other) -> Evidence:
    a, b = _rows(raw, row), _rows(raw, other)
    values = [a[s]["train_ms_step"] / b[s]["train_ms_step"] for s in sorted(set(a) & set(b))
              if a[s].get("train_ms_step") and b[s].get("train_ms_step")]
    return _seed_t(values, "x", "separate training runs")


def _distill_rows(raw, experiment, targets) -> dict:
    rows = (raw.get("table3") or {}).get(experiment, [])
    return {r.get("seed", 0): r for r in rows if r.get("targets") == targets}


def distill_between(raw, experiment, metric, a, b) -> Evidence:
    ra, rb = _distill_rows(raw, experiment, a), _distill_rows(raw, experiment, b)
    values = [100 * (ra[s][metric] - rb[s][metric]) for s in sorted(set(ra) & set(rb))
              if ra[s].get(metric) is not None and rb[s].get(metric) is not None]
    return _seed_t(values, " pts", f"{experiment}: {a} − {b}, {metric}")


def distill_over_floor(raw, experiment, targets) -> Evidence:
    rows = _distill_rows(raw, experiment, targets)
    values = [100 * (r["agreement_train"] - r["heldout_majority"]) for r in rows.values()
              if r.get("agreement_train") is not None and r.get("heldout_majority") is not None]
    return _seed_t(values, " pts", f"{experiment} {targets}: training-image agreement − majority-class rate")


def _cascade_bits(raw, spec, metric) -> dict[int, np.ndarray]:
    results = raw.get("cascade") or {}
    key = "correct_bits" if metric == "accuracy" else "exit_bits"
    if spec.get("run") == "base":
        found = [r for r in results.get("base", []) if r["data"] == spec["data"]]
    else:
        penalty = spec.get("penalty", (results.get("config") or {}).get("penalty"))
        found = [r for r in results.get("runs", []) if r["data"] == spec["data"] and r["loss"] == spec["loss"]
                 and r["position"] == spec["position"] and float(r["penalty"]) == float(penalty)]
    return {r["seed"]: stats.unpack(r[key], r["images"]) for r in found if key in r}


def cascade_between(raw, metric, a, b) -> Evidence:
    bits_a, bits_b = _cascade_bits(raw, a, metric), _cascade_bits(raw, b, metric)
    seeds = sorted(set(bits_a) & set(bits_b))
    if not seeds:
        return _missing(json.dumps(a), json.dumps(b))
    ci = stats.delta_interval([(bits_a[s], bits_b[s]) for s in seeds], reps=REPS)
    return Evidence(ci["delta"], ci["low"], ci["high"], " pts", f"{ci['seeds']} seed(s) x {ci['images']} images")


MEASURES = {"accuracy_vs_control": accuracy_vs_control, "accuracy_between": accuracy_between,
            "size_ratio": size_ratio, "latency_ratio": latency_ratio, "train_step_ratio": train_step_ratio,
            "distill_between": distill_between, "distill_over_floor": distill_over_floor,
            "cascade_between": cascade_between}


def measure(finding: Finding, raw: dict) -> Evidence:
    args = {k: v for k, v in finding.measure.items() if k != "kind"}
    try:
        return MEASURES[finding.measure["kind"]](raw, **args)
    except TypeError as error:
        raise InputError(f"finding {finding.id}: bad measure arguments ({error})") from error


def decided(finding: Finding, evidence: Evidence) -> str:
    if evidence.estimate is None:
        return NOT_MEASURED
    return decide(evidence.low, evidence.high, finding.rule)


def table(findings: list[Finding], raw: dict, section: str) -> list[str]:
    """The findings of ``section`` as markdown rows: claim, paper, ours [95 % interval], rule, verdict (no lines
    when the section has none)."""
    chosen = [f for f in findings if f.section == section]
    lines = ["| finding | paper | ours [95% interval] | claim holds when the interval is | verdict |",
             "|---|---|---|---|---|"] if chosen else []
    for finding in chosen:
        evidence = measure(finding, raw)
        verdict = decided(finding, evidence)
        why = " (no interval)" if verdict == INCONCLUSIVE and evidence.low is None else ""
        lines.append(f"| `{finding.id}` {finding.claim} | {finding.paper_figure} | {evidence.text()} | "
                     f"{finding.rule.text()} | **{verdict}**{why} |")
    return lines
