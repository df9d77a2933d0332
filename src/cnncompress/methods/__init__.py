"""Compression methods. Each family lives in its own module here and registers itself on import.

``apply(model, name, **cfg)``, ``available()``, ``info(name)``, ``register(info, apply_fn)``, ``to_inference(model)``.
"""
from .registry import (METHODS, MethodInfo, apply, available, check_config, get, info, register, to_inference,
                       with_data)

__all__ = ["METHODS", "MethodInfo", "apply", "available", "check_config", "get", "info", "register", "to_inference",
           "with_data"]
