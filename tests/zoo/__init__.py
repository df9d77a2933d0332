"""A zoo of small plain-PyTorch CNNs of the kinds users ship (no torchvision, nothing from cnncompress), for
checking that every compression method either works on them or refuses with a clear message.

Each entry is ``build(num_classes=10, in_channels=1) -> nn.Module``, sized for 48x48 grey MNIST-like input
(< 300k parameters, trains in seconds per epoch on a CPU). ``ZOO`` is the development set; ``UNSEEN`` (in
``unseen.py``) holds structures kept back for a held-out check.
"""
from . import densenet, functional_net, mobilenet_v2, resnet_basic, resnet_bottleneck, se_net
from .unseen import UNSEEN

ZOO = {
    "resnet_basic": resnet_basic.build,
    "resnet_bottleneck": resnet_bottleneck.build,
    "mobilenet_v2": mobilenet_v2.build,
    "densenet": densenet.build,
    "se_net": se_net.build,
    "functional_net": functional_net.build,
}

__all__ = ["ZOO", "UNSEEN"]
