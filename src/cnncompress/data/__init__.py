"""Datasets (offline assets and user formats) and transforms."""
from cnncompress.data.datasets import (ImageDataset, available, build_dataset, register_dataset,
                       split_validation, stratified_split)
from cnncompress.data import lfw  # noqa: F401,E402 - registers "lfw-faces" and "faces-detect"

__all__ = ["ImageDataset", "available", "build_dataset", "register_dataset", "split_validation",
           "stratified_split"]
