"""Compression methods. Each family lives in its own module here and registers itself on import.

``apply(model, name, **cfg)``, ``available()``, ``info(name)``, ``register(info, apply_fn)``. How a compressed
model runs is decided in ``cnncompress.deploy`` (``deploy.to_inference``); methods return PyTorch modules.
"""
from cnncompress.methods.registry import (METHODS, MethodInfo, apply, available, check_config, get, info, register,
                       with_data)

__all__ = ["METHODS", "MethodInfo", "apply", "available", "check_config", "get", "info", "register",
           "with_data"]
