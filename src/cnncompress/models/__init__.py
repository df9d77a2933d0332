"""Reference models: VGG-S, SqueezeNet 1.1, the cascade CNN (and the mini-Xception teacher when added)."""
from .cascade_cnn import CascadeCNN
from .mini_xception import MiniXception, load_pretrained, load_teacher  # registers "mini_xception", its layers
from .registry import DEFAULT_BATCH_SIZE, available, build, build_from_spec, register_model
from .squeezenet import SqueezeNet11
from .vgg_s import VGGS

register_model("vgg_s", VGGS, batch_size=20)
register_model("squeezenet1_1", SqueezeNet11, batch_size=32)
register_model("cascade_cnn", CascadeCNN, batch_size=64)

__all__ = ["available", "build", "build_from_spec", "register_model", "DEFAULT_BATCH_SIZE"]



def _register_storage() -> None:
    from ..layers import register_layer
    from .squeezenet import Fire

    for cls in (VGGS, SqueezeNet11, CascadeCNN, Fire):
        register_layer(cls)


_register_storage()
