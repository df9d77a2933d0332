"""optimize's report: predicted vs measured figures and the Pareto front of the candidates."""
from cnncompress.budget.report import pareto_front, write_report


def test_pareto_front_keeps_only_candidates_nothing_beats(tmp_path):
    def candidate(name, size, ms, acc):
        return {"pipeline": name, "measured": {"bytes": size, "accuracy": acc}, "latency_ms": ms, "engine": "e",
                "predicted_ms": ms * 1.1}
    small, fast, accurate = candidate("small", 100, 2.0, 90.0), candidate("fast", 300, 0.5, 90.0), \
        candidate("accurate", 400, 1.0, 99.0)
    beaten = candidate("beaten", 300, 1.0, 89.0)  # fast is as small, faster and more accurate
    assert pareto_front([small, fast, accurate, beaten]) == [small, fast, accurate]
    report = {"budget_bytes": 350, "budget_ms": 1.5, "original_bytes": 1000, "chosen": fast,
              "settings": {"whole model": "fast"}, "candidates": [small, fast, accurate, beaten]}
    write_report(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "(predicted 0.550 ms, +10 %)" in text and (tmp_path / "pareto.png").stat().st_size > 1000

