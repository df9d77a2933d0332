"""``cnncompress bench``: recipe -> baselines and matched controls -> one measured row per (model, method) ->
table + plots.

What each row's numbers mean (DESIGN §5):

* Accuracy is the **deployed** model's (the ``.ccz`` loaded back, ``deploy.to_inference``d) on the **sealed test**
  split, read in one ``final_evaluation`` per row (``test_evaluations``); per-image bits (``correct``) let the
  report bootstrap intervals; ``accuracy_training_form``: the training form's. Every choice uses the **val** split.
* Δaccuracy is against a **matched control**: the baseline fine-tuned for the same number of epochs as the row
  (``Row.total_finetune``) with the same fine-tuning config and seed, uncompressed. One control per (model, seed,
  epochs), trained by the driver before any row runs, resumable, under ``OUT/controls/``. A method is never
  credited with an extra epoch of training.
* Data-dependent methods (``MethodInfo.data_option``: int8 calibration, Taylor importance) get the run's
  training split unless the recipe row sets the option; the row says what they got (``data_given``).
* Early exits (cost depends on the image): timed at batch 1 over the test split (mean), baseline alike; exit rate.

Resumable: baselines and controls train with per-epoch checkpoints under ``OUT/baselines/<model>`` (``-seed<k>``
for other seeds) and ``OUT/controls/``; every finished row is appended to ``OUT/rows.jsonl`` and skipped on re-run,
so a kill loses at most the row in progress (and even its finished fine-tuning epochs are kept).

Failures are not results: an ordinary error is a recorded error row; a row that failed because of the machine
(``errors.failure_kind``: full disk, read-only folder, out of memory, a timed-out child) is marked ``failed``, shown
in this run's table, NOT recorded, and retried by the next run (``cnncompress bench`` then exits non-zero).

Rows run in this process or through an executor (``experiments.executors``: Ray tasks) handed to ``Bench.run``:
the driver trains baselines and controls first (``prepare``), rows run ``safe_run_row`` wherever the executor puts
them, and only the driver appends to ``rows.jsonl`` and attaches the controls.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cnncompress import deploy, measure, methods, models, storage
from cnncompress.data import build_dataset, final_evaluation
from cnncompress.errors import InputError, failure_kind
from cnncompress.training.trainer import (ProbedTrainer, TrainConfig, TrainProbe, atomic_write, best_epoch, checkpoint_info,
                                         load_weights, save_weights)
from cnncompress.experiments import bench_latency as latency, engine_race, stats
from cnncompress.experiments.environment import environment
from cnncompress.models.entry_point import is_entry_point, resolve
from cnncompress.pipeline import apply_pipeline, collapse_check, load_for_inference
from cnncompress.experiments.recipe import BASELINE, Recipe, Row, baseline_settings, finetune_settings, load_recipe, select_rows
from cnncompress.experiments.bench_figures import plot_all
from cnncompress.experiments.report import row_line, write_outputs

APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT
SPLITS = {"accuracy": "test", "selection": "val", "training": "train"}  # where each number comes from


def _realness(labels: list[str], default: str) -> str:
    """A pipeline's saving is real if any stage realises it, else simulated if any simulates it."""
    for level in ("real", "simulated"):
        if level in labels:
            return level
    return default if not labels else "none"


def _history(meta: Path, config: TrainConfig) -> tuple[list[dict], bool]:
    """A finished run's per-epoch history and whether it stopped on a validation plateau (checked against the
    recipe's training config, epochs included)."""
    if not meta.exists():
        return [], False
    info = checkpoint_info(meta, config)
    return info.get("history", []), bool(info.get("stopped", False))


class Bench:
    def __init__(self, recipe: Recipe, out_dir: str | Path, device: str = "cpu", progress: bool = True,
                 datasets: tuple | None = None):
        self.recipe, self.out, self.device, self.progress = recipe, Path(out_dir), device, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.out / "rows.jsonl"
        self.train_set, self.val_set, self.test_set = datasets or tuple(
            build_dataset(recipe.data, split, input_size=recipe.input_size) for split in ("train", "val", "test"))
        self.probe = TrainProbe(self.train_set, len(self.val_set) if self.val_set is not None else 500)
        self._baselines: dict[tuple[str, int], torch.nn.Module] = {}
        self._baseline_history: dict[tuple[str, int], list] = {}
        self._baseline_stopped: dict[tuple[str, int], bool] = {}
        self._controls: dict[tuple[str, int, int], dict] = {}

    def say(self, line: str) -> None:
        if self.progress:
            tqdm.write(line)

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
        """Append one line to ``rows.jsonl``; a failed write (full disk) is cut back off, leaving no partial line."""
        view, fd = memoryview((json.dumps(row) + "\n").encode()), os.open(self.rows_path, APPEND, 0o644)
        start = os.fstat(fd).st_size
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise OSError(error.errno, error.strerror, str(self.rows_path)) from error
        finally:
            os.close(fd)

    def row_folder(self, row: Row) -> Path:
        return self.out / "rows" / row.key

    def _trainer(self, model, config: TrainConfig, folder: Path, loss_fn=None) -> ProbedTrainer:
        return ProbedTrainer(model, self.train_set, self.val_set, config, out_dir=folder, progress=self.progress,
                             probe=self.probe, **({"loss_fn": loss_fn} if loss_fn else {}))

    # --- baselines -----------------------------------------------------------------------------------------
    def baseline_folder(self, name: str, seed: int | None = None) -> Path:
        """``OUT/baselines/<model>`` for the recipe's first seed, ``<model>-seed<k>`` for the others."""
        seed = self.recipe.baseline_seed(name, self.recipe.seed if seed is None else seed)
        return self.out / "baselines" / (name if seed == self.recipe.seed else f"{name}-seed{seed}")

    def baseline_config(self, name: str, seed: int) -> TrainConfig:
        """How ``name``'s baseline trains: the recipe's ``baselines.<name>`` (``recipe.baseline_settings``)."""
        return TrainConfig(**baseline_settings(self.recipe, name), seed=seed, device=self.device)

    def finetune_config(self, name: str, seed: int, epochs: int) -> TrainConfig:
        """How ``name``'s rows AND their matched controls fine-tune (``recipe.finetune_settings``)."""
        return TrainConfig(**{**finetune_settings(self.recipe, name), "epochs": epochs}, seed=seed,
                           device=self.device)

    def prepare(self, rows: list[Row]) -> None:
        """Train (or load) every baseline these rows start from and every matched control they are compared
        with: done once, by the driver, before dispatch."""
        for row in rows:
            self.baseline(row.model, row.seed)
        for row in rows:
            if row.method != BASELINE:
                self.control(row.model, row.seed, row.total_finetune)

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
        config = self.baseline_config(name, seed)
        if weights.exists():
            model = load_weights(weights, model=_network(name))
            history, stopped = _history(folder / "checkpoint.json", config)
        else:
            started = time.perf_counter()
            trainer = self._trainer(model, config, folder)
            history, stopped = trainer.fit(resume=True), trainer.stopped
            save_weights(model.cpu(), weights)
            self.say(f"baseline {name} seed {seed}: best val error {100 * min(h['val_error'] for h in history):.2f}% "
                     f"at epoch {best_epoch(history)} of {len(history)} "
                     f"({'validation plateau' if stopped else 'epoch cap'}), {time.perf_counter() - started:.0f}s")
        model.metadata = {"classes": self.train_set.classes, "mean": self.train_set.mean, "std": self.train_set.std,
                          "dataset": self.recipe.data, "input_size": self.recipe.input_size}
        self._baselines[(name, seed)] = model.cpu().eval()
        self._baseline_history[(name, seed)], self._baseline_stopped[(name, seed)] = history, stopped
        return self._baselines[(name, seed)]

    # --- matched controls ----------------------------------------------------------------------------------
    def control_folder(self, name: str, seed: int, epochs: int) -> Path:
        return self.out / "controls" / f"{name}-seed{seed}-ft{epochs}"

    def control(self, name: str, seed: int, epochs: int) -> dict:
        """The matched control of rows of ``name`` and ``seed`` fine-tuned ``epochs`` epochs in all: the
        uncompressed baseline fine-tuned as long, with the same config and seed (``epochs`` 0: the baseline).
        ``{model, seed, epochs, accuracy, correct, history}``; trained once, then read from its folder."""
        key = (name, seed, epochs)
        if key in self._controls:
            return self._controls[key]
        folder = self.control_folder(name, seed, epochs)
        done = folder / "result.json"
        if epochs and done.exists():
            self._controls[key] = json.loads(done.read_text())
            return self._controls[key]
        model, history, started = copy.deepcopy(self.baseline(name, seed)), [], time.perf_counter()
        if epochs:
            torch.manual_seed(seed)
            history = self._trainer(model, self.finetune_config(name, seed, epochs), folder / "train").fit(resume=True)
        model = model.cpu().eval()
        opened = self.test_set.evaluations
        with final_evaluation(self.test_set):
            correct = measure.correct(model, self.test_set)
        result = {"model": name, "seed": seed, "epochs": epochs, "split": "test",
                  "accuracy": 100.0 * float(correct.float().mean()), "correct": stats.pack(correct.numpy()),
                  "images": len(correct), "history": history, "test_evaluations": self.test_set.evaluations - opened}
        if epochs:
            atomic_write(done, json.dumps(result).encode())
            self.say(f"control {name} seed {seed} +{epochs} ep: test accuracy {result['accuracy']:.2f}% "
                     f"({time.perf_counter() - started:.0f}s)")
        self._controls[key] = result
        return result

    def attach_control(self, result: dict) -> dict:
        """Add the matched control's accuracy and per-image correctness (``control``) to a finished row."""
        if "error" in result or result.get("method") == BASELINE or "correct" not in result:
            return result
        control = self.control(result["model"], result["seed"], result.get("total_finetune", 0))
        kept = ("epochs", "accuracy", "correct", "images", "split", "history", "test_evaluations")
        result["control"] = {k: control.get(k) for k in kept}
        result["delta"] = result["accuracy"] - control["accuracy"]
        return result

    # --- one row -------------------------------------------------------------------------------------------
    def run_row(self, row: Row) -> dict:
        started = time.perf_counter()
        folder = self.row_folder(row)
        base = self.baseline(row.model, row.seed)
        key = (row.model, self.recipe.baseline_seed(row.model, row.seed))
        torch.manual_seed(row.seed)  # a method's random choices depend on the row's seed only
        if row.method == BASELINE:
            return self.measure_row(row, base, list(self._baseline_history[key]), folder, None, started)
        history: list[dict] = []

        def fine_tune(index: int, model, loss_fn):
            config = self.finetune_config(row.model, row.seed, row.finetune)
            stage = self._trainer(model, config, folder / f"train{index if index else ''}", loss_fn).fit(resume=True)
            offset = len(history)  # a pipeline's stages count on: epochs 1..k, k+1..2k, ...
            history.extend({**h, "epoch": offset + h["epoch"]} for h in stage)
            return model.cpu().eval()
        model, loss_fn, given = apply_pipeline(base, row.pipeline, fine_tune if row.finetune > 0 else None,
                                               data=self.train_set)
        result = self.measure_row(row, model, history, folder, loss_fn, started)
        if given:
            result["data_given"] = given
        result["start_epoch"] = len(self._baseline_history[key])
        return result

    def measure_row(self, row: Row, model, history, folder: Path, loss_fn, started: float) -> dict:
        recipe = self.recipe
        shape = (1, self.train_set.channels, recipe.input_size, recipe.input_size)
        folder.mkdir(parents=True, exist_ok=True)
        ccz = storage.save(model, folder / "model.ccz")
        infos = [methods.info(stage["method"]) for stage in row.pipeline] if row.method != BASELINE else []
        fast = load_for_inference(ccz, _network(row.model))  # the deployed model: what is scored and timed
        train_ms = measure.train_step_time(model, self.train_set, models.DEFAULT_BATCH_SIZE.get(row.model, 32),
                                           loss_fn=loss_fn, num_threads=recipe.threads)
        selection = self.val_set if self.val_set is not None else self.train_set
        example = selection.images[:1]  # a real validation image
        opened = self.test_set.evaluations
        with final_evaluation(self.test_set):  # the row's one read of the test split (early exits: timed on it)
            correct = measure.correct(fast, self.test_set)
            trained_form = measure.accuracy(model, self.test_set)
            torch_stats, exit_rate = latency.deployed(fast, shape, example, self.test_set.images, recipe)
            base_torch, base_ort = latency.baseline(self.baseline(row.model, row.seed), shape, example,
                                                    self.test_set.images if exit_rate is not None else None, recipe)
        checked = {} if row.method == BASELINE else collapse_check(  # a row at chance is said, never shipped quietly
            measure.accuracy(fast, selection), selection.num_classes, row.label)
        ort, ort_error = latency.onnxruntime(model, fast, shape, example, recipe)
        race = {} if exit_rate is not None else engine_race.race(  # early exits: timed per image, in PyTorch
            fast, self.baseline(row.model, row.seed), shape, example, deploy.precision_of(i.name for i in infos),
            recipe.threads, images=selection.images[:32])
        throughput = measure.throughput(fast, shape, num_threads=recipe.threads, example=selection.images[:32])
        memory = measure.peak_memories(ccz, [("train", models.DEFAULT_BATCH_SIZE.get(row.model, 32)), ("infer", 1)],
                                       recipe.threads, entry=row.model if is_entry_point(row.model) else None
                                       ) if recipe.memory else [None, None]
        baseline_key = (row.model, recipe.baseline_seed(row.model, row.seed))
        result = {
            "key": row.key, "model": row.model, "method": row.method, "label": row.label, "config": row.config,
            "seed": row.seed, "finetune_epochs": row.finetune, "total_finetune": row.total_finetune,
            "accuracy": 100.0 * float(correct.float().mean()), "accuracy_split": SPLITS["accuracy"],
            "accuracy_form": "deployed (.ccz loaded back, deploy.to_inference)",
            "accuracy_training_form": trained_form, "correct": stats.pack(correct.numpy()),
            "images": len(correct), "selection_split": SPLITS["selection"],
            "test_evaluations": self.test_set.evaluations - opened,
            "train_ms_step": train_ms, "epoch_s": history[-1]["seconds"] if history else None,
            "torch_ms": torch_stats["median_ms"], "torch_mean_ms": torch_stats["mean_ms"],
            "torch_layout": torch_stats["layout"], "latency_protocol": torch_stats["protocol"],
            "exit_rate": exit_rate, "ort_ms": ort, "ort_error": ort_error,
            "baseline_torch_ms": base_torch, "baseline_ort_ms": base_ort,
            "throughput_b32": throughput, "params": measure.param_count(model),
            "dense_macs": measure.dense_macs(fast, example), "file_bytes": measure.file_bytes(ccz),
            "payload_bytes": storage.payload_bytes(ccz), "mem_train_mb": memory[0], "mem_infer_mb": memory[1],
            "size_real": _realness([i.size for i in infos], "real"),
            "speed_real": _realness([i.speed for i in infos], "none"),
            "ccz": str(ccz), "history": history, "threads": recipe.threads,
            "node": platform.node(), "row_seconds": time.perf_counter() - started, **race, **checked,
        }
        if row.method == BASELINE:
            result.update(best_epoch=best_epoch(history), epochs_run=len(history),
                          stopped_on_plateau=self._baseline_stopped.get(baseline_key, False))
        return result

    def safe_run_row(self, row: Row) -> dict:
        """``run_row`` with a failing method turned into an error row; the result is also written atomically to
        ``OUT/rows/<key>/result.json`` next to the row's ``.ccz`` (the driver's ``rows.jsonl`` is the record).
        A row that failed because of the machine (``failure_kind``) comes back with ``failed`` set to the kind
        and no ``result.json``: it is not a result, the driver does not record it and the next run retries it."""
        try:
            result = self.run_row(row)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - one failing method must not sink the table
            result = {"key": row.key, "model": row.model, "method": row.method, "label": row.label,
                      "config": row.config, "seed": row.seed, "error": f"{type(error).__name__}: {error}",
                      "node": platform.node()}
            kind = failure_kind(error)
            if kind:
                result["failed"] = kind
                return result
        atomic_write(self.row_folder(row) / "result.json", json.dumps(result).encode())
        return result

    def run(self, executor=None, only: list[Row] | None = None) -> list[dict]:
        """Run every unfinished row (of ``only``, else of the recipe) through ``executor`` (``map(bench, rows)``;
        default: here, in order). Returns every finished row of the recipe, matched controls attached."""
        done = self.finished()
        todo = [row for row in (self.recipe.rows if only is None else only) if row.key not in done]
        if todo:
            if hasattr(executor, "connect"):
                executor.connect()  # a cluster that cannot be reached fails before any training
            self.prepare(todo)
        results = executor.map(self, todo) if executor else (self.safe_run_row(row) for row in todo)
        interactive = self.progress and sys.stdout.isatty() and sys.stderr.isatty()
        bar = tqdm(total=len(todo), desc="bench rows", disable=not interactive, unit="row")
        for count, result in enumerate(results, start=1):
            done[result["key"]] = result
            if not result.get("lost") and not result.get("failed"):  # not results: a re-run retries them
                self._append(result)
            line = f"[{count}/{len(todo)}] {row_line(self.attach_control(dict(result)))}"
            if result.get("failed"):
                line += f" ({result['failed']}: not recorded, a rerun retries it)"
            if interactive:
                bar.set_postfix_str(f"{result['model']}/{result['label']}")
                bar.update()
                tqdm.write(line)
            elif self.progress:
                print(line, flush=True)  # not a terminal: one line per finished row, no redraws
        bar.close()
        return [self.attach_control(done[row.key]) for row in self.recipe.rows if row.key in done]


def run_bench(recipe_path: str | Path, out: str | Path, data: str | None = None, only: list[str] | None = None,
              device: str = "cpu", executor=None, progress: bool = True) -> list[dict]:
    """The bench job: load the recipe (``data`` overrides its dataset; ``only`` runs only the rows whose method
    or label is listed, and the baselines), run its unfinished rows, write tables, CSV/JSON and plots into
    ``out`` (every finished row of the recipe is in them, not only the rows just run)."""
    recipe = load_recipe(recipe_path)
    if data:
        recipe.data = data
    chosen = select_rows(recipe, only, str(recipe_path)) if only else None
    rows = Bench(recipe, out, device=device, progress=progress).run(executor, only=chosen)
    write_outputs(rows, out, environment(), str(recipe_path), splits=SPLITS)
    plot_all(rows, Path(out))
    return rows


def _network(model: str):
    """A recipe model that is a user network's entry point: its builder (the recipe names it); else None."""
    return resolve(model) if is_entry_point(model) else None
