"""The bench's trainer: ``Trainer`` plus the training error of every epoch, measured on a fixed seeded subset of
the training split (``TrainProbe``), so that the error-curve figures show training and validation error per epoch
as Rassadin & Savchenko's Figs. 1-6 do."""
from __future__ import annotations

import torch

from ..train import Trainer, error_rate


class TrainProbe:
    """A fixed, seeded subset of the training split (the size of the validation split): its error after every
    epoch is the ``train_error`` of the error-curve figures (Rassadin & Savchenko Figs. 1-6)."""

    def __init__(self, train_set, size: int, seed: int = 0):
        index = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:max(1, size)]
        self.images, self.labels = train_set.images[index], train_set.labels[index]

    def __len__(self) -> int:
        return len(self.labels)


class ProbedTrainer(Trainer):
    """``Trainer`` whose epoch records also carry ``train_error`` on a ``TrainProbe`` of the training split."""

    def __init__(self, *args, probe: TrainProbe | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe

    def _epoch(self, epoch: int) -> dict:
        record = super()._epoch(epoch)
        if self.probe is not None and self.rank == 0:
            record["train_error"] = error_rate(self.model, self.probe, device=self.config.device)
        return record
