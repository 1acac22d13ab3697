"""Hook compiling a segmentor's inference (and training forward) with ``torch.compile``."""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def recompute_for_backward(compiled: Callable) -> Callable:
    """``compiled`` (a training function compiled by ``torch.compile``), partitioned for backward
    with ``torch._functorch.config.ban_recompute_materialized_backward = False``.

    AOTAutograd's min-cut partitioner by default never recomputes a tensor that a non-fusible
    backward op (a conv's backward) reads, so it saves the float32 spikes of every spiking conv.
    Allowed to recompute them, it saves the 1-byte spike codes and decodes them in backward, as
    eager mode does. The partition is made at the first call (of each input shape), inside the
    setting; other compilations are left alone. A torch without the setting gets ``compiled``
    back unchanged.
    """
    if not hasattr(torch._functorch.config, 'ban_recompute_materialized_backward'):
        return compiled

    @functools.wraps(compiled)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch._functorch.config.patch(ban_recompute_materialized_backward=False):
            return compiled(*args, **kwargs)
    return run


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
    saved tensors. On the CPU ``loss`` is partitioned by :func:`recompute_for_backward`, which
    saves the spike codes as eager mode does: the 19M LRF-Dyn 1×512×512 step then saved
    979 MiB instead of 1749 MiB (docs/benchmarks.md, compiled training on the CPU). On a GPU
    the default partitioner is kept (not measured).

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
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == 'cpu'
    for name in names:
        compiled = torch.compile(getattr(model, name))
        setattr(model, name, recompute_for_backward(compiled) if name == 'loss' and on_cpu
                else compiled)
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
