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
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CompressedLayer, register_layer


CASCADE_POSITIONS = {"p1": "features.block1", "p2": "features.block2"}
LOSS_NAMES = ("sum", "soft", "firm", "firm-max")
DEFAULT_ALPHA, DEFAULT_THRESHOLD, DEFAULT_PENALTY = 128.0, 0.6, 0.6


# ----------------------------------------------------------------------------------------------- losses
def f_alpha(p: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """f_α(p) = 1 / (1 + exp(−α (p − 0.5))) (Dadkhahi & Marlin's firm cascade, as used by Pimpley & Indulkar)."""
    return torch.sigmoid(alpha * (p - 0.5))


def g_alpha(p: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """g_α(p) = (f_α(p) − f_α(0)) / (f_α(1) − f_α(0)): a logistic step at 0.5 rescaled so g(0) = 0, g(1) = 1."""
    zero = f_alpha(torch.zeros((), dtype=p.dtype, device=p.device), alpha)
    one = f_alpha(torch.ones((), dtype=p.dtype, device=p.device), alpha)
    return (f_alpha(p, alpha) - zero) / (one - zero)


def msdnet_sum_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSDNet loss (Huang et al. 2018; the paper's baseline): CE(V1, y) + CE(V2, y), batch mean."""
    return F.cross_entropy(early_logits, labels) + F.cross_entropy(final_logits, labels)


def soft_cascade_probability(v1: torch.Tensor, v2: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Soft cascade (Raykar et al. 2010), multi-class form of Pimpley & Indulkar: P = V1 ⊙ V2 (element-wise).

    With ``normalize`` P is divided by Σ_i P_i so that it is a distribution (see ``soft_cascade_loss``).
    """
    product = v1 * v2
    return product / product.sum(dim=1, keepdim=True) if normalize else product


def soft_cascade_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                      normalize: bool = True) -> torch.Tensor:
    """Soft cascade loss: CE(P, y) = −log P[y] with P = V1 ⊙ V2 (Pimpley & Indulkar §3.3), batch mean.

    Unnormalised, −log(V1[y]·V2[y]) = CE(V1) + CE(V2) is *identical* to the sum loss, so (default) P is
    normalised: −log(V1[y]V2[y] / Σ_i V1[i]V2[i]) = CE(softmax(log V1 + log V2), y), computed in log space.
    """
    log_p = F.log_softmax(early_logits, 1) + F.log_softmax(final_logits, 1)
    if normalize:
        return F.cross_entropy(log_p, labels)
    return F.nll_loss(log_p, labels)


def firm_cascade_probability(v1: torch.Tensor, v2: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Firm cascade (Dadkhahi & Marlin 2017), multi-class form: P = g(V1)⊙V1 + (1 − g(V1))⊙g(V2)⊙V2."""
    g1 = g_alpha(v1, alpha)
    return g1 * v1 + (1 - g1) * g_alpha(v2, alpha) * v2


def firm_cascade_loss(early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY, gate: str = "elementwise",
                      eps: float = 1e-7) -> torch.Tensor:
    """Firm cascade loss: −log(P[y] + ε) + λ (1 − g_α(max_i V1[i])), batch mean (Pimpley & Indulkar §3.3).

    ``gate="elementwise"`` (the paper): P = g(V1)⊙V1 + (1 − g(V1))⊙g(V2)⊙V2, every product element-wise, with
    g_α(p) = (f_α(p) − f_α(0)) / (f_α(1) − f_α(0)), f_α(p) = 1/(1+exp(−α(p−0.5))); defaults α = 128, λ = 0.6.
    ``gate="max"`` (our variant, loss name ``firm-max``): one gate per sample from the test-time exit rule,
    G = g(max_i V1[i]), P = G·V1 + (1 − G)·g(V2)⊙V2; unlike the element-wise form it punishes an early head
    that is confidently wrong (element-wise, P[y] then falls back to V2[y]).
    The paper writes the penalty as λ(1 − g(V1)) with V1 a vector; we apply it to the early head's confidence
    max_i V1[i] (the quantity the test-time gate thresholds), one number per sample, 0 when the early head is
    sure. ε keeps the log finite *and* its gradient alive where P[y] ≈ 0 (a clamp would zero it).
    """
    v1, v2 = F.softmax(early_logits, 1), F.softmax(final_logits, 1)
    confidence_gate = g_alpha(v1.max(dim=1).values, alpha)
    if gate == "elementwise":
        p = firm_cascade_probability(v1, v2, alpha)
    elif gate == "max":
        p = confidence_gate[:, None] * v1 + (1 - confidence_gate[:, None]) * g_alpha(v2, alpha) * v2
    else:
        raise ValueError(f"gate={gate!r} must be elementwise or max")
    cross_entropy = -torch.log(p.gather(1, labels[:, None]).squeeze(1) + eps)
    return (cross_entropy + penalty * (1 - confidence_gate)).mean()


def cascade_loss(name: str, early_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                 alpha: float = DEFAULT_ALPHA, penalty: float = DEFAULT_PENALTY) -> torch.Tensor:
    """Dispatch on ``name`` in ``sum`` | ``soft`` | ``firm`` | ``firm-max`` (see ``firm_cascade_loss``)."""
    if name == "sum":
        return msdnet_sum_loss(early_logits, final_logits, labels)
    if name == "soft":
        return soft_cascade_loss(early_logits, final_logits, labels)
    if name in ("firm", "firm-max"):
        gate = "max" if name == "firm-max" else "elementwise"
        return firm_cascade_loss(early_logits, final_logits, labels, alpha, penalty, gate)
    raise ValueError(f"unknown cascade loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")


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
    """Trainer ``loss_fn``: the cascade loss configured on the model's ``EarlyExitNet``."""
    return find_exit_net(model).training_loss(images, labels)


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
    head = []
    if head_pool:
        if hidden.dim() != 4 or min(hidden.shape[2:]) < head_pool:
            raise ValueError(f"head_pool={head_pool} needs a feature map of at least that size at {path}, "
                             f"got {tuple(hidden.shape[1:])}")
        # a fixed average pool (not adaptive: that does not export to ONNX with a dynamic batch)
        kernel = (hidden.shape[2] // head_pool, hidden.shape[3] // head_pool)
        head.append(("pool", nn.AvgPool2d(kernel, kernel)))
    features = nn.Sequential(OrderedDict(head))(hidden)[0].numel()
    layers = head + [("flatten", nn.Flatten()), ("fc", nn.Linear(features, num_classes))]
    net.exit_head = nn.Sequential(OrderedDict(layers))
    net.train(was_training)
    for attribute in ("spec", "metadata", "compression_history"):
        if hasattr(model, attribute):
            setattr(net, attribute, copy.deepcopy(getattr(model, attribute)))
    return net


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
    """Multiply-accumulates per sample of ``trunk``, ``exit_head`` and ``rest`` (Conv2d and Linear layers)."""
    totals = {"trunk": 0, "exit_head": 0, "rest": 0}
    handles = []

    def hook_for(part):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                totals[part] += output[0].numel() * per_out
            else:
                totals[part] += module.in_features * module.out_features
        return hook

    for part in totals:
        for module in getattr(net, part).modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(hook_for(part)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            hidden = net.trunk(torch.zeros(1, *input_shape))
            net.exit_head(hidden)
            net.rest(hidden)
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return totals


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
