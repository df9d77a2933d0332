"""``cnncompress bench``: recipe -> baselines -> one measured row per (model, method) -> table + plots.

Resumable: baselines train with per-epoch checkpoints under ``OUT/baselines/<model>`` (``<model>-seed<k>`` for
other seeds); every finished row is appended to ``OUT/rows.jsonl`` and skipped on re-run, so a kill loses at most
the row in progress (and even its finished fine-tuning epochs are kept in ``OUT/rows/<key>/train``).

Rows run in this process, in order, or through an executor (``experiments.executors``: Ray tasks on a cluster)
handed to ``Bench.run``: the driver trains the baselines first (``prepare``), every row then runs
``safe_run_row`` wherever the executor puts it (writing its ``.ccz`` and ``result.json`` atomically into its own
folder) and only the driver appends to ``rows.jsonl``. The executors import this module, never the reverse.

``run_bench`` is the whole job behind ``cnncompress bench``: recipe file -> rows -> tables and plots.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import measure, methods, models, storage
from ..data import build_dataset
from ..errors import InputError
from ..train import Trainer, TrainConfig, atomic_write, checkpoint_info, load_weights, save_weights
from .compress_one import apply_pipeline, load_for_inference
from .recipe import BASELINE, Recipe, Row, load_recipe
from .report import write_outputs


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


def _history(meta: Path, config: TrainConfig) -> list[dict]:
    """A finished baseline's per-epoch history (checked against the recipe's training config, epochs included)."""
    return checkpoint_info(meta, config).get("history", []) if meta.exists() else []


class Bench:
    def __init__(self, recipe: Recipe, out_dir: str | Path, device: str = "cpu", progress: bool = True,
                 datasets: tuple | None = None):
        self.recipe, self.out, self.device, self.progress = recipe, Path(out_dir), device, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.out / "rows.jsonl"
        self.train_set, self.test_set = datasets or (
            build_dataset(recipe.data, "train", input_size=recipe.input_size),
            build_dataset(recipe.data, "test", input_size=recipe.input_size))
        self._baselines: dict[tuple[str, int], torch.nn.Module] = {}
        self._baseline_history: dict[tuple[str, int], list] = {}

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

    def row_folder(self, row: Row) -> Path:
        return self.out / "rows" / row.key

    # --- baselines -----------------------------------------------------------------------------------------
    def baseline_folder(self, name: str, seed: int | None = None) -> Path:
        """``OUT/baselines/<model>`` for the recipe's first seed, ``<model>-seed<k>`` for the others."""
        seed = self.recipe.baseline_seed(name, self.recipe.seed if seed is None else seed)
        return self.out / "baselines" / (name if seed == self.recipe.seed else f"{name}-seed{seed}")

    def prepare(self, rows: list[Row]) -> None:
        """Train (or load) every baseline these rows start from: done once, by the driver, before dispatch."""
        for row in rows:
            self.baseline(row.model, row.seed)

    def baseline(self, name: str, seed: int | None = None) -> torch.nn.Module:
        seed = self.recipe.baseline_seed(name, self.recipe.seed if seed is None else seed)
        if (name, seed) in self._baselines:
            return self._baselines[(name, seed)]
        settings = self.recipe.baselines[name]
        folder = self.baseline_folder(name, seed)
        weights = folder / "model.safetensors"
        torch.manual_seed(seed)  # the initialisation depends on the seed only, not on what ran before
        model = models.build(name, self.train_set.num_classes, self.train_set.channels, self.recipe.input_size,
                             settings.get("width", 1.0))
        config = TrainConfig(epochs=settings.get("epochs", 3), lr=settings.get("lr", 0.001),
                             momentum=settings.get("momentum", 0.9), seed=seed,
                             batch_size=settings.get("batch_size", models.DEFAULT_BATCH_SIZE.get(name, 32)),
                             device=self.device)
        trainer = Trainer(model, self.train_set, self.test_set, config, out_dir=folder, progress=self.progress)
        if weights.exists():
            model = load_weights(weights)
            trainer.history = _history(folder / "checkpoint.json", config)
        else:
            trainer.fit(resume=True)
            save_weights(model.cpu(), weights)
        model.metadata = {"classes": self.train_set.classes, "mean": self.train_set.mean, "std": self.train_set.std,
                          "dataset": self.recipe.data, "input_size": self.recipe.input_size}
        self._baselines[(name, seed)], self._baseline_history[(name, seed)] = model.cpu().eval(), trainer.history
        return self._baselines[(name, seed)]

    # --- one row -------------------------------------------------------------------------------------------
    def run_row(self, row: Row) -> dict:
        started = time.perf_counter()
        folder = self.row_folder(row)
        base = self.baseline(row.model, row.seed)
        history = list(self._baseline_history[(row.model, self.recipe.baseline_seed(row.model, row.seed))])
        torch.manual_seed(row.seed)  # a method's random choices depend on the row's seed only
        if row.method == BASELINE:
            return self.measure_row(row, base, history, folder, None, started)

        def fine_tune(index: int, model, loss_fn):
            nonlocal history
            history = self.finetune(row, model, folder / f"train{index if index else ''}", loss_fn)
            return model.cpu().eval()
        model, loss_fn = apply_pipeline(base, row.pipeline, fine_tune if row.finetune > 0 else None)
        return self.measure_row(row, model, history, folder, loss_fn, started)

    def finetune(self, row: Row, model, folder: Path, loss_fn) -> list[dict]:
        config = TrainConfig(epochs=row.finetune, lr=self.recipe.finetune["lr"],
                             momentum=self.recipe.finetune.get("momentum", 0.9), seed=row.seed,
                             batch_size=models.DEFAULT_BATCH_SIZE.get(row.model, 32), device=self.device)
        trainer = Trainer(model, self.train_set, self.test_set, config, out_dir=folder, progress=self.progress,
                          **({"loss_fn": loss_fn} if loss_fn else {}))
        return trainer.fit(resume=True)

    def baseline_latency(self, row: Row, shape: tuple, example) -> tuple[float, float | None]:
        """The fp32 baseline's batch-1 latency (PyTorch, onnxruntime) re-measured right after this row, so the
        row's speed-up compares two timings taken in the same minute (minutes apart, load drift dominated)."""
        recipe, base = self.recipe, self.baseline(row.model, row.seed)
        torch_ms = measure.latency(base, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                   example=example)["median_ms"]
        try:
            ort_ms = measure.onnx_latency(base, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                          fallback=False, example=example)["median_ms"]
        except Exception:  # noqa: BLE001 - the baseline row records the export error itself
            ort_ms = None
        return torch_ms, ort_ms

    def measure_row(self, row: Row, model, history, folder: Path, loss_fn, started: float) -> dict:
        recipe = self.recipe
        shape = (1, self.train_set.channels, recipe.input_size, recipe.input_size)
        folder.mkdir(parents=True, exist_ok=True)
        ccz = storage.save(model, folder / "model.ccz")
        infos = [methods.info(stage["method"]) for stage in row.pipeline] if row.method != BASELINE else []
        accuracy = measure.accuracy(model, self.test_set)
        train_ms = measure.train_step_time(model, self.train_set, models.DEFAULT_BATCH_SIZE.get(row.model, 32),
                                           loss_fn=loss_fn, num_threads=recipe.threads)
        fast = load_for_inference(ccz)
        example = self.test_set.images[:1]  # a real test image: data-dependent models (early exits) need one
        # onnxruntime column: the model's own ONNX graph where the inference model is one (int8 QDQ), else the
        # exported float model
        source = getattr(fast, "onnx_model", None) or model
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if isinstance(source, bytes):
                    (Path(tmp) / "m.onnx").write_bytes(source)
                    source = Path(tmp) / "m.onnx"
                ort = measure.onnx_latency(source, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                           fallback=False, example=example)["median_ms"]
        except Exception as error:  # noqa: BLE001 - a model that cannot export gets n/a and the reason
            ort, ort_error = None, f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        else:
            ort_error = ""
        torch_stats = measure.latency(fast, shape, runs=recipe.latency_runs, num_threads=recipe.threads,
                                      example=example)
        throughput = measure.throughput(fast, shape, num_threads=recipe.threads, example=self.test_set.images[:32])
        fast_acc = measure.accuracy(fast, self.test_set)
        epoch_s = history[-1]["seconds"] if history else None
        base_torch, base_ort = self.baseline_latency(row, shape, example)
        memory = measure.peak_memories(ccz, [("train", models.DEFAULT_BATCH_SIZE.get(row.model, 32)), ("infer", 1)],
                                       recipe.threads) if recipe.memory else [None, None]
        return {
            "key": row.key, "model": row.model, "method": row.method, "label": row.label, "config": row.config,
            "seed": row.seed, "finetune_epochs": row.finetune, "accuracy": accuracy,
            "accuracy_inference_model": fast_acc,
            "train_ms_step": train_ms, "epoch_s": epoch_s,
            "torch_ms": torch_stats["median_ms"], "torch_mean_ms": torch_stats["mean_ms"],
            "torch_layout": torch_stats["layout"], "ort_ms": ort, "ort_error": ort_error,
            "baseline_torch_ms": base_torch, "baseline_ort_ms": base_ort,
            "throughput_b32": throughput, "params": measure.param_count(model),
            "file_bytes": measure.file_bytes(ccz), "payload_bytes": storage.payload_bytes(ccz),
            "mem_train_mb": memory[0], "mem_infer_mb": memory[1],
            "size_real": _realness([i.size for i in infos], "real"),
            "speed_real": _realness([i.speed for i in infos], "none"),
            "ccz": str(ccz), "history": history, "threads": recipe.threads,
            "node": platform.node(), "row_seconds": time.perf_counter() - started,
        }

    def safe_run_row(self, row: Row) -> dict:
        """``run_row`` with a failing method turned into an error row; the result is also written atomically to
        ``OUT/rows/<key>/result.json`` next to the row's ``.ccz`` (the driver's ``rows.jsonl`` is the record)."""
        try:
            result = self.run_row(row)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - one failing method must not sink the table
            result = {"key": row.key, "model": row.model, "method": row.method, "label": row.label,
                      "config": row.config, "seed": row.seed, "error": f"{type(error).__name__}: {error}",
                      "node": platform.node()}
        atomic_write(self.row_folder(row) / "result.json", json.dumps(result).encode())
        return result

    def run(self, executor=None) -> list[dict]:
        """Run every unfinished row through ``executor`` (``map(bench, rows)``; default: here, in order)."""
        done = self.finished()
        todo = [row for row in self.recipe.rows if row.key not in done]
        if todo:
            if hasattr(executor, "connect"):
                executor.connect()  # a cluster that cannot be reached fails before any training
            self.prepare(todo)
        results = executor.map(self, todo) if executor else (self.safe_run_row(row) for row in todo)
        bar = tqdm(total=len(todo), desc="bench rows", disable=not self.progress, unit="row")
        for result in results:
            if "error" in result:
                tqdm.write(f"row {result['model']}/{result['label']} failed: {result['error']}")
            done[result["key"]] = result
            if not result.get("lost"):  # a row whose workers all died is not recorded: a re-run retries it
                self._append(result)
            bar.set_postfix_str(f"{result['model']}/{result['label']}")
            bar.update()
        bar.close()
        return [done[row.key] for row in self.recipe.rows if row.key in done]


def run_bench(recipe_path: str | Path, out: str | Path, data: str | None = None, only: list[str] | None = None,
              device: str = "cpu", executor=None, progress: bool = True) -> list[dict]:
    """The bench job: load the recipe (``data`` overrides its dataset; ``only`` keeps the rows whose method or
    label is listed, and the baselines), run its unfinished rows, write tables, CSV/JSON and plots into ``out``."""
    recipe = load_recipe(recipe_path)
    if data:
        recipe.data = data
    if only:
        recipe.rows = [r for r in recipe.rows if r.method in only or r.label in only or r.method == BASELINE]
    rows = Bench(recipe, out, device=device, progress=progress).run(executor)
    write_outputs(rows, out, environment(), str(recipe_path))
    return rows
