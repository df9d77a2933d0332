"""``cnncompress bench``: recipe -> baselines -> one measured row per (model, method) -> table + plots.

Resumable: baselines train with per-epoch checkpoints under ``OUT/baselines/<model>``; every finished row is
appended to ``OUT/rows.jsonl`` and skipped on re-run, so a kill loses at most the row in progress (and even its
finished fine-tuning epochs are kept in ``OUT/rows/<key>/train``).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import measure, methods, models, storage
from .data import build_dataset
from .errors import InputError
from .recipe import BASELINE, Recipe, Row
from .train import Trainer, TrainConfig, load_weights, save_weights


def environment() -> dict:
    """What the numbers were measured on: device, threads, library versions, git commit."""
    import onnxruntime
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cpu": cpu, "cores": os.cpu_count(), "git_commit": commit, "node": platform.node()}


def _realness(labels: list[str], default: str) -> str:
    """A pipeline's saving is real if any stage realises it, else simulated if any simulates it."""
    for level in ("real", "simulated"):
        if level in labels:
            return level
    return default if not labels else "none"


class Bench:
    def __init__(self, recipe: Recipe, out_dir: str | Path, device: str = "cpu", progress: bool = True):
        self.recipe, self.out, self.device, self.progress = recipe, Path(out_dir), device, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.out / "rows.jsonl"
        self.train_set = build_dataset(recipe.data, "train", input_size=recipe.input_size)
        self.test_set = build_dataset(recipe.data, "test", input_size=recipe.input_size)
        self._baselines: dict[str, torch.nn.Module] = {}
        self._baseline_history: dict[str, list] = {}

    # --- state -------------------------------------------------------------------------------------------
    def finished(self) -> dict[str, dict]:
        if not self.rows_path.exists():
            return {}
        rows = {}
        for line in self.rows_path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[row["key"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a half-written last line from a kill: that row is simply recomputed
        return rows

    def _append(self, row: dict) -> None:
        with open(self.rows_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # --- baselines -----------------------------------------------------------------------------------------
    def baseline(self, name: str) -> torch.nn.Module:
        if name in self._baselines:
            return self._baselines[name]
        settings = self.recipe.baselines[name]
        folder = self.out / "baselines" / name
        weights = folder / "model.safetensors"
        model = models.build(name, self.train_set.num_classes, self.train_set.channels, self.recipe.input_size,
                             settings.get("width", 1.0))
        config = TrainConfig(epochs=settings.get("epochs", 3), lr=settings.get("lr", 0.001),
                             momentum=settings.get("momentum", 0.9), seed=settings.get("seed", self.recipe.seed),
                             batch_size=settings.get("batch_size", models.DEFAULT_BATCH_SIZE.get(name, 32)),
                             device=self.device)
        trainer = Trainer(model, self.train_set, self.test_set, config, out_dir=folder, progress=self.progress)
        if weights.exists():
            model = load_weights(weights)
            trainer.resume()
        else:
            trainer.fit(resume=True)
            save_weights(model.cpu(), weights)
        model.metadata = {"classes": self.train_set.classes, "mean": self.train_set.mean, "std": self.train_set.std,
                          "dataset": self.recipe.data, "input_size": self.recipe.input_size}
        self._baselines[name], self._baseline_history[name] = model.cpu().eval(), trainer.history
        return self._baselines[name]

    # --- one row -------------------------------------------------------------------------------------------
    def run_row(self, row: Row) -> dict:
        started = time.perf_counter()
        folder = self.out / "rows" / row.key
        base = self.baseline(row.model)
        history = list(self._baseline_history[row.model])
        loss_fn = None
        model = base
        if row.method != BASELINE:
            for index, stage in enumerate(row.pipeline):
                model = methods.apply(model, stage["method"], **stage["config"])
                loss_fn = methods.get(stage["method"]).finetune_loss
                if row.finetune > 0:
                    history = self.finetune(row, model, folder / f"train{index if index else ''}", loss_fn)
                    model = model.cpu().eval()
        return self.measure_row(row, model, history, folder, loss_fn, started)

    def finetune(self, row: Row, model, folder: Path, loss_fn) -> list[dict]:
        config = TrainConfig(epochs=row.finetune, lr=self.recipe.finetune["lr"],
                             momentum=self.recipe.finetune.get("momentum", 0.9), seed=self.recipe.seed,
                             batch_size=models.DEFAULT_BATCH_SIZE.get(row.model, 32), device=self.device)
        trainer = Trainer(model, self.train_set, self.test_set, config, out_dir=folder, progress=self.progress,
                          **({"loss_fn": loss_fn} if loss_fn else {}))
        return trainer.fit(resume=True)

    def measure_row(self, row: Row, model, history, folder: Path, loss_fn, started: float) -> dict:
        recipe = self.recipe
        shape = (1, self.train_set.channels, recipe.input_size, recipe.input_size)
        folder.mkdir(parents=True, exist_ok=True)
        ccz = storage.save(model, folder / "model.ccz")
        infos = [methods.info(stage["method"]) for stage in row.pipeline] if row.method != BASELINE else []
        accuracy = measure.accuracy(model, self.test_set)
        train_ms = measure.train_step_time(model, self.train_set, models.DEFAULT_BATCH_SIZE.get(row.model, 32),
                                           loss_fn=loss_fn, num_threads=recipe.threads)
        try:
            ort = measure.onnx_latency(model, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                       fallback=False)["median_ms"]
        except Exception as error:  # noqa: BLE001 - a model that cannot export gets n/a and the reason
            ort, ort_error = None, f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        else:
            ort_error = ""
        fast = methods.to_inference(storage.load(ccz))
        torch_stats = measure.latency(fast, shape, runs=recipe.latency_runs, num_threads=recipe.threads)
        throughput = measure.throughput(fast, shape, num_threads=recipe.threads)
        fast_acc = measure.accuracy(fast, self.test_set)
        epoch_s = history[-1]["seconds"] if history else None
        return {
            "key": row.key, "model": row.model, "method": row.method, "label": row.label, "config": row.config,
            "finetune_epochs": row.finetune, "accuracy": accuracy, "accuracy_inference_model": fast_acc,
            "train_ms_step": train_ms, "epoch_s": epoch_s,
            "torch_ms": torch_stats["median_ms"], "torch_mean_ms": torch_stats["mean_ms"],
            "torch_layout": torch_stats["layout"], "ort_ms": ort, "ort_error": ort_error,
            "throughput_b32": throughput, "params": measure.param_count(model),
            "file_bytes": measure.file_bytes(ccz), "payload_bytes": storage.payload_bytes(ccz),
            "mem_train_mb": measure.peak_memory(ccz, "train", models.DEFAULT_BATCH_SIZE.get(row.model, 32),
                                                recipe.threads),
            "mem_infer_mb": measure.peak_memory(ccz, "infer", 1, recipe.threads),
            "size_real": _realness([i.size for i in infos], "real"),
            "speed_real": _realness([i.speed for i in infos], "none"),
            "ccz": str(ccz), "history": history, "threads": recipe.threads,
            "node": platform.node(), "row_seconds": time.perf_counter() - started,
        }

    def run(self) -> list[dict]:
        done = self.finished()
        todo = [row for row in self.recipe.rows if row.key not in done]
        bar = tqdm(self.recipe.rows, desc="bench rows", disable=not self.progress, unit="row")
        for row in bar:
            if row.key in done:
                continue
            bar.set_postfix_str(f"{row.model}/{row.label}")
            try:
                result = self.run_row(row)
            except InputError:
                raise
            except Exception as error:  # noqa: BLE001 - one failing method must not sink the table
                result = {"key": row.key, "model": row.model, "method": row.method, "label": row.label,
                          "config": row.config, "error": f"{type(error).__name__}: {error}"}
                tqdm.write(f"row {row.model}/{row.label} failed: {result['error']}")
            done[row.key] = result
            self._append(result)
        del todo
        return [done[row.key] for row in self.recipe.rows if row.key in done]
