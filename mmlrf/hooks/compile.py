"""Hook compiling a segmentor's inference with ``torch.compile`` for testing."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def compile_segmentor(model: nn.Module) -> nn.Module:
    """Replace ``model.encode_decode`` by its ``torch.compile`` d version (default mode), in
    place.

    mmseg's ``EncoderDecoder`` runs every inference (``predict``, whole or sliding window)
    through ``encode_decode``: backbone, neck, decode head and the resize of the logits to the
    input size. Compiled, the eval BatchNorms, neurons and residual adds run as fused
    elementwise kernels. On the CPU, compiling the 19M LRF-Dyn segmentor's forward cut its
    1×1024×2048 inference peak by 31 % and its time by a third (``benchmark.py --compile``,
    docs/benchmarks.md). The first call of each new input shape compiles (about 2 minutes for
    the 19M model on 2 CPU cores); results can differ from eager by float rounding. Training is
    not compiled.

    Args:
        model (nn.Module): an mmseg segmentor (has ``encode_decode``).

    Returns:
        nn.Module: ``model``.

    Raises:
        TypeError: if ``model`` has no ``encode_decode`` method.
    """
    if not callable(getattr(model, 'encode_decode', None)):
        raise TypeError(f'{type(model).__name__} has no encode_decode method: '
                        'compile_segmentor needs an mmseg EncoderDecoder')
    model.encode_decode = torch.compile(model.encode_decode)
    return model


@HOOKS.register_module()
class CompileHook(Hook):
    """Compile the segmentor's inference (:func:`compile_segmentor`) once the test checkpoint
    is loaded (``tools/test.py --compile``).

    Runs after :class:`~mmlrf.hooks.FuseConvBNHook` and with
    :class:`~mmlrf.hooks.ChannelsLastHook` (priority 'LOWEST'); the compilation itself happens
    at the first test batch, on the model as those hooks left it.
    """

    priority = 'LOWEST'

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        compile_segmentor(model)
        print_log('CompileHook: encode_decode compiled (torch.compile, compiles at the first '
                  'batch of each input shape)', logger='current')
