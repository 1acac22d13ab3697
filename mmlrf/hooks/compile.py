"""Hook compiling a segmentor's inference (and training forward) with ``torch.compile``."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def compile_segmentor(model: nn.Module, train: bool = False) -> nn.Module:
    """Replace ``model.encode_decode`` (and with ``train``, ``model.loss``) by its
    ``torch.compile`` d version (default mode), in place.

    mmseg's ``EncoderDecoder`` runs every inference (``predict``, whole or sliding window)
    through ``encode_decode``: backbone, neck, decode head and the resize of the logits to the
    input size. Compiled, the eval BatchNorms, neurons and residual adds run as fused
    elementwise kernels. On the CPU, compiling the 19M LRF-Dyn segmentor's forward cut its
    1×1024×2048 inference peak by 31 % and its time by a third (``benchmark.py --compile``,
    docs/benchmarks.md). The first call of each new input shape compiles (about 2 minutes for
    the 19M model on 2 CPU cores); results can differ from eager by float rounding.

    ``loss`` is the training forward (backbone, heads and losses); AOTAutograd compiles its
    backward with it. mmlrf's memory-saving training paths (1-byte spike codes saved for the
    convs, the chunked scan's recomputing backward) give way to the compiler's own choice of
    saved tensors, which keeps more: its partitioner saves the float spikes a conv's backward
    reads rather than decoding them again (docs/benchmarks.md: compiled training on the CPU).

    Args:
        model (nn.Module): an mmseg segmentor (has ``encode_decode`` and ``loss``).
        train (bool): compile ``loss`` too.

    Returns:
        nn.Module: ``model``.

    Raises:
        TypeError: if ``model`` lacks ``encode_decode`` (or, with ``train``, ``loss``).
    """
    names = ('encode_decode', 'loss') if train else ('encode_decode',)
    for name in names:
        if not callable(getattr(model, name, None)):
            raise TypeError(f'{type(model).__name__} has no {name} method: compile_segmentor '
                            'needs an mmseg EncoderDecoder')
    for name in names:
        setattr(model, name, torch.compile(getattr(model, name)))
    return model


@HOOKS.register_module()
class CompileHook(Hook):
    """Compile the segmentor (:func:`compile_segmentor`) before training (training forward and
    validation inference; ``tools/train.py --compile``) or once the test checkpoint is loaded
    (inference; ``tools/test.py --compile``).

    Runs after :class:`~mmlrf.hooks.FuseConvBNHook` and with
    :class:`~mmlrf.hooks.ChannelsLastHook` (priority 'LOWEST'); the compilation itself happens
    at the first batch of each input shape, on the model as those hooks left it.
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
        what = 'loss and encode_decode' if train else 'encode_decode'
        print_log(f'CompileHook: {what} compiled (torch.compile, compiles at the first batch '
                  'of each input shape)', logger='current')
