"""Ray executor on a two-node cluster on this machine (loopback): same results as a local run, a killed worker
is retried, re-runs skip finished rows. Skipped when ray is not installed (``pip install 'cnncompress[ray]'``)."""
import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from cnncompress.experiments.bench import Bench
from cnncompress.errors import InputError
from cnncompress.experiments.executors import LocalExecutor, make_executor
from cnncompress.experiments.recipe import parse_recipe

# the tiny settings of tests/test_bench.py; no peak-memory probes (two fresh processes per row)
RECIPE = {"data": "mnist5k", "input_size": 28, "latency_runs": 10, "threads": 1, "memory": False,
          "baselines": {"squeezenet1_1": {"width": 0.25, "epochs": 1, "lr": 0.05, "batch_size": 32}},
          "finetune": {"epochs": 1, "lr": 0.01},
          "rows": [{"model": "squeezenet1_1", "method": "baseline"},
                   {"model": "squeezenet1_1", "method": "prune-magnitude", "grid": {"sparsity": [0.5, 0.9]}},
                   {"model": "squeezenet1_1", "method": "fp16", "finetune": 0}]}


def test_make_executor_checks_flags():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(InputError, match="need --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(InputError, match="choose local or ray"):
        make_executor("dask")


def test_missing_ray_is_a_clean_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InputError, match="pip install"):
        make_executor("ray")


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False, include_dashboard=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def _kill_first_running_row(rows_dir, killed: dict, stop: threading.Event) -> None:
    """SIGKILL the worker process of the first row seen running (its worker.json exists, result.json not yet)."""
    while not stop.is_set():
        for marker in sorted(rows_dir.glob("*/worker.json")):
            if (marker.parent / "result.json").exists():
                continue
            try:
                pid = json.loads(marker.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                continue
            killed.update(pid=pid, row=marker.parent.name)
            return
        time.sleep(0.02)


def test_two_node_sweep_matches_local_and_survives_a_killed_worker(tmp_path, cluster):
    from cnncompress.experiments.executors import RayExecutor
    recipe = parse_recipe(RECIPE)
    assert len(recipe.rows) == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run 1 thread per row: same float reduction order
    try:
        local = Bench(recipe, tmp_path / "local", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    assert all("error" not in r for r in local), [r.get("error") for r in local]
    # baselines are shared through the output directory: the driver finds them and trains nothing
    shutil.copytree(tmp_path / "local" / "baselines", tmp_path / "ray" / "baselines")

    killed, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_first_running_row, args=(tmp_path / "ray" / "rows", killed, stop))
    killer.start()
    try:
        rows = Bench(recipe, tmp_path / "ray", progress=False).run(RayExecutor(retries=2))
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed"
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    stored = [json.loads(line)["key"] for line in (tmp_path / "ray" / "rows.jsonl").read_text().splitlines()]
    assert sorted(stored) == sorted(r.key for r in recipe.rows)  # every row exactly once
    retried = json.loads((tmp_path / "ray" / "rows" / killed["row"] / "worker.json").read_text())
    assert retried["pid"] != killed["pid"]  # the killed row ran again in another worker process
    assert len({r["ray_node"] for r in rows}) == 2  # both nodes ran rows
    for a, b in zip(local, rows):
        assert (a["key"], a["accuracy"], a["file_bytes"], a["params"]) == \
            (b["key"], b["accuracy"], b["file_bytes"], b["params"])
        if a["history"]:  # the training itself was the same, float for float
            assert b["history"][-1]["train_loss"] == pytest.approx(a["history"][-1]["train_loss"], rel=1e-6)
        assert b["ccz"].startswith(str(tmp_path / "ray")) and os.path.getsize(b["ccz"]) == b["file_bytes"]
    assert local[1]["file_bytes"] > local[2]["file_bytes"]  # 50% vs 90% pruned: the sweep really varies

    # a re-run skips every finished row: no task is submitted, nothing appended
    again = Bench(recipe, tmp_path / "ray", progress=False).run(RayExecutor())
    assert [r["key"] for r in again] == [r["key"] for r in rows]
    assert len((tmp_path / "ray" / "rows.jsonl").read_text().splitlines()) == 4


def test_worker_without_the_shared_directory_gets_files_through_ray(tmp_path, cluster):
    """No shared file system: the worker writes the baseline from the object store, the driver fetches the .ccz."""
    import ray

    from cnncompress.experiments.executors import RayExecutor, run_row_on_worker
    recipe = parse_recipe({**RECIPE, "rows": [{"model": "squeezenet1_1", "method": "fp16", "finetune": 0}]})
    row = recipe.rows[0]
    driver = Bench(recipe, tmp_path / "driver", progress=False)
    driver.prepare([row])
    executor = RayExecutor()
    refs = executor._baseline_refs(driver, [row])[driver.baseline_folder(row.model, row.seed)]
    assert set(refs) == {"model.safetensors", "checkpoint.json"}
    task = ray.remote(run_row_on_worker).options(num_cpus=1)
    result, node_id = ray.get(task.remote(recipe, str(tmp_path / "worker"), "cpu", row, refs, 1))
    worker_weights = tmp_path / "worker" / "baselines" / "squeezenet1_1" / "model.safetensors"
    assert worker_weights.read_bytes() == (driver.baseline_folder(row.model) / "model.safetensors").read_bytes()
    assert "error" not in result and result["ccz"].startswith(str(tmp_path / "worker"))
    executor._fetch_ccz(driver, row, result, node_id)
    assert result["ccz"] == str(driver.row_folder(row) / "model.ccz")
    assert os.path.getsize(result["ccz"]) == result["file_bytes"]


def test_unreachable_address_fails_before_training(tmp_path):
    pytest.importorskip("ray")
    from cnncompress.experiments.executors import RayExecutor
    with pytest.raises(InputError, match="no Ray head node answers"):
        RayExecutor(address="127.0.0.1:1")._check_reachable()
    with pytest.raises(InputError, match="HOST:PORT"):
        RayExecutor(address="nonsense")._check_reachable()

    class Unreachable(LocalExecutor):
        def connect(self):
            raise InputError("--address x: no Ray head node answers there")
    with pytest.raises(InputError, match="no Ray head node"):
        Bench(parse_recipe(RECIPE), tmp_path, progress=False).run(Unreachable())
    assert not (tmp_path / "baselines").exists()  # Bench.run connects before it trains anything


def test_call_all_runs_calls_as_ray_tasks_in_order(cluster):
    """``optimize`` builds its candidates with ``call_all``: results in call order, an InputError raised in a task
    comes back as one (parse_bytes: a plain library function, importable on the workers)."""
    from cnncompress.experiments.executors import RayExecutor
    from cnncompress.budget.optimizer import parse_bytes
    calls = [("1/2", 1000), ("1/4", 1000), ("300KB", None)]
    assert RayExecutor().call_all(parse_bytes, calls) == LocalExecutor().call_all(parse_bytes, calls) == \
        [500, 250, 300_000]
    with pytest.raises(InputError, match="--max-bytes 'lots'"):
        RayExecutor().call_all(parse_bytes, [("1/2", 1000), ("lots", None)])
