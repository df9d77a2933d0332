"""Failures are not results: a row that failed because of the machine (a full disk, out of memory, a timed-out
child) is not recorded and the next run retries it; a method that refuses the model stays an error row."""
import errno
import json
import subprocess

from cnncompress.cli import main
from cnncompress.experiments.bench import Bench, failure_kind

FAST = {"data": "mnist5k", "input_size": 28, "latency_runs": 10, "threads": 1, "memory": False,
        "baselines": {"cascade_cnn": {"width": 0.25, "epochs": 1, "lr": 0.05, "batch_size": 128, "schedule": "paper"}},
        "finetune": {"epochs": 1, "lr": 0.001}}


def test_failure_kinds():
    assert failure_kind(OSError(errno.ENOSPC, "No space left on device", "/x")) == "environment"
    assert failure_kind(OSError(errno.EROFS, "Read-only file system")) == "environment"
    assert failure_kind(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")) \
        == "environment"
    assert failure_kind(MemoryError()) == "transient"
    assert failure_kind(subprocess.TimeoutExpired(["probe"], 300)) == "transient"
    try:
        try:
            raise MemoryError
        except MemoryError as error:
            raise RuntimeError("wrapped") from error
    except RuntimeError as wrapped:
        assert failure_kind(wrapped) == "transient"
    assert failure_kind(ValueError("refuses the model")) is None
    assert failure_kind(OSError(errno.ENOENT, "No such file")) is None


def test_a_row_that_hit_a_full_disk_is_retried_and_the_run_exits_3(tmp_path, monkeypatch, capsys):
    recipe, out = tmp_path / "r.yaml", tmp_path / "out"
    recipe.write_text(json.dumps({**FAST, "rows": [{"model": "cascade_cnn", "method": "baseline"},
                                                   {"model": "cascade_cnn", "method": "fp16", "finetune": 0},
                                                   {"model": "cascade_cnn", "method": "fp16", "finetune": 0,
                                                    "label": "broken"}]}))
    original, calls, full = Bench.measure_row, [], [True]

    def disk_full_once(self, row, *args):
        calls.append(row.label)
        if row.label == "fp16" and full:  # the disk is full once, then grown
            full.clear()
            raise OSError(errno.ENOSPC, "No space left on device", str(self.row_folder(row) / "model.ccz"))
        if row.label == "broken":  # an ordinary, deterministic failure: an error row, recorded, not retried
            raise RuntimeError("this row cannot be measured")
        return original(self, row, *args)
    monkeypatch.setattr(Bench, "measure_row", disk_full_once)

    assert main(["bench", "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 3
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if line.startswith("row ")]
    assert len(failed) == 1 and failed[0].startswith("row cascade_cnn/fp16 failed (environment, not recorded; "
                                                     "rerun to retry): OSError: [Errno 28] No space left on device")
    recorded = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["label"] for r in recorded] == ["baseline", "broken"]  # the ordinary error is a result, kept
    assert "cannot be measured" in recorded[1]["error"]
    table = json.loads((out / "results.json").read_text())
    shown = {r["label"]: r for r in table["rows"]}
    assert "No space left" in shown["fp16"]["error"]  # the table says which row failed and why

    calls.clear()
    assert main(["bench", "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert calls == ["fp16"]  # only the failed row ran again; the error row is not retried
    recorded = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["label"] for r in recorded] == ["baseline", "broken", "fp16"]  # exactly one line per row
    assert "error" not in recorded[-1]
    table = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["baseline", "fp16", "broken"]  # complete, in recipe order
    assert "error" not in table["rows"][1]
    assert not (out / ".cnncompress.lock").exists()
