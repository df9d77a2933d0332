"""Datasets (offline assets and user formats) and transforms."""
from cnncompress.data.datasets import (ImageDataset, SealedSplitError, available, build_dataset, final_evaluation,
                                       register_dataset, split_validation, stratified_split)
from cnncompress.data import lfw  # noqa: F401,E402 - registers "lfw-faces" and "faces-detect"

__all__ = ["ImageDataset", "SealedSplitError", "available", "build_dataset", "final_evaluation", "register_dataset",
           "split_validation", "stratified_split"]
