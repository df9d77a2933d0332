"""The bench's trainer records, after every epoch, the training error on a fixed seeded subset of the training
split: the same subset for every run, and the number error_rate gives for the final weights."""
import torch

from cnncompress import models
from cnncompress.data.datasets import ImageDataset
from cnncompress.training.trainer import ProbedTrainer, TrainProbe
from cnncompress.training.trainer import TrainConfig, error_rate


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randn(n, 1, 28, 28, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    return ImageDataset(images, labels, ["a", "b", "c"], "toy", 0.0, 1.0, "train")


def test_probe_is_a_fixed_subset_and_every_epoch_records_its_error():
    train = _data()
    probe, again = TrainProbe(train, 20, seed=1), TrainProbe(train, 20, seed=1)
    assert len(probe) == 20 and torch.equal(probe.images, again.images)  # seeded: the same images every run
    assert any((train.images.flatten(1) == image.flatten()).all(1).any() for image in probe.images)
    torch.manual_seed(0)
    model = models.build("cascade_cnn", num_classes=3, in_channels=1, input_size=28)
    trainer = ProbedTrainer(model, train, None, TrainConfig(epochs=2, batch_size=20, lr=0.05), progress=False,
                            probe=probe)
    trainer.fit()
    assert [record["epoch"] for record in trainer.history] == [1, 2]
    assert all(0.0 <= record["train_error"] <= 1.0 for record in trainer.history)
    assert trainer.history[-1]["train_error"] == error_rate(model, probe)
