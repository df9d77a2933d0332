"""Datasets (offline assets and user formats) and transforms."""
from .datasets import ImageDataset, available, build_dataset, register_dataset, stratified_split

__all__ = ["ImageDataset", "available", "build_dataset", "register_dataset", "stratified_split"]
