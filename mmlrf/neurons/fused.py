"""Convolutions of :class:`~mmlrf.neurons.MultiSpike` outputs that save 1-byte spike codes.

A conv saves its input for the weight gradient. When that input is a multi-spike neuron's output
``level / norm`` (integer level 0..D), :func:`spike_conv2d` saves the neuron's ``uint8`` code
(the tensor the neuron saves anyway) instead of the float spikes and recomputes them, bitwise
equal, in backward: the pair neuron → conv then keeps 1 byte per input element for backward
instead of 8 (float input of the neuron and float input of the conv). Forward outputs and
gradients are identical to ``conv(neuron(x))``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..conv import conv2d_backward, conv2d_forward
from .multispike import decode_spikes, spike_code_of

_HOOK_DICTS = ('_forward_hooks', '_forward_pre_hooks')


class _SpikeCodeConv2d(torch.autograd.Function):
    """:func:`~mmlrf.conv.conv2d_forward` of ``s`` (``F.conv2d``; a matrix product for a CPU
    1×1) saving the spike code of ``s`` instead of ``s``."""

    @staticmethod
    def forward(ctx, s: Tensor, code: Tensor, norm: float, weight: Tensor, bias: Tensor | None,
                stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(code, weight)
        ctx.conf = (norm, s.shape, s.dtype, None if bias is None else bias.shape,
                    stride, padding, dilation, groups)
        return conv2d_forward(s, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        code, weight = ctx.saved_tensors
        norm, shape, dtype, bias_shape, stride, padding, dilation, groups = ctx.conf
        s = decode_spikes(code, norm, dtype).view(shape)
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[3],
                bias_shape is not None and ctx.needs_input_grad[4])
        g_s, g_w, g_b = conv2d_backward(grad, s, weight, bias_shape, stride, padding, dilation,
                                        groups, mask)
        return g_s, None, None, g_w, g_b, None, None, None, None


def _has_hooks(module: nn.Module) -> bool:
    from torch.nn.modules import module as torch_module
    return (any(getattr(module, name) for name in _HOOK_DICTS)
            or bool(torch_module._global_forward_hooks)
            or bool(torch_module._global_forward_pre_hooks))


def spike_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``; when ``x`` is a :class:`~mmlrf.neurons.MultiSpike` output recorded by
    autograd (see :func:`~mmlrf.neurons.multispike.spike_code_of`), the conv saves the
    neuron's 1-byte code instead of ``x``.

    Falls back to ``conv(x)`` (same numbers, float input saved) when the conv has forward
    hooks (e.g. the energy meter's), under autocast, for non-zero padding modes or string
    paddings.

    Args:
        conv (nn.Conv2d): the convolution.
        x (Tensor): ``[N, C_in, H, W]``.

    Returns:
        Tensor: ``[N, C_out, H', W']``.
    """
    found = (spike_code_of(x) if torch.is_grad_enabled() and not torch.compiler.is_compiling()
             else None)
    if (found is None or conv.padding_mode != 'zeros' or isinstance(conv.padding, str)
            or torch.is_autocast_enabled(x.device.type) or _has_hooks(conv)):
        return conv(x)
    code, norm = found
    return _SpikeCodeConv2d.apply(x, code, norm, conv.weight, conv.bias, conv.stride,
                                  conv.padding, conv.dilation, conv.groups)
