"""Interoperability with other OpenMMLab code: strict pretrained loading, atomic and
self-explaining checkpoint files. ``mmlrf.interop.mmpretrain_models`` (imported on demand, not
here) makes ``mmpretrain.models`` importable without torchvision."""
from .checkpoint_io import (ATOMIC_BACKEND, AtomicLocalBackend, CorruptCheckpointError,
                            atomic_write, check_checkpoint_fits, find_resume_checkpoint,
                            load_checkpoint_checked, remove_stale_temporaries)
from .pretrained import (CheckpointMismatchError, LoadReport, NonFiniteWeightsError,
                         StrictPretrainedMixin, load_pretrained)

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CorruptCheckpointError', 'atomic_write',
           'check_checkpoint_fits', 'find_resume_checkpoint', 'load_checkpoint_checked',
           'remove_stale_temporaries', 'CheckpointMismatchError', 'LoadReport',
           'NonFiniteWeightsError', 'StrictPretrainedMixin', 'load_pretrained']
