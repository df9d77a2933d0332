"""Early exits: an intermediate classifier, cascade losses, and thresholded inference that really stops computing.

Pimpley & Indulkar, "Exploring Sophisticated Loss Functions for Early Prediction in Convolutional Neural
Networks" (UMass): one intermediate [FC -> softmax] exit is inserted after block 1 (``p1``) or block 2 (``p2``)
of the cascade CNN. With V1, V2 the softmax outputs of the early and the final classifier, the cascade predicts

    f(x) = V1  if max(V1) > threshold  else  V2          (paper §3.1, hard mode at test time)

and is trained with one of three losses (``msdnet_sum_loss``, ``soft_cascade_loss``, ``firm_cascade_loss``).
BranchyNet (Teerapittayanon et al. 2016) is the same idea with entropy instead of max-probability gating.

``attach_exit(model, position)`` splits any model whose forward is "run the named children in order" (the
cascade CNN, VGG-S, and every plain ``nn.Sequential`` tree) at a named child into ``trunk`` (up to and including
that child) and ``rest``, and hangs ``exit_head`` (Flatten -> Linear, optionally after adaptive average pooling)
on the trunk. ``exit_inference`` runs the trunk and the head for the whole batch, then runs ``rest`` only on the
rows whose max(V1) <= threshold: the other rows really skip the later blocks.

The ``early-exit`` method (registered at the end): ``apply`` attaches the exit head; fine-tuning uses the chosen
cascade loss (sum / soft / firm); the eval forward is the hard-mode cascade, so the bench's latency is the real,
data-dependent cost of the samples that stop early. The saving is real compute (speed="real"); the file grows by
the head, so no size saving is claimed (size="none"). It chooses no layers to replace (``position`` names where
the exit goes), so it takes no ``layers=`` option.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.layers import CompressedLayer, register_layer
from cnncompress.model_card import carry, is_user
from cnncompress.methods.cascade_losses import (DEFAULT_ALPHA, DEFAULT_PENALTY, DEFAULT_THRESHOLD,  # noqa: F401
                                               LOSS_NAMES, cascade_loss, f_alpha, firm_cascade_loss,
                                               firm_cascade_probability, g_alpha, msdnet_sum_loss,
                                               soft_cascade_loss, soft_cascade_probability)
from cnncompress.methods.exit_graph import GraphExit, attach_graph_exit, exit_features, exit_head
from cnncompress.methods.prune_macs import total_macs
from cnncompress.methods.registry import MethodInfo, register


CASCADE_POSITIONS = {"p1": "features.block1", "p2": "features.block2"}


# ----------------------------------------------------------------------------------------------- model
@register_layer  # .ccz files rebuild the exit from its layer_config
class EarlyExitNet(CompressedLayer, nn.Module):
    """trunk -> exit_head (early logits) and trunk -> rest (final logits).

    ``forward`` in training mode returns the final logits (plain cross-entropy still trains the base path);
    in eval mode it runs ``exit_inference`` at ``self.threshold`` and returns per-sample log-probabilities of
    the exit each sample took (argmax = the cascade's prediction); ``self.last_exit`` then holds the exit index
    per sample (0 = early, 1 = final). ``loss``, ``alpha``, ``penalty`` choose the training loss
    (``cascade_loss``). Config round-trips through ``.ccz`` via ``layer_config``. Under ONNX export / tracing
    the eval forward is a static graph (both heads, ``torch.where``): same answers, no saving.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, position: str = "", loss: str = "sum",
                 alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY):
        super().__init__()
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold={threshold} must be in [0, 1]")
        if loss not in LOSS_NAMES:
            raise ValueError(f"loss={loss!r} must be one of {', '.join(LOSS_NAMES)}")
        if not alpha > 0 or penalty < 0:
            raise ValueError(f"alpha={alpha} must be > 0 and penalty={penalty} >= 0")
        self.threshold, self.position, self.loss = float(threshold), position, loss
        self.alpha, self.penalty = float(alpha), float(penalty)
        self.trunk, self.exit_head, self.rest = nn.Sequential(), nn.Sequential(), nn.Sequential()
        self.last_exit: torch.Tensor | None = None

    def layer_config(self) -> dict:
        return {"threshold": self.threshold, "position": self.position, "loss": self.loss, "alpha": self.alpha,
                "penalty": self.penalty}

    def forward_exits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(early logits, final logits) for every sample (training; no early stopping)."""
        hidden = self.trunk(x)
        return self.exit_head(hidden), self.rest(hidden)

    def training_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        early, final = self.forward_exits(x)
        return cascade_loss(self.loss, early, final, labels, self.alpha, self.penalty)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.forward_exits(x)[1]
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            # graphs cannot skip rows: both heads run and the exit is a select (right answers, no saving)
            early, final = self.forward_exits(x)
            early, final = F.log_softmax(early, 1), F.log_softmax(final, 1)
            confident = early.max(dim=1, keepdim=True).values.exp() > self.threshold
            return torch.where(confident, early, final)
        result = exit_inference(self, x, self.threshold)
        self.last_exit = result.exit_index
        return result.log_probs




def cascade_finetune_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Trainer ``loss_fn``: the cascade loss configured on the model's ``EarlyExitNet`` (or its graph exit)."""
    if getattr(model, "exit_head", None) is not None and not any(isinstance(m, EarlyExitNet) for m in model.modules()):
        config = graph_exit_config(model)
        early_input, final = exit_features(model, config["position"], images)
        return cascade_loss(config["loss"], model.exit_head(early_input), final, labels, config["alpha"],
                            config["penalty"])
    return find_exit_net(model).training_loss(images, labels)


def graph_exit_config(model: nn.Module) -> dict:
    """The exit's settings (defaults of ``apply_early_exit`` updated by the history's last early-exit entry)."""
    config = {"position": "p2", "threshold": DEFAULT_THRESHOLD, "loss": "firm", "alpha": DEFAULT_ALPHA,
              "penalty": DEFAULT_PENALTY}
    for entry in getattr(model, "compression_history", []):
        if entry.get("method") == "early-exit":
            config.update({k: v for k, v in entry.get("config", {}).items() if k in config})
    return config


def find_exit_net(model: nn.Module) -> EarlyExitNet:
    for module in model.modules():
        if isinstance(module, EarlyExitNet):
            return module
    raise ValueError("model has no early exit (use early_exit.attach_exit)")


def _split(module: nn.Module, parts: list[str], prefix: str) -> tuple[list, list]:
    children = list(module.named_children())
    names = [name for name, _ in children]
    if parts[0] not in names:
        raise ValueError(f"no child {prefix + parts[0]!r}; children of {prefix or 'the model'}: {', '.join(names)}")
    index = names.index(parts[0])
    flat = lambda items: [(prefix.replace(".", "_") + name, child) for name, child in items]  # noqa: E731
    before, after = flat(children[:index]), flat(children[index + 1:])
    if len(parts) == 1:
        return before + flat([children[index]]), after
    inner_before, inner_after = _split(children[index][1], parts[1:], prefix + parts[0] + ".")
    return before + inner_before, inner_after + after


def resolve_position(model: nn.Module, position: str) -> str:
    """``p1``/``p2`` on the cascade CNN mean after block 1/2; anything else is a dotted child path."""
    spec_name = (getattr(model, "spec", None) or {}).get("name")
    if position in CASCADE_POSITIONS:
        if spec_name not in (None, "cascade_cnn") or not hasattr(model, "features"):
            raise ValueError(f"position {position} is defined for cascade_cnn only; give a child path "
                             f"(e.g. features.conv2) for {spec_name}")
        return CASCADE_POSITIONS[position]
    return position


def attach_exit(model: nn.Module, position: str = "p2", *, input_shape: tuple[int, ...] | None = None,
                head_pool: int = 0, threshold: float = DEFAULT_THRESHOLD, loss: str = "sum",
                alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY, check: bool = True) -> EarlyExitNet:
    """Split (a deep copy of) ``model`` after the named child ``position`` and attach an exit head there.

    ``input_shape`` (C, H, W) defaults to ``model.spec``. ``head_pool`` > 0 average-pools the trunk output to
    about head_pool x head_pool (fixed kernel H // head_pool) before the FC (0: the paper's plain
    [FC -> softmax]). With ``check`` the split model's final output is compared with the original on a random
    input: models whose forward is not "children in order" are rejected with ValueError.
    """
    path = resolve_position(model, position)
    model = copy.deepcopy(model)
    before, after = _split(model, path.split("."), "")
    if not after:
        raise ValueError(f"nothing follows {path}: an exit there would not save anything")
    if input_shape is None:
        spec = getattr(model, "spec", None) or {}
        if "in_channels" not in spec:
            raise ValueError("input_shape is needed for a model without .spec")
        input_shape = (spec["in_channels"], spec["input_size"], spec["input_size"])
    net = EarlyExitNet(threshold, path, loss, alpha, penalty)
    net.trunk = nn.Sequential(OrderedDict(before))
    net.rest = nn.Sequential(OrderedDict(after))
    for module in net.rest.modules():  # the head reads the trunk output too: no in-place op may overwrite it
        if isinstance(module, nn.ReLU):
            module.inplace = False
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probe = torch.randn(2, *input_shape)
        hidden = net.trunk(probe)
        if check:
            expected, got = model(probe), net.rest(hidden)
            if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
                raise ValueError(f"{type(model).__name__} does not run its children in order; cannot split it")
        num_classes = net.rest(hidden).shape[1]
    net.exit_head = exit_head(hidden, num_classes, head_pool, path)
    net.train(was_training)
    return carry(model, net)


# ----------------------------------------------------------------------------------------------- inference
@dataclass
class ExitResult:
    """Per sample: ``predictions``, ``log_probs`` of the exit taken, ``exit_index`` (0 early, 1 final),
    ``confidence`` max(V1); and ``seconds`` of wall time for the whole call."""

    predictions: torch.Tensor
    log_probs: torch.Tensor
    exit_index: torch.Tensor
    confidence: torch.Tensor
    seconds: float

    @property
    def exit_rate(self) -> float:
        return float((self.exit_index == 0).float().mean()) if len(self.exit_index) else 0.0


@torch.no_grad()
def exit_inference(net: EarlyExitNet, x: torch.Tensor, threshold: float | None = None) -> ExitResult:
    """Hard-mode cascade: V1 = softmax(head(trunk(x))); rows with max(V1) > threshold stop there, the others
    (only those rows) go through ``rest``. threshold 0 -> every sample exits early; 1 -> none does."""
    threshold = net.threshold if threshold is None else float(threshold)
    started = time.perf_counter()
    hidden = net.trunk(x)
    log_probs = F.log_softmax(net.exit_head(hidden), 1)
    confidence = log_probs.max(dim=1).values.exp()
    late = torch.nonzero(confidence <= threshold).flatten()
    exit_index = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    if len(late):
        late_log_probs = F.log_softmax(net.rest(hidden.index_select(0, late)), 1)
        log_probs = log_probs.index_copy(0, late, late_log_probs)
        exit_index[late] = 1
    seconds = time.perf_counter() - started
    return ExitResult(log_probs.argmax(1), log_probs, exit_index, confidence, seconds)


def count_macs(net: EarlyExitNet, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per sample of ``trunk``, ``exit_head`` and ``rest``: each part's Conv2d and Linear
    layers, counted by the package's one MAC counter (``prune_macs.layer_macs``, the formula pruning's ``flops=``
    targets use)."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            example = torch.zeros(1, *input_shape)
            hidden = net.trunk(example)
            return {"trunk": total_macs(net.trunk, example), "exit_head": total_macs(net.exit_head, hidden),
                    "rest": total_macs(net.rest, hidden)}
    finally:
        net.train(was_training)


def expected_macs(macs: dict[str, int], exit_rate: float) -> float:
    """MACs per sample at an exit rate: trunk + head for all, rest for the (1 − rate) that go on."""
    return macs["trunk"] + macs["exit_head"] + (1.0 - exit_rate) * macs["rest"]


def threshold_sweep(net: EarlyExitNet, images: torch.Tensor, labels: torch.Tensor,
                    thresholds: list[float], batch_size: int = 256) -> list[dict]:
    """Accuracy, early-exit rate, measured ms per sample and MACs per sample at each threshold."""
    net.eval()
    macs = count_macs(net, tuple(images.shape[1:]))
    rows = []
    for threshold in thresholds:
        correct, early, seconds = 0, 0, 0.0
        for start in range(0, len(images), batch_size):
            result = exit_inference(net, images[start:start + batch_size], threshold)
            correct += int((result.predictions == labels[start:start + batch_size]).sum())
            early += int((result.exit_index == 0).sum())
            seconds += result.seconds
        rate = early / len(images)
        rows.append({"threshold": float(threshold), "accuracy": correct / len(images), "exit_rate": rate,
                     "ms_per_sample": 1000.0 * seconds / len(images), "macs_per_sample": expected_macs(macs, rate),
                     "macs_full": expected_macs(macs, 0.0)})
    return rows

PAPER = ("Pimpley & Indulkar, Exploring Sophisticated Loss Functions for Early Prediction in CNNs; "
         "Teerapittayanon et al. 2016 (BranchyNet)")


def apply_early_exit(model: nn.Module, position: str = "p2", threshold: float = DEFAULT_THRESHOLD,
                     loss: str = "firm", alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY,
                     head_pool: int = 0, input_size: int = 0, in_channels: int = 0) -> nn.Module:
    """Attach an exit after ``position`` (``p1``/``p2`` on cascade_cnn, else any module path like
    ``features.pool2`` or ``layer2``); eval forward exits per sample when max(V1) > ``threshold``. A network whose
    forward runs its children in order is split into ``EarlyExitNet``; any other (residual, concatenating, a
    hand-written forward) gets a graph exit (``exit_graph``: ``torch.fx`` split at deployment). ``input_size`` /
    ``in_channels``: the input shape where the model's card does not say it."""
    if head_pool < 0:
        raise ValueError(f"head_pool={head_pool} must be >= 0")
    if loss not in LOSS_NAMES or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"loss={loss!r} must be one of {', '.join(LOSS_NAMES)} and threshold={threshold} in [0, 1]")
    spec = getattr(model, "spec", None) or {}
    channels, size = in_channels or spec.get("in_channels"), input_size or spec.get("input_size")
    if not spec or is_user(spec):  # a user's network: its own forward is kept, the exit is a graph split
        if not (channels and size):
            raise ValueError(f"early-exit on {type(model).__name__}: give input_size= and in_channels= (its card "
                             f"does not say its input shape)")
        return attach_graph_exit(model, position, (channels, size, size), int(head_pool))
    try:
        return attach_exit(model, position, threshold=threshold, loss=loss, alpha=float(alpha),
                           penalty=float(penalty), head_pool=int(head_pool),
                           input_shape=(channels, size, size) if channels and size else None)
    except Exception as error:  # noqa: BLE001 - not a chain of children: the graph split below, or its refusal
        if position in CASCADE_POSITIONS and spec.get("name") == "cascade_cnn":
            raise
        if not (channels and size):
            raise ValueError(f"early-exit on {type(model).__name__}: give input_size= and in_channels= (its card does "
                             f"not say its input shape)") from error
        return attach_graph_exit(model, position, (channels, size, size), int(head_pool))


def graph_exit_runtime(model: nn.Module) -> nn.Module:
    """The deployed form of a graph exit (``GraphExit``: the traced network cut at the exit); an ``EarlyExitNet``
    already exits in eval mode and stays as it is (``deploy.runtime`` runs this after the method)."""
    if getattr(model, "exit_head", None) is None or any(isinstance(m, EarlyExitNet) for m in model.modules()):
        return model
    if isinstance(model, GraphExit):
        return model
    config = graph_exit_config(model)
    return carry(model, GraphExit(model, config["position"], config["threshold"])).eval()


register(
    MethodInfo("early-exit", PAPER, size="none", speed="real", family="early exit",
               handles="an exit after any named module of any network torch.fx can trace (the deployed graph is cut "
                       "there); a network that cannot be traced is refused by name",
               description="intermediate [FC->softmax] exit; samples with max(V1) > threshold skip the rest",
               bench=({"model": "vgg_s", "config": {"position": "features.pool2", "threshold": 0.6, "loss": "sum",
                                                    "head_pool": 2},
                       "finetune": 1, "label": "early-exit vgg_s pool2 t=0.6"},)),
    apply_early_exit, finetune_loss=cascade_finetune_loss)
