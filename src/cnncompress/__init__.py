"""cnncompress: make convolutional networks small and fast, and prove it by measuring.

The layers, bottom up (``tests/test_import_graph.py`` enforces them): ``errors``, ``hardware``, ``timing``,
``model_card``, ``kernels``, ``layers``, ``surgery`` -> ``storage`` (every file format), ``data`` -> ``models`` ->
``methods`` (every method; they return PyTorch modules) -> ``deploy`` (the one place that decides how a model runs:
engines, ONNX / OpenVINO graphs, int8 / bf16 / XNOR runtimes, the race) -> ``measure`` -> ``training`` (trainer,
distillation, hints) -> ``pipeline`` (one model through methods), ``budget`` (``optimize``: the most accurate copy
within a byte / latency budget), ``app`` (photo / video prediction) -> ``experiments`` (studies, bench,
reproduce) -> ``commands`` / ``cli``.

Importing the package wires the dependencies that point across layers at run time, never at import: ``storage``
is handed the model skeleton builder and the hook that registers every layer type a file may hold (methods' and
deploy's), and the ``int8`` method the range finder of the graph it deploys as (``deploy.int8``).
"""

__version__ = "0.1.0"


def _register_layers() -> None:
    """Import every module whose layers or codecs a ``.ccz`` file may name (built-in methods, native XNOR blocks)."""
    from cnncompress.methods.registry import load_builtin
    load_builtin()
    import cnncompress.deploy.xnor  # noqa: F401  (NativeSequential: a deployed XNOR block)


def _int8_ranges(model, images):
    from cnncompress.deploy.int8 import measure_ranges
    return measure_ranges(model, images)


def _wire() -> None:
    from cnncompress import models, storage
    from cnncompress.methods import int8

    storage.configure(build_skeleton=models.build_from_spec, before_read=_register_layers)
    int8.RANGE_FINDER[:] = [_int8_ranges]


_wire()


def optimize(model, train_set, val_set, max_bytes, max_ms=None, engine=None, finetune: int = 2, seed: int = 0,
             work=None, progress=None, fp16_rest: bool = False, grid=None, executor=None):
    """``cnncompress.budget.optimizer.optimize``: the most accurate copy of ``model`` within ``max_bytes`` (bytes,
    "400KB", or "1/16" of the original) and ``max_ms``, chosen by measured per-layer sensitivity; unlabelled sets
    score agreement with the original and fine-tune by distillation; returns (model, report)."""
    from cnncompress.budget.optimizer import optimize as run
    return run(model, train_set, val_set, max_bytes, max_ms, engine, finetune, seed, work, progress, fp16_rest, grid,
               executor)


def compress(model, method: str, data=None, finetune: int = 0, **options):
    """``cnncompress.pipeline.compress``: any ``nn.Module`` compressed with ``method`` as the command line does it
    (apply, BatchNorm statistics re-estimated on ``data``'s training images, ``finetune`` epochs, the collapse
    check on its validation split); returns ``(model, row)``."""
    from cnncompress.pipeline import compress as run
    return run(model, method, data, finetune, **options)


def to_inference(model):
    """``cnncompress.deploy.to_inference``: the deployed form of a compressed model."""
    from cnncompress.deploy.runtime import to_inference as deployed
    return deployed(model)
