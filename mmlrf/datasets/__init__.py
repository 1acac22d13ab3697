"""Data sets and loading transforms (registered in mmseg's ``DATASETS`` / ``TRANSFORMS``)."""
from .loading import ImageFileError, LoadImageFromFileChecked, LoadImageFromFileNamed
from .sample_checks import CheckSegSample, SegSampleError
from . import toy_cue  # noqa: F401  (registers ToyCueDataset)
from .toy import TOY_CLASSES, ToyTextureDataset, make_toy_dataset, make_toy_sample

__all__ = ['CheckSegSample', 'ImageFileError', 'LoadImageFromFileChecked',
           'LoadImageFromFileNamed', 'SegSampleError', 'TOY_CLASSES', 'ToyTextureDataset',
           'make_toy_dataset', 'make_toy_sample']
