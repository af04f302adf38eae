"""Data sets, transforms, the P x K sampler and loaders."""

from .datasets import FORMATS, load_dataset
from .types import ReidDataset, Sample

load = load_dataset

__all__ = ["FORMATS", "ReidDataset", "Sample", "load", "load_dataset"]
