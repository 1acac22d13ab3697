"""Depth-wise convolutions whose CPU backward runs as two forward convolutions.

oneDNN's backward of a depth-wise convolution on the CPU is 3–20× slower than its forward
(docs/benchmarks.md, ``tools/analysis/bench_depthwise.py``: a 3×3 with dilation 5 on
``[1, 1440, 32, 32]`` takes 21 ms backward against 1.2 ms forward), while its forward kernels
are fast. For a stride-1 depth-wise convolution
both gradients are themselves depth-wise forward convolutions:

- input gradient: the output gradient convolved with the spatially flipped kernel, padding
  ``dilation·(K−1) − padding``;
- weight gradient: per image and channel, the zero-padded input correlated with the output
  gradient used as a ``H_out × W_out`` kernel at stride ``dilation`` (a grouped convolution with
  one group per (image, channel)), summed over the batch.

:func:`conv2d_backward` takes that route where it applies (CPU, stride 1, one filter per channel,
zero padding no wider than the kernel's reach) and calls ``aten::convolution_backward`` (what
autograd calls for ``F.conv2d``) everywhere else. The results equal autograd's up to float
summation order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pairs(value: int | tuple) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def depthwise_backward_applies(x: Tensor, weight: Tensor, stride: tuple, padding: tuple,
                               dilation: tuple, groups: int) -> bool:
    """True if :func:`conv2d_backward` uses the forward-convolution route for this conv:
    a CPU tensor, stride 1, ``groups == C_in == C_out`` and ``padding ≤ dilation·(K−1)``."""
    if x.device.type != 'cpu' or x.dim() != 4 or weight.dim() != 4:
        return False
    if not (groups == x.shape[1] == weight.shape[0] and weight.shape[1] == 1):
        return False
    stride, padding, dilation = _pairs(stride), _pairs(padding), _pairs(dilation)
    return stride == (1, 1) and all(
        0 <= p <= d * (k - 1) for p, d, k in zip(padding, dilation, weight.shape[2:]))


def _depthwise_grads(grad: Tensor, x: Tensor, weight: Tensor, padding: tuple, dilation: tuple,
                     mask: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """(input, weight) gradients of a stride-1 depth-wise conv as forward convolutions."""
    (ph, pw), (dh, dw) = _pairs(padding), _pairs(dilation)
    b, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    g_x = g_w = None
    if mask[0]:
        g_x = F.conv2d(grad, weight.flip(-2, -1), None, 1,
                       (dh * (kh - 1) - ph, dw * (kw - 1) - pw), (dh, dw), c)
    if mask[1]:
        ho, wo = grad.shape[2:]
        padded = F.pad(x, (pw, pw, ph, ph)).reshape(1, b * c, h + 2 * ph, w + 2 * pw)
        g_w = F.conv2d(padded, grad.reshape(b * c, 1, ho, wo), None, (dh, dw), 0, 1, b * c)
        g_w = g_w.reshape(b, c, 1, kh, kw).sum(0)
    return g_x, g_w


def conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias_shape: tuple | None,
                    stride: tuple, padding: tuple, dilation: tuple, groups: int,
                    mask: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Gradients of ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    Args:
        grad (Tensor): output gradient ``[B, C_out, H_out, W_out]``.
        x (Tensor): the conv input ``[B, C_in, H, W]``.
        weight (Tensor): ``[C_out, C_in / groups, K_h, K_w]``.
        bias_shape (tuple | None): the bias' shape, None without bias.
        stride, padding, dilation (tuple): the conv's geometry.
        groups (int): conv groups.
        mask (tuple[bool, bool, bool]): which of (input, weight, bias) gradients to compute.

    Returns:
        tuple: (input, weight, bias) gradients, None where not asked for.
    """
    if depthwise_backward_applies(x, weight, stride, padding, dilation, groups):
        g_x, g_w = _depthwise_grads(grad, x, weight, padding, dilation, mask[:2])
        g_b = grad.sum((0, 2, 3)) if mask[2] and bias_shape is not None else None
        return g_x, g_w, g_b
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None if bias_shape is None else list(bias_shape), list(_pairs(stride)),
        list(_pairs(padding)), list(_pairs(dilation)), False, [0, 0], groups, list(mask))


class _Conv2dFn(torch.autograd.Function):
    """``F.conv2d`` with its backward through :func:`conv2d_backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple,
                padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (None if bias is None else bias.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        bias_shape, stride, padding, dilation, groups = ctx.conf
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias_shape is not None and ctx.needs_input_grad[2])
        g_x, g_w, g_b = conv2d_backward(grad, x, weight, bias_shape, stride, padding, dilation,
                                        groups, mask)
        return g_x, g_w, g_b, None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels, ...)`` whose CPU training
    backward runs as forward convolutions (:func:`conv2d_backward`).

    Same parameters, state-dict keys and outputs as the ``nn.Conv2d``; elsewhere (GPU, no
    gradient, autocast, non-zero padding modes, strides) it is exactly ``nn.Conv2d.forward``.

    Args:
        channels (int): input and output channels C (one filter per channel).
        kernel_size (int): square kernel size.
        padding (int): zero padding.
        dilation (int): dilation.
        bias (bool): learnable bias.

    Shapes: ``[B, C, H, W]`` → ``[B, C, H_out, W_out]``.
    """

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, dilation: int = 1,
                 bias: bool = False) -> None:
        super().__init__(channels, channels, kernel_size, padding=padding, dilation=dilation,
                         groups=channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if (not torch.is_grad_enabled() or self.padding_mode != 'zeros'
                or isinstance(self.padding, str)
                or torch.is_autocast_enabled(x.device.type)
                or not depthwise_backward_applies(x, self.weight, self.stride, self.padding,
                                                  self.dilation, self.groups)):
            return super().forward(x)
        return _Conv2dFn.apply(x, self.weight, self.bias, self.stride, self.padding,
                               self.dilation, self.groups)
