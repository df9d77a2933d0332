"""cnncompress: make convolutional networks small and fast, and prove it by measuring.

Importing the package wires the one dependency that points across layers: ``storage`` (the ``.ccz`` format, a
leaf) is handed the model skeleton builder and the hook that registers the methods' layers and codecs, so that
``storage.load(path)`` can rebuild any file while storage itself imports neither models nor methods.
"""

__version__ = "0.1.0"


def _wire_storage() -> None:
    from . import models, storage
    from .methods.registry import load_builtin

    storage.configure(build_skeleton=models.build_from_spec, before_read=load_builtin)


_wire_storage()


def optimize(model, train_set, val_set, max_bytes, max_ms=None, engine=None, finetune: int = 2, seed: int = 0,
             work=None, progress=None, fp16_rest: bool = False, grid=None, executor=None):
    """``cnncompress.optimizer.optimize``: the most accurate copy of ``model`` within ``max_bytes`` (bytes,
    "400KB", or "1/16" of the original) and ``max_ms``, chosen by measured per-layer sensitivity; unlabelled sets
    score agreement with the original and fine-tune by distillation; returns (model, report)."""
    from .optimizer import optimize as run
    return run(model, train_set, val_set, max_bytes, max_ms, engine, finetune, seed, work, progress, fp16_rest, grid,
               executor)
