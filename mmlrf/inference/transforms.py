"""Model transforms for inference: fold BatchNorms, store weights channels-last, compile.

Each is applied by a hook in a runner (:mod:`mmlrf.engine.hooks`) or directly to a model
(:mod:`.options`, ``tools/demo.py``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from mmcv.cnn import fuse_conv_bn
from torch import nn


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers (any ``_BatchNorm``, SyncBN included) in ``model``."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorms(model: nn.Module) -> int:
    """Fold each BatchNorm into the conv before it, in place (``mmcv.cnn.fuse_conv_bn``). Put
    ``model`` in eval mode first.

    In eval mode a BN is a per-channel affine map, so folding it into the preceding conv's
    weight and bias gives the same function with one elementwise pass fewer per conv. Results
    can differ from the unfolded model by float rounding (a multi-spike neuron right at a
    rounding boundary may flip). mmcv pairs a BN with the conv registered just before it in the
    same parent; every mmlrf model registers them in data-flow order. A BN after a transposed
    conv (Spikformer's multi-scale adapter) is left as it is.

    Returns:
        int: how many BatchNorm layers were folded.
    """
    before = count_batchnorms(model)
    fuse_conv_bn(model)
    return before - count_batchnorms(model)


def to_channels_last(model: nn.Module) -> int:
    """Store every 4-D parameter and buffer of ``model`` channels-last, in place.

    A convolution whose weight is channels-last produces a channels-last output, so the
    activations of the whole network follow from the first conv on. On the CPU, oneDNN then
    runs its convolutions on the tensors as they are instead of reordering each input and
    output into its blocked layout (a full-size copy of each), which lowers the inference peak.
    oneDNN may pick other kernels for the new layout, so outputs can differ from the contiguous
    model's by float rounding.

    Returns:
        int: how many 4-D parameters were converted.
    """
    count = sum(p.dim() == 4 for p in model.parameters())
    model.to(memory_format=torch.channels_last)
    return count


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
    """Replace ``model.encode_decode``, ``model._forward`` where the model has it (and with
    ``train``, ``model.loss``) by its ``torch.compile`` d version (default mode), in place.

    mmseg's ``EncoderDecoder`` runs every plain inference (``predict``, whole or sliding window)
    through ``encode_decode``: backbone, neck, decode head and the resize of the logits to the
    input size. ``_forward`` is the same without the resize (mmseg's ``mode='tensor'``), the
    network that lean prediction (:mod:`~mmlrf.inference.predict`) runs. Compiled, the eval BatchNorms, neurons and residual adds run as fused
    elementwise kernels (time and memory: docs/benchmarks.md). The first call of each new input
    shape compiles (minutes for a large model on a few CPU cores); results can differ from
    eager by float rounding.

    ``loss`` is the training forward (backbone, heads and losses); AOTAutograd compiles its
    backward with it. mmlrf's memory-saving training paths (1-byte spike codes saved for the
    convs, the chunked scan's recomputing backward) give way to the compiler's own choice of
    saved tensors. On the CPU ``loss`` is partitioned by :func:`recompute_for_backward`, which
    saves the spike codes as eager mode does. On a GPU the default partitioner is kept.

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
    names += ('_forward',) * callable(getattr(model, '_forward', None))
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == 'cpu'
    for name in names:
        compiled = torch.compile(getattr(model, name))
        setattr(model, name, recompute_for_backward(compiled) if name == 'loss' and on_cpu
                else compiled)
    return model
