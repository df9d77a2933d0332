"""Where bench rows run: in this process (``LocalExecutor``) or as Ray tasks on a cluster (``RayExecutor``).

An executor has one method, ``map(bench, rows) -> iterator of result dicts`` (in completion order); the driver
hands it to ``Bench.run(executor)``, which has already trained every baseline and matched control the rows need
(``Bench.prepare``), alone appends results to ``rows.jsonl`` and attaches the controls to them; each row runs
``Bench.safe_run_row`` where the executor puts it, which writes the row's ``.ccz`` and ``result.json`` atomically
into ``OUT/rows/<key>/``. This module imports
``experiments.bench`` (a Ray worker builds its own ``Bench``); the bench never imports the executors.

Ray (https://docs.ray.io, ``pip install ray``; optional): every row is one task with ``num_cpus=cpus_per_row``,
``num_gpus=gpus_per_row`` and ``max_retries=retries``, so a row whose worker process or node dies is re-run
(from its last fine-tuning checkpoint when the output directory is shared) up to ``retries`` times while the
other rows carry on; a row that exhausts its retries comes back as an error row marked ``lost`` that is not
recorded, so a re-run retries it. Baselines reach the workers through the shared output directory; a worker that
does not see the driver's files (no shared file system) gets them from Ray's object store instead, and the
driver then fetches each row's ``.ccz`` from the node that wrote it. Timing figures are measured on the worker
that ran the row; ``node`` (host name) and ``ray_node`` (Ray node id) say which one.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Iterator

from cnncompress.errors import InputError
from cnncompress.training.trainer import atomic_write
from cnncompress.experiments.bench import Bench
from cnncompress.experiments.recipe import Recipe, Row

BASELINE_FILES = ("model.safetensors", "checkpoint.json")  # weights + training history
_DATASETS: dict[tuple, tuple] = {}  # per worker process: (data, input_size) -> (train, val, test), loaded once


class LocalExecutor:
    """Rows one after the other in this process (what ``Bench.run()`` does without an executor)."""
    name = "local"

    def map(self, bench, rows: list[Row]) -> Iterator[dict]:
        for row in rows:
            yield bench.safe_run_row(row)

    def call_all(self, function, calls: list[tuple]) -> list:
        """``[function(*arguments) for arguments in calls]``, here, in order (``RayExecutor.call_all``'s twin)."""
        return [function(*arguments) for arguments in calls]


def import_ray():
    """``ray``, or a one-line InputError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise InputError("--executor ray needs the ray package: pip install 'cnncompress[ray]' "
                         "(or pip install ray)") from error
    return ray


def _datasets(recipe: Recipe) -> tuple:
    from cnncompress.data import build_dataset
    key = (recipe.data, recipe.input_size)
    if key not in _DATASETS:
        _DATASETS[key] = tuple(build_dataset(recipe.data, split, input_size=recipe.input_size)
                               for split in ("train", "val", "test"))
    return _DATASETS[key]


def run_row_on_worker(recipe: Recipe, out: str, device: str, row: Row, baseline_refs: dict,
                      threads: int) -> tuple[dict, str]:
    """The body of one Ray task: returns (result row, Ray node id). ``baseline_refs`` is ``{file: ObjectRef}``
    (nested, so Ray does not resolve it): fetched only when the shared output directory lacks the file."""
    import ray
    import torch

    started = time.perf_counter()
    torch.set_num_threads(threads)
    node_id = ray.get_runtime_context().get_node_id()
    bench = Bench(recipe, out, device=device, progress=False, datasets=_datasets(recipe))
    folder = bench.baseline_folder(row.model, row.seed)
    for name, ref in baseline_refs.items():
        if not (folder / name).exists():
            atomic_write(folder / name, ray.get(ref))
    marker = {"node": platform.node(), "ray_node": node_id, "pid": os.getpid(), "started": time.time()}
    atomic_write(bench.row_folder(row) / "worker.json", json.dumps(marker).encode())
    result = bench.safe_run_row(row)
    result.update(ray_node=node_id[:8], worker_pid=os.getpid(), task_seconds=time.perf_counter() - started)
    return result, node_id


def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


class RayExecutor:
    """Each row is a Ray task on the cluster at ``address`` (``"auto"``: the one ``ray start`` made on this
    machine; ``HOST:PORT``: a head node; ``None``: connect to an already initialised Ray or start a local one)."""
    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_row: float = 1, gpus_per_row: float = 0,
                 retries: int = 2, num_cpus: int | None = None):
        if cpus_per_row <= 0 or gpus_per_row < 0 or retries < 0:
            raise InputError(f"--cpus-per-row={cpus_per_row} must be > 0, --gpus-per-row={gpus_per_row} >= 0, "
                             f"retries={retries} >= 0")
        self.address, self.cpus, self.gpus, self.retries = address, cpus_per_row, gpus_per_row, retries
        self.num_cpus, self._owns = num_cpus, False
        self.ray = import_ray()

    def connect(self) -> None:
        """Connect (or start a local Ray) unless this process already is a Ray driver; ``Bench.run`` calls it
        before training the baselines, so a wrong ``--address`` fails at once."""
        if self.ray.is_initialized():
            return
        self._check_reachable()
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        elif self.num_cpus:
            kwargs["num_cpus"] = self.num_cpus
        try:
            self.ray.init(**kwargs)
        except Exception as error:  # noqa: BLE001 - ConnectionError, AuthenticationError, a bad address ...
            first = (str(error).strip().splitlines() or [""])[0][:300]
            where = f"--address {self.address}: cannot connect to a Ray cluster" if self.address else \
                "cannot start a local Ray"
            raise InputError(f"{where} ({type(error).__name__}: {first})") from error
        self._owns = True

    def _check_reachable(self, timeout: float = 5.0) -> None:
        """A HOST:PORT that does not answer fails in seconds (``ray.init`` would retry for minutes)."""
        if not self.address or self.address in ("auto", "local") or "://" in self.address:
            return
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--address {self.address}: expected auto or HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as error:
            raise InputError(f"--address {self.address}: no Ray head node answers there "
                             f"({error.strerror or error})") from error

    def close(self) -> None:
        """Disconnect (and stop the local Ray) if ``connect`` started it."""
        if self._owns:
            self.ray.shutdown()
            self._owns = False

    def _baseline_refs(self, bench, rows: list[Row]) -> dict[tuple, dict]:
        refs = {}
        for row in rows:
            folder = bench.baseline_folder(row.model, row.seed)
            if folder not in refs:
                refs[folder] = {name: self.ray.put((folder / name).read_bytes())
                                for name in BASELINE_FILES if (folder / name).exists()}
        return refs

    def _fetch_ccz(self, bench, row: Row, result: dict, node_id: str) -> None:
        """Without a shared file system the ``.ccz`` lives on the worker's node: copy it to the driver's OUT."""
        if "ccz" not in result:
            return
        local = bench.row_folder(row) / "model.ccz"
        if not (local.is_file() and local.stat().st_size == result.get("file_bytes")):
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            fetch = self.ray.remote(_read_file).options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            atomic_write(local, self.ray.get(fetch.remote(result["ccz"])))
        result["ccz"] = str(local)

    def map(self, bench, rows: list[Row]) -> Iterator[dict]:
        if not rows:
            return
        ray = self.ray
        self.connect()
        pending = {}
        try:
            out = str(bench.out.resolve())
            baselines = self._baseline_refs(bench, rows)
            task = ray.remote(run_row_on_worker).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                         max_retries=self.retries, retry_exceptions=False)
            pending = {task.remote(bench.recipe, out, bench.device, row,
                                   baselines[bench.baseline_folder(row.model, row.seed)],
                                   max(1, int(self.cpus))): row for row in rows}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                row = pending.pop(ready[0])
                try:
                    result, node_id = ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:  # an exception escaped the row (not a dead worker)
                    if isinstance(error.cause, InputError):
                        raise InputError(str(error.cause)) from None
                    yield self._error(row, f"{type(error.cause).__name__}: {error.cause}", lost=False)
                    continue
                except ray.exceptions.RayError as error:  # worker or node died more than `retries` times
                    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    yield self._error(row, f"{type(error).__name__} after {self.retries} retries: {first}",
                                      lost=True)
                    continue
                self._fetch_ccz(bench, row, result, node_id)
                yield result
        finally:  # an error or an interrupted driver: rows still queued or running are not left behind
            self._cancel_unfinished(list(pending))
            self.close()

    def call_all(self, function, calls: list[tuple]) -> list:
        """``function(*arguments)`` for every tuple of ``calls`` as Ray tasks (``cpus_per_row`` CPUs each, retried
        ``retries`` times when a worker dies), results in the order of ``calls``; an ``InputError`` raised in a task
        is raised here as one. What ``optimize`` uses to build and fine-tune its candidates in parallel (their
        latency is then measured one at a time, in the driver)."""
        ray = self.ray
        self.connect()
        refs = []
        try:
            task = ray.remote(function).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
                                                retry_exceptions=False)
            shared = {}  # one object-store copy of an argument passed to several calls (the model, the data)

            def stored(argument):
                if id(argument) not in shared:
                    shared[id(argument)] = (argument, ray.put(argument))  # the object kept alive: ids stay unique
                return shared[id(argument)][1]
            refs = [task.remote(*[stored(a) for a in arguments]) for arguments in calls]
            try:
                return ray.get(refs)
            except ray.exceptions.RayTaskError as error:
                ray.wait(refs, num_returns=len(refs))  # the other calls finish; none is cancelled mid-reply
                if isinstance(error.cause, InputError):
                    raise InputError(str(error.cause)) from None
                raise
        finally:  # only an interrupted driver leaves calls unfinished here
            self._cancel_unfinished(refs)
            self.close()

    def _cancel_unfinished(self, refs: list) -> None:
        """Cancel the tasks of ``refs`` that have not finished, without killing their workers. A finished task is
        never cancelled, and never with ``force=True``: force-cancelling a task whose reply is in flight aborts the
        driver inside Ray 2.60 (task_manager.cc: "Tried to complete task that was not pending"), which ended a
        whole pytest run with exit 1 and no summary."""
        if not refs:
            return
        _, unfinished = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in unfinished:
            self.ray.cancel(ref, force=False)

    @staticmethod
    def _error(row: Row, message: str, lost: bool) -> dict:
        return {"key": row.key, "model": row.model, "method": row.method, "label": row.label, "config": row.config,
                "seed": row.seed, "error": message, **({"lost": True} if lost else {})}


def make_executor(name: str, address: str | None = None, cpus_per_row: float = 1, gpus_per_row: float = 0,
                  retries: int = 2, device: str = "cpu"):
    """``local`` or ``ray`` (the CLI's ``--executor``); ``device``: where the rows train."""
    if name == "ray" and device == "cuda" and gpus_per_row <= 0:
        raise InputError("--device cuda with --executor ray needs --gpus-per-row > 0 (Ray hides GPUs from tasks "
                         "that reserve none)")
    if name == "local":
        if address or gpus_per_row:
            raise InputError("--address/--gpus-per-row need --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, cpus_per_row, gpus_per_row, retries)
    raise InputError(f"--executor {name!r}: choose local or ray")
