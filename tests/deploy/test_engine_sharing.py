"""Engines share the cores: the settings that keep each runtime from pinning or spinning into the others' time are
applied where engines are prepared, read back from the sessions / compiled models, and recorded. No timings here:
``benchmarks/check_race_vs_alone.py`` times each engine alone and in the race."""
import os
import threading
from pathlib import Path

import pytest
import torch

from cnncompress import deploy, methods, models
from cnncompress import hardware as cpu
from cnncompress.deploy import openvino
from cnncompress.deploy.engines import ORT_SHARING

SHAPE = (1, 1, 48, 48)
needs_openvino = pytest.mark.skipif(openvino.missing() is not None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


@pytest.fixture(scope="module")
def int8(vgg):
    return methods.apply(vgg, "int8", calibration="noise", num_calibration=8)


def _ort_options(run):
    return run.session.get_session_options()


@pytest.mark.parametrize("threads", [1, 2, None])
def test_onnxruntime_threads_block_instead_of_spinning_and_are_never_left_to_pin(vgg, threads):
    import onnxruntime as ort
    options = _ort_options(deploy.prepare("onnxruntime", vgg, SHAPE, threads))
    for key, value in ORT_SHARING.items():
        assert options.get_session_config_entry(key) == value
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and options.inter_op_num_threads == 1
    assert options.intra_op_num_threads == (threads or cpu.cores())  # never 0: onnxruntime would pin its pool


def test_onnxruntime_int8_engine_gets_the_same_settings(int8):
    options = _ort_options(deploy.prepare("onnxruntime-int8", int8, SHAPE, 1))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@needs_openvino
@pytest.mark.parametrize("name", ["openvino-fp32", "openvino-int8"])
def test_openvino_compiles_without_pinning_or_reserving_cores(vgg, int8, name):
    compiled = deploy.prepare(name, int8 if name.endswith("int8") else vgg, SHAPE, 1).compiled
    for key, value in openvino.SHARING.items():
        assert compiled.get_property(key) is value, key
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


@needs_openvino
def test_openvino_model_module_uses_the_same_configuration(vgg):
    from cnncompress.deploy.onnx_export import export_bytes
    module = openvino.OpenVinoModel(export_bytes(vgg, torch.zeros(SHAPE)), "fp32")
    compiled = openvino.compile_graph(module.onnx_model, "fp32", 1)
    assert compiled.get_property("ENABLE_CPU_PINNING") is False


def _allowed(tid: int) -> str:
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


@needs_openvino
@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or cpu.cores() < 2, reason="needs Linux and 2+ CPUs")
def test_openvino_leaves_the_calling_threads_cpu_set_alone_while_it_infers(vgg):
    """With pinning on, the thread that calls ``infer`` is bound to one core for the call (its
    ``Cpus_allowed_list`` reads ``0`` while it infers); with ``SHARING`` it keeps the process's CPU set."""
    run = deploy.prepare("openvino-fp32", vgg, SHAPE, 1)
    x, stop, seen = torch.zeros(SHAPE), threading.Event(), set()

    def loop():
        while not stop.is_set():
            run(x)
    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for _ in range(100):
            if worker.native_id:
                seen.add(_allowed(worker.native_id))
            stop.wait(0.002)
    finally:
        stop.set()
        worker.join()
    assert seen == {_allowed(threading.get_native_id())}, seen


def test_engine_environment_records_how_the_engines_share_the_cores():
    sharing = deploy.engine_environment()["sharing"]
    assert sharing["onnxruntime"]["session.intra_op.allow_spinning"] == "0"
    assert sharing["openvino"] == {"ENABLE_CPU_PINNING": False, "ENABLE_CPU_RESERVATION": False}
    assert sharing["torch"]["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "unset")
    assert "xnor" in sharing


def test_race_lengthens_turns_of_fast_calls_only():
    """An engine taking over from another runs its first few calls slower: turns of fast calls last >= TURN_MS
    (at most MAX_TURN calls); slow calls keep ``block``; ``block`` 1 (call by call) is kept and nothing is called."""
    import importlib
    import time
    race = importlib.import_module("cnncompress.deploy.race")  # the module (deploy.race is the function)
    called = []
    assert race._turn({"a": lambda: called.append(1)}, 1) == 1 and not called
    assert race._turn({"fast": lambda: None, "also": lambda: None}, 3) == race.MAX_TURN
    assert race._turn({"slow": lambda: time.sleep(race.TURN_MS / 1000 * 1.5)}, 3) == 3
