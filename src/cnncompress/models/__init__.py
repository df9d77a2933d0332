"""Reference models: VGG-S, SqueezeNet 1.1, the cascade CNN (and the mini-Xception teacher when added)."""
from cnncompress.models.cascade_cnn import CascadeCNN
from cnncompress.models.mini_xception import MiniXception, load_pretrained, load_teacher  # registers "mini_xception", its layers
from cnncompress.models.registry import (DEFAULT_BATCH_SIZE, DEFAULT_FINETUNE, DEFAULT_TRAINING, available, build, build_from_spec,
                       register_model)
from cnncompress.models.squeezenet import SqueezeNet11
from cnncompress.models.vgg_s import VGGS

# Recommended baseline training (train.preset(name)) and fine-tuning after compression (train.preset(name,
# "finetune"): 1 epoch, cosine with 5% warm-up, at finetune's lr); batch_size= is the papers' batch.
# Chosen on mnist5k's validation split at the bench's input sizes (48x48 grey: vgg_s x0.25, squeezenet1_1 x0.5); test
# accuracies over 3 seeds and the commands are in README ("Training defaults").
register_model("vgg_s", VGGS, batch_size=20, training={
    "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "warmup": 0.05,
    "epochs": 12, "patience": 0, "augment": "shift"}, finetune={"lr": 0.003})
register_model("squeezenet1_1", SqueezeNet11, batch_size=32, training={  # BN-free SqueezeNet: SGD often stalls
    "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05, "schedule": "cosine", "warmup": 0.1, "epochs": 50,
    "batch_size": 64, "patience": 0, "augment": "shift"}, finetune={"lr": 0.002})
register_model("cascade_cnn", CascadeCNN, batch_size=64, training={  # Pimpley & Indulkar
    "optimizer": "sgd", "lr": 0.001, "momentum": 0.5, "schedule": "paper", "epochs": 20})

__all__ = ["available", "build", "build_from_spec", "register_model", "DEFAULT_BATCH_SIZE", "DEFAULT_TRAINING",
           "DEFAULT_FINETUNE"]



def _register_storage() -> None:
    from cnncompress.layers import register_layer
    from cnncompress.models.squeezenet import Fire

    for cls in (VGGS, SqueezeNet11, CascadeCNN, Fire):
        register_layer(cls)


_register_storage()
