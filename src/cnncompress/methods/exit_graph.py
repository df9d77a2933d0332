"""Early exits on any traceable network (residual adds, concatenations, a hand-written ``forward``): the graph split.

Pimpley & Indulkar's exit, f(x) = V1 if max(V1) > threshold else V2, for networks whose forward is not "run the
children in order" (``early_exit.attach_exit`` handles those by splitting the child list). Here:

- ``attach_graph_exit(model, position)``: the exit head (``[pool ->] Flatten -> Linear``) is added to (a copy of)
  the network as its child ``exit_head``, reading the output of the module at ``position`` (any named module);
  the network's own forward is unchanged, so a ``.ccz`` stores only the head beside the float network.
- ``graph_cascade_loss``: fine-tuning computes V1 from that module's output (a forward hook) and V2 from the
  network's own output, and trains on the cascade loss of the exit's configuration (``early_exit.cascade_loss``:
  sum, soft, firm), unchanged.
- ``GraphExit`` (the inference form, ``to_inference``): the network traced with ``torch.fx`` and cut after
  ``position`` into ``trunk`` (inputs up to the exit point; returns the exit's input and every value the rest
  still needs: skip connections, concatenation inputs) and ``rest`` (the remaining graph). The rows whose
  max(V1) > threshold stop after ``trunk``: only the other rows run ``rest``, so early exits really skip compute.
A network that ``torch.fx`` cannot trace (data-dependent control flow) is refused in one line naming it.
"""
from __future__ import annotations

import copy
import time
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import fx, nn


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds: the network cannot be split, said so
        raise ValueError(f"early-exit: {type(model).__name__} cannot be traced by torch.fx to split it "
                         f"({type(error).__name__}: {_first_line(error)})") from error


def _cut(graph: fx.Graph, position: str) -> int:
    """Index (in the graph's node order) of the last node computed inside the module ``position``."""
    nodes = list(graph.nodes)

    def within(path) -> bool:
        return path == position or str(path).startswith(position + ".")
    # a node belongs to the module when fx recorded it inside that module's forward (``nn_module_stack``: also the
    # functional ops of a hand-written forward, e.g. a DenseNet block's ``torch.cat``) or it calls one of its parts
    inside = [i for i, node in enumerate(nodes) if any(within(path) for path in node.meta.get("nn_module_stack", {}))
              or (node.op in ("call_module", "get_attr") and within(node.target))]
    if not inside:
        raise ValueError(f"early-exit: the traced graph has no module {position!r}")
    return max(inside)


def split_at(model: nn.Module, position: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``(trunk, rest)``: ``trunk(x) -> (exit input, *live values)``, ``rest(*live values) -> output``. Both share
    the network's parameters (modules by reference)."""
    traced = trace(model)
    nodes = list(traced.graph.nodes)
    cut = _cut(traced.graph, position)
    exit_node = nodes[cut]
    head, tail = nodes[:cut + 1], nodes[cut + 1:]
    if not any(node.op not in ("output",) for node in tail):
        raise ValueError(f"early-exit: nothing follows {position}: an exit there would not save anything")
    in_head = set(head)
    live = [node for node in head if any(user not in in_head for user in node.users)]
    trunk_graph, values = fx.Graph(), {}
    for node in head:
        values[node] = trunk_graph.node_copy(node, lambda n: values[n])
    trunk_graph.output(tuple([values[exit_node]] + [values[node] for node in live]))
    rest_graph, rest_values = fx.Graph(), {}
    for node in live:
        rest_values[node] = rest_graph.placeholder(f"live_{node.name}")
    for node in tail:
        rest_values[node] = rest_graph.node_copy(node, lambda n: rest_values[n])
    return fx.GraphModule(traced, trunk_graph), fx.GraphModule(traced, rest_graph)


def exit_features(model: nn.Module, position: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output of the module at position, the network's output)`` in one forward (a hook, no split)."""
    seen = []
    handle = model.get_submodule(position).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        final = model(x)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[-1], torch.Tensor):
        raise ValueError(f"early-exit: module {position} gave no tensor output")
    return seen[-1], final


def attach_graph_exit(model: nn.Module, position: str, input_shape: tuple[int, ...], head_pool: int = 0
                      ) -> nn.Module:
    """A copy of ``model`` with ``exit_head`` reading the output of ``position`` (checked traceable and
    splittable now, so a network that cannot be split is refused at apply time, not at deployment)."""
    try:
        model.get_submodule(position)
    except AttributeError as error:
        names = ", ".join(name for name, _ in model.named_children())
        raise ValueError(f"early-exit: {type(model).__name__} has no module {position!r} (children: {names})") \
            from error
    model = copy.deepcopy(model)
    for module in model.modules():  # the head reads the exit point too: no in-place op may overwrite it
        if hasattr(module, "inplace"):
            module.inplace = False
    split_at(model, position)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hidden, final = exit_features(model, position, torch.randn(2, *input_shape))
    model.exit_head = exit_head(hidden, final.shape[1], head_pool, position)
    return model.train(was_training)


def exit_head(hidden: torch.Tensor, num_classes: int, head_pool: int, position: str) -> nn.Sequential:
    """The exit classifier for features like ``hidden`` (a batch): ``[pool ->] Flatten -> Linear`` (the paper's
    [FC -> softmax]); ``head_pool`` > 0 first average-pools to about head_pool x head_pool with a fixed kernel (an
    adaptive pool does not export to ONNX with a dynamic batch)."""
    head = []
    if head_pool:
        if hidden.dim() != 4 or min(hidden.shape[2:]) < head_pool:
            raise ValueError(f"head_pool={head_pool} needs a feature map of at least that size at {position}, "
                             f"got {tuple(hidden.shape[1:])}")
        kernel = (hidden.shape[2] // head_pool, hidden.shape[3] // head_pool)
        head.append(("pool", nn.AvgPool2d(kernel, kernel)))
    features = nn.Sequential(OrderedDict(head))(hidden)[0].numel()
    return nn.Sequential(OrderedDict(head + [("flatten", nn.Flatten()), ("fc", nn.Linear(features, num_classes))]))


class GraphExit(nn.Module):
    """The deployed form of a network with a graph exit: ``trunk``, the head, and ``rest`` only for the rows
    that did not exit (see the module docstring). ``last_exit``: per sample 0 (early) or 1 (final). Returns
    per-sample log-probabilities of the exit taken, like ``EarlyExitNet``."""

    def __init__(self, net: nn.Module, position: str, threshold: float):
        super().__init__()
        self.net, self.position, self.threshold = net, position, float(threshold)
        self.trunk, self.rest = split_at(net, position)
        self.last_exit: torch.Tensor | None = None
        self.seconds, self.fallback = 0.0, False

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        hidden, *live = self.trunk(x)
        log_probs = F.log_softmax(self.net.exit_head(hidden), 1)
        confidence = log_probs.max(dim=1).values.exp()
        late = torch.nonzero(confidence <= self.threshold).flatten()
        exit_index = torch.zeros(len(x), dtype=torch.long)
        if len(late):
            batch = len(x)
            rows = [v.index_select(0, late) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch
                    else v for v in live]
            log_probs = log_probs.clone()
            try:
                final = self.rest(*rows)
            except RuntimeError:  # the rest reshapes by the whole batch's size (a size computed in the trunk)
                if not self.fallback:
                    warnings.warn(f"early-exit: the graph after {self.position} depends on the batch size; the "
                                  f"late rows rerun the whole network (right answers, less saving)", RuntimeWarning)
                self.fallback = True
                final = self.net(x.index_select(0, late))
            log_probs[late] = F.log_softmax(final, 1)
            exit_index[late] = 1
        self.last_exit, self.seconds = exit_index, time.perf_counter() - started
        return log_probs
