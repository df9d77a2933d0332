"""A user's own network, named by its entry point: ``path/to/file.py:function`` or ``package.module:function``.

``build_user(entry, **kwargs)`` imports the file or module the *caller* names (a command-line flag, a recipe's
``model:`` key, a Python argument), calls ``function(**kwargs)`` and checks that it returned an ``nn.Module``. The
model's card gets ``spec = {"name": "user", "entry_point": entry, "kwargs": kwargs, "class": <class name>}``:
files record the entry point, but loading never imports it on a file's say-so (a file is data, not code):
``storage.load(path, model=...)`` / ``--model`` must name it again (``USER``).

A network built by the user's own code with no entry point at all needs nothing either: ``methods.apply`` gives
its compressed copy a card (``spec = {"name": "user", "class": ...}``) and ``storage.save`` takes it as it is.

Bad entry points are one-line ``InputError``s: no such file or module, no such function, the function raised,
or it returned something that is not an ``nn.Module``; ``check_outputs`` makes a network that does not fit a
dataset (its images, its class count) one too, naming the entry point and the mismatch.
"""
from __future__ import annotations

import importlib
import importlib.util
import hashlib
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnncompress.errors import InputError
from cnncompress.model_card import USER_MODEL as USER, is_user  # noqa: F401  (re-exported)


def is_entry_point(text: str) -> bool:
    """True when ``text`` looks like ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``."""
    module, sep, function = str(text).rpartition(":")
    return bool(sep and module and function.isidentifier() and (module.endswith(".py") or all(
        part.isidentifier() for part in module.split("."))))


def resolve(entry: str) -> Callable[..., nn.Module]:
    """The function ``entry`` names (imported now, because the caller named it)."""
    if not is_entry_point(entry):
        raise InputError(f"{entry}: not an entry point (expected FILE.py:FUNCTION or package.module:FUNCTION)")
    module_name, _, function = entry.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"entry point {entry}: no such file {path}")
        unique = "cnncompress_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(unique)
        if module is None:
            spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except Exception as error:  # noqa: BLE001 - the user's file failed to import: their input, said so
                del sys.modules[unique]
                raise InputError(f"entry point {entry}: importing {path} failed ({type(error).__name__}: "
                                 f"{_first_line(error)})") from error
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(f"entry point {entry}: cannot import {module_name} ({_first_line(error)})") from error
    builder = getattr(module, function, None)
    if not callable(builder):
        raise InputError(f"entry point {entry}: {module_name} has no function {function}")
    return builder


def build_user(entry: str, **kwargs) -> nn.Module:
    """``function(**kwargs)`` of the entry point, checked to be an ``nn.Module``, with its card."""
    builder = resolve(entry)
    try:
        model = builder(**kwargs)
    except Exception as error:  # noqa: BLE001 - the user's builder failed: their input, said in one line
        raise InputError(f"entry point {entry}: {entry.rpartition(':')[2]}() raised {type(error).__name__}: "
                         f"{_first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise InputError(f"entry point {entry}: {entry.rpartition(':')[2]}() returned {type(model).__name__}, "
                         f"not a torch.nn.Module")
    model.spec = {"name": USER, "entry_point": entry, "kwargs": dict(kwargs), "class": type(model).__name__}
    return model


def build_for(entry: str, **sizes) -> nn.Module:
    """``build_user(entry)`` with those of ``sizes`` (``num_classes``, ``in_channels``, ``input_size``, ``width``)
    that the function's signature takes; the card records the input shape either way."""
    import inspect
    builder = resolve(entry)
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in sizes.items() if takes_any or k in parameters}
    model = build_user(entry, **kwargs)
    model.spec.update({k: sizes[k] for k in ("in_channels", "input_size") if k in sizes})
    return model


def check_outputs(model: nn.Module, images: torch.Tensor, classes: int | None, data: str,
                  flag: str = "--model") -> int:
    """``model`` must take ``data``'s ``images`` (N, C, H, W) and give ``classes`` outputs per image (``None``:
    any number, for unlabelled images): one forward of one image (eval mode, no gradient) tells; else a one-line
    ``InputError`` naming the network (``flag`` and its entry point, from its card) and the mismatch. Returns the
    number of outputs per image."""
    entry = (getattr(model, "spec", None) or {}).get("entry_point")
    name = f"{flag} {entry}" if entry else f"{flag} ({type(model).__name__})"
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(images[:1])
    except Exception as error:  # noqa: BLE001 - the network cannot run the data: the user's input, said so
        raise InputError(f"{name}: cannot take the images of {data} {list(images.shape[1:])} "
                         f"({type(error).__name__}: {_first_line(error)})") from error
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and classes in (None, out.shape[1]):
        return int(out.shape[1])
    got = (f"{out.shape[1]} outputs per image" if isinstance(out, torch.Tensor) and out.dim() == 2 else
           f"outputs of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
    raise InputError(f"{name}: gives {got}; {data} has {classes} classes" if classes else
                     f"{name}: gives {got}, not one score per class and image")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
