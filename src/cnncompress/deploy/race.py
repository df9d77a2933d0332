"""Which engine runs a model fastest here, timed interleaved in one process, and the facts a result needs.

``fastest`` prepares every engine asked for (those that cannot run are skipped with a one-line note), then times
them taking turns (``measure.alternating``: turns of ``block`` calls, more for fast calls (``TURN_MS``), the first
not counted, order rotating), so that load drift on a shared machine hits all of them alike. No engine may slow
another: each is prepared not to pin or spin into the others' time (``sharing``), and
``benchmarks/check_race_vs_alone.py`` checks the race against each engine timed alone in a fresh process.
``fastest_fp32`` restricts the race to fp32 engines: the baseline a speed-up is measured against never changes
precision silently.
"""
from __future__ import annotations

import math
import os
import platform

import torch
from torch import nn

from cnncompress.errors import InputError
from cnncompress.timing import DEFAULT_THREADS, alternating, time_calls
from cnncompress import hardware as cpu
from cnncompress.deploy import openvino
from cnncompress.deploy.engines import ENGINES, ORT_SHARING, EngineUnavailable, get, model_precision, names
from cnncompress.storage import probe_section


def _engine_list(engines) -> list[str]:
    if engines is None:
        return list(ENGINES)
    if isinstance(engines, str):
        engines = [engines]
    chosen = [get(name).name for name in engines]  # unknown name: InputError
    if not chosen:
        raise InputError("no engine named; engines: " + ", ".join(ENGINES))
    return list(dict.fromkeys(chosen))


TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "int8": 1e-1}  # max |engine - model| / (1 + max |model|)


AGREEMENT = 0.99
"""Top-1 agreement an engine must reach on the real images it is checked on, against its reference."""


def _predictions(run, images: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([run(images[i:i + batch]).float().argmax(1) for i in range(0, len(images) - batch + 1, batch)])


def _reference(model: nn.Module, precision: str, input_shape: tuple[int, ...], threads: int | None):
    """What an engine of ``precision`` must agree with: the model's own forward (fp32, bf16), or for int8 its
    fake-quant twin: the same QDQ graph run with every quantise/dequantise in fp32 arithmetic (onnxruntime with
    graph optimisation off, so no int8 kernel runs): what differs from it is the engine's int8 arithmetic."""
    if precision != "int8":
        return model, "the model's own forward"
    from cnncompress.deploy.engines import int8_graph
    from cnncompress.deploy.int8 import fake_quant_twin
    return fake_quant_twin(int8_graph(model, input_shape), threads), "its fake-quant twin"


def _check_on_images(name: str, run, model: nn.Module, images: torch.Tensor, input_shape: tuple[int, ...],
                     threads: int | None, references: dict) -> str | None:
    """Why engine ``name`` is not used (its top-1 agreement with its reference on ``images`` < ``AGREEMENT``), or
    None."""
    precision = get(name).precision
    if precision not in references:
        reference, what = _reference(model, precision, input_shape, threads)
        references[precision] = (_predictions(reference, images, input_shape[0]), what)
    expected, what = references[precision]
    agreement = float((_predictions(run, images, input_shape[0]) == expected).float().mean())
    if agreement < AGREEMENT:
        return f"agrees with {what} on {100 * agreement:.1f} % of {len(expected)} real images (< {100 * AGREEMENT:g} %)"
    return None


def prepared(model, input_shape: tuple[int, ...], engines=None,
             threads: int | None = DEFAULT_THREADS, check: bool = True,
             images: torch.Tensor | None = None) -> tuple[dict, dict]:
    """``({engine: run}, {engine: why skipped})`` for the engines asked for (default: all).

    ``check`` (a module ``model``): with ``images`` (real images of the run, e.g. 32 of its validation split), each
    engine's top-1 on them must agree with its reference (``_reference``: the model's forward, or for int8 engines
    the fake-quant twin) on at least ``AGREEMENT`` of them, else it is skipped with the figure; without images,
    a model that carries a file's probes is checked the same way on the probe images; otherwise its output on a
    seeded probe input is compared with the model's own forward (an engine that computes something else, e.g. an
    ONNX export that froze a native kernel's output into a constant, is skipped): max |Δ| within
    ``TOLERANCE[precision]`` x (1 + max |output|)."""
    checked = check and isinstance(model, nn.Module)
    if checked and images is None:
        images = _file_probes(model, input_shape)
    if checked and images is not None:
        references: dict = {}

        def why_not(name: str, run) -> str | None:
            return _check_on_images(name, run, model, images, input_shape, threads, references)
    elif checked:
        why_not = _probe_check(model, input_shape)
    else:
        def why_not(name: str, run) -> None:
            return None
    runs, skipped = {}, {}
    for name in _engine_list(engines):
        try:
            run = get(name).prepare(model, input_shape, threads)
            why = why_not(name, run)
            if why:
                skipped[name] = why
                continue
            runs[name] = run
        except EngineUnavailable as error:
            skipped[name] = str(error).removeprefix(f"engine {name}: ")
        except Exception as error:  # noqa: BLE001 - an engine that fails on this model is skipped, said so
            lines = str(error).strip().splitlines()
            skipped[name] = f"failed: {type(error).__name__}: {lines[0] if lines else ''}"
    return runs, skipped


def _file_probes(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor | None:
    """The real images a model loaded from a ``.ccz`` carries (its probes, ``storage.probe_section``; a deployed
    model keeps them, ``self_check``) when they have ``input_shape``'s image shape, else None."""
    probes = probe_section.of(model)
    if probes is None:
        return None
    inputs = probes.inputs()
    return inputs if tuple(inputs.shape[1:]) == tuple(input_shape[1:]) else None


def _probe_check(model: nn.Module, input_shape: tuple[int, ...]):
    """``why_not(name, run)`` of the check without images: the engine's output on a seeded probe input against
    the model's own forward, within ``TOLERANCE[precision]`` x (1 + max |output|)."""
    probe = torch.randn(*input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(probe).float()

    def why_not(name: str, run) -> str | None:
        with torch.inference_mode():
            error = float((run(probe).float() - reference).abs().max())
        allowed = TOLERANCE[get(name).precision] * (1 + float(reference.abs().max()))
        return None if error <= allowed else f"output differs from the model (max |Δ| {error:.3g} > {allowed:.3g})"
    return why_not


def fastest(model: nn.Module | bytes, input_shape: tuple[int, ...], engines=None,
            threads: int | None = DEFAULT_THREADS, runs: int = 20, block: int = 3,
            example: torch.Tensor | None = None) -> dict:
    """Median ms per call of every engine that can run ``model`` on ``input_shape`` at ``threads``, timed
    interleaved; returns ``{engine: median_ms, ..., "fastest": name, "skipped": {engine: one-line reason}}``.

    ``engines``: names (default: all; an unknown one is an ``InputError``). ``runs`` turns of ``block`` calls
    each (at least: fast calls get longer turns, ``TURN_MS``); ``example``: the input (default: seeded N(0,1)
    noise). No engine able to run it: ``InputError``.
    """
    if not isinstance(runs, int) or runs < 1 or not isinstance(block, int) or block < 1:
        raise InputError(f"runs and block must be positive integers, got {runs!r}, {block!r}")
    calls, skipped = prepared(model, input_shape, engines, threads)
    if not calls:
        raise InputError("no engine can run the model: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    times = _interleaved(calls, input_shape, threads, runs, block, example)
    return {**times, "fastest": min(times, key=times.get), "skipped": skipped}


TURN_MS, MAX_TURN = 10.0, 25
"""A turn of ``block`` > 1 calls is lengthened until the fastest contender's turn lasts ``TURN_MS`` (at most
``MAX_TURN`` calls): an engine that takes over from another runs slower for its first few calls, not only the
first (``benchmarks/check_race_vs_alone.py``, VGG-S w0.25 48x48, 1 thread, each engine alone in a fresh process
against the race: turns of 3 calls moved onnxruntime 0.24 -> 0.28 ms, OpenVINO f32 0.31 -> 0.36 ms, PyTorch
1.40 -> 1.58 ms; turns of 11 calls 2-4 %). Calls of 10 ms or more keep turns of ``block``."""


def _turn(calls: dict, block: int) -> int:
    """Calls per turn: ``block``, lengthened for fast calls (``TURN_MS``; every call is made 3 times to see how
    fast it is, which warms it up as well); ``block`` 1 (call by call) is kept, nothing called."""
    if block <= 1:
        return block
    fastest = min(min(time_calls(call, 2, warmup=1)) for call in calls.values())
    return max(block, min(MAX_TURN, math.ceil(TURN_MS / 1000 / max(fastest, 1e-9))))


def _interleaved(calls: dict, input_shape: tuple[int, ...], threads: int | None, runs: int, block: int,
                 example: torch.Tensor | None, rounds: dict | None = None) -> dict:
    """``{key: median ms}`` of prepared runs taking turns (``_turn`` calls each) on one input (``example`` or seeded
    N(0,1) noise), with torch's threads at ``threads`` for the race (restored after); ``rounds`` receives each
    key's per-round ms (``timing.alternating``)."""
    x = example if example is not None else torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            turns = {key: (lambda run=run: run(x)) for key, run in calls.items()}
            return alternating(turns, runs, block=_turn(turns, block), warmup=0 if block > 1 else 2, rounds=rounds)
    finally:
        torch.set_num_threads(previous)


def race(contenders: dict, input_shape: tuple[int, ...], threads: int | None = DEFAULT_THREADS, runs: int = 20,
         block: int = 3, example: torch.Tensor | None = None, images: torch.Tensor | None = None,
         rounds: dict | None = None) -> tuple[dict, dict]:
    """Several models, each on several engines, timed in one interleaved race (``measure.alternating``), so that
    the models compared see the same load. ``contenders``: ``{key: (model, engine names)}``. Returns ``({(key,
    engine): median ms}, {(key, engine): why skipped})``; a model no engine can run has no times, not an error.
    ``images``: real images every engine is checked on first (``prepared``); ``rounds`` receives every ``(key,
    engine)``'s per-round ms (the raw data of an interval over rounds)."""
    calls, skipped = {}, {}
    for key, (model, engine_names) in contenders.items():
        runs_of, why = prepared(model, input_shape, engine_names, threads, images=images)
        calls.update({(key, name): run for name, run in runs_of.items()})
        skipped.update({(key, name): reason for name, reason in why.items()})
    if not calls:
        return {}, skipped
    return _interleaved(calls, input_shape, threads, runs, block, example, rounds), skipped


def fastest_deployed(model: nn.Module, input_shape: tuple[int, ...], engine: str | None = None,
                     threads: int | None = 1, runs: int = 15) -> dict:
    """``{"precision", "engine", "ms", "engines_ms", "skipped"}`` of a deployed model at batch 1 on ``engine``, or
    on the fastest engine of the precision it is meant to run at (``model_precision``). ``InputError`` when no
    such engine can run it."""
    precision = model_precision(model)
    timed = fastest(model, input_shape, [engine] if engine else names(precision), threads, runs)
    best = timed["fastest"]
    return {"precision": precision, "engine": best, "ms": timed[best], "skipped": timed["skipped"],
            "engines_ms": {k: v for k, v in timed.items() if k not in ("fastest", "skipped")}}


def fastest_fp32(model: nn.Module | bytes, input_shape: tuple[int, ...], threads: int | None = DEFAULT_THREADS,
                 runs: int = 20, block: int = 3, engines=None) -> dict:
    """``fastest`` over the fp32 engines only (default: every fp32 engine): the strongest fp32 baseline."""
    chosen = names("fp32") if engines is None else [e for e in _engine_list(engines) if get(e).precision == "fp32"]
    if not chosen:
        raise InputError(f"no fp32 engine among {engines}; fp32 engines: {', '.join(names('fp32'))}")
    return fastest(model, input_shape, chosen, threads, runs, block)


OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""The variables that say how long PyTorch's OpenMP workers (oneDNN, ATen) spin after a parallel region. Read
once, when libgomp loads (before any engine is prepared): unset, libgomp spins 300,000 iterations, then sleeps
(``OMP_WAIT_POLICY=PASSIVE``: it sleeps at once). At one thread PyTorch starts no workers."""


def sharing() -> dict:
    """How each runtime is kept from pinning or spinning into the others' time: OpenVINO's compile properties
    (``openvino.SHARING``), onnxruntime's session entries (``engines.ORT_SHARING``), the OpenMP wait variables
    PyTorch runs under (as set in this process's environment), and the XNOR kernel's threads."""
    return {"openvino": dict(openvino.SHARING),
            "onnxruntime": {**ORT_SHARING, "execution_mode": "sequential (no inter-op pool)",
                            "intra_op_num_threads": "always set (0 would pin one thread per core)"},
            "torch": {name: os.environ.get(name, "unset") for name in OPENMP_WAIT},
            "xnor": "native threads created and joined within each call (none left waiting)"}


def engine_environment() -> dict:
    """What a result file records about the engines: CPU model and ISA flags (AMX, AVX512-BF16, VNNI,
    VPOPCNTDQ), what bf16 runs on, OpenVINO (version, device, capabilities, precision hints or why it is
    missing), onnxruntime and torch versions, how the engines share the cores (``sharing``), and which engines
    can run here."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"cpu": cpu.cpu_name(), "machine": platform.machine(), "isa": cpu.isa_flags(), "amx": cpu.has_amx(),
            "bf16": cpu.bf16_note(), "openvino": openvino.environment(), "onnxruntime": ort_version,
            "torch": torch.__version__, "sharing": sharing(),
            "engines": {name: (engine.precision, engine.available().reason or "available")
                        for name, engine in ENGINES.items()}}
