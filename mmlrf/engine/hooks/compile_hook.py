"""Hook compiling a segmentor's inference (and training forward) with ``torch.compile``."""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...inference.transforms import compile_segmentor


@HOOKS.register_module()
class CompileHook(Hook):
    """Compile the segmentor (:func:`~mmlrf.inference.transforms.compile_segmentor`) before
    training (training forward and validation inference; ``tools/train.py --compile``) or once
    the test checkpoint is loaded (inference; ``tools/test.py --compile``).

    Runs after :class:`FuseConvBNHook` and with :class:`ChannelsLastHook` (priority 'LOWEST');
    the compilation itself happens at the first batch of each input shape, on the model as
    those hooks left it.
    """

    priority = 'LOWEST'

    def before_train(self, runner: Any) -> None:
        self._compile(runner, train=True)

    def before_test(self, runner: Any) -> None:
        self._compile(runner, train=False)

    @staticmethod
    def _compile(runner: Any, train: bool) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        compile_segmentor(model, train=train)
        what = 'training forward and inference' if train else 'inference'
        print_log(f'CompileHook: {what} compiled (torch.compile, compiles at the first batch '
                  'of each input shape)', logger='current')
