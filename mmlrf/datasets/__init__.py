"""Data sets (registered in ``mmseg.registry.DATASETS``)."""
from .toy import TOY_CLASSES, ToyTextureDataset, make_toy_dataset, make_toy_sample

__all__ = ['TOY_CLASSES', 'ToyTextureDataset', 'make_toy_dataset', 'make_toy_sample']
