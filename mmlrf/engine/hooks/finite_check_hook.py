"""Hook stopping a run at the first non-finite loss and refusing to save non-finite weights.

With a diverging learning rate mmengine trains on through NaN losses, saves checkpoints whose
tensors are NaN and exits with status 0. Here the first non-finite loss stops training (an
exception, so the process exits non-zero), naming the iteration and the loss terms; nothing of
that iteration is saved, because this hook runs before ``CheckpointHook``. A checkpoint about to
be written is checked too (whatever made its tensors non-finite) and is refused, naming them.
"""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ...interop.pretrained import non_finite_tensors


class NonFiniteError(FloatingPointError):
    """A loss or a weight about to be saved is NaN or infinite."""


@HOOKS.register_module()
class FiniteCheckHook(Hook):
    """Stop training at a non-finite loss; never write a checkpoint with non-finite weights.

    ``after_train_iter`` checks the iteration's logged losses (``outputs``, the model's log
    variables); ``before_save_checkpoint`` checks every tensor of the state dict to be saved.

    Raises:
        NonFiniteError: naming the iteration and the loss terms, or the checkpoint's tensors.
    """

    # before CheckpointHook (VERY_LOW) and the logger (BELOW_NORMAL) of the same iteration
    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: dict | None = None) -> None:
        bad = non_finite_tensors(dict(outputs or {}))
        if bad:
            values = ', '.join(f'{name} = {float(outputs[name].float().mean())}' for name in bad)
            raise NonFiniteError(
                f'training stopped at iteration {runner.iter + 1}: non-finite loss ({values}). '
                'No checkpoint was written from this iteration on. Lower the learning rate '
                '(optim_wrapper.optimizer.lr), add gradient clipping (optim_wrapper.clip_grad)'
                ' or resume from the last checkpoint (--resume).')

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        bad = non_finite_tensors(checkpoint.get('state_dict', {}))
        if bad:
            shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
            raise NonFiniteError(
                f'refusing to save a checkpoint: {len(bad)} weight tensors hold NaN or '
                f'infinite values ({shown}). The previous checkpoint is kept.')
