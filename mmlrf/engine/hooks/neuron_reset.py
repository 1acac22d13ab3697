"""Neuron-state reset hook for stateful spiking models."""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def reset_neurons(model: nn.Module) -> int:
    """Call ``reset()`` on every submodule of ``model`` (the model itself excluded) that has one.

    Args:
        model (nn.Module): the model, possibly wrapped (DDP etc.).

    Returns:
        int: how many modules were reset.
    """
    if is_model_wrapper(model):
        model = model.module
    count = 0
    for module in model.modules():
        reset = getattr(module, 'reset', None)
        if module is not model and callable(reset):
            reset()
            count += 1
    return count


@HOOKS.register_module()
class NeuronResetHook(Hook):
    """Reset the membrane state of every neuron before each train, val **and test** iteration.

    Stateless neurons ignore the call; stateful ones (e.g. ``MultiStepLIF(stateful=True)``) would
    otherwise carry membrane potential from one batch (or test image) into the next. The state is
    also reset at the start of every loop, so a validation run never sees training state.
    """

    priority = 'VERY_HIGH'

    def _reset(self, runner: Any, *args: Any, **kwargs: Any) -> None:
        reset_neurons(runner.model)

    before_train = before_val = before_test = _reset
    before_train_iter = before_val_iter = before_test_iter = _reset
    before_val_epoch = before_test_epoch = _reset
