"""Hook making the Runner's checkpoint loading (``load_from``, ``--resume``) strict and finite.

mmengine's Runner loads ``load_from`` with ``strict=False``: a checkpoint of another model loads
nothing, logs a warning among hundreds of lines, and the run evaluates (or fine-tunes) random
weights with exit status 0. This hook compares the checkpoint with the model before mmengine
loads it (``after_load_checkpoint`` runs between reading the file and loading its tensors) and
stops the run with the key report (missing, unexpected, mismatched shapes), unless
``strict=False`` was asked for (``tools/train.py`` / ``tools/test.py --allow-partial``). A
checkpoint with a NaN or infinite tensor is refused either way, naming the tensor.
"""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...interop.checkpoint_io import check_checkpoint_fits

#: How a user of mmlrf's tools turns strictness off; named in the error.
OPT_OUT = ('pass --allow-partial to tools/train.py or tools/test.py (or set '
           "dict(type='StrictLoadHook', strict=False) in custom_hooks)")


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Refuse a loaded checkpoint that does not fit the model exactly or is not finite.

    Args:
        strict (bool): refuse missing, unexpected and shape-mismatched keys (else they are
            logged as a warning and mmengine loads the rest).

    Raises:
        CheckpointMismatchError: ``strict`` and the checkpoint does not fit.
        NonFiniteWeightsError: a tensor of the checkpoint is NaN or infinite.
    """

    priority = 'VERY_HIGH'  # before any hook that edits the loaded checkpoint

    def __init__(self, strict: bool = True) -> None:
        if not isinstance(strict, bool):
            raise ValueError(f'StrictLoadHook: strict must be True or False, got {strict!r}')
        self.strict = strict

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = getattr(runner, '_load_from', None) or '<the loaded checkpoint>'
        check_checkpoint_fits(model, checkpoint, str(source), strict=self.strict,
                              opt_out=OPT_OUT)
