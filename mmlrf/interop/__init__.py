"""Interoperability with other OpenMMLab code: strict pretrained loading, atomic and
self-explaining checkpoint files. ``mmlrf.interop.mmpretrain_models`` (imported on demand, not
here) makes ``mmpretrain.models`` importable without torchvision."""
from .checkpoint_io import ATOMIC_BACKEND, AtomicLocalBackend, CorruptCheckpointError, atomic_write
from .pretrained import (CheckpointMismatchError, LoadReport, StrictPretrainedMixin,
                         load_pretrained)

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CorruptCheckpointError', 'atomic_write',
           'CheckpointMismatchError', 'LoadReport', 'StrictPretrainedMixin', 'load_pretrained']
