"""Hints: the teacher's intermediate outputs as extra distillation targets (FitNets, Romero et al. 2015).

Distillation on softmax targets (``distill``) tells the student one vector of 7 numbers per image. When the
student is a compressed copy of the teacher (same architecture, as in ``table-emotion``), its intermediate
outputs at the same module paths can also be pulled towards the teacher's, with no regressor (FitNets needs one
to map a thinner student's hint layer to the teacher's width). For hint points ``h`` with student output
``s_h(x)`` and teacher output ``t_h(x)`` on a batch ``x``:

    L_hint = (1/|H|) sum_h  mean((s_h(x) - t_h(x))^2) / Var(t_h(x))

each point divided by the variance of the teacher's output over the batch, so a point weighs the same whatever
its scale. ``distill(..., hints=paths, hint_weight=beta)`` trains on ``L_target + beta * L_hint``; the teacher
runs once more per batch (in eval mode, without gradients) to give ``t_h``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.errors import InputError


@contextmanager
def capture_outputs(model: nn.Module, paths) -> dict:
    """Within the block, every forward of ``model`` stores the output of the module at each of ``paths`` (dotted
    names as in ``named_modules``) in the yielded dict; the hooks are removed on exit."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[path].register_forward_hook(lambda _m, _i, out, path=path: outputs.__setitem__(path, out))
               for path in paths]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def hint_loss(student: dict, teacher: dict) -> torch.Tensor:
    """``L_hint`` of the module docstring over the points both dicts hold (the teacher's are constants)."""
    terms = [F.mse_loss(student[path], teacher[path].detach()) / (teacher[path].detach().var() + 1e-8)
             for path in teacher]
    return torch.stack(terms).mean()


def check_hints(teacher: nn.Module, student: nn.Module, paths, example: torch.Tensor) -> tuple[str, ...]:
    """The hint points, checked: each path names a module of both models and their outputs on ``example`` have
    the same shape. Else one-line ``InputError`` naming the point."""
    paths = tuple(paths)
    if not paths:
        raise InputError("hints: name at least one module path")
    for name, model in (("teacher", teacher), ("student", student)):
        names = dict(model.named_modules())
        missing = [path for path in paths if path not in names or path == ""]
        if missing:
            raise InputError(f"hints: the {name} has no module {missing[0]!r}")
    was = teacher.training, student.training
    try:
        with torch.no_grad(), capture_outputs(teacher.eval(), paths) as t_out, \
                capture_outputs(student.eval(), paths) as s_out:
            teacher(example)
            student(example)
    finally:
        teacher.train(was[0])
        student.train(was[1])
    for path in paths:
        shapes = [tuple(getattr(out.get(path), "shape", ())) for out in (t_out, s_out)]
        if shapes[0] != shapes[1] or not shapes[0]:
            raise InputError(f"hints: {path!r} gives {shapes[0] or 'no tensor'} in the teacher and "
                             f"{shapes[1] or 'no tensor'} in the student (a hint needs the same shape in both)")
    return paths
