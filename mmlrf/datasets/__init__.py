"""Data sets and loading transforms (registered in mmseg's ``DATASETS`` / ``TRANSFORMS``)."""
from .loading import ImageFileError, LoadImageFromFileChecked
from . import toy_cue  # noqa: F401  (registers ToyCueDataset)
from .toy import TOY_CLASSES, ToyTextureDataset, make_toy_dataset, make_toy_sample

__all__ = ['ImageFileError', 'LoadImageFromFileChecked', 'TOY_CLASSES', 'ToyTextureDataset',
           'make_toy_dataset', 'make_toy_sample']
